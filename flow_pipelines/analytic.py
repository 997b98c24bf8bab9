"""An exactly solvable flow: Gaussian data, where every quantity of the path is closed-form.

With data ``x0 ~ N(mean, std^2)`` (independent per dimension) and ``noise ~ N(0, 1)``, the marginal at
noise level ``sigma`` is ``N(m, V)`` with ``m = (1 - sigma) mean`` and ``V = (1 - sigma)^2 std^2 + sigma^2``.
The exact velocity is ``dm/dsigma + (dV/dsigma) / (2 V) (x - m)``, and the flow carries pure noise ``z`` to
``mean + std * z``. Samplers, likelihoods and training objectives are checked against it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from .paths import STRAIGHT_PATH, expand


class GaussianFlow:
    """The flow from ``N(0, 1)`` noise to ``N(mean, std^2)`` data, per dimension.

    Args:
        mean: Data mean: a number or a tensor broadcastable to the samples' shape (without batch).
        std: Data standard deviation (> 0), same broadcasting.

    Raises:
        ValueError: If any ``std`` is not positive.
    """

    def __init__(self, mean: float | torch.Tensor = 0.0, std: float | torch.Tensor = 1.0) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        if not bool(torch.all(self.std > 0)):
            raise ValueError(f"std must be > 0, got {self.std.tolist()}.")

    def _params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.to(like.device, like.dtype), self.std.to(like.device, like.dtype)

    def marginal(self, sigma: float | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``x_sigma``.

        Args:
            sigma: Noise level(s), a scalar or one per sample.
            like: A batch tensor giving device, dtype and shape to broadcast against.

        Returns:
            ``(m, V)``, broadcastable against ``like``.
        """
        mean, std = self._params(like)
        sigma = expand(torch.as_tensor(sigma, dtype=like.dtype), like)
        return (1 - sigma) * mean, (1 - sigma) ** 2 * std**2 + sigma**2

    def velocity(self, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The exact velocity ``E[noise - x0 | x_sigma = sample]``.

        Args:
            sample: Points ``x_sigma``, shaped ``(batch, ...)``.
            sigma: Noise level(s), a scalar or one per sample.

        Returns:
            The velocity, shaped like ``sample``.
        """
        mean, std = self._params(sample)
        m, var = self.marginal(sigma, sample)
        sigma = expand(torch.as_tensor(sigma, dtype=sample.dtype), sample)
        half_dvar = sigma - (1 - sigma) * std**2
        return -mean + half_dvar / var * (sample - m)

    def prediction(
        self, sample: torch.Tensor, sigma: float | torch.Tensor, prediction_type: str
    ) -> torch.Tensor:
        """The exact model output of a given type (velocity, sample or epsilon).

        Args:
            sample: Points ``x_sigma``.
            sigma: Noise level(s).
            prediction_type: ``"velocity"``, ``"sample"`` or ``"epsilon"``.

        Returns:
            The prediction, shaped like ``sample``.
        """
        return STRAIGHT_PATH.convert(self.velocity(sample, sigma), sample, sigma, "velocity", prediction_type)

    def transport(self, sample: torch.Tensor, sigma_from: float, sigma_to: float = 0.0) -> torch.Tensor:
        """Exact solution of the flow ODE from ``sigma_from`` to ``sigma_to``.

        Args:
            sample: Points at ``sigma_from``.
            sigma_from: Start noise level.
            sigma_to: End noise level (0 gives the data endpoint ``mean + std * z``).

        Returns:
            The points at ``sigma_to``.
        """
        m_from, var_from = self.marginal(sigma_from, sample)
        m_to, var_to = self.marginal(sigma_to, sample)
        return m_to + torch.sqrt(var_to / var_from) * (sample - m_from)

    def sample_marginal(
        self, shape: tuple[int, ...], sigma: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``x_sigma`` from its exact marginal, in float64.

        Args:
            shape: Batch shape ``(batch, ...)``.
            sigma: Noise level.
            generator: Random generator.

        Returns:
            Samples of ``x_sigma``.
        """
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        m, var = self.marginal(sigma, z)
        return m + var.sqrt() * z

    def log_prob(self, sample: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """Exact log-density of ``x_sigma`` (summed over all non-batch dimensions).

        Args:
            sample: Points, shaped ``(batch, ...)``.
            sigma: Noise level (0 is the data distribution).

        Returns:
            One log-density per sample.
        """
        m, var = self.marginal(sigma, sample)
        per_dim = -0.5 * ((sample - m) ** 2 / var + torch.log(2 * math.pi * var))
        return per_dim.reshape(sample.shape[0], -1).sum(dim=1)


def sample_with_scheduler(
    scheduler,
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    num_inference_steps: int | None = None,
    sigmas: list[float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Run any flow scheduler with a model given as a function; the bare sampling loop.

    Args:
        scheduler: A scheduler with diffusers' flow-matching interface (ours or diffusers').
        predict: ``predict(sample, timestep) -> model output`` in the scheduler's prediction type.
        latents: The starting sample at the first noise level.
        num_inference_steps: Number of steps, when ``sigmas`` is not given.
        sigmas: Explicit noise levels, for schedulers whose `set_timesteps` accepts them.
        generator: Random generator for stochastic schedulers.

    Returns:
        The final sample and the number of model evaluations.
    """
    kwargs = {"sigmas": sigmas} if sigmas is not None else {"num_inference_steps": num_inference_steps}
    scheduler.set_timesteps(**kwargs)
    accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if generator is not None and accepts_generator else {}
    sample = latents
    for timestep in scheduler.timesteps:
        output = predict(sample, timestep)
        sample = scheduler.step(output, timestep, sample, **step_kwargs).prev_sample
    return sample, len(scheduler.timesteps)
