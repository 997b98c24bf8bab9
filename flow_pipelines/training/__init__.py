"""Pieces of the flow-matching training script: data loading, the objective, latents and checkpoints."""

from ..images import ImageTransform
from .checkpointing import list_checkpoints, resolve_resume_checkpoint, save_checkpoint
from .data import (
    DIGITS_DATASET,
    DataConfig,
    TrainingData,
    load_digits_dataset,
    load_image_dataset,
    prepare_training_data,
    resolve_columns,
)
from .objectives import (
    LOSS_WEIGHTINGS,
    TIME_SAMPLING_SCHEMES,
    FlowMatchingObjective,
    drop_labels,
    loss_weights,
    sample_sigmas,
)

__all__ = [
    "DIGITS_DATASET",
    "LOSS_WEIGHTINGS",
    "TIME_SAMPLING_SCHEMES",
    "DataConfig",
    "FlowMatchingObjective",
    "ImageTransform",
    "TrainingData",
    "drop_labels",
    "list_checkpoints",
    "load_digits_dataset",
    "load_image_dataset",
    "loss_weights",
    "prepare_training_data",
    "resolve_columns",
    "resolve_resume_checkpoint",
    "sample_sigmas",
    "save_checkpoint",
]
