"""A few-step multistep solver for the flow ODE: one model call per step, up to third order.

Derivation (path ``x = (1 - sigma) x0 + sigma noise``, ``alpha = 1 - sigma``, ODE ``dx/dsigma = v``).

*Reference Gaussian.* For data ``N(0, c^2)`` (``c = sigma_data``) the marginal of ``x_sigma`` is
``N(0, r^2)`` with ``r(sigma)^2 = alpha^2 c^2 + sigma^2``, and the exact denoiser is linear,
``E[x0 | x] = alpha c^2 x / r^2``. Split any model's data prediction ``D = x - sigma v`` around it, as EDM's
preconditioning does::

    D = (alpha c^2 / r^2) x + (sigma^2 / r^2) F,    i.e.   F = D - c^2 (alpha / sigma) eps,

with ``eps = x + alpha v`` the noise prediction. Substituting ``v = (x - D) / sigma`` gives
``dx/dsigma = (d log r / dsigma) x - (sigma / r^2) F``; with the integrating factor ``1 / r`` and
``beta = alpha / r`` (``dbeta/dsigma = -sigma / r^3``) the ODE is exactly::

    d(x / r) = F dbeta      =>      x_t = (r_t / r_s) x_s + r_t * integral_{beta_s}^{beta_t} F dbeta.

The linear part (the whole flow of the reference Gaussian) is integrated exactly and only ``F`` is
approximated; ``F`` is constant (the data mean) for Gaussian data of std ``c`` with any mean. In the VP
angle ``phi = atan(sigma / (alpha c))``, ``beta = cos(phi) / c`` and ``dbeta = -sin(phi) / c dphi``, and
``F`` is a smooth function of ``phi`` up to pure noise (``phi = pi / 2``, where ``F = D``), unlike a
polynomial in ``log(alpha / sigma)``, which is infinite there.

*Predictor* (Adams–Bashforth in ``phi``). ``F`` is replaced by the polynomial in ``phi`` through the last
``k`` evaluations (``k = solver_order``, fewer while the history is short) and the integral is exact::

    x_t = (r_t / r_s) x_s - (r_t / c) * sum_j F_j * integral_{phi_s}^{phi_t} L_j(phi) sin(phi) dphi,

``L_j`` the Lagrange basis on the nodes ``phi_j``; the moments ``integral u^n sin(phi_s + u) du`` follow
from integration by parts (`multistep_weights`). Local error ``O(h^(k+1))``.

*Corrector* (UniPC's UniC, no extra model call). Once the model has been evaluated at the predicted
``x_t``, the step ``s -> t`` is taken again with that evaluation as one more node (one order more), and
the corrected ``x_t`` starts the next step. As in UniPC the model's data prediction at the predicted
point is kept, and ``F_t`` is formed from it and the corrected sample. The last step (to sigma = 0) is
not corrected: the model is never called at 0.

Global order: ``k`` for the predictor alone and ``k + 1`` with the corrector, both capped by the first
step, which has no history (at 2 without corrector, 3 with it).

Limits: ``c -> 0`` gives the data-prediction exponential integrator of DPM-Solver++ and ``c -> infinity``
the noise-prediction one of DPM-Solver (both DDIM, i.e. Euler on the flow, at first order). ``c = 1`` is
the scale of the noise itself and of latents normalised to unit variance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config

from .scheduling_flow_common import FlowSchedulerBase, FlowStep

SOLVER_ORDERS: tuple[int, ...] = (1, 2, 3)


def _sine_moments(phi_start: float, step: float, count: int) -> list[float]:
    """``integral_0^step u^n sin(phi_start + u) du`` for ``n = 0 .. count - 1``, by integration by parts."""
    phi_end = phi_start + step
    sine_moments = [math.cos(phi_start) - math.cos(phi_end)]
    cosine_moments = [math.sin(phi_end) - math.sin(phi_start)]
    for n in range(1, count):
        sine_moments.append(-(step**n) * math.cos(phi_end) + n * cosine_moments[n - 1])
        cosine_moments.append(step**n * math.sin(phi_end) - n * sine_moments[n - 1])
    return sine_moments


def multistep_weights(phi_start: float, phi_end: float, nodes: list[float]) -> np.ndarray:
    """Weights ``w_j = integral_{phi_start}^{phi_end} L_j(phi) sin(phi) dphi`` of the Lagrange basis on ``nodes``.

    Args:
        phi_start: Angle at the start of the step.
        phi_end: Angle at its end.
        nodes: Angles of the interpolation nodes (distinct).

    Returns:
        One weight per node (float64).
    """
    offsets = np.asarray(nodes, dtype=np.float64) - phi_start
    moments = np.asarray(_sine_moments(phi_start, phi_end - phi_start, len(nodes)))
    # L_j(u) = sum_n C[n, j] u^n with C the inverse of the Vandermonde matrix V[i, n] = u_i^n, so that
    # w_j = sum_n C[n, j] moments[n], i.e. w solves V^T w = moments.
    vandermonde = np.vander(offsets, len(nodes), increasing=True)
    return np.linalg.solve(vandermonde.T, moments)


class FlowMultistepScheduler(FlowSchedulerBase):
    """Multistep exponential integrator for the flow ODE around a Gaussian reference, with a UniPC-style corrector.

    One model call per step. The flow of Gaussian data with std ``sigma_data`` is integrated exactly and the
    rest of the model's prediction is extrapolated from the last ``solver_order`` evaluations (Adams–Bashforth
    in the VP angle); after each model call the previous step is corrected with the new evaluation (Adams–
    Moulton-like, no extra call). The derivation is in the module docstring. Few-step accuracy on the
    analytic Gaussian flow: ``benchmarks/samplers.py``.

    Like diffusers' multistep schedulers, the state (history, corrector) lives between `step` calls and is
    cleared by `set_timesteps`; `timesteps` has one entry per model call. As in UniPC, the corrector starts
    from the sample this scheduler returned, so changes a pipeline makes to the latents between steps are
    not seen by it (set ``use_corrector=False`` for such pipelines). See `FlowSchedulerBase` for the base
    configuration.

    Args:
        num_train_timesteps: See `FlowSchedulerBase`.
        shift: See `FlowSchedulerBase`.
        prediction_type: See `FlowSchedulerBase`.
        sigma_schedule: See `FlowSchedulerBase`; ``"logsnr"`` by default, made for this solver at few steps.
        rho: See `FlowSchedulerBase`.
        use_dynamic_shifting: See `FlowSchedulerBase`.
        solver_order: Number of past evaluations the predictor extrapolates from: 1 (exponential Euler), 2
            or 3 (default); the corrector adds one order.
        sigma_data: Standard deviation ``c`` of the reference Gaussian whose flow is integrated exactly (> 0);
            1 suits data or latents normalised to unit variance.
        use_corrector: Apply the corrector after each model call.
        lower_order_final: Use a first-order predictor for the last step (to sigma = 0).

    Raises:
        ValueError: For a ``solver_order`` not in `SOLVER_ORDERS`, a non-positive ``sigma_data``, or bad base
            options.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        prediction_type: str = "velocity",
        sigma_schedule: str = "logsnr",
        rho: float = 7.0,
        use_dynamic_shifting: bool = False,
        solver_order: int = 3,
        sigma_data: float = 1.0,
        use_corrector: bool = True,
        lower_order_final: bool = False,
    ) -> None:
        if (
            not isinstance(solver_order, int)
            or isinstance(solver_order, bool)
            or solver_order not in SOLVER_ORDERS
        ):
            raise ValueError(
                f"solver_order={solver_order!r} is not supported; allowed: "
                f"{', '.join(map(str, SOLVER_ORDERS))}."
            )
        if not sigma_data > 0:
            raise ValueError(f"sigma_data={sigma_data!r} must be > 0.")
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            shift=shift,
            prediction_type=prediction_type,
            sigma_schedule=sigma_schedule,
            rho=rho,
            use_dynamic_shifting=use_dynamic_shifting,
        )

    def _reset_state(self) -> None:
        super()._reset_state()
        # Newest first: (angle, F) of the model evaluations of this run.
        self._history: list[tuple[float, torch.Tensor]] = []
        # The start of the last step and its predictor's order, for the corrector.
        self._last_start: tuple[torch.Tensor, int] | None = None

    # ----------------------------------------------------------------------------- the reference Gaussian
    def _radius(self, sigma: float) -> float:
        """Std of ``x_sigma`` for the reference data ``N(0, sigma_data^2)``."""
        return math.hypot((1.0 - sigma) * self.config.sigma_data, sigma)

    def _angle(self, sigma: float) -> float:
        """The VP angle ``atan(sigma / ((1 - sigma) sigma_data))``: 0 at the data, pi / 2 at pure noise."""
        return math.atan2(sigma, (1.0 - sigma) * self.config.sigma_data)

    def _advance(
        self, start: torch.Tensor, sigma: float, sigma_next: float, nodes: list[tuple[float, torch.Tensor]]
    ) -> torch.Tensor:
        """Integrate from ``sigma`` to ``sigma_next`` with ``F`` interpolated through ``nodes``."""
        c = self.config.sigma_data
        radius_next = self._radius(sigma_next)
        weights = multistep_weights(self._angle(sigma), self._angle(sigma_next), [phi for phi, _ in nodes])
        update = sum(float(w) * value for w, (_, value) in zip(weights, nodes, strict=True))
        return (radius_next / self._radius(sigma)) * start - (radius_next / c) * update

    def _step(self, step: FlowStep) -> torch.Tensor:
        index, sample, sigma, sigma_next = self._step_index, step.sample, step.sigma, step.sigma_next
        c2 = self.config.sigma_data**2
        # F = D - c^2 (alpha / sigma) eps, written with the velocity to avoid cancellation: the model is never
        # called at sigma = 0, so the division is safe.
        alpha = 1.0 - sigma
        residual = ((sigma - alpha * c2) * sample - self._radius(sigma) ** 2 * step.velocity) / sigma

        start = sample
        if self.config.use_corrector and self._last_start is not None and index > 0:
            previous_start, previous_order = self._last_start
            nodes = [(self._angle(sigma), residual)] + self._history[:previous_order]
            start = self._advance(previous_start, float(self.sigmas[index - 1]), sigma, nodes)
            # As in UniPC, the model's data prediction at the predicted point is kept and the corrected sample
            # replaces the predicted one; F = (r^2 D - alpha c^2 x) / sigma^2 moves with x accordingly.
            residual = residual - (alpha * c2 / sigma**2) * (start - sample)

        self._history.insert(0, (self._angle(sigma), residual))
        del self._history[self.config.solver_order :]
        order = min(self.config.solver_order, len(self._history))
        if sigma_next == 0.0 and self.config.lower_order_final:
            order = 1
        self._last_start = (start, order)
        return self._advance(start, sigma, sigma_next, self._history[:order])
