"""The files a saved `FlowPipeline` folder must hold, checked before diffusers loads it.

diffusers reports a missing component file deep in its loader, often as an unrelated error, and a truncated
weights file or a broken JSON config as a long traceback; a local folder is checked here first so that the
message names the file. The checks read only what is cheap: every JSON file the loader needs, the header of
every safetensors file (which safetensors checks against the file's size, so a truncated file is caught) and the
zip directory at the end of every ``.bin`` file (written by ``torch.save``; a truncated one has none). A ``.bin`` is
only ever read with ``torch.load(weights_only=True)``, here and in diffusers: no pickled code runs.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from diffusers.utils.hub_utils import _add_variant
from safetensors import SafetensorError, safe_open

from .remote_code import resolve_module_entries


def _component_base(library_name: str, class_name: str) -> type | None:
    """The diffusers base class (``ModelMixin`` or ``SchedulerMixin``) of a component entry, if resolvable."""
    if library_name not in LOADABLE_CLASSES:
        return None
    try:
        component_class = getattr(importlib.import_module(library_name), class_name)
    except (ImportError, AttributeError):
        return None
    for base in (ModelMixin, SchedulerMixin):
        if isinstance(component_class, type) and issubclass(component_class, base):
            return base
    return None


def read_json(path: Path, role: str) -> Any:
    """Parse a JSON file of a saved folder, naming it when it cannot be read.

    Args:
        path: The file.
        role: What it is, for the message (``"the transformer configuration"``).

    Returns:
        The parsed value.

    Raises:
        ValueError: If the file is not valid UTF-8 JSON (a truncated or hand-edited file).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} ({role}) is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} ({role}) is not valid JSON: it is not UTF-8 text.") from None


def check_safetensors(path: Path) -> None:
    """Check that a safetensors file is whole: its header parses and its tensors fill the file exactly.

    Args:
        path: The weights file.

    Raises:
        ValueError: Naming the file, if it is truncated or is not a safetensors file.
    """
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or corrupt: {error}); save the pipeline again."
        ) from None


def check_pickle_weights(path: Path) -> None:
    """Check that a ``.bin`` weights file is whole and holds only tensors, as ``torch.load(weights_only=True)`` sees it.

    The file is read by the same restricted unpickler diffusers uses (memory-mapped, so tensor data is not read):
    no code in it runs, and a file holding anything but tensors and plain containers is refused here, by name.

    Args:
        path: The weights file.

    Raises:
        ValueError: Naming the file, if it is truncated, was not written by ``torch.save``, or holds objects
            ``weights_only`` loading refuses.
    """
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"{path} is not a readable PyTorch weights file (truncated, or not written by torch.save: {error}); "
            "save the pipeline again."
        ) from None
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{path} holds more than tensors, so torch.load(weights_only=True) refuses it and it is not loaded; "
            f"nothing in it was run ({reason})."
        ) from None


def _check_weight_file(path: Path) -> str:
    """Check one weights file; returns its format, ``"safetensors"`` or ``"bin"``."""
    if path.name.endswith(".safetensors"):
        check_safetensors(path)
        return "safetensors"
    check_pickle_weights(path)
    return "bin"


def _check_weights(component: Path, name: str, candidates: list[str], folder: Path) -> str:
    """Check the weights a model component will be loaded from (the first candidate present); returns the format."""
    for candidate in candidates:
        path = component / candidate
        if not path.is_file():
            continue
        if not candidate.endswith(".json"):
            return _check_weight_file(path)
        index = read_json(path, f"the {name} weight index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(
                f"{path} (the {name} weight index) has no 'weight_map' of tensor names to files."
            )
        for shard in sorted(set(weight_map.values())):
            shard_path = component / str(shard)
            if not shard_path.is_file():
                raise ValueError(
                    f"{folder} lacks {shard_path.relative_to(folder)}, a {name} weight shard named in {candidate}."
                )
            _check_weight_file(shard_path)
        return "safetensors" if candidate.startswith(SAFETENSORS_WEIGHTS_NAME) else "bin"
    raise ValueError(
        f"{folder} lacks the {name} weights: {(component / candidates[0]).relative_to(folder)} is missing "
        f"(looked for {', '.join(candidates)} in {component})."
    )


def weight_candidates(variant: str | None = None, use_safetensors: bool | None = None) -> list[str]:
    """The weight file names a model folder is loaded from, in the order diffusers prefers them.

    Args:
        variant: The weight variant requested, if any (its files come first; plain ones are the fallback).
        use_safetensors: True: safetensors only; False: ``.bin`` only; None: safetensors, else ``.bin``.

    Returns:
        Single-file and shard-index names.
    """
    names = [SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME]
    if use_safetensors is not None:
        names = [name for name in names if name.endswith(".safetensors") == use_safetensors]
    plain = [form for name in names for form in (name, name + ".index.json")]
    if variant is None:
        return plain
    return [_add_variant(name, variant) for name in plain] + plain


def check_saved_pipeline(
    folder: str | os.PathLike,
    variant: str | None = None,
    skip: set[str] | None = None,
    use_safetensors: bool | None = None,
) -> set[str]:
    """Check that a saved pipeline folder has every file its ``model_index.json`` needs, readable.

    Models need ``config.json`` and weights (safetensors or ``.bin``, single file or sharded index, plain or of
    the given variant); schedulers need ``scheduler_config.json``. JSON files must parse and weight files must be
    whole. Entries naming the folder's module files (``["pipeline_flow", "DiTModel"]``) are this package's classes.

    Args:
        folder: The saved pipeline folder.
        variant: The weight variant that will be requested, if any.
        skip: Component names not to check (e.g. those passed to ``from_pretrained`` directly).
        use_safetensors: As for ``from_pretrained``: True: safetensors only; False: ``.bin`` only; None: either.

    Returns:
        The weight formats the models will be loaded from (``"safetensors"``, ``"bin"``).

    Raises:
        ValueError: Naming the first missing, truncated or unparsable file, or a ``.bin`` holding more than tensors.
    """
    folder = Path(folder)
    index_path = folder / DiffusionPipeline.config_name
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a saved pipeline: {index_path} is missing.")
    index = read_json(index_path, "the pipeline's component list")
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} (the pipeline's component list) holds no JSON object.")
    index = resolve_module_entries(index)
    formats = set()
    for name, entry in index.items():
        if name.startswith("_") or name in (skip or set()) or not isinstance(entry, list) or len(entry) != 2:
            continue
        if entry[0] is None:
            continue
        base = _component_base(*entry)
        if base is None:
            continue
        component = folder / name
        config = component / ("scheduler_config.json" if base is SchedulerMixin else "config.json")
        if not config.is_file():
            raise ValueError(f"{folder} lacks {config.relative_to(folder)}, the {name} configuration.")
        read_json(config, f"the {name} configuration")
        if base is SchedulerMixin:
            continue
        formats.add(_check_weights(component, name, weight_candidates(variant, use_safetensors), folder))
    return formats
