"""Conversion of pretrained DiT weights into :class:`~flow_pipelines.DiTModel`.

Three sources are supported:

- ``"dit"``: the ``.pt`` state dicts of facebookresearch/DiT (an epsilon model on the DDPM
  variance-preserving path, 1000 integer steps, learned variance in the second half of its output
  channels).
- ``"sit"``: the ``.pt`` state dicts of willisma/SiT (time ``t`` in [0, 1] with noise at ``t = 0``; by
  default the linear path ``x_t = t x0 + (1 - t) noise`` and the velocity ``x0 - noise``). A training
  checkpoint's args say which path (``Linear``, ``GVP``, ``VP``) and prediction (``velocity``, ``noise``) it was
  trained for; a ``score`` model is refused. SiT's unused learned-sigma output channels are dropped.
- ``"diffusers"``: a folder saved by diffusers' ``DiTTransformer2DModel`` (or a pipeline folder with a
  ``transformer`` subfolder). Its per-block timestep/label embedders must all be equal (they are, for
  weights converted from the original DiT); block 0's become the single embedder. diffusers' timestep
  frequencies and MLP norm epsilon are kept in the config. What it was trained for is given as a
  ``time_convention`` (``"ddpm"`` by default, as for DiT weights).

Every converted model computes exactly what its source computed, from the same time input (forward
parity); what the weights were trained for is chosen here, once, and written into the config as the model's
path, time scale and prediction type (:data:`TIME_CONVENTIONS`): DDPM weights are an epsilon model on the VP
path of DDPM's linear betas (:data:`DDPM_PATH_KWARGS`) at ``t * 1000``, SiT weights a velocity model on the
reversed linear path at ``t`` itself. `FlowPipeline` then samples any of them with every flow scheduler
through :class:`~flow_pipelines.guidance.GuidedVelocity`.

What the checkpoint itself says decides, and contradictions are refused rather than converted (see
:mod:`~flow_pipelines.models.original_checkpoints`): a DiT / SiT training checkpoint (``{"model", "ema", "opt",
"args"}``) whose args name the other repository is refused, SiT's args choose the path and prediction, and a
label table without the null class's row (a model trained without label dropout, which classifier-free
guidance cannot use) is refused. A plain state dict carries no args: it is converted as ``source`` says (SiT:
linear path, velocity), and the log says so.

Original checkpoints are read with ``torch.load(..., weights_only=True)``; no arbitrary object is
ever unpickled. The architecture is inferred from tensor shapes; the head count, which shapes do not
determine, comes from a preset, an explicit argument, the checkpoint's ``args.model`` or the paper's
width-to-heads table.

:func:`convert_checkpoint` writes only the model's own files (``config.json`` and the weights) into the output
folder, each replaced atomically; nothing else there is touched.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..file_utils import atomic_update, is_weights_file
from .dit_attention import upgrade_legacy_attention_keys
from .embeddings import sincos_2d_positions
from .original_checkpoints import (
    DDPM_PATH_KWARGS,
    TIME_CONVENTIONS,
    convention_config,
    label_classes,
    load_original_checkpoint,
    load_original_state_dict,
    preset_dims,
    preset_from_settings,
    training_convention,
    unpack_checkpoint,
)
from .transformer_dit import DiTModel

__all__ = [
    "DDPM_PATH_KWARGS",
    "SOURCES",
    "TIME_CONVENTIONS",
    "convention_config",
    "convert_checkpoint",
    "convert_diffusers_dit",
    "convert_original_checkpoint",
    "convert_original_state_dict",
    "load_original_checkpoint",
    "load_original_state_dict",
]

SOURCES: tuple[str, ...] = ("dit", "sit", "diffusers")

# Heads of the DiT paper's widths; used when neither a preset nor a head count is given.
_HEADS_BY_WIDTH: dict[int, int] = {384: 6, 768: 12, 1024: 16, 1152: 16}

# Original (DiT / SiT) key -> DiTModel key, for the parts outside the numbered blocks.
_ORIGINAL_TOP_LEVEL_KEYS: dict[str, str] = {
    "x_embedder.proj.weight": "patch_embed.weight",
    "x_embedder.proj.bias": "patch_embed.bias",
    "t_embedder.mlp.0.weight": "time_embed.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_embed.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_embed.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_embed.linear_2.bias",
    "y_embedder.embedding_table.weight": "label_embed.embedding_table.weight",
    "final_layer.linear.weight": "final_layer.linear.weight",
    "final_layer.linear.bias": "final_layer.linear.bias",
    "final_layer.adaLN_modulation.1.weight": "final_layer.modulation.weight",
    "final_layer.adaLN_modulation.1.bias": "final_layer.modulation.bias",
}
# Original key suffix inside ``blocks.N.`` -> DiTModel suffix. The attention keeps the original's fused ``qkv`` and
# ``proj`` here, the layout DiTModel had before diffusers' names; `upgrade_legacy_attention_keys` then splits them.
_ORIGINAL_BLOCK_KEYS: dict[str, str] = {
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "adaLN_modulation.1.weight": "modulation.weight",
    "adaLN_modulation.1.bias": "modulation.bias",
}
# diffusers key suffix inside ``transformer_blocks.N.`` -> DiTModel suffix (the attention has the same layout).
_DIFFUSERS_BLOCK_KEYS: dict[str, str] = {
    "norm1.linear.weight": "modulation.weight",
    "norm1.linear.bias": "modulation.bias",
    "attn1.to_q.weight": "attn.to_q.weight",
    "attn1.to_q.bias": "attn.to_q.bias",
    "attn1.to_k.weight": "attn.to_k.weight",
    "attn1.to_k.bias": "attn.to_k.bias",
    "attn1.to_v.weight": "attn.to_v.weight",
    "attn1.to_v.bias": "attn.to_v.bias",
    "attn1.to_out.0.weight": "attn.to_out.0.weight",
    "attn1.to_out.0.bias": "attn.to_out.0.bias",
    "ff.net.0.proj.weight": "mlp.fc1.weight",
    "ff.net.0.proj.bias": "mlp.fc1.bias",
    "ff.net.2.weight": "mlp.fc2.weight",
    "ff.net.2.bias": "mlp.fc2.bias",
}
_DIFFUSERS_EMBEDDER_KEYS: dict[str, str] = {
    "norm1.emb.timestep_embedder.linear_1.weight": "time_embed.linear_1.weight",
    "norm1.emb.timestep_embedder.linear_1.bias": "time_embed.linear_1.bias",
    "norm1.emb.timestep_embedder.linear_2.weight": "time_embed.linear_2.weight",
    "norm1.emb.timestep_embedder.linear_2.bias": "time_embed.linear_2.bias",
    "norm1.emb.class_embedder.embedding_table.weight": "label_embed.embedding_table.weight",
}


def _resolve_heads(
    hidden_size: int, num_layers: int, patch_size: int, preset: str | None, num_attention_heads: int | None
) -> int:
    """The head count: from the preset (checked against the shapes), the argument, or the paper's table."""
    if preset is not None:
        dims = preset_dims(preset)
        found = {"hidden_size": hidden_size, "num_layers": num_layers, "patch_size": patch_size}
        mismatched = {key: (dims[key], value) for key, value in found.items() if dims[key] != value}
        if mismatched:
            details = ", ".join(
                f"{key}: preset {want}, checkpoint {got}" for key, (want, got) in mismatched.items()
            )
            raise ValueError(f"checkpoint does not match preset {preset!r} ({details}).")
        if num_attention_heads is not None and num_attention_heads != dims["num_attention_heads"]:
            raise ValueError(
                f"num_attention_heads={num_attention_heads} contradicts preset {preset!r} "
                f"({dims['num_attention_heads']} heads)."
            )
        return dims["num_attention_heads"]
    if num_attention_heads is not None:
        return num_attention_heads
    if hidden_size in _HEADS_BY_WIDTH:
        return _HEADS_BY_WIDTH[hidden_size]
    raise ValueError(
        f"cannot infer the head count of width {hidden_size} from tensor shapes; pass a preset or "
        f"num_attention_heads (known widths: {', '.join(f'{w} -> {h}' for w, h in _HEADS_BY_WIDTH.items())})."
    )


