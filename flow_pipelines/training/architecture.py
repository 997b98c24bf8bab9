"""Which DiT a run trains: the embedded default, the paper presets, and the flags that override them."""

from __future__ import annotations

import argparse
from typing import Any

from ..models import DIT_PRESETS, DiTModel
from ..paths import AffinePath

DIGITS_MODEL_DEFAULTS: dict[str, Any] = {
    "patch_size": 2,
    "hidden_size": 128,
    "num_layers": 4,
    "num_attention_heads": 4,
    "mlp_ratio": 4.0,
}
"""The embedded default: a DiT (1.3M parameters, 16 tokens of 2x2 pixels) that learns the 8x8 digits on a 2-core
CPU in minutes. Patch 2 at the digits' own 8x8 leaves no patch seams (patch 4 at 16x16 drew visible 4-pixel
blocks); at equal wall-clock time 4 layers for 1,000 steps beat 6 layers for 700 (``benchmarks/README.md``,
"Default recipe")."""

_ARCHITECTURE_FLAGS: tuple[str, ...] = (
    "patch_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "mlp_ratio",
    "pos_embed",
    "qk_norm",
)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model flags: a preset and per-setting overrides.

    Args:
        parser: The training script's parser.
    """
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_preset", default=None, help="A DiT preset, e.g. 'DiT-S/2'; flags below override it."
    )
    model.add_argument("--patch_size", type=int, default=None)
    model.add_argument("--hidden_size", type=int, default=None)
    model.add_argument("--num_layers", type=int, default=None)
    model.add_argument("--num_attention_heads", type=int, default=None)
    model.add_argument("--mlp_ratio", type=float, default=None)
    model.add_argument("--pos_embed", default=None, choices=("sincos", "rope"))
    model.add_argument("--qk_norm", default=None, choices=("rms_norm", "layer_norm"))
    model.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute activations in backward."
    )


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Architecture settings: the digits defaults (or a preset), overridden by explicit flags.

    Args:
        args: The parsed flags.

    Returns:
        ``DiTModel`` keyword arguments for width, depth, heads, patch, positions and q/k norm.

    Raises:
        ValueError: For an unknown preset.
    """
    if args.model_preset is not None and args.model_preset not in DIT_PRESETS:
        raise ValueError(
            f"--model_preset {args.model_preset!r} is unknown; allowed: {', '.join(DIT_PRESETS)}."
        )
    settings = dict(DIT_PRESETS[args.model_preset] if args.model_preset else DIGITS_MODEL_DEFAULTS)
    settings.update(
        {name: getattr(args, name) for name in _ARCHITECTURE_FLAGS if getattr(args, name) is not None}
    )
    return settings


def build_model(
    args: argparse.Namespace, path: AffinePath, in_channels: int, sample_size: int, num_classes: int
) -> DiTModel:
    """A freshly initialised DiT for this run, whose config says what it predicts and on which path.

    Args:
        args: The parsed flags (architecture and ``--prediction_type``).
        path: The path trained on; named in the config so that samplers map onto it.
        in_channels: Image (or latent) channels.
        sample_size: Image (or latent) side.
        num_classes: Number of real classes.

    Returns:
        The model, in train mode.
    """
    model = DiTModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        num_classes=num_classes,
        prediction_type=args.prediction_type,
        path=path.name,
        path_kwargs=path.kwargs or None,
        **model_settings(args),
    )
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model.train()
