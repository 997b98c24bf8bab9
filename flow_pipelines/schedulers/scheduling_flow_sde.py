"""Euler–Maruyama on a reverse-time SDE that has the same marginals as the flow."""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from ..paths import STRAIGHT_PATH
from .scheduling_flow_common import FlowSchedulerBase, FlowStep

DIFFUSION_FORMS: tuple[str, ...] = ("constant", "sigma", "decreasing", "increasing-decreasing")


def diffusion_coefficient(form: str, sigma: float, norm: float = 1.0) -> float:
    """The squared diffusion ``w(sigma)^2`` of the sampling SDE.

    The forms follow SiT's menu, written in the flow's noise level (sigma = 1 is noise):
    ``constant``: ``norm``; ``sigma``: ``norm * sigma``; ``decreasing``: ``norm * ((1 - cos(pi sigma)) / 2)^2``
    (1 at the noise end, 0 at the data end); ``increasing-decreasing``: ``norm * sin(pi sigma)^2``.

    Args:
        form: One of `DIFFUSION_FORMS`.
        sigma: The noise level in [0, 1].
        norm: Overall scale (>= 0); 0 turns the sampler into Euler on the ODE.

    Returns:
        ``w(sigma)^2``.

    Raises:
        ValueError: For an unknown form.
    """
    if form == "constant":
        return norm
    if form == "sigma":
        return norm * sigma
    if form == "decreasing":
        return norm * (0.5 * (1.0 - math.cos(math.pi * sigma))) ** 2
    if form == "increasing-decreasing":
        return norm * math.sin(math.pi * sigma) ** 2
    raise ValueError(f"diffusion_form={form!r} is not supported; allowed: {', '.join(DIFFUSION_FORMS)}.")


class FlowSDEScheduler(FlowSchedulerBase):
    """Stochastic sampler: Euler–Maruyama on the reverse SDE with the flow's marginals.

    With velocity ``v`` and score ``s = -E[noise | x] / sigma`` (both from the one model output), the SDE
    ``dx = (v - w^2 s / 2) dsigma + w dW``, integrated from sigma = 1 down to 0, has the same marginals
    as the ODE ``dx = v dsigma`` for any diffusion ``w(sigma)``. Each step is one model call; the last step
    (to sigma = 0) returns the denoised mean ``x0 = x - sigma v`` without noise.

    Args:
        num_train_timesteps: See `FlowSchedulerBase`.
        shift: See `FlowSchedulerBase`.
        prediction_type: See `FlowSchedulerBase`.
        sigma_schedule: See `FlowSchedulerBase`.
        rho: See `FlowSchedulerBase`.
        use_dynamic_shifting: See `FlowSchedulerBase`.
        diffusion_form: Shape of ``w(sigma)^2``, one of `DIFFUSION_FORMS` (see `diffusion_coefficient`).
        diffusion_norm: Scale of ``w(sigma)^2`` (>= 0).

    Raises:
        ValueError: For an unknown ``diffusion_form``, a negative ``diffusion_norm``, or bad base options.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        prediction_type: str = "velocity",
        sigma_schedule: str = "uniform",
        rho: float = 7.0,
        use_dynamic_shifting: bool = False,
        diffusion_form: str = "sigma",
        diffusion_norm: float = 1.0,
    ) -> None:
        diffusion_coefficient(diffusion_form, 1.0)
        if not diffusion_norm >= 0:
            raise ValueError(f"diffusion_norm={diffusion_norm!r} must be >= 0.")
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            shift=shift,
            prediction_type=prediction_type,
            sigma_schedule=sigma_schedule,
            rho=rho,
            use_dynamic_shifting=use_dynamic_shifting,
        )

    def _step(self, step: FlowStep) -> torch.Tensor:
        sample = step.sample
        if step.sigma_next == 0.0:
            return STRAIGHT_PATH.convert(step.velocity, sample, step.sigma, "velocity", "sample")
        diffusion = diffusion_coefficient(self.config.diffusion_form, step.sigma, self.config.diffusion_norm)
        score = STRAIGHT_PATH.score(step.velocity, sample, step.sigma, "velocity")
        drift = step.velocity - 0.5 * diffusion * score
        noise = randn_tensor(sample.shape, generator=step.generator, device=sample.device, dtype=sample.dtype)
        return sample + step.size * drift + math.sqrt(diffusion * -step.size) * noise
