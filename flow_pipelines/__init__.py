"""flow_pipelines: flow-matching image generation on the Hugging Face stack.

Public names: ``FlowPipeline``, ``DiTModel``, ``FlowEulerScheduler``, ``FlowHeunScheduler``,
``FlowSDEScheduler``.
"""

from .schedulers import FlowEulerScheduler, FlowHeunScheduler, FlowSDEScheduler

__version__ = "0.1.0"

__all__ = [
    "FlowEulerScheduler",
    "FlowHeunScheduler",
    "FlowSDEScheduler",
]
