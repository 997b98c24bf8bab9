"""flow_pipelines: flow-matching image generation on the Hugging Face stack.

Public names: ``FlowPipeline``, ``DiTModel``, ``FlowEulerScheduler``, ``FlowHeunScheduler``,
``FlowMultistepScheduler``,
``FlowSDEScheduler``.
"""

# diffusers resolves the components of a registered library through these base-class names.
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from . import diffusers_integration
from .models import DiTModel
from .pipelines import FlowPipeline
from .schedulers import FlowEulerScheduler, FlowHeunScheduler, FlowMultistepScheduler, FlowSDEScheduler

diffusers_integration.register({"FlowPipeline": FlowPipeline})

__version__ = "0.1.0"

__all__ = [
    "DiTModel",
    "FlowEulerScheduler",
    "FlowHeunScheduler",
    "FlowMultistepScheduler",
    "FlowPipeline",
    "FlowSDEScheduler",
]
