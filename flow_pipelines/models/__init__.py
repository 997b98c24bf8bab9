"""Models: ``DiTModel``, a class-conditional Diffusion Transformer, and its presets."""

from .transformer_dit import DIT_PRESETS, DiTModel

__all__ = ["DIT_PRESETS", "DiTModel"]