def _count_blocks(keys: list[str], prefix: str) -> int:
    """Number of consecutive blocks ``{prefix}0.``, ``{prefix}1.`` … present among ``keys``."""
    indices = {
        int(match.group(1)) for key in keys if (match := re.match(rf"{re.escape(prefix)}(\d+)\.", key))
    }
    if not indices:
        raise ValueError(f"no '{prefix}N.*' keys found: not a DiT state dict.")
    if indices != set(range(len(indices))):
        raise ValueError(f"block indices under '{prefix}' are not consecutive from 0: {sorted(indices)}.")
    return len(indices)


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    preset: str | None = None,
    num_attention_heads: int | None = None,
    training_args: Mapping[str, Any] | argparse.Namespace | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map a facebookresearch/DiT or willisma/SiT state dict onto ``DiTModel``'s config and keys.

    The config is inferred from tensor shapes (width, depth, patch, channels, classes, sample size from
    ``pos_embed``, MLP ratio, timestep feature width) and from the training args where given. The stored
    ``pos_embed`` must equal the fixed sin-cos table ``DiTModel`` computes. For ``"sit"`` the learned-sigma half
    of the output layer, which SiT's forward discards, is dropped.

    Args:
        state_dict: The original model's state dict.
        source: ``"dit"`` or ``"sit"``.
        preset: Optional preset name (``"DiT-XL/2"``, ``"SiT-XL/2"`` …) to check the shapes against and
            take the head count from.
        num_attention_heads: Head count, when no preset is given and the width is not a paper width.
        training_args: The checkpoint's training args (``args`` of a training checkpoint, as a namespace or a
            dict; see :mod:`~flow_pipelines.models.original_checkpoints`): which repository trained it,
            SiT's ``path_type`` and ``prediction``, ``num_classes``, ``class_dropout_prob``, ``model``.

    Returns:
        ``(config, converted_state_dict)``: keyword arguments for ``DiTModel`` and its weights.

    Raises:
        ValueError: For an unknown source or one the training args contradict, a SiT path or prediction that
            cannot be converted faithfully (``score``), a label table without a null row or contradicting
            ``num_classes``, missing / unexpected keys, shapes that contradict the preset, a non-sin-cos
            ``pos_embed``, or an undeterminable head count.
    """
    if source not in ("dit", "sit"):
        raise ValueError(f"source={source!r} is not an original checkpoint type; allowed: 'dit', 'sit'.")
    if isinstance(training_args, argparse.Namespace):
        training_args = vars(training_args)
    settings = dict(training_args) if training_args else None
    convention = training_convention(source, settings)
    preset = preset_from_settings(preset, num_attention_heads, settings)
    keys = list(state_dict)
    missing = [key for key in (*_ORIGINAL_TOP_LEVEL_KEYS, "pos_embed") if key not in state_dict]
    if missing:
        raise ValueError(f"not a {source.upper()} state dict: missing keys {missing}.")
    num_layers = _count_blocks(keys, "blocks.")

    patch_weight = state_dict["x_embedder.proj.weight"]
    hidden_size, in_channels, patch_size = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[2]
    pos_embed = state_dict["pos_embed"].reshape(-1, hidden_size)
    grid = round(pos_embed.shape[0] ** 0.5)
    if grid * grid != pos_embed.shape[0]:
        raise ValueError(f"pos_embed has {pos_embed.shape[0]} positions, not a square grid.")
    expected_positions = sincos_2d_positions(hidden_size, grid, grid)
    if not torch.allclose(pos_embed.float(), expected_positions, atol=1e-5):
        raise ValueError(
            "pos_embed is not the fixed 2-D sin-cos table of DiT (largest difference "
            f"{(pos_embed.float() - expected_positions).abs().max().item():.3g}); learned positions are not supported."
        )
    output_rows = state_dict["final_layer.linear.weight"].shape[0]
    if output_rows % (patch_size * patch_size):
        raise ValueError(f"final_layer.linear has {output_rows} outputs, not a multiple of patch_size**2.")
    out_channels = output_rows // (patch_size * patch_size)
    mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    num_classes = label_classes(state_dict["y_embedder.embedding_table.weight"].shape[0], settings)
    heads = _resolve_heads(hidden_size, num_layers, patch_size, preset, num_attention_heads)

    converted = {ours: state_dict[theirs] for theirs, ours in _ORIGINAL_TOP_LEVEL_KEYS.items()}
    for index in range(num_layers):
        for theirs, ours in _ORIGINAL_BLOCK_KEYS.items():
            key = f"blocks.{index}.{theirs}"
            if key not in state_dict:
                raise ValueError(f"not a {source.upper()} state dict: missing key {key!r}.")
            converted[f"blocks.{index}.{ours}"] = state_dict[key]
    known = {*_ORIGINAL_TOP_LEVEL_KEYS, "pos_embed"} | {
        f"blocks.{i}.{suffix}" for i in range(num_layers) for suffix in _ORIGINAL_BLOCK_KEYS
    }
    unexpected = sorted(set(keys) - known)
    if unexpected:
        raise ValueError(f"unexpected keys in the {source.upper()} state dict: {unexpected[:10]}.")

    if source == "sit":
        if out_channels == 2 * in_channels:
            # SiT's forward keeps only the first in_channels of each pixel; output index is
            # (row_in_patch * patch + column_in_patch) * out_channels + channel.
            channel_of_row = torch.arange(output_rows) % out_channels
            keep = channel_of_row < in_channels
            converted["final_layer.linear.weight"] = converted["final_layer.linear.weight"][keep]
            converted["final_layer.linear.bias"] = converted["final_layer.linear.bias"][keep]
            out_channels = in_channels

    config = {
        "sample_size": grid * patch_size,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_attention_heads": heads,
        "mlp_ratio": mlp_hidden / hidden_size,
        "num_classes": num_classes,
        "pos_embed": "sincos",
        "timestep_embedding_dim": state_dict["t_embedder.mlp.0.weight"].shape[1],
        "timestep_frequency_shift": 0,
        "norm_eps": 1e-6,
        **convention,
    }
    upgrade_legacy_attention_keys(converted)
    return config, converted


def _build(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> DiTModel:
    """Instantiate ``DiTModel`` without initialising weights and load ``state_dict`` into it exactly."""
    with torch.device("meta"):
        model = DiTModel(**config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"converted weights do not fit DiTModel: missing {missing[:10]}, unexpected {unexpected[:10]}."
        )
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"{key}: converted shape {tuple(tensor.shape)} != expected {tuple(expected[key].shape)}."
            )
    model.load_state_dict({key: tensor.contiguous() for key, tensor in state_dict.items()}, assign=True)
    return model.eval()


def convert_original_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    source: str,
    preset: str | None = None,
    num_attention_heads: int | None = None,
) -> DiTModel:
    """Convert a facebookresearch/DiT or willisma/SiT checkpoint into a ``DiTModel``.

    Args:
        checkpoint: Path to the ``.pt`` (or ``.safetensors``) file, or an already loaded state dict or training
            checkpoint (``{"model", "ema", "opt", "args"}``; its EMA weights and training args are used).
        source: ``"dit"`` (an epsilon + variance model on the VP path at ``t * 1000``) or ``"sit"`` (by default a
            velocity model on the reversed linear path at ``t``; a training checkpoint's args choose the path
            and prediction).
        preset: Optional preset name to check shapes against and take the head count from.
        num_attention_heads: Head count when no preset is given and the width is not a paper width.

    Returns:
        The converted model, in eval mode, with the checkpoint's dtype.

    Raises:
        ValueError: See :func:`convert_original_state_dict` and
            :func:`~flow_pipelines.models.original_checkpoints.load_original_checkpoint`.
    """
    if isinstance(checkpoint, Mapping):
        state_dict, settings = unpack_checkpoint(checkpoint)
    else:
        state_dict, settings = load_original_checkpoint(checkpoint)
    config, converted = convert_original_state_dict(state_dict, source, preset, num_attention_heads, settings)
    return _build(config, converted)


def _diffusers_folder(path: Path) -> Path:
    """The folder holding the transformer's config: ``path`` itself or its ``transformer`` subfolder."""
    if (path / "config.json").is_file():
        return path
    if (path / "transformer" / "config.json").is_file():
        return path / "transformer"
    raise ValueError(
        f"{str(path)!r} holds no config.json (nor transformer/config.json): not a diffusers model folder."
    )


