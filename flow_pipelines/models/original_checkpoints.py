"""What a checkpoint was trained for, and reading facebookresearch/DiT and willisma/SiT checkpoints.

:data:`TIME_CONVENTIONS` says what a training convention (DDPM, our flow, SiT's default) means in a
`DiTModel` config: its path, time scale and prediction type. The rest reads original checkpoints: their
weights, and what their training args say.

Both repositories save training checkpoints as ``{"model", "ema", "opt", "args"}``, ``args`` being the
``argparse.Namespace`` of their ``train.py``; released weights are plain state dicts. The args tell what the
weights are, and a conversion must honour them:

- SiT's ``train.py`` adds its transport flags: ``path_type`` (``Linear`` / ``GVP`` / ``VP``) and
  ``prediction`` (``velocity`` / ``noise`` / ``score``); DiT's has neither. ``model`` names the
  architecture (``DiT-XL/2``, ``SiT-XL/2``) and ``num_classes`` the real classes.
- SiT's paths run from noise (``t = 0``) to data (``t = 1``), ``x_t = alpha_t x + sigma_t noise``
  (``transport/path.py``): ``Linear`` is ``alpha = t, sigma = 1 - t``; ``GVP`` is ``alpha = sin(pi t / 2),
  sigma = cos(pi t / 2)``, this package's cosine path with time reversed; ``VP`` is the VP SDE's path with
  beta from 0.1 to 20 (``VPCPlan``'s defaults), time reversed. Its ``noise`` prediction is the noise itself
  (``epsilon``); a ``score`` model outputs ``-noise / sigma_t``, which no ``prediction_type`` expresses.
- The label table has a null row (id ``num_classes``) only when the model was trained with label dropout
  (``class_dropout_prob > 0``, DiT's and SiT's default 0.1); without one there is no unconditional model.

:func:`sit_convention` and :func:`label_classes` turn these into config values or refuse with the reason;
:func:`checkpoint_kind` says which repository a checkpoint comes from, where its args tell.

Files are read with ``torch.load(weights_only=True)``, allowing ``argparse.Namespace`` as the one non-tensor
type: no pickled code is ever run.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..paths import VPPath
from .transformer_dit import DIT_PRESETS

logger = logging.getLogger(__name__)

# The original DiT (and diffusers' DiT pipelines) train on DDPM's linear betas 1e-4 ... 0.02 over 1000 steps.
DDPM_PATH_KWARGS: dict[str, float] = VPPath.from_ddpm_betas(1e-4, 0.02, 1000).kwargs
"""VP path parameters (``beta_min``, ``beta_max``) recorded in the config of converted DDPM checkpoints."""

TIME_CONVENTIONS: dict[str, dict[str, Any]] = {
    "ddpm": {
        "path": "vp",
        "path_kwargs": DDPM_PATH_KWARGS,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
    },
    "flow": {
        "path": "linear",
        "path_kwargs": None,
        "num_train_timesteps": 1000,
        "prediction_type": "velocity",
    },
    "sit": {
        "path": "linear",
        "path_kwargs": {"reverse_time": True},
        "num_train_timesteps": 1,
        "prediction_type": "velocity",
    },
}
"""What a checkpoint's training convention means in a `DiTModel` config: its path, time scale and prediction."""


def convention_config(time_convention: str) -> dict[str, Any]:
    """The config keys that express a training convention (a copy, safe to modify).

    Args:
        time_convention: ``"ddpm"``, ``"flow"`` or ``"sit"``.

    Returns:
        ``path``, ``path_kwargs``, ``num_train_timesteps`` and ``prediction_type``.

    Raises:
        ValueError: For an unknown convention.
    """
    if time_convention not in TIME_CONVENTIONS:
        raise ValueError(
            f"time_convention={time_convention!r} is not supported; allowed: {', '.join(TIME_CONVENTIONS)}."
        )
    config = dict(TIME_CONVENTIONS[time_convention])
    config["path_kwargs"] = dict(config["path_kwargs"]) if config["path_kwargs"] else None
    return config


SIT_PATH_TYPES: dict[str, tuple[str, dict[str, float]]] = {
    "Linear": ("linear", {}),
    "GVP": ("cosine", {}),
    "VP": ("vp", {"beta_min": 0.1, "beta_max": 20.0}),
}
"""SiT's ``--path-type`` -> this package's path name and parameters (used with ``reverse_time``)."""

SIT_PREDICTIONS: dict[str, str] = {"velocity": "velocity", "noise": "epsilon"}
"""SiT's ``--prediction`` -> ``prediction_type``; ``score`` has no counterpart and is refused."""

