"""The exponential moving average of the weights: kept by diffusers' ``EMAModel``, saved beside the model, swapped in.

The EMA's shadow weights are written as a safetensors model folder (``transformer_ema/``) with its scalar state
(step count, decay, ...) in ``ema_state.json``, so a checkpoint's EMA loads like any model. The EMA is created
from the prepared model's parameters: when those are sharded (FSDP2), so are its shadow weights, which a save
gathers whole first and a load cuts back into this process's slices (:mod:`.sharding`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .sharding import shard_like

EMA_STATE_NAME = "ema_state.json"


def save_ema(
    ema: Any, model: Any, folder: str | os.PathLike, shadow_params: Sequence[torch.Tensor] | None = None
) -> None:
    """Write the EMA weights as a model folder of ``model``'s class and config, with the EMA's scalar state.

    Args:
        ema: The ``EMAModel``.
        model: The trained model (a diffusers ``ModelMixin``; its config and class are used).
        folder: The folder to write.
        shadow_params: The EMA weights whole, when the EMA's own are sharded (see
            :func:`~flow_pipelines.training.sharding.full_tensors`); default: ``ema.shadow_params``.
    """
    ema_model = type(model).from_config(model.config)
    with torch.no_grad():
        for parameter, shadow in zip(
            ema_model.parameters(), ema.shadow_params if shadow_params is None else shadow_params, strict=True
        ):
            parameter.copy_(shadow)
    ema_model.save_pretrained(folder)
    scalars = {key: value for key, value in ema.state_dict().items() if key != "shadow_params"}
    with open(os.path.join(folder, EMA_STATE_NAME), "w", encoding="utf-8") as handle:
        json.dump(scalars, handle)


def load_ema(ema: Any, model_class: type, folder: str | os.PathLike) -> None:
    """Restore an ``EMAModel`` from a folder written by :func:`save_ema`.

    Each shadow weight keeps the device and the sharding of the one it replaces.

    Args:
        ema: The ``EMAModel`` to fill.
        model_class: The model class (a diffusers ``ModelMixin``).
        folder: The folder.
    """
    saved = model_class.from_pretrained(folder).parameters()
    shadow = [shard_like(whole.detach(), live) for whole, live in zip(saved, ema.shadow_params, strict=True)]
    with open(os.path.join(folder, EMA_STATE_NAME), encoding="utf-8") as handle:
        ema.load_state_dict({**json.load(handle), "shadow_params": shadow})


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: Any | None) -> Iterator[None]:
    """Temporarily put the EMA weights (the trained ones without EMA) into ``model``, in eval mode, for sampling.

    The trained weights and train mode come back after the block.

    Args:
        model: The trained model.
        ema: The ``EMAModel``, or None.

    Yields:
        Nothing; inside the block ``model`` holds the EMA weights.
    """
    training = model.training
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        yield
    finally:
        model.train(training)
        if ema is not None:
            ema.restore(model.parameters())
