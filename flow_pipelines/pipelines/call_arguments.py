"""What a `FlowPipeline` call accepts: output types, the guidance-scale bound, checks of numbers and latents, and
what a scheduler's methods take (read from their signatures, not assumed from their configs)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..guidance import check_guidance_scale

OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")

MAX_GUIDANCE_SCALE: float = 1000.0
"""The largest guidance scale a call accepts. Useful scales lie around 1-20; far beyond, ``s * (cond - uncond)``
only amplifies the difference of two predictions until the latents overflow to inf / NaN (1e30 does)."""

# Defaults of diffusers' FLUX-style resolution-dependent shift, used when a scheduler with
# `use_dynamic_shifting=True` does not carry them in its config.
DYNAMIC_SHIFT_DEFAULTS: dict[str, float] = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


def check_sampling_guidance_scale(guidance_scale: float) -> float:
    """Validate the guidance scale of a sampling call: a finite number in ``[0, MAX_GUIDANCE_SCALE]``.

    Args:
        guidance_scale: ``s`` in ``uncond + s * (cond - uncond)``.

    Returns:
        The scale as a float.

    Raises:
        ValueError: If it is not a finite number, is negative, or exceeds :data:`MAX_GUIDANCE_SCALE`.
    """
    scale = check_guidance_scale(guidance_scale)
    if scale > MAX_GUIDANCE_SCALE:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} is too large; allowed: a finite number in [0, {MAX_GUIDANCE_SCALE:g}] "
            "(1 disables guidance, useful scales are about 1-20): far larger scales only amplify the difference of "
            "two predictions, up to inf / NaN latents."
        )
    return scale


def check_finite_numbers(name: str, values: Any, low: float = -math.inf, high: float = math.inf) -> None:
    """Require a number or a sequence / array / tensor of numbers to be finite and within ``[low, high]``.

    Args:
        name: The argument's name, for the message.
        values: The number(s).
        low: The smallest allowed value.
        high: The largest allowed value.

    Raises:
        ValueError: Naming the argument and what is allowed, for a non-number, NaN, inf or out-of-range value.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={values!r} must be numbers.") from None
    if not np.isfinite(array).all() or (array < low).any() or (array > high).any():
        allowed = (
            "finite numbers"
            if math.isinf(low) and math.isinf(high)
            else f"finite numbers in [{low:g}, {high:g}]"
        )
        raise ValueError(f"{name}={values!r} is not allowed; allowed: {allowed}.")


def accepted_parameters(function: Callable) -> set[str]:
    """Names of the keyword arguments ``function`` takes (with ``"*"`` added if it takes ``**kwargs``).

    Args:
        function: A callable, e.g. ``scheduler.set_timesteps``.

    Returns:
        The parameter names.
    """
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {"*"} | set(parameters)
    return set(parameters)


def check_latents(latents: Any, expected: tuple[int, int, int, int]) -> None:
    """Require initial latents to be a finite floating-point tensor of the shape the call will sample.

    Args:
        latents: What the caller passed.
        expected: ``(batch, channels, height, width)``.

    Raises:
        ValueError: For another type or shape, an integer dtype, or NaN / infinite values.
    """
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(
            f"latents has shape {shape}; expected {expected} (one per image: class label x num_images_per_prompt, "
            f"{expected[1]} channels, {expected[2]}x{expected[3]})."
        )
    if not latents.is_floating_point():
        raise ValueError(f"latents has dtype {latents.dtype}; allowed: a floating-point tensor.")
    non_finite = int((~torch.isfinite(latents)).sum())
    if non_finite:
        raise ValueError(
            f"latents has {non_finite} NaN or infinite value(s); allowed: finite values (Gaussian noise)."
        )


def dynamic_shift_mu(scheduler_config: Mapping[str, Any], tokens: int) -> float:
    """FLUX-style shift exponent for a number of transformer tokens (linear between the base and max lengths).

    Args:
        scheduler_config: The scheduler's config; its ``base_shift`` / ``max_shift`` / ``base_image_seq_len`` /
            ``max_image_seq_len`` override `DYNAMIC_SHIFT_DEFAULTS`.
        tokens: Tokens per image.

    Returns:
        ``mu``, for ``set_timesteps(mu=...)``.
    """
    config = {
        **DYNAMIC_SHIFT_DEFAULTS,
        **{k: v for k, v in scheduler_config.items() if k in DYNAMIC_SHIFT_DEFAULTS},
    }
    slope = (config["max_shift"] - config["base_shift"]) / (
        config["max_image_seq_len"] - config["base_image_seq_len"]
    )
    return tokens * slope + config["base_shift"] - slope * config["base_image_seq_len"]