# Training args shown when a checkpoint is converted: what decides the conversion.
_REPORTED_ARGS: tuple[str, ...] = (
    "model",
    "num_classes",
    "class_dropout_prob",
    "path_type",
    "prediction",
    "image_size",
)


class CheckpointReadError(ValueError, pickle.UnpicklingError):
    """A checkpoint file could not be read: truncated, corrupt, or holding objects that are not loaded.

    A ``ValueError`` (bad input, named in the message), and a ``pickle.UnpicklingError`` as ``torch.load``
    itself reports a refused or broken pickle.
    """


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler objected to, without its paragraphs of advice."""
    message = str(error)
    marker = "WeightsUnpickler error:"
    if marker in message:
        message = message.split(marker, 1)[1].split("Check the documentation", 1)[0]
        message = message.split(" Please use `torch.serialization", 1)[0]
    return " ".join(message.split()) or type(error).__name__


def _one_line(error: BaseException) -> str:
    """The first line of an error's message (torch's messages run to paragraphs)."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def training_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training args a checkpoint carries, as a dict.

    Args:
        checkpoint: A loaded checkpoint: a training checkpoint ``{"model", "ema", "opt", "args"}`` (``args``
            an ``argparse.Namespace`` or a dict), or a plain state dict. A top-level ``class_dropout_prob``
            is included too.

    Returns:
        The settings, or None when the checkpoint carries none (a plain state dict).
    """
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace):
        settings = dict(vars(args))
    elif isinstance(args, Mapping):
        settings = dict(args)
    else:
        settings = {}
    if "class_dropout_prob" in checkpoint and not isinstance(checkpoint["class_dropout_prob"], torch.Tensor):
        settings["class_dropout_prob"] = checkpoint["class_dropout_prob"]
    return settings or None


def load_original_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a DiT / SiT checkpoint file: its weights and its training args, without unpickling code.

    Accepts a plain state dict (``.pt`` / ``.pth`` / ``.bin`` via ``torch.load(weights_only=True)``, or
    ``.safetensors``) and training checkpoints holding ``{"model", "ema", "opt", "args"}``, whose EMA weights
    are taken.

    Args:
        path: The checkpoint file.

    Returns:
        ``(state_dict, settings)``: the model's weights, and the training args (see
        :func:`training_settings`; None for a plain state dict).

    Raises:
        ValueError: If the file does not exist or holds no recognisable state dict.
        CheckpointReadError: If the file is truncated or corrupt, or holds objects other than tensors and
            training args (which are not loaded).
    """
    path = Path(path)
    label = repr(str(path))
    if not path.is_file():
        raise ValueError(f"checkpoint {label} is not a file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None
        except SafetensorError as error:
            raise CheckpointReadError(
                f"checkpoint {label} is not a readable safetensors file (truncated or corrupt: {_one_line(error)})."
            ) from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickler_reason(error)
        if "Unsupported global" in reason:
            raise CheckpointReadError(
                f"checkpoint {label} holds objects other than tensors and training args, which are not loaded "
                f"because unpickling them could run code ({reason})."
            ) from None
        raise CheckpointReadError(
            f"checkpoint {label} is not a readable PyTorch checkpoint (corrupt, or not a checkpoint: {reason})."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointReadError(
            f"checkpoint {label} is not a readable PyTorch checkpoint (truncated or corrupt: {_one_line(error)})."
        ) from None
    return unpack_checkpoint(checkpoint, f"checkpoint {label}")


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of a DiT / SiT checkpoint without unpickling arbitrary objects.

    Args:
        path: The checkpoint file.

    Returns:
        The model's state dict (the EMA weights of a training checkpoint).

    Raises:
        ValueError: See :func:`load_original_checkpoint`.
    """
    return load_original_checkpoint(path)[0]


def unpack_checkpoint(
    checkpoint: Any, label: str = "the checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Split a loaded checkpoint object into its weights (EMA weights first) and training args.

    Args:
        checkpoint: A plain state dict or a training checkpoint ``{"model", "ema", "opt", "args"}``.
        label: How errors name the checkpoint.

    Returns:
        ``(state_dict, settings)`` as :func:`load_original_checkpoint` returns them.

    Raises:
        ValueError: If it holds no state dict of tensors.
    """
    settings = None
    if isinstance(checkpoint, Mapping):
        settings = training_settings(checkpoint)
        for key in ("ema", "model", "state_dict"):
            if key in checkpoint and isinstance(checkpoint[key], Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise ValueError(f"{label} holds no state dict of tensors (nor an 'ema' / 'model' entry with one).")
    # Checkpoints saved from a DistributedDataParallel wrapper prefix every key with "module.".
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}, settings


def describe_settings(settings: Mapping[str, Any]) -> str:
    """The training args that decide a conversion, as ``name=value`` pairs.

    Args:
        settings: Training settings (:func:`training_settings`).

    Returns:
        For example ``"model='SiT-XL/2', num_classes=1000, path_type='GVP', prediction='velocity'"``.
    """
    return ", ".join(f"{key}={settings[key]!r}" for key in _REPORTED_ARGS if key in settings)


def checkpoint_kind(settings: Mapping[str, Any] | None) -> tuple[str | None, str]:
    """Which repository trained a checkpoint, as far as its training args tell.

    SiT's ``train.py`` records its transport flags (``path_type``, ``prediction``) and names its models
    ``SiT-*``; DiT's has no transport flags and names its models ``DiT-*``. The weights themselves do not tell:
    both save the same modules, learned-sigma output channels included.

    Args:
        settings: Training settings, or None.

    Returns:
        ``("sit" | "dit" | None, evidence)``: the kind (None when the args do not tell) and the args that
        say so.
    """
    if not settings:
        return None, ""
    transport = {key: settings[key] for key in ("path_type", "prediction") if key in settings}
    model = settings.get("model")
    if transport:
        flags = ", ".join(f"{key}={value!r}" for key, value in transport.items())
        return "sit", f"its training args have SiT's transport flags ({flags})"
    if isinstance(model, str) and model.startswith("SiT-"):
        return "sit", f"its training args name the model {model!r}"
    if isinstance(model, str) and model.startswith("DiT-"):
        return "dit", f"its training args name the model {model!r} and have no path_type / prediction"
    return None, ""


def sit_convention(path_type: str = "Linear", prediction: str = "velocity") -> dict[str, Any]:
    """The config keys that make a converted SiT model compute what SiT's transport computes.

    Args:
        path_type: SiT's ``--path-type``: ``"Linear"``, ``"GVP"`` or ``"VP"``.
        prediction: SiT's ``--prediction``: ``"velocity"`` or ``"noise"``.

    Returns:
        ``path``, ``path_kwargs`` (with ``reverse_time``: SiT's time runs from noise to data),
        ``num_train_timesteps`` (1: SiT feeds ``t`` in [0, 1] to its timestep embedder) and ``prediction_type``.

    Raises:
        ValueError: For ``prediction="score"`` (a score model outputs ``-noise / sigma_t``, which no prediction
            type of ``DiTModel`` expresses), or an unknown path type or prediction.
    """
    if path_type not in SIT_PATH_TYPES:
        raise ValueError(
            f"SiT path_type={path_type!r} cannot be converted: this package represents exactly "
            f"{', '.join(SIT_PATH_TYPES)} (as linear, cosine and vp paths with time reversed)."
        )
    if prediction == "score":
        raise ValueError(
            "SiT prediction='score' cannot be converted faithfully: a score model outputs -noise / sigma_t, "
            "which is none of DiTModel's prediction types (velocity, sample, epsilon), so its config could not "
            "say what it predicts; allowed: velocity, noise."
        )
    if prediction not in SIT_PREDICTIONS:
        raise ValueError(
            f"SiT prediction={prediction!r} is unknown; allowed: {', '.join(SIT_PREDICTIONS)} (score is refused)."
        )
    name, kwargs = SIT_PATH_TYPES[path_type]
    return {
        "path": name,
        "path_kwargs": {**kwargs, "reverse_time": True},
        "num_train_timesteps": 1,
        "prediction_type": SIT_PREDICTIONS[prediction],
    }


def label_classes(rows: int, settings: Mapping[str, Any] | None) -> int:
    """The number of real classes of a label table, which must end with the null class's row.

    Args:
        rows: Rows of ``y_embedder.embedding_table``.
        settings: Training settings (``num_classes``, ``class_dropout_prob``), or None: then the table is
            taken to have the null row that DiT's and SiT's default label dropout gives it.

    Returns:
        ``num_classes``: ``rows - 1``.

    Raises:
        ValueError: If the args contradict the table, or say there is no null row (a model trained without
            label dropout): it has no unconditional prediction, classifier-free guidance is impossible, and
            ``DiTModel`` reserves id ``num_classes`` for the null class, so such weights are not converted.
    """
    settings = settings or {}
    declared = settings.get("num_classes")
    dropout = settings.get("class_dropout_prob")
    if declared is not None and rows not in (declared, declared + 1):
        raise ValueError(
            f"the label embedding has {rows} rows, but the training args say num_classes={declared}: neither "
            f"{declared} classes with a null row ({declared + 1} rows) nor without one ({declared})."
        )
    if declared is not None:
        has_null_row = rows == declared + 1
    else:
        has_null_row = dropout is None or dropout > 0
    if dropout is not None and has_null_row != (dropout > 0):
        raise ValueError(
            f"class_dropout_prob={dropout} contradicts the label embedding's {rows} rows for "
            f"num_classes={declared} (label dropout is what adds the null row)."
        )
    if not has_null_row:
        reason = f"class_dropout_prob={dropout}" if dropout is not None else f"num_classes={declared}"
        raise ValueError(
            f"the label embedding has {rows} rows for {rows} classes ({reason}): the model was trained without "
            "label dropout and has no null class, so it has no unconditional prediction and classifier-free "
            "guidance is impossible; DiTModel reserves id num_classes for the null class and cannot hold such "
            "weights. Not converted."
        )
    return rows - 1


def preset_dims(preset: str) -> dict[str, int]:
    """Width, depth, heads and patch of a preset; ``SiT-*`` names are accepted as aliases of ``DiT-*``.

    Args:
        preset: ``"DiT-XL/2"``, ``"SiT-B/4"``, ...

    Returns:
        ``hidden_size``, ``num_layers``, ``num_attention_heads`` and ``patch_size``.

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    name = re.sub(r"^SiT-", "DiT-", preset)
    if name not in DIT_PRESETS:
        raise ValueError(
            f"Unknown preset {preset!r}; known presets: {', '.join(DIT_PRESETS)} (or SiT-* aliases)."
        )
    return DIT_PRESETS[name]


def training_convention(source: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Path, time scale and prediction of an original checkpoint, from its training args where it has them.

    What was read, or assumed for a checkpoint without args, is logged at INFO level.

    Args:
        source: ``"dit"`` or ``"sit"``, as the user says.
        settings: The checkpoint's training args (:func:`training_settings`), or None.

    Returns:
        ``path``, ``path_kwargs``, ``num_train_timesteps`` and ``prediction_type``.

    Raises:
        ValueError: If the args show the checkpoint comes from the other repository, or name a SiT path or
            prediction that cannot be converted faithfully (:func:`sit_convention`).
    """
    kind, evidence = checkpoint_kind(settings)
    if kind is not None and kind != source:
        raise ValueError(
            f"source={source!r} does not match the checkpoint: {evidence}, so it is a {kind.upper()} checkpoint; "
            f"convert it with source={kind!r}."
        )
    if settings:
        logger.info("Training args in the checkpoint: %s.", describe_settings(settings))
    if source == "dit":
        convention = convention_config("ddpm")
    else:
        convention = sit_convention(
            (settings or {}).get("path_type", "Linear"), (settings or {}).get("prediction", "velocity")
        )
    if not settings:
        meaning = "DDPM epsilon on the VP path" if source == "dit" else "velocity on SiT's linear path"
        logger.info(
            "The checkpoint carries no training args: converted as source=%r means by default (%s), with the "
            "null class in the label table's last row.",
            source,
            meaning,
        )
    if source == "sit" and convention["prediction_type"] == "epsilon" and convention["path"] != "vp":
        # SiT itself samples noise models from t = sample_eps = 1e-3: at pure noise the data coefficient is 0.
        logger.info(
            "A noise prediction says nothing about the data at pure noise (sigma = 1), where the default sampling "
            "grids start; SiT samples such models from t = 1e-3: give FlowPipeline sigmas starting below 1 "
            "(e.g. 0.999)."
        )
    return convention


def preset_from_settings(
    preset: str | None, num_attention_heads: int | None, settings: Mapping[str, Any] | None
) -> str | None:
    """The preset to check a checkpoint's shapes against: the one given, else the one its training args name.

    Args:
        preset: The preset the user gave, or None.
        num_attention_heads: The head count the user gave, or None (then no preset is taken from the args).
        settings: The checkpoint's training args, or None.

    Returns:
        The preset name, or None.

    Raises:
        ValueError: If the given preset and the args' ``model`` are different architectures.
    """
    model = (settings or {}).get("model")
    named = isinstance(model, str) and re.sub(r"^SiT-", "DiT-", model) in DIT_PRESETS
    if preset is not None and named and preset_dims(preset) != preset_dims(model):
        raise ValueError(f"preset={preset!r} contradicts the checkpoint's training args (model={model!r}).")
    if preset is None and num_attention_heads is None and named:
        return model
    return preset
