"""DiTAttention as a diffusers attention module: what diffusers' attention tests check (processors got, set one by one
and by dict, fused and unfused q/k/v), backend dispatch, diffusers' generic processors, and weights saved before the
diffusers layout."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    attention_backend,
)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from safetensors.torch import save_file

from flow_pipelines import DiTModel, FlowPipeline
from flow_pipelines.models.dit_attention import DiTAttention, DiTAttnProcessor, upgrade_legacy_attention_keys

TINY = {"in_channels": 4, "num_attention_heads": 4}
VARIANTS = {
    "sincos": {},
    "rope-rms": {"pos_embed": "rope", "qk_norm": "rms_norm"},
    "layer-norm": {"qk_norm": "layer_norm"},
}


def inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(3)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=generator),
        "timestep": torch.tensor([250.0, 900.0][:batch]),
        "class_labels": torch.tensor([1, 10][:batch]),
    }


def output(model: DiTModel) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(), return_dict=False)[0]


def attention_modules(model: DiTModel) -> list[DiTAttention]:
    return [module for module in model.modules() if isinstance(module, AttentionModuleMixin)]


def to_legacy_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as DiTModel saved it before the diffusers layout: fused ``attn.qkv``, ``attn.proj``."""
    legacy = {}
    for key, value in state_dict.items():
        if ".attn.to_q." in key:
            kind = key.rsplit(".", 1)[1]
            prefix = key.split("to_q.")[0]
            parts = [state_dict[f"{prefix}to_{name}.{kind}"] for name in "qkv"]
            legacy[f"{prefix}qkv.{kind}"] = torch.cat(parts)
        elif ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        else:
            legacy[key.replace(".attn.to_out.0.", ".attn.proj.")] = value
    return legacy


def test_processors_are_listed_got_and_set_one_by_one_and_by_dict(make_dit):
    model = make_dit(**TINY)
    processors = model.attn_processors
    assert sorted(processors) == ["blocks.0.attn.processor", "blocks.1.attn.processor"]
    assert all(type(processor) is DiTAttnProcessor for processor in processors.values())

    for module in attention_modules(model):
        assert module.get_processor() is module.processor
        replacement = DiTAttnProcessor()
        module.set_processor(replacement)
        assert module.get_processor() is replacement

    model.set_attn_processor({name: AttnProcessor() for name in processors})
    assert all(type(processor) is AttnProcessor for processor in model.attn_processors.values())
    with pytest.raises(ValueError, match="number of processors"):
        model.set_attn_processor({"blocks.0.attn.processor": DiTAttnProcessor()})
    model.set_default_attn_processor()
    assert all(type(processor) is DiTAttnProcessor for processor in model.attn_processors.values())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_projections_give_the_same_output_and_unfuse_restores_the_layout(make_dit, variant):
    model = make_dit(**TINY, **VARIANTS[variant])
    before, weights = output(model), {k: v.clone() for k, v in model.state_dict().items()}

    model.fuse_qkv_projections()
    for module in attention_modules(model):
        assert module.fused_projections and module.to_qkv.weight.shape == (96, 32)
    torch.testing.assert_close(output(model), before, rtol=0, atol=1e-6)

    model.unfuse_qkv_projections()
    for module in attention_modules(model):
        assert not module.fused_projections and not hasattr(module, "to_qkv")
    assert torch.equal(output(model), before)
    assert model.state_dict().keys() == weights.keys()


def test_diffusers_generic_processors_compute_the_plain_attention_and_are_refused_where_they_cannot(make_dit):
    model = make_dit(**TINY)
    expected = output(model)
    for processor in (AttnProcessor(), AttnProcessor2_0()):
        model.set_attn_processor(processor)
        torch.testing.assert_close(output(model), expected, rtol=0, atol=1e-5)

    for variant in ("rope-rms", "layer-norm"):
        special = make_dit(**TINY, **VARIANTS[variant])
        with pytest.raises(
            ValueError, match="AttnProcessor2_0 cannot compute this attention: it uses .*allowed"
        ):
            special.set_attn_processor(AttnProcessor2_0())
        assert all(type(p) is DiTAttnProcessor for p in special.attn_processors.values())


def test_a_users_processor_that_takes_rope_is_called_with_it(make_dit):
    model = make_dit(**TINY, pos_embed="rope")
    expected = output(model)
    calls = []

    class Recording(DiTAttnProcessor):
        def __call__(self, attn, hidden_states, rope=None):
            calls.append(rope.shape)
            return super().__call__(attn, hidden_states, rope=rope)

    model.set_attn_processor(Recording())
    assert torch.equal(output(model), expected)
    assert calls == [(2, 16, 8)] * 2  # one call per block: 4x4 patches, head dim 8


