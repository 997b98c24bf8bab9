"""Heun's method (explicit trapezoid) on the flow ODE: two model calls per step, second order."""

from __future__ import annotations

import torch

from .scheduling_flow_common import FlowSchedulerBase, FlowStep


class FlowHeunScheduler(FlowSchedulerBase):
    """Heun's second-order method on the flow ODE, as in EDM's deterministic sampler.

    Each step from ``sigma`` to ``sigma_next`` takes an Euler predictor with the velocity ``v`` at
    ``sigma``, evaluates the model again at the predicted point (``v'``), and restarts from ``x`` with the
    mean ``(v + v') / 2``. The step to sigma = 0 stays plain Euler (the model is never called at 0).

    As in diffusers' ``FlowMatchHeunDiscreteScheduler``, `timesteps` repeats each interior noise level so
    that every entry is one model call: ``[t0, t1, t1, ..., t_{N-1}, t_{N-1}]`` (``2N - 1`` calls for N
    steps), and `sigmas` holds the noise level of each call followed by 0. Unlike it, `set_timesteps`
    accepts explicit ``sigmas``. With the ``"uniform"`` schedule the noise levels of the model calls are spaced
    evenly over ``[1, 1 / num_train_timesteps]`` (as diffusers does), so that the final Euler stretch is
    negligible; with explicit ``sigmas`` a long last step costs accuracy. See `FlowSchedulerBase` for the
    configuration.
    """

    order = 2

    def _reset_state(self) -> None:
        super()._reset_state()
        self._predictor: FlowStep | None = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next `step` call is a predictor (the start of a step), False for a corrector."""
        return self._predictor is None

    def _default_grid(self, num_inference_steps: int) -> torch.Tensor:
        if self.config.sigma_schedule != "uniform":
            return super()._default_grid(num_inference_steps)
        # The last step is plain Euler, which is accurate only when it is short: spread the model's noise
        # levels evenly over [1, 1 / num_train_timesteps] and leave the tiny final stretch to Euler.
        levels = torch.linspace(
            1.0, 1.0 / self.config.num_train_timesteps, num_inference_steps, dtype=torch.float64
        )
        return torch.cat([levels, levels.new_zeros(1)])

    def _expand_grid(self, grid: torch.Tensor) -> torch.Tensor:
        # Interior levels are visited twice: as the corrector of one step and the predictor of the next.
        return torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])

    def _step(self, step: FlowStep) -> torch.Tensor:
        if self._predictor is not None:
            # The corrector: restart from the predictor's start with the mean of both velocities.
            start = self._predictor
            self._predictor = None
            return start.sample + start.size * 0.5 * (start.velocity + step.velocity)
        if step.sigma_next > 0.0:
            self._predictor = step
        return step.sample + step.size * step.velocity
