"""Checkpoint conversion: original DiT / SiT state dicts and diffusers' DiTTransformer2DModel into DiTModel.

The reference below re-implements the module structure and key names of facebookresearch/DiT
``models.py`` (SiT's is the same, except that its forward drops the learned-sigma channels), with
timm's ``PatchEmbed`` / ``Attention`` / ``Mlp`` layouts and MAE's numpy sin-cos positions.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file
from torch import nn

from flow_pipelines import DiTModel, FlowPipeline
from flow_pipelines.guidance import GuidedVelocity
from flow_pipelines.models.conversion import (
    convert_checkpoint,
    convert_diffusers_dit,
    convert_original_checkpoint,
    load_original_state_dict,
)
from flow_pipelines.models.original_checkpoints import CheckpointReadError, preset_dims
from flow_pipelines.paths import VPPath, path_from_config

from .cli_support import assert_one_line_error, example_commands, run_command, truncate
from .conftest import file_modes
from .oracles import reference_time, vp_reference

_CLI_PATH = Path(__file__).resolve().parents[1] / "train_scripts" / "convert_checkpoint.py"


def convert_script():
    """The command-line script as a module (train_scripts is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint", _CLI_PATH)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def convert_main(argv: list[str]) -> None:
    """Run the script's ``main``: errors propagate."""
    convert_script().main(argv)


# ----------------------------------------------------------------------------- reference DiT / SiT


def mae_2d_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's ``get_2d_sincos_pos_embed`` (numpy), as DiT stores it in ``pos_embed``."""

    def one_dim(dim, positions):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one_dim(embed_dim // 2, grid[0]), one_dim(embed_dim // 2, grid[1])], axis=1)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RefPatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, channels = x.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, channels))


class RefMlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefTimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        # (The original feeds float32 features; the cast lets the test run the reference in float64.)
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


class RefLabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden_size):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels):
        return self.embedding_table(labels)


class RefBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = RefAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = RefMlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class RefFinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class RefDiT(nn.Module):
    """facebookresearch/DiT's ``DiT`` (``sit=True``: willisma/SiT's ``SiT``, which drops the sigma channels)."""

    def __init__(
        self,
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=2,
        num_heads=4,
        mlp_ratio=4.0,
        num_classes=10,
        learn_sigma=True,
        sit=False,
    ):
        super().__init__()
        self.learn_sigma, self.sit, self.patch_size = learn_sigma, sit, patch_size
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.x_embedder = RefPatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = RefTimestepEmbedder(hidden_size)
        self.y_embedder = RefLabelEmbedder(num_classes, hidden_size)
        grid = input_size // patch_size
        positions = torch.from_numpy(mae_2d_sincos(hidden_size, grid)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(positions, requires_grad=False)
        self.blocks = nn.ModuleList([RefBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = RefFinalLayer(hidden_size, patch_size, self.out_channels)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)
        c_out, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c_out))
        x = x.reshape(x.shape[0], c_out, h * p, h * p)
        if self.sit and self.learn_sigma:
            x, _ = x.chunk(2, dim=1)
        return x