def test_attention_runs_on_diffusers_backend_dispatch(make_dit, monkeypatch):
    model = make_dit(**TINY, **VARIANTS["rope-rms"])
    expected = output(model)
    native = _AttentionBackendRegistry._backends[AttentionBackendName.NATIVE]
    math_backend = AttentionBackendName._NATIVE_MATH
    calls = []

    def counting(**kwargs):
        calls.append(kwargs["query"].shape)
        return native(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, AttentionBackendName.NATIVE, counting)
    assert torch.equal(output(model), expected)
    assert calls == [(2, 16, 4, 8)] * 2  # (batch, tokens, heads, head_dim), once per block

    # A backend chosen for the model, or for a block of code, is the one that runs; the model's choice is reset.
    active = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        model.set_attention_backend(math_backend.value)
        assert {p._attention_backend for p in model.attn_processors.values()} == {math_backend}
        torch.testing.assert_close(output(model), expected, rtol=1e-5, atol=1e-6)
        model.reset_attention_backend()
        assert {p._attention_backend for p in model.attn_processors.values()} == {None}
    finally:
        _AttentionBackendRegistry.set_active_backend(active)
    with attention_backend(math_backend):
        torch.testing.assert_close(output(model), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must be one of the following"):
        model.set_attention_backend("no-such-backend")


def test_the_layout_is_diffusers_and_upgrading_legacy_keys_is_exact(make_dit):
    model = make_dit(**TINY)
    block = {
        k.removeprefix("blocks.0.attn."): v.shape for k, v in model.state_dict().items() if ".0.attn." in k
    }
    assert sorted(block) == [
        "to_k.bias",
        "to_k.weight",
        "to_out.0.bias",
        "to_out.0.weight",
        "to_q.bias",
        "to_q.weight",
        "to_v.bias",
        "to_v.weight",
    ]
    legacy = to_legacy_layout(model.state_dict())
    assert "blocks.1.attn.qkv.weight" in legacy and "blocks.1.attn.proj.bias" in legacy
    upgraded = dict(legacy)
    assert upgrade_legacy_attention_keys(upgraded)
    assert upgraded.keys() == model.state_dict().keys()
    assert all(torch.equal(upgraded[k], v) for k, v in model.state_dict().items())
    assert not upgrade_legacy_attention_keys(upgraded)  # already current: nothing to do
    # Only the model's own keys are touched: in a wrapper's state dict, keys outside the prefix stay.
    wrapped = {
        **{f"module.{k}": v for k, v in legacy.items()},
        "other.blocks.0.attn.qkv.weight": torch.ones(1),
    }
    upgrade_legacy_attention_keys(wrapped, prefix="module.")
    assert "module.blocks.0.attn.to_q.weight" in wrapped and "other.blocks.0.attn.qkv.weight" in wrapped

    # torch's load_state_dict (training checkpoints, EMA copies) takes the old layout too.
    fresh = make_dit(seed=5, **TINY)
    fresh.load_state_dict(legacy)
    assert torch.equal(output(fresh), output(model))


def write_weights(folder, state_dict: dict[str, torch.Tensor], shards: int) -> None:
    """Write ``state_dict`` as diffusers lays out weights: one safetensors file, or ``shards`` files and an index."""
    for old in folder.glob("diffusion_pytorch_model*"):
        old.unlink()
    if shards == 1:
        save_file(state_dict, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
        return
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {key: names[i % shards] for i, key in enumerate(sorted(state_dict))}
    for name in names:
        part = {key: value for key, value in state_dict.items() if weight_map[key] == name}
        save_file(part, folder / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shards", [1, 3], ids=["single-file", "sharded"])
def test_a_folder_saved_in_the_old_layout_loads_and_samples_the_same(make_flow_pipeline, tmp_path, shards):
    """A pipeline saved before DiTAttention took diffusers' names (fused qkv, proj) loads, also sharded."""
    pipe = make_flow_pipeline(pos_embed="rope", qk_norm="rms_norm")
    pipe.save_pretrained(tmp_path / "old")
    transformer = tmp_path / "old" / "transformer"
    write_weights(transformer, to_legacy_layout(pipe.transformer.state_dict()), shards)

    call = {"class_labels": [3, 7], "num_inference_steps": 3, "guidance_scale": 2.0, "output_type": "pt"}
    expected = pipe(generator=torch.Generator().manual_seed(0), **call).images
    for low_cpu_mem_usage in (True, False):
        model = DiTModel.from_pretrained(transformer, low_cpu_mem_usage=low_cpu_mem_usage)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in pipe.transformer.state_dict().items())
    loaded = FlowPipeline.from_pretrained(tmp_path / "old")
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded(generator=torch.Generator().manual_seed(0), **call).images, expected)
    # Saved again, the folder is in the current layout.
    loaded.save_pretrained(tmp_path / "old")
    keys = set(DiTModel.from_pretrained(transformer).state_dict())
    assert "blocks.0.attn.to_q.weight" in keys and not any(".qkv." in key for key in keys)
