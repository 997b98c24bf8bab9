"""Euler sampling of the probability-flow ODE ``dx/dsigma = v``: one model call per step, first order."""

from __future__ import annotations

import torch

from .scheduling_flow_common import FlowSchedulerBase, FlowStep


class FlowEulerScheduler(FlowSchedulerBase):
    """Euler's method on the flow ODE: ``x_next = x + (sigma_next - sigma) * v``.

    On the same sigmas it follows diffusers' ``FlowMatchEulerDiscreteScheduler``; unlike it, the default
    grid ends with a full-size step to sigma = 0 rather than a tiny one from 1 / num_train_timesteps, and any
    ``prediction_type`` is accepted. See `FlowSchedulerBase` for the configuration.
    """

    order = 1

    def _step(self, step: FlowStep) -> torch.Tensor:
        return step.sample + step.size * step.velocity
