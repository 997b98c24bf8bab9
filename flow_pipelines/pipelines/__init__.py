"""Pipelines: ``FlowPipeline``, class-conditional flow-matching sampling with classifier-free guidance."""

from .class_labels import normalize_id2label, resolve_class_labels
from .pipeline_flow import OUTPUT_TYPES, FlowPipeline
from .saved_folder import check_saved_pipeline

__all__ = [
    "OUTPUT_TYPES",
    "FlowPipeline",
    "check_saved_pipeline",
    "normalize_id2label",
    "resolve_class_labels",
]
