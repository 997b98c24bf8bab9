"""The exponential moving average of the weights: kept by diffusers' ``EMAModel``, saved beside the model, swapped in.

The EMA's shadow weights are written as a safetensors model folder (``transformer_ema/``) with its scalar state
(step count, decay, ...) in ``ema_state.json``, so a checkpoint's EMA loads like any model.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import torch

EMA_STATE_NAME = "ema_state.json"


def save_ema(ema: Any, model: Any, folder: str | os.PathLike) -> None:
    """Write the EMA weights as a model folder of ``model``'s class and config, with the EMA's scalar state.

    Args:
        ema: The ``EMAModel``.
        model: The trained model (a diffusers ``ModelMixin``; its config and class are used).
        folder: The folder to write.
    """
    ema_model = type(model).from_config(model.config)
    ema.copy_to(ema_model.parameters())
    ema_model.save_pretrained(folder)
    scalars = {key: value for key, value in ema.state_dict().items() if key != "shadow_params"}
    with open(os.path.join(folder, EMA_STATE_NAME), "w", encoding="utf-8") as handle:
        json.dump(scalars, handle)


def load_ema(ema: Any, model_class: type, folder: str | os.PathLike, device: torch.device) -> None:
    """Restore an ``EMAModel`` from a folder written by :func:`save_ema`.

    Args:
        ema: The ``EMAModel`` to fill.
        model_class: The model class (a diffusers ``ModelMixin``).
        folder: The folder.
        device: Where the shadow weights live.
    """
    shadow = [parameter.detach().to(device) for parameter in model_class.from_pretrained(folder).parameters()]
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