def perturbed(module: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise every trainable weight (the originals zero-initialise adaLN and the output layer)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def inputs(batch=4, channels=4, size=8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, channels, size, size, generator=generator, dtype=torch.float64)


# Outputs are compared in float64, where float32 rounding (~1e-6 relative, which float32 accumulation
# order alone produces) cannot hide or mimic a mapping error; the weights are the converted float32 ones.


# ----------------------------------------------------------------------------- original DiT / SiT


def test_dit_conversion_reproduces_the_original_forward(tmp_path):
    reference = perturbed(RefDiT())
    torch.save(reference.state_dict(), tmp_path / "dit.pt")
    model = convert_original_checkpoint(tmp_path / "dit.pt", "dit", num_attention_heads=4)
    assert model.config.path == "vp" and model.config.path_kwargs == {"beta_min": 0.1, "beta_max": 20.0}
    assert model.config.prediction_type == "epsilon" and model.config.num_train_timesteps == 1000
    assert model.config.out_channels == 8 and model.config.num_classes == 10 and model.config.sample_size == 8
    x = inputs()
    timesteps = torch.tensor([0, 17, 500, 999])
    labels = torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        expected = reference.double()(x, timesteps, labels)
        got = model.double()(x, timesteps, labels).sample
    assert expected.abs().max() > 0.1  # a non-trivial output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def sit_model_and_reference(tmp_path):
    reference = perturbed(RefDiT(sit=True), seed=3)
    torch.save(reference.state_dict(), tmp_path / "sit.pt")
    model = convert_original_checkpoint(tmp_path / "sit.pt", "sit", preset=None, num_attention_heads=4)
    return model.double(), reference.double()


def test_sit_conversion_is_sits_forward_on_the_reversed_linear_path(tmp_path):
    model, reference = sit_model_and_reference(tmp_path)
    config = model.config
    assert config.path == "linear" and config.path_kwargs == {"reverse_time": True}
    assert config.num_train_timesteps == 1 and config.prediction_type == "velocity"
    assert config.out_channels == 4  # SiT's unused sigma channels are dropped
    x = inputs()
    sit_time = torch.tensor([0.0, 0.25, 0.6, 1.0])  # SiT: t = 0 is noise
    labels = torch.tensor([1, 2, 10, 5])
    with torch.no_grad():
        sit_velocity = reference(x, sit_time, labels)  # x0 - noise
        same_call = model(x, sit_time, labels).sample
        # Through its path, the model is our velocity noise - x0 at our sigma = 1 - t.
        ours = GuidedVelocity(model, labels)(x, 1.0 - sit_time.double())
    assert sit_velocity.abs().max() > 0.1
    torch.testing.assert_close(same_call, sit_velocity, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, -sit_velocity, rtol=0, atol=1e-5)


def test_a_sit_folder_saved_with_a_time_convention_still_loads(tmp_path):
    """Configs saved before paths carried the time direction name it `time_convention`; they load unchanged."""
    model, reference = sit_model_and_reference(tmp_path)
    model.float().save_pretrained(tmp_path / "sit_folder")
    config_path = tmp_path / "sit_folder" / "config.json"
    legacy = json.loads(config_path.read_text())
    legacy.update(time_convention="sit", path="linear", path_kwargs=None, num_train_timesteps=1000)
    config_path.write_text(json.dumps(legacy))
    loaded = DiTModel.from_pretrained(tmp_path / "sit_folder").double()
    assert loaded.config.path_kwargs == {"reverse_time": True} and loaded.config.num_train_timesteps == 1
    assert "time_convention" not in loaded.config
    x, labels, sigma = inputs(), torch.tensor([1, 2, 10, 5]), torch.tensor([1.0, 0.75, 0.4, 0.05])
    with torch.no_grad():
        expected = -reference(x, 1.0 - sigma, labels)
        torch.testing.assert_close(
            GuidedVelocity(loaded, labels)(x, sigma.double()), expected, rtol=0, atol=1e-5
        )


def test_training_checkpoints_take_the_ema_weights_and_plain_pickles_are_refused(tmp_path):
    ema = perturbed(RefDiT(), seed=1).state_dict()
    online = perturbed(RefDiT(), seed=2).state_dict()
    checkpoint = {"model": online, "ema": ema, "opt": {}, "args": argparse.Namespace(model="DiT-S/2")}
    torch.save(checkpoint, tmp_path / "0001000.pt")
    loaded = load_original_state_dict(tmp_path / "0001000.pt")
    assert all(torch.equal(loaded[key], ema[key]) for key in ema)

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"x_embedder.proj.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(
        pickle.UnpicklingError, match=r"holds objects other than tensors.*Unsupported global: GLOBAL print"
    ):
        load_original_state_dict(tmp_path / "evil.pt")


def test_original_conversion_checks_shapes_and_keys(tmp_path):
    state_dict = perturbed(RefDiT()).state_dict()
    with pytest.raises(ValueError, match="cannot infer the head count of width 32"):
        convert_original_checkpoint(state_dict, "dit")
    with pytest.raises(
        ValueError, match=r"does not match preset 'DiT-S/2'.*hidden_size: preset 384, checkpoint 32"
    ):
        convert_original_checkpoint(state_dict, "dit", preset="DiT-S/2")
    with pytest.raises(ValueError, match="Unknown preset 'DiT-M/2'"):
        convert_original_checkpoint(state_dict, "dit", preset="DiT-M/2")
    with pytest.raises(ValueError, match="unexpected keys.*blocks.0.attn.q_norm.weight"):
        convert_original_checkpoint(
            {**state_dict, "blocks.0.attn.q_norm.weight": torch.ones(8)}, "dit", None, 4
        )
    learned = {**state_dict, "pos_embed": state_dict["pos_embed"] + 0.01}
    with pytest.raises(ValueError, match="not the fixed 2-D sin-cos table"):
        convert_original_checkpoint(learned, "dit", None, 4)
    with pytest.raises(ValueError, match="source='edm'"):
        convert_original_checkpoint(state_dict, "edm", None, 4)


