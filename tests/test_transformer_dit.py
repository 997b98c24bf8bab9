"""DiTModel: shapes, initialisation, validation, serialisation, checkpointing, autocast, compile, RoPE."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flow_pipelines import DiTModel
from flow_pipelines.models import DIT_PRESETS
from flow_pipelines.models.embeddings import apply_rope, rope_2d_frequencies, timestep_embedding

TINY = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 32,
    "num_layers": 2,
    "num_attention_heads": 4,
    "mlp_ratio": 4.0,  # DiTModel's default
    "num_classes": 10,
}


@pytest.fixture
def tiny_model(make_dit):
    """`make_dit` with this module's config and every weight perturbed by 0.1, so every part influences the output."""

    def build(**overrides) -> DiTModel:
        return make_dit(scale=0.1, **{**TINY, **overrides})

    return build


def tiny_inputs(batch: int = 3, size: int = 8, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size, size, generator=generator)
    timestep = torch.rand(batch, generator=generator) * 1000
    labels = torch.arange(batch) % 11  # includes the null id 10 when batch > 10, real ids otherwise
    return sample, timestep, labels


@pytest.mark.parametrize("name", list(DIT_PRESETS))
def test_presets_build_and_give_the_right_shapes(name):
    # Real preset widths and heads, one block, to keep it cheap.
    model = DiTModel.from_preset(name, num_layers=1, sample_size=16, num_classes=10).eval()
    assert model.config.hidden_size == DIT_PRESETS[name]["hidden_size"]
    assert model.config.patch_size == DIT_PRESETS[name]["patch_size"]
    assert model.config.out_channels == model.config.in_channels == 4
    sample = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        out = model(sample, torch.tensor([10.0, 990.0]), torch.tensor([3, 10])).sample
    assert out.shape == (2, 4, 16, 16)


def test_learned_sigma_layout_doubles_the_output_channels(tiny_model):
    model = tiny_model(out_channels=8)
    with torch.no_grad():
        out = model(*tiny_inputs()).sample
    assert out.shape == (3, 8, 8, 8)


def test_preset_listing_and_unknown_preset():
    assert DiTModel.presets() == list(DIT_PRESETS)
    assert {"DiT-S/2", "DiT-B/4", "DiT-L/8", "DiT-XL/2"} <= set(DiTModel.presets())
    with pytest.raises(ValueError, match=r"DiT-XXL/2.*DiT-S/2"):
        DiTModel.from_preset("DiT-XXL/2")


@pytest.mark.parametrize(
    ("name", "paper_millions"), [("DiT-S/2", 33), ("DiT-B/2", 130), ("DiT-L/2", 458), ("DiT-XL/2", 675)]
)
def test_parameter_counts_match_the_paper(name, paper_millions):
    # 256 px: 32x32x4 latents, 1000 classes, learned-sigma output (8 channels), as in the paper.
    with torch.device("meta"):
        model = DiTModel.from_preset(name, out_channels=8)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.01


def test_fresh_model_outputs_exactly_zero():
    torch.manual_seed(0)
    model = DiTModel(**TINY)
    sample, timestep, labels = tiny_inputs()
    out = model(sample, timestep, labels).sample
    assert out.shape == sample.shape
    assert torch.count_nonzero(out) == 0


def test_null_class_row_is_used_for_guidance(tiny_model):
    model = tiny_model()
    table = model.label_embed.embedding_table.weight
    assert table.shape[0] == model.config.num_classes + 1
    assert model.null_class_id == model.config.num_classes
    sample = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        conditional = model(sample, 500.0, torch.tensor([0])).sample
        unconditional = model(sample, 500.0, torch.tensor([10])).sample
        default = model(sample, 500.0, None).sample
        # The null output is the last row's: changing only that row changes it.
        table[10].add_(1.0)
        moved = model(sample, 500.0, torch.tensor([10])).sample
    assert not torch.allclose(conditional, unconditional)
    assert torch.equal(default, unconditional)
    assert not torch.allclose(moved, unconditional)


