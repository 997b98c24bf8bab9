"""The guided velocity: a class-conditional model, classifier-free guidance and its path as one field ``v(x, sigma)``.

Everything that integrates a trained model, the pipeline's samplers, the likelihood, evaluation and the
benchmarks, calls :class:`GuidedVelocity`; none of them calls the transformer itself. At our noise level
``sigma`` it

1. locates ``sigma`` on the model's path (:meth:`flow_pipelines.paths.AffinePath.at_sigma`): the model sees
   ``c * x`` at its own timestep ``t(sigma) * num_train_timesteps`` (``x`` at ``sigma * 1000`` on the
   straight path);
2. calls the transformer once, on ``2B`` samples (conditional and null class) when guidance applies at this
   noise level, on ``B`` otherwise;
3. mixes ``uncond + s * (cond - uncond)`` in the model's output space (the map to our velocity is linear in
   the output, so this is the same as mixing velocities);
4. drops learned-variance channels (a DDPM model's second half of outputs) and turns the output into the
   velocity ``noise - x0`` of the straight path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .paths import AffinePath, PathPoint, check_prediction_type, path_from_config


def check_guidance_scale(guidance_scale: float) -> float:
    """Validate a classifier-free guidance scale.

    Args:
        guidance_scale: ``s`` in ``uncond + s * (cond - uncond)``: 1 is the conditional model, 0 the unconditional.

    Returns:
        The scale as a float.

    Raises:
        ValueError: If it is not a finite number >= 0.
    """
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, (int, float))
        or not math.isfinite(guidance_scale)
        or guidance_scale < 0
    ):
        raise ValueError(
            f"guidance_scale={guidance_scale!r} must be a finite number >= 0 (1 disables guidance)."
        )
    return float(guidance_scale)


def check_guidance_interval(guidance_interval: Sequence[float] | None) -> tuple[float, float]:
    """Validate the noise-level interval where guidance applies (Kynkäänniemi et al., 2024).

    Args:
        guidance_interval: ``(low, high)`` noise levels (1 = noise), or None for everywhere.

    Returns:
        ``(low, high)``; ``(-inf, inf)`` for None.

    Raises:
        ValueError: If it is not a pair with ``0 <= low <= high``.
    """
    if guidance_interval is None:
        return -math.inf, math.inf
    try:
        low, high = (float(value) for value in guidance_interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_interval={guidance_interval!r} must be a pair (low, high) of noise levels."
        ) from None
    if not (0.0 <= low <= high) or math.isnan(high):
        raise ValueError(
            f"guidance_interval={guidance_interval!r} must satisfy 0 <= low <= high (noise levels, 1 = noise)."
        )
    return low, high


def check_transformer(config: Any) -> AffinePath:
    """Check that a model config describes a flow model this package can sample, and return its path.

    Args:
        config: The transformer's config (``in_channels``, ``out_channels``, ``prediction_type``, ``path``).

    Returns:
        The model's path.

    Raises:
        ValueError: For output channels other than ``in_channels`` (or twice that: a learned variance, which is
            dropped), an unknown prediction type, or an unknown path.
    """
    in_channels = int(config.in_channels)
    out_channels = int(getattr(config, "out_channels", None) or in_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"The transformer has in_channels={in_channels} but out_channels={out_channels}; a flow model predicts "
            f"a tensor shaped like its input: out_channels must be {in_channels} (or {2 * in_channels}, whose second "
            "half, a learned variance, is dropped)."
        )
    check_prediction_type(getattr(config, "prediction_type", None) or "velocity")
    return path_from_config(config)


class GuidedVelocity:
    """The velocity ``v(x, sigma)`` of the straight path that a class-conditional model defines, with guidance.

    Args:
        transformer: A class-conditional model called as ``transformer(hidden_states, timestep, class_labels,
            return_dict=False)[0]`` (a `DiTModel`); its config gives ``num_classes`` (the null class id),
            ``num_train_timesteps``, ``prediction_type``, ``path`` / ``path_kwargs`` and ``in_channels``.
        class_labels: One class id per sample (or one for all); None for the unconditional model (the null
            class), which admits no guidance.
        guidance_scale: ``s`` in ``uncond + s * (cond - uncond)``; 1 is the conditional model (one call of B).
            A pipeline may change the attribute between calls.
        guidance_interval: ``(low, high)``: guide only where ``low <= sigma <= high``; None guides everywhere.

    Raises:
        ValueError: For a transformer config this package cannot sample (see `check_transformer`), a bad
            guidance scale or interval, or guidance without class labels.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance_interval: Sequence[float] | None = None,
    ) -> None:
        config = transformer.config
        self.transformer = transformer
        self.path = check_transformer(config)
        self.prediction_type = check_prediction_type(getattr(config, "prediction_type", None) or "velocity")
        self.num_train_timesteps = float(getattr(config, "num_train_timesteps", 1000))
        self.null_class_id = int(config.num_classes)
        self.channels = int(config.in_channels)
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self.guidance_interval = check_guidance_interval(guidance_interval)
        if class_labels is None and self.guidance_scale != 1.0:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs class_labels (guidance mixes in the null class)."
            )
        self.class_labels = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long)
        parameter = next(transformer.parameters(), None)
        self.model_dtype = parameter.dtype if parameter is not None else None

    def with_labels(self, class_labels: int | Sequence[int] | torch.Tensor | None) -> GuidedVelocity:
        """The same field for other class labels (same model, guidance and interval).

        Args:
            class_labels: The new labels (None: the unconditional model).

        Returns:
            A new `GuidedVelocity`.
        """
        interval = None if self.guidance_interval == (-math.inf, math.inf) else self.guidance_interval
        return GuidedVelocity(self.transformer, class_labels, self.guidance_scale, interval)

    def point(self, sigma: float | torch.Tensor) -> PathPoint:
        """Where our noise level lies on the model's path.

        Args:
            sigma: A noise level, or one per sample.

        Returns:
            The :class:`~flow_pipelines.paths.PathPoint`.

        Raises:
            ValueError: If the path's ``a + b`` vanishes there, or the model's prediction says nothing about the
                velocity there (an epsilon prediction where the path reaches pure noise).
        """
        if not isinstance(sigma, torch.Tensor) and self.path.is_singular(sigma, self.prediction_type):
            raise ValueError(
                f"The transformer predicts {self.prediction_type!r} on {self.path!r}, which says nothing about the "
                f"data at sigma={sigma:g} (pure noise), where the sampling grid starts; pass sigmas that start "
                "below it (e.g. sigmas=[0.995, ...]), or use a model predicting the velocity or the sample."
            )
        return self.path.at_sigma(sigma, self.num_train_timesteps)

    def _labels(self, batch: int, device: torch.device) -> torch.Tensor:
        if self.class_labels is None:
            return torch.full((batch,), self.null_class_id, dtype=torch.long, device=device)
        labels = self.class_labels.to(device).reshape(-1)
        if labels.numel() == 1:
            return labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"{labels.numel()} class labels for a batch of {batch}.")
        return labels

    def _guidance(self, sigma: float | torch.Tensor) -> float | torch.Tensor:
        """The guidance scale at each noise level: ``guidance_scale`` inside the interval, 1 outside."""
        low, high = self.guidance_interval
        if not isinstance(sigma, torch.Tensor):
            return self.guidance_scale if low <= sigma <= high else 1.0
        inside = (sigma >= low) & (sigma <= high)
        if bool(inside.all()):
            return self.guidance_scale
        return torch.where(inside, self.guidance_scale, 1.0).to(torch.float32)

    def _call(self, x: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = self.transformer(hidden_states=x, timestep=timestep, class_labels=labels, return_dict=False)
        return outputs[0][:, : self.channels]

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The guided velocity at ``(x, sigma)`` (differentiable in ``x`` when grad is enabled).

        Args:
            x: Points ``x_sigma`` ``(batch, channels, height, width)`` of the straight path.
            sigma: Their noise level: a number, or one per sample ``(batch,)``.

        Returns:
            The velocity ``noise - x0``, shaped and typed like ``x``.
        """
        batch = x.shape[0]
        point = self.point(sigma)
        model_input = point.model_input(x)
        model_input = model_input if self.model_dtype is None else model_input.to(self.model_dtype)
        if isinstance(point.timestep, torch.Tensor):
            timestep = point.timestep.to(device=x.device, dtype=torch.float32).reshape(-1).expand(batch)
        else:
            timestep = torch.full((batch,), point.timestep, device=x.device, dtype=torch.float32)
        labels = self._labels(batch, x.device)
        scale = self._guidance(sigma)
        if isinstance(scale, float) and scale == 1.0:
            output = self._call(model_input, timestep, labels)
        elif isinstance(scale, float) and scale == 0.0:
            output = self._call(model_input, timestep, torch.full_like(labels, self.null_class_id))
        else:
            both = self._call(
                torch.cat([model_input, model_input]),
                torch.cat([timestep, timestep]),
                torch.cat([labels, torch.full_like(labels, self.null_class_id)]),
            )
            cond, uncond = both.chunk(2)
            if isinstance(scale, torch.Tensor):
                scale = scale.to(device=x.device, dtype=cond.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            output = uncond + scale * (cond - uncond)
        return point.to_straight(output.to(x.dtype), x, self.prediction_type)
