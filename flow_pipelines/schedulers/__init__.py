"""Flow-matching schedulers that plug into diffusers."""

from .registry import (
    SCHEDULERS,
    make_scheduler,
    model_evaluations,
    scheduler_name,
    steps_for_model_evaluations,
)
from .scheduling_flow_common import FlowSchedulerBase, FlowSchedulerOutput, FlowStep
from .scheduling_flow_euler import FlowEulerScheduler
from .scheduling_flow_heun import FlowHeunScheduler
from .scheduling_flow_multistep import FlowMultistepScheduler
from .scheduling_flow_sde import DIFFUSION_FORMS, FlowSDEScheduler, diffusion_coefficient

__all__ = [
    "DIFFUSION_FORMS",
    "FlowEulerScheduler",
    "FlowHeunScheduler",
    "FlowMultistepScheduler",
    "FlowSDEScheduler",
    "FlowSchedulerBase",
    "FlowSchedulerOutput",
    "FlowStep",
    "SCHEDULERS",
    "diffusion_coefficient",
    "make_scheduler",
    "model_evaluations",
    "scheduler_name",
    "steps_for_model_evaluations",
]