def convert_diffusers_dit(
    model_or_path: Any,
    time_convention: str = "ddpm",
    prediction_type: str | None = None,
    verify: bool = True,
) -> DiTModel:
    """Convert diffusers' ``DiTTransformer2DModel`` into a ``DiTModel`` with one shared embedder.

    Args:
        model_or_path: A ``DiTTransformer2DModel`` or a folder it was saved to (or a pipeline folder with
            a ``transformer`` subfolder).
        time_convention: What the weights were trained for (:data:`TIME_CONVENTIONS`): ``"ddpm"`` (diffusers'
            DiT pipelines, the default), ``"flow"`` (our straight path at ``sigma * 1000``) or ``"sit"``.
        prediction_type: Overrides the convention's prediction type.
        verify: Run both models on a random batch and require equal outputs.

    Returns:
        The converted model, in eval mode.

    Raises:
        ValueError: If the diffusers model uses options ``DiTModel`` does not have (another norm type or
            activation, affine norms, no attention bias), or its blocks' embedders differ.
        RuntimeError: If ``verify`` is set and the outputs disagree.
    """
    from diffusers import DiTTransformer2DModel

    if isinstance(model_or_path, (str, os.PathLike)):
        source_model = DiTTransformer2DModel.from_pretrained(_diffusers_folder(Path(model_or_path)))
    else:
        source_model = model_or_path
    cfg = source_model.config
    requirements = {
        "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate",
        "norm_elementwise_affine": False,
        "attention_bias": True,
    }
    for key, wanted in requirements.items():
        if cfg[key] != wanted:
            raise ValueError(
                f"diffusers DiT with {key}={cfg[key]!r} cannot be converted; DiTModel needs {wanted!r}."
            )
    if cfg.num_embeds_ada_norm is None:
        raise ValueError("diffusers DiT without class labels (num_embeds_ada_norm=None) cannot be converted.")

    state_dict = source_model.state_dict()
    num_layers = _count_blocks(list(state_dict), "transformer_blocks.")
    converted: dict[str, torch.Tensor] = {
        "patch_embed.weight": state_dict["pos_embed.proj.weight"],
        "patch_embed.bias": state_dict["pos_embed.proj.bias"],
        "final_layer.modulation.weight": state_dict["proj_out_1.weight"],
        "final_layer.modulation.bias": state_dict["proj_out_1.bias"],
        "final_layer.linear.weight": state_dict["proj_out_2.weight"],
        "final_layer.linear.bias": state_dict["proj_out_2.bias"],
    }
    for theirs, ours in _DIFFUSERS_EMBEDDER_KEYS.items():
        reference = state_dict[f"transformer_blocks.0.{theirs}"]
        for index in range(1, num_layers):
            if not torch.equal(state_dict[f"transformer_blocks.{index}.{theirs}"], reference):
                raise ValueError(
                    f"block {index}'s {theirs} differs from block 0's: this diffusers DiT has distinct per-block "
                    "timestep/label embedders, which DiTModel (one shared embedder) cannot represent."
                )
        converted[ours] = reference
    for index in range(num_layers):
        prefix = f"transformer_blocks.{index}."
        for theirs, ours in _DIFFUSERS_BLOCK_KEYS.items():
            converted[f"blocks.{index}.{ours}"] = state_dict[prefix + theirs]

    hidden_size = cfg.num_attention_heads * cfg.attention_head_dim
    config = {
        "sample_size": cfg.sample_size,
        "patch_size": cfg.patch_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or cfg.in_channels,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "mlp_ratio": state_dict["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / hidden_size,
        "num_classes": cfg.num_embeds_ada_norm,
        "pos_embed": "sincos",
        **convention_config(time_convention),
        # diffusers' DiT: Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1), adaLN norm eps
        # 1e-6, and its configurable eps on the pre-MLP norm.
        "timestep_embedding_dim": state_dict[
            "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1.weight"
        ].shape[1],
        "timestep_frequency_shift": 1,
        "norm_eps": 1e-6,
        "mlp_norm_eps": cfg.norm_eps,
    }
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    model = _build(config, {key: value.detach().clone() for key, value in converted.items()})
    if verify:
        _verify_against_diffusers(model, source_model)
    return model


@torch.no_grad()
def _verify_against_diffusers(model: DiTModel, source_model: torch.nn.Module) -> None:
    """Compare outputs of the converted and the diffusers model on a random batch (float32, CPU or its device)."""
    cfg = model.config
    device = next(source_model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
    # Both models take the same time input (t in [0, 1] for SiT-style weights, 0..1000 for the others).
    timesteps = torch.tensor([0.017, 0.901]) * cfg.num_train_timesteps
    labels = torch.tensor([0, cfg.num_classes])
    dtype = next(source_model.parameters()).dtype
    reference = source_model(
        sample.to(device, dtype), timestep=timesteps.to(device), class_labels=labels.to(device)
    ).sample.float()
    ours = model.to(device)(sample.to(device, dtype), timesteps.to(device), labels).sample.float()
    difference = (ours - reference).abs().max().item()
    tolerance = 1e-4 * (1 + reference.abs().max().item())
    if difference > tolerance:
        raise RuntimeError(
            f"converted model disagrees with the diffusers model: max |difference| {difference:.3g}."
        )


def _top_level_weights(path: PurePosixPath) -> bool:
    """The weight files a converted model owns in its output folder (stale shards of an earlier one included)."""
    return len(path.parts) == 1 and is_weights_file(path)


def _check_output_dir(source: str, checkpoint: str | os.PathLike, output_dir: Path) -> None:
    """Refuse an output folder that is a file, or one whose model files would replace the checkpoint itself."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(
            f"output_dir={str(output_dir)!r} is an existing file; allowed: a folder, new or existing (only "
            "config.json and the weights are written into it)."
        )
    checkpoint = Path(checkpoint)
    if source == "diffusers":
        if checkpoint.is_dir() and output_dir.resolve() == _diffusers_folder(checkpoint).resolve():
            raise ValueError(
                f"output_dir={str(output_dir)!r} is the diffusers folder being converted; its config.json and "
                "weights would be replaced. Write the converted model to another folder."
            )
    elif checkpoint.parent.resolve() == output_dir.resolve() and (
        checkpoint.name == DiTModel.config_name or is_weights_file(checkpoint.name)
    ):
        raise ValueError(
            f"the checkpoint {str(checkpoint)!r} has the name of a file the converted model writes into "
            f"output_dir={str(output_dir)!r}; it would be replaced. Write the converted model to another folder."
        )


def convert_checkpoint(
    source: str,
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str | None = None,
    num_attention_heads: int | None = None,
    time_convention: str | None = None,
    verify: bool = True,
) -> DiTModel:
    """Convert a checkpoint and write it into a folder as a safetensors ``DiTModel``.

    Only the model's own files are written (``config.json`` and ``diffusion_pytorch_model.safetensors``), each
    replaced atomically once the conversion has succeeded; nothing else in ``output_dir`` is touched (the
    checkpoint itself may live there), except weight shards of an earlier model saved there.

    Args:
        source: ``"dit"``, ``"sit"`` or ``"diffusers"``.
        checkpoint: The ``.pt`` file (dit / sit) or the diffusers folder.
        output_dir: The folder to write into, new or existing (``"."`` works).
        preset: Optional preset name (dit / sit) to check shapes against and take the head count from.
        num_attention_heads: Head count (dit / sit) when no preset is given and the width is unusual.
        time_convention: For ``"diffusers"`` only: ``"ddpm"`` (default), ``"flow"`` or ``"sit"``.
        verify: For ``"diffusers"``: compare the outputs of both models before writing.

    Returns:
        The converted model.

    Raises:
        ValueError: For an unknown source, options that do not apply to it, an unconvertible checkpoint, an
            ``output_dir`` that is a file, or one where the model's files would replace the checkpoint.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not supported; allowed: {', '.join(SOURCES)}.")
    output_dir = Path(output_dir)
    if source == "diffusers":
        if preset is not None or num_attention_heads is not None:
            raise ValueError(
                "preset / num_attention_heads do not apply to diffusers folders (their config has them)."
            )
        _check_output_dir(source, checkpoint, output_dir)
        model = convert_diffusers_dit(checkpoint, time_convention=time_convention or "ddpm", verify=verify)
    else:
        if time_convention is not None:
            raise ValueError(
                f"time_convention is fixed by the source for {source!r} checkpoints; do not pass it."
            )
        _check_output_dir(source, checkpoint, output_dir)
        model = convert_original_checkpoint(checkpoint, source, preset, num_attention_heads)
    with atomic_update(output_dir, superseded=_top_level_weights) as staging:
        model.save_pretrained(staging, safe_serialization=True)
    return model
