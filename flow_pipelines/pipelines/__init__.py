"""Pipelines: ``FlowPipeline``, class-conditional flow-matching sampling with classifier-free guidance."""

from .pipeline_flow import OUTPUT_TYPES, FlowPipeline, check_saved_pipeline, normalize_id2label

__all__ = ["OUTPUT_TYPES", "FlowPipeline", "check_saved_pipeline", "normalize_id2label"]