def test_paper_sized_checkpoint_converts_with_its_preset():
    # S/2 at 256 px with real shapes (weights stay at their init: only the mapping is under test here).
    reference = RefDiT(input_size=32, hidden_size=384, depth=12, num_heads=6, num_classes=1000)
    model = convert_original_checkpoint(reference.state_dict(), "dit", preset="DiT-S/2")
    assert model.config.num_attention_heads == 6 and model.config.num_layers == 12
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for name, p in reference.named_parameters() if name != "pos_embed"
    )


def test_cli_writes_an_atomic_safetensors_folder(tmp_path):
    reference = perturbed(RefDiT(sit=True))
    torch.save(reference.state_dict(), tmp_path / "sit.pt")
    output = tmp_path / "converted"
    output.mkdir()
    (output / "notes.bin").write_bytes(b"the user's")  # kept: only the model's own files are written
    convert_main(
        [
            "--source",
            "sit",
            "--checkpoint",
            str(tmp_path / "sit.pt"),
            "--output_dir",
            str(output),
            "--num_attention_heads",
            "4",
        ]
    )
    assert sorted(path.name for path in output.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "notes.bin",
    ]
    assert (output / "notes.bin").read_bytes() == b"the user's"
    assert not any(path.name.startswith(".converted") for path in tmp_path.iterdir())
    loaded = DiTModel.from_pretrained(output).eval()
    x, labels = inputs(), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.double()(x, 0.6, labels).sample,
            reference.double()(x, torch.full((4,), 0.6), labels),
            rtol=0,
            atol=1e-5,
        )


def convert_sit_cli(checkpoint: Path, output_dir: str | Path) -> None:
    convert_main(
        ["--source", "sit", "--checkpoint", str(checkpoint), "--output_dir", str(output_dir)]
        + ["--num_attention_heads", "4"]
    )


def test_converting_into_the_checkpoints_own_folder_keeps_it_and_everything_else(tmp_path):
    reference = perturbed(RefDiT(sit=True))
    run = tmp_path / "run"
    run.mkdir()
    torch.save(reference.state_dict(), run / "model.pt")
    checkpoint_bytes = (run / "model.pt").read_bytes()
    (run / "notes.md").write_text("mine")
    # Shards of an earlier model written here would shadow the new weights: they are the model's own files.
    (run / "diffusion_pytorch_model-00001-of-00002.safetensors").write_bytes(b"stale")
    (run / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
    convert_sit_cli(run / "model.pt", run)
    assert sorted(path.name for path in run.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "model.pt",
        "notes.md",
    ]
    assert (run / "model.pt").read_bytes() == checkpoint_bytes
    assert DiTModel.from_pretrained(run).config.out_channels == 4


def test_converting_into_the_current_folder(tmp_path, monkeypatch):
    torch.save(perturbed(RefDiT(sit=True)).state_dict(), tmp_path / "sit.pt")
    monkeypatch.chdir(tmp_path)
    convert_sit_cli(Path("sit.pt"), ".")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "sit.pt",
    ]


def test_an_output_path_that_is_a_file_or_the_source_is_refused(tmp_path):
    torch.save(perturbed(RefDiT(sit=True)).state_dict(), tmp_path / "sit.pt")
    (tmp_path / "model.safetensors").write_bytes(b"a file of the user's")
    with pytest.raises(ValueError, match=r"output_dir='.*model\.safetensors' is an existing file"):
        convert_sit_cli(tmp_path / "sit.pt", tmp_path / "model.safetensors")
    assert (tmp_path / "model.safetensors").read_bytes() == b"a file of the user's"

    torch.save(perturbed(RefDiT(sit=True)).state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="has the name of a file the converted model writes"):
        # The safetensors checkpoint would be overwritten by the converted weights.
        convert_checkpoint("sit", tmp_path / "diffusion_pytorch_model.safetensors", tmp_path, None, 4)
    tiny_diffusers_dit().save_pretrained(tmp_path / "diffusers_dit")
    with pytest.raises(ValueError, match="is the diffusers folder being converted"):
        convert_checkpoint("diffusers", tmp_path / "diffusers_dit", tmp_path / "diffusers_dit")