def test_class_labels_out_of_range_raise(tiny_model):
    model = tiny_model()
    sample = torch.randn(2, 4, 8, 8)
    for bad in (torch.tensor([0, 11]), torch.tensor([-1, 3]), [2, 12]):
        with pytest.raises(ValueError, match=r"out of range.*\[0, 10\]"):
            model(sample, 10.0, bad)
    with pytest.raises(ValueError, match="integers"):
        model(sample, 10.0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one label per sample"):
        model(sample, 10.0, torch.tensor([0, 1, 2]))
    with torch.no_grad():
        model(sample, 10.0, torch.tensor([0, 10]))  # the null id itself is allowed


def test_input_validation(tiny_model):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"7x8 is not divisible by patch_size=2"):
        model(torch.randn(1, 4, 7, 8), 10.0, [0])
    with pytest.raises(ValueError, match="3 channels; allowed: in_channels=4"):
        model(torch.randn(1, 3, 8, 8), 10.0, [0])
    with pytest.raises(ValueError, match="timestep has shape"):
        model(torch.randn(2, 4, 8, 8), torch.ones(3), [0, 1])
    with pytest.raises(ValueError, match=r"timestep has NaN or infinite values \(\[10\.0, nan\]\)"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([10.0, float("nan")]), [0, 1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_attention_heads": 5}, "not divisible by num_attention_heads=5"),
        ({"pos_embed": "learned"}, "pos_embed='learned'.*sincos, rope"),
        ({"qk_norm": "batch_norm"}, "qk_norm='batch_norm'"),
        ({"path": "edm"}, "Unknown path 'edm'"),
        ({"prediction_type": "score"}, "prediction_type='score'"),
        ({"patch_size": 0}, "patch_size must be a positive integer"),
        ({"sample_size": 9, "patch_size": 2}, r"sample_size=9 is not divisible by patch_size=2"),
        ({"mlp_ratio": float("nan")}, r"mlp_ratio=nan is not allowed; allowed: a finite number > 0"),
        ({"norm_eps": 0.0}, r"norm_eps=0\.0 is not allowed; allowed: a finite number > 0"),
        ({"mlp_norm_eps": -1e-5}, r"mlp_norm_eps=-1e-05 is not allowed"),
        ({"pos_embed": "rope", "rope_theta": float("inf")}, r"rope_theta=inf is not allowed"),
        (
            {"hidden_size": 24, "num_attention_heads": 4, "pos_embed": "rope"},
            "head dimension.*divisible by 4",
        ),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        DiTModel(**{**TINY, **overrides})


def test_save_and_load_round_trip_in_safetensors(tmp_path, tiny_model):
    model = tiny_model(qk_norm="rms_norm", out_channels=8)
    model.save_pretrained(tmp_path / "model")
    files = sorted(path.name for path in (tmp_path / "model").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = DiTModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.qk_norm == "rms_norm" and loaded.config.out_channels == 8
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(model(*inputs).sample, loaded(*inputs).sample)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(tiny_model):
    model = tiny_model().train()
    sample, timestep, labels = tiny_inputs()

    def run():
        model.zero_grad()
        out = model(sample, timestep, labels).sample
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    plain_out, plain_grads = run()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed_out, checkpointed_grads = run()
    torch.testing.assert_close(checkpointed_out, plain_out, rtol=0, atol=1e-6)
    for plain, checkpointed in zip(plain_grads, checkpointed_grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_forward_is_close_to_float32(tiny_model):
    model = tiny_model()
    inputs = tiny_inputs()
    with torch.no_grad():
        reference = model(*inputs).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(*inputs).sample
    assert low.dtype == torch.bfloat16
    error = (low.float() - reference).norm() / reference.norm()
    assert error < 0.05


def test_layerwise_casting_keeps_outputs_close(tiny_model):
    model = tiny_model()
    inputs = tiny_inputs()
    with torch.no_grad():
        reference = model(*inputs).sample
        model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
        assert model.blocks[0].attn.to_q.weight.dtype == torch.bfloat16
        assert model.patch_embed.weight.dtype == torch.float32  # skipped by pattern
        cast = model(*inputs).sample
    assert (cast - reference).norm() / reference.norm() < 0.05


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_compiles_without_graph_breaks(pos_embed, tiny_model):
    model = tiny_model(pos_embed=pos_embed, qk_norm="layer_norm")
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(*tiny_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_other_input_sizes_use_positions_of_the_actual_grid(tiny_model):
    model = tiny_model()
    with torch.no_grad():
        out = model(torch.randn(2, 4, 12, 6), 300.0, [1, 2]).sample
    assert out.shape == (2, 4, 12, 6)
    assert (6, 3, torch.device("cpu")) in model._position_cache
    # Positions are integer patch coordinates, not rescaled to the training grid: the first two tokens
    # of the first row get the same table rows on a 2x2 and on a 6x3 grid.
    table_small = model._positions(2, 2, torch.device("cpu"))
    table_large = model._positions(6, 3, torch.device("cpu"))
    assert torch.equal(table_small[:2], table_large[:2])


def test_rope_variant_runs_on_several_sizes_and_depends_on_position(tiny_model):
    model = tiny_model(pos_embed="rope")
    sample = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = model(sample, 100.0, [3]).sample
        assert out.shape == sample.shape
        assert model(torch.randn(1, 4, 10, 6), 100.0, [3]).sample.shape == (1, 4, 10, 6)
        # Without absolute positions, only RoPE breaks permutation symmetry: transposing the input is
        # not the same as transposing the output.
        transposed = model(sample.transpose(-1, -2), 100.0, [3]).sample
    assert not torch.allclose(transposed, out.transpose(-1, -2), atol=1e-4)


def test_rope_scores_depend_only_on_relative_position():
    head_dim, width = 16, 7
    rope = rope_2d_frequencies(head_dim, 1, width)  # one row: positions differ along the columns only
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(head_dim, generator=generator).expand(1, 1, width, head_dim)
    key = torch.randn(head_dim, generator=generator).expand(1, 1, width, head_dim)
    scores = apply_rope(query, rope)[0, 0] @ apply_rope(key, rope)[0, 0].T
    for offset in range(-width + 1, width):
        diagonal = torch.diagonal(scores, offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-5, atol=1e-5)
    # Rotation keeps norms.
    torch.testing.assert_close(apply_rope(query, rope).norm(dim=-1), query.norm(dim=-1))


def test_timestep_embedding_resolves_fractional_timesteps(tiny_model):
    timesteps = torch.tensor([500.0, 500.5])
    embedding = timestep_embedding(timesteps, 256)
    index = torch.arange(128, dtype=torch.float64)
    angles = 500.5 * torch.exp(-math.log(10000.0) * index / 128)
    expected = torch.cat([torch.cos(angles), torch.sin(angles)]).float()
    torch.testing.assert_close(embedding[1], expected, rtol=0, atol=2e-4)
    assert not torch.allclose(embedding[0], embedding[1])
    model = tiny_model()
    sample = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(model(sample, 500.0, [1]).sample, model(sample, 500.5, [1]).sample)
        # A 0-d tensor, a Python float and a per-sample tensor mean the same thing.
        scalar = model(sample, torch.tensor(250.0), [1]).sample
        torch.testing.assert_close(scalar, model(sample, 250.0, [1]).sample)
        torch.testing.assert_close(scalar, model(sample, torch.tensor([250.0]), torch.tensor([1])).sample)


def test_save_pretrained_replaces_only_its_own_files_and_a_failed_save_changes_nothing(
    make_dit, tmp_path, monkeypatch
) -> None:
    import safetensors.torch

    from flow_pipelines import DiTModel

    first, second = make_dit(seed=0), make_dit(seed=1)
    first.save_pretrained(tmp_path)
    (tmp_path / "my_notes.md").write_text("mine")
    saved = (tmp_path / "diffusion_pytorch_model.safetensors").read_bytes()

    def crash(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")  # as a crash midway through the write leaves it
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        second.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "my_notes.md",
    ]
    monkeypatch.undo()
    second.save_pretrained(tmp_path)
    assert (tmp_path / "my_notes.md").read_text() == "mine"
    loaded = DiTModel.from_pretrained(tmp_path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), second.state_dict().values(), strict=True)
    )


# ----------------------------------------------------------------------------- diffusers' common model checks
def forward(model: DiTModel, **kwargs) -> torch.Tensor:
    sample, timestep, labels = tiny_inputs()
    with torch.no_grad():
        return model(hidden_states=sample, timestep=timestep, class_labels=labels, **kwargs)


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
def test_save_load_with_variants_and_formats_as_diffusers_tests_them(
    tiny_model, tmp_path, safe_serialization
):
    model = tiny_model()
    expected = forward(model, return_dict=False)[0]
    model.save_pretrained(tmp_path / "plain", safe_serialization=safe_serialization)
    torch.testing.assert_close(forward(DiTModel.from_pretrained(tmp_path / "plain")).sample, expected)

    model.save_pretrained(tmp_path / "fp16", variant="fp16", safe_serialization=safe_serialization)
    torch.testing.assert_close(
        forward(DiTModel.from_pretrained(tmp_path / "fp16", variant="fp16")).sample, expected
    )
    with pytest.raises(OSError, match="Error no file named diffusion_pytorch_model.bin found in directory"):
        DiTModel.from_pretrained(tmp_path / "fp16")

    # A save in the other format replaces the weights of the same variant: no stale file shadows the new one.
    model.save_pretrained(tmp_path / "plain", safe_serialization=not safe_serialization)
    names = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert names == [
        "config.json",
        "diffusion_pytorch_model." + ("bin" if safe_serialization else "safetensors"),
    ]

    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    torch.testing.assert_close(forward(DiTModel.from_pretrained(tmp_path / "sharded")).sample, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_and_its_alias_on_load(tiny_model, tmp_path, dtype):
    tiny_model().to(dtype).save_pretrained(tmp_path)
    assert DiTModel.from_pretrained(tmp_path, low_cpu_mem_usage=True, torch_dtype=dtype).dtype == dtype
    assert DiTModel.from_pretrained(tmp_path, low_cpu_mem_usage=False, torch_dtype=dtype).dtype == dtype
    assert DiTModel.from_pretrained(tmp_path, dtype=dtype).dtype == dtype


def test_determinism_tuple_output_and_attribute_access(tiny_model, caplog):
    model = tiny_model()
    first, second = forward(model).sample, forward(model, return_dict=False)
    assert isinstance(second, tuple) and torch.equal(first, second[0])
    model.dummy_attribute = 5
    model.register_to_config(test_attribute=5)
    with caplog.at_level("WARNING", logger="diffusers.models.modeling_utils"):
        assert model.dummy_attribute == 5 and model.save_pretrained == model.save_pretrained
    assert caplog.text == ""
    with pytest.warns(FutureWarning):
        assert model.test_attribute == 5
    with pytest.raises(AttributeError, match="'DiTModel' object has no attribute 'does_not_exist'"):
        model.does_not_exist  # noqa: B018


def test_training_with_ema_and_the_gradient_checkpointing_switch(tiny_model):
    from diffusers.training_utils import EMAModel

    model = tiny_model().train()
    ema = EMAModel(model.parameters())
    output = forward_with_grad(model)
    torch.nn.functional.mse_loss(output, torch.randn_like(output)).backward()
    ema.step(model.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    enabled = {type(m).__name__ for m in model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert model.is_gradient_checkpointing and enabled == {"DiTModel"}
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def forward_with_grad(model: DiTModel) -> torch.Tensor:
    sample, timestep, labels = tiny_inputs()
    return model(sample, timestep, labels, return_dict=False)[0]