# SiT's paths (willisma/SiT transport/path.py) written out: data coefficient alpha_t, noise coefficient sigma_t
# and their time derivatives, with t = 0 noise and t = 1 data.
def sit_plan(path_type: str, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if path_type == "Linear":
        return t, 1 - t, torch.ones_like(t), -torch.ones_like(t)
    if path_type == "GVP":
        angle = math.pi / 2 * t
        return (
            torch.sin(angle),
            torch.cos(angle),
            math.pi / 2 * torch.cos(angle),
            -math.pi / 2 * torch.sin(angle),
        )
    beta_min, beta_max = 0.1, 20.0  # VPCPlan's sigma_min, sigma_max
    log_mean = -0.25 * (1 - t) ** 2 * (beta_max - beta_min) - 0.5 * (1 - t) * beta_min
    d_log_mean = 0.5 * (1 - t) * (beta_max - beta_min) + 0.5 * beta_min
    alpha, sigma = torch.exp(log_mean), torch.sqrt(1 - torch.exp(2 * log_mean))
    return alpha, sigma, alpha * d_log_mean, torch.exp(2 * log_mean) * 2 * d_log_mean / (-2 * sigma)


def sit_training_checkpoint(reference: nn.Module, **args) -> dict:
    state_dict = reference.state_dict()
    return {"model": state_dict, "ema": state_dict, "opt": {}, "args": argparse.Namespace(**args)}


@pytest.mark.parametrize(
    ("path_type", "prediction", "path", "path_kwargs", "prediction_type"),
    [
        ("GVP", "velocity", "cosine", {"reverse_time": True}, "velocity"),
        ("VP", "velocity", "vp", {"beta_min": 0.1, "beta_max": 20.0, "reverse_time": True}, "velocity"),
        ("Linear", "noise", "linear", {"reverse_time": True}, "epsilon"),
        ("GVP", "noise", "cosine", {"reverse_time": True}, "epsilon"),
        ("VP", "noise", "vp", {"beta_min": 0.1, "beta_max": 20.0, "reverse_time": True}, "epsilon"),
    ],
)
def test_sit_training_args_choose_the_path_and_prediction(
    tmp_path, path_type, prediction, path, path_kwargs, prediction_type
):
    reference = perturbed(RefDiT(sit=True), seed=4)
    checkpoint = sit_training_checkpoint(
        reference, model="SiT-XL/2", num_classes=10, path_type=path_type, prediction=prediction
    )
    torch.save(checkpoint, tmp_path / "0400000.pt")
    model = convert_original_checkpoint(tmp_path / "0400000.pt", "sit", num_attention_heads=4).double()
    config = model.config
    assert (config.path, config.path_kwargs, config.prediction_type) == (path, path_kwargs, prediction_type)
    assert config.num_train_timesteps == 1

    # SiT's own reading of its output, at its times t, mapped onto our straight path by hand.
    reference.double()
    t = torch.tensor([0.2, 0.45, 0.7, 0.9], dtype=torch.float64)
    alpha, sigma, d_alpha, d_sigma = (c[:, None, None, None] for c in sit_plan(path_type, t))
    x = inputs()  # points of our straight path at sigma_ours = sigma_t / (alpha_t + sigma_t)
    x_t = (alpha + sigma) * x
    labels = torch.tensor([1, 2, 10, 5])
    with torch.no_grad():
        output = reference(x_t, t, labels)
        if prediction == "velocity":  # alpha x1 + sigma x0 = x_t and d_alpha x1 + d_sigma x0 = output
            determinant = alpha * d_sigma - sigma * d_alpha
            data = (d_sigma * x_t - sigma * output) / determinant
            noise = (alpha * output - d_alpha * x_t) / determinant
        else:
            noise = output
            data = (x_t - sigma * noise) / alpha
        ours = GuidedVelocity(model, labels)(x, (sigma / (alpha + sigma)).reshape(-1))
    torch.testing.assert_close(ours, noise - data, rtol=1e-6, atol=1e-5)


def test_sit_checkpoints_that_cannot_be_converted_faithfully_are_refused(tmp_path):
    reference = perturbed(RefDiT(sit=True))
    score = sit_training_checkpoint(reference, model="SiT-B/2", path_type="Linear", prediction="score")
    with pytest.raises(
        ValueError, match=r"prediction='score' cannot be converted faithfully.*-noise / sigma_t"
    ):
        convert_original_checkpoint(score, "sit", num_attention_heads=4)
    other = sit_training_checkpoint(reference, model="SiT-B/2", path_type="Cosine", prediction="velocity")
    with pytest.raises(ValueError, match=r"path_type='Cosine' cannot be converted.*Linear, GVP, VP"):
        convert_original_checkpoint(other, "sit", num_attention_heads=4)


def test_a_checkpoint_of_the_other_kind_is_refused(tmp_path):
    dit = sit_training_checkpoint(perturbed(RefDiT()), model="DiT-XL/2", num_classes=10)
    with pytest.raises(
        ValueError, match=r"source='sit'.*model 'DiT-XL/2'.*DIT checkpoint; convert it with source='dit'"
    ):
        convert_original_checkpoint(dit, "sit", num_attention_heads=4)
    sit = sit_training_checkpoint(
        perturbed(RefDiT(sit=True)), model="SiT-XL/2", path_type="GVP", prediction="noise"
    )
    with pytest.raises(
        ValueError, match=r"source='dit'.*SiT's transport flags \(path_type='GVP', prediction='noise'\)"
    ):
        convert_original_checkpoint(sit, "dit", num_attention_heads=4)
    renamed = sit_training_checkpoint(perturbed(RefDiT(sit=True)), model="SiT-S/2")
    with pytest.raises(ValueError, match="convert it with source='sit'"):
        convert_original_checkpoint(renamed, "dit", num_attention_heads=4)


def test_the_null_class_row_is_read_from_the_training_args(tmp_path):
    reference = perturbed(RefDiT(num_classes=10))
    checkpoint = sit_training_checkpoint(reference, model="DiT-XL/2", num_classes=10)
    assert convert_original_checkpoint(checkpoint, "dit", num_attention_heads=4).config.num_classes == 10

    # Trained without label dropout: the table has exactly num_classes rows and no null class.
    without_null_row = {**reference.state_dict()}
    without_null_row["y_embedder.embedding_table.weight"] = without_null_row[
        "y_embedder.embedding_table.weight"
    ][:10]
    checkpoint = sit_training_checkpoint(reference, model="DiT-XL/2", num_classes=10)
    checkpoint["ema"] = without_null_row
    message = (
        r"10 rows for 10 classes \(num_classes=10\).*no null class.*guidance is impossible.*Not converted"
    )
    with pytest.raises(ValueError, match=message):
        convert_original_checkpoint(checkpoint, "dit", num_attention_heads=4)
    dropout_zero = {
        "ema": without_null_row,
        "args": argparse.Namespace(model="DiT-XL/2"),
        "class_dropout_prob": 0.0,
    }
    with pytest.raises(ValueError, match=r"\(class_dropout_prob=0.0\).*no null class"):
        convert_original_checkpoint(dropout_zero, "dit", num_attention_heads=4)
    wrong = sit_training_checkpoint(reference, model="DiT-XL/2", num_classes=7)
    with pytest.raises(ValueError, match="11 rows, but the training args say num_classes=7"):
        convert_original_checkpoint(wrong, "dit", num_attention_heads=4)


def test_what_a_conversion_read_or_assumed_is_logged(tmp_path, caplog):
    reference = perturbed(RefDiT(sit=True))
    with caplog.at_level("INFO", logger="flow_pipelines.models"):
        convert_original_checkpoint(reference.state_dict(), "sit", num_attention_heads=4)
        convert_original_checkpoint(
            sit_training_checkpoint(
                reference, model="SiT-B/2", num_classes=10, path_type="GVP", prediction="velocity"
            ),
            "sit",
            num_attention_heads=4,
        )
    first, second = caplog.messages
    assert (
        "carries no training args: converted as source='sit' means by default (velocity on SiT's linear"
        in first
    )
    assert second == (
        "Training args in the checkpoint: model='SiT-B/2', num_classes=10, path_type='GVP', prediction='velocity'."
    )


def test_converted_dit_checkpoint_samples_through_the_vp_mapping(tmp_path):
    reference = perturbed(RefDiT(in_channels=4, num_classes=10), seed=7)
    torch.save(reference.state_dict(), tmp_path / "dit.pt")
    reference.double()
    model = convert_original_checkpoint(tmp_path / "dit.pt", "dit", num_attention_heads=4).double()
    assert model.config.path == "vp" and model.config.path_kwargs == {"beta_min": 0.1, "beta_max": 20.0}
    assert model.config.out_channels == 8
    pipe = FlowPipeline(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)

    received = []
    original_step = pipe.scheduler.step

    @functools.wraps(original_step)
    def recording_step(model_output, timestep, sample, *args, **kwargs):
        received.append((model_output.clone(), float(timestep), sample.clone()))
        return original_step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = recording_step
    labels = [2, 5]
    images = pipe(labels, num_inference_steps=6, guidance_scale=1.0, output_type="latent").images
    assert images.shape == (2, 4, 8, 8) and images.dtype == torch.float64 and torch.isfinite(images).all()
    assert len(received) == 6
    for model_output, timestep, sample in received:
        sigma = timestep / 1000
        s = reference_time("vp", sigma)
        a, b, _, _ = vp_reference(s)
        with torch.no_grad():
            original = reference(
                (a + b) * sample, torch.full((2,), s * 1000, dtype=torch.float64), torch.tensor(labels)
            )
        eps = original[:, :4]  # the learned-variance channels are dropped
        x0 = ((a + b) * sample - b * eps) / a
        expected = eps - x0
        torch.testing.assert_close(model_output, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())


# ----------------------------------------------------------------------------- diffusers


def tiny_diffusers_dit(shared_embedder: bool = True) -> DiTTransformer2DModel:
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    perturbed(model, seed=5)
    if shared_embedder:
        # As in diffusers' conversion of the original DiT: every block carries a copy of one embedder.
        with torch.no_grad():
            for block in model.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model


def test_diffusers_conversion_reproduces_diffusers_forward(tmp_path):
    source = tiny_diffusers_dit()
    source.save_pretrained(tmp_path / "diffusers_dit")
    convert_checkpoint("diffusers", tmp_path / "diffusers_dit", tmp_path / "ours")
    model = DiTModel.from_pretrained(tmp_path / "ours").eval()
    assert (
        model.config.path == "vp"
        and model.config.prediction_type == "epsilon"
        and model.config.out_channels == 8
    )
    assert model.config.timestep_frequency_shift == 1 and model.config.mlp_norm_eps == source.config.norm_eps
    parameters_ours = sum(p.numel() for p in model.parameters())
    parameters_theirs = sum(p.numel() for p in source.parameters())
    assert parameters_ours < parameters_theirs  # one embedder instead of one per block
    x = inputs()
    timesteps = torch.tensor([0, 250, 999, 42])
    labels = torch.tensor([0, 10, 4, 9])
    with torch.no_grad():
        expected = source.double()(x, timestep=timesteps, class_labels=labels).sample
        got = model.double()(x, timesteps, labels).sample
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_diffusers_conversion_refuses_distinct_per_block_embedders():
    with pytest.raises(ValueError, match="block 1's .* differs from block 0's"):
        convert_diffusers_dit(tiny_diffusers_dit(shared_embedder=False))


def test_converted_diffusers_ddpm_dit_records_the_vp_path():
    model = convert_diffusers_dit(tiny_diffusers_dit())
    assert model.config.path == "vp" and isinstance(path_from_config(model.config), VPPath)
    assert (
        path_from_config(
            DiTModel(sample_size=8, hidden_size=32, num_layers=1, num_attention_heads=2).config
        ).name
        == "linear"
    )


def test_convert_checkpoint_rejects_options_that_do_not_apply(tmp_path):
    with pytest.raises(ValueError, match="source='onnx'"):
        convert_checkpoint("onnx", tmp_path / "x", tmp_path / "y")
    with pytest.raises(ValueError, match="time_convention is fixed"):
        convert_checkpoint("dit", tmp_path / "x", tmp_path / "y", time_convention="flow")
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        convert_checkpoint("diffusers", tmp_path, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_truncated_or_corrupt_checkpoints_are_named(tmp_path):
    torch.save(perturbed(RefDiT(sit=True)).state_dict(), tmp_path / "sit.pt")
    truncate(tmp_path / "sit.pt")
    with pytest.raises(
        ValueError, match=r"checkpoint '.*sit\.pt' is not a readable PyTorch checkpoint \(truncated"
    ):
        load_original_state_dict(tmp_path / "sit.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(
        CheckpointReadError, match=r"notes\.pt' is not a readable PyTorch checkpoint \(corrupt, or"
    ):
        load_original_state_dict(tmp_path / "notes.pt")
    save_file(perturbed(RefDiT(sit=True)).state_dict(), str(tmp_path / "sit.safetensors"))
    truncate(tmp_path / "sit.safetensors")
    with pytest.raises(ValueError, match=r"sit\.safetensors' is not a readable safetensors file \(truncated"):
        load_original_state_dict(tmp_path / "sit.safetensors")


@pytest.mark.parametrize("breakage", ["missing", "truncated", "corrupt", "diffusers_json", "output_file"])
def test_the_command_reports_bad_input_in_one_line(tmp_path, capsys, breakage):
    checkpoint = tmp_path / "sit.pt"
    torch.save(perturbed(RefDiT(sit=True)).state_dict(), checkpoint)
    source, output, fragment = "sit", tmp_path / "out", ""
    if breakage == "missing":
        checkpoint, fragment = (
            tmp_path / "nope.pt",
            "checkpoint '" + str(tmp_path / "nope.pt") + "' is not a file",
        )
    elif breakage == "truncated":
        truncate(checkpoint)
        fragment = "is not a readable PyTorch checkpoint (truncated or corrupt"
    elif breakage == "corrupt":
        checkpoint.write_bytes(b"\x80\x02not a pickle")
        fragment = "is not a readable PyTorch checkpoint (corrupt, or not a checkpoint: Unsupported operand"
    elif breakage == "diffusers_json":
        tiny_diffusers_dit().save_pretrained(tmp_path / "diffusers_dit")
        (tmp_path / "diffusers_dit" / "config.json").write_text("{")
        source, checkpoint, fragment = "diffusers", tmp_path / "diffusers_dit", "config.json"
    else:
        output.write_text("a file")
        fragment = "is an existing file; allowed: a folder"
    argv = ["--source", source, "--checkpoint", str(checkpoint), "--output_dir", str(output)]
    argv += ["--num_attention_heads", "4"] if source == "sit" else []
    capsys.readouterr()
    assert convert_script().run(argv) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_the_command_prints_what_it_read_and_runs_as_a_script(tmp_path, umask):
    reference = perturbed(RefDiT(sit=True))
    checkpoint = sit_training_checkpoint(
        reference, model="SiT-B/2", num_classes=10, path_type="GVP", prediction="noise"
    )
    torch.save(checkpoint, tmp_path / "0400000.pt")
    argv = ["--source", "sit", "--checkpoint", str(tmp_path / "0400000.pt"), "--num_attention_heads", "4"]
    result = run_command([str(_CLI_PATH), *argv, "--output_dir", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "Training args in the checkpoint: model='SiT-B/2', num_classes=10, path_type='GVP', prediction='noise'."
    )
    assert "SiT samples such models from t = 1e-3" in lines[1]
    assert "path='cosine' {'reverse_time': True}, time scale 1, prediction_type='epsilon'" in lines[-1]
    assert file_modes(tmp_path / "out") == {
        "config.json": "0o644",
        "diffusion_pytorch_model.safetensors": "0o644",
    }

    truncate(tmp_path / "0400000.pt")
    result = run_command([str(_CLI_PATH), *argv, "--output_dir", str(tmp_path / "again")], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "0400000.pt' is not a readable PyTorch checkpoint")
    assert not (tmp_path / "again").exists()


def test_the_docstring_examples_parse_and_name_real_files():
    script = convert_script()
    examples = example_commands(script.__doc__, "python train_scripts/convert_checkpoint.py")
    assert [script.parse_args(argv).source for argv in examples] == ["sit", "dit", "diffusers"]
    for argv in examples:
        args = script.parse_args(argv)
        if args.preset is not None:
            preset_dims(args.preset)  # a known preset
    # The released files' names (willisma/SiT download.py, facebookresearch/DiT download.py).
    assert [script.parse_args(argv).checkpoint for argv in examples[:2]] == [
        "SiT-XL-2-256x256.pt",
        "DiT-XL-2-256x256.pt",
    ]
