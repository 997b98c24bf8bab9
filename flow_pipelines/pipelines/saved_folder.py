"""The files a saved `FlowPipeline` folder must hold, checked before diffusers loads it.

diffusers reports a missing component file deep in its loader, often as an unrelated error, and a truncated
weights file or a broken JSON config as a long traceback; a local folder is checked here first so that the
message names the file. The checks read only what is cheap: every JSON file the loader needs, and the header of
every safetensors file (which safetensors checks against the file's size, so a truncated file is caught).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline, ModelMixin
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from diffusers.utils.hub_utils import _add_variant
from safetensors import SafetensorError, safe_open


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


def _check_weights(component: Path, name: str, candidates: list[str], folder: Path) -> None:
    """Check the weights a model component will be loaded from: the first candidate present, whole."""
    for candidate in candidates:
        path = component / candidate
        if not path.is_file():
            continue
        if not candidate.endswith(".json"):
            check_safetensors(path)
            return
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
            check_safetensors(shard_path)
        return
    raise ValueError(
        f"{folder} lacks the {name} weights: {(component / candidates[0]).relative_to(folder)} is missing "
        f"(looked for {', '.join(candidates)} in {component})."
    )


def check_saved_pipeline(
    folder: str | os.PathLike, variant: str | None = None, skip: set[str] | None = None
) -> None:
    """Check that a saved pipeline folder has every file its ``model_index.json`` needs, readable.

    Models need ``config.json`` and safetensors weights (single file or sharded index, plain or of the
    given variant); schedulers need ``scheduler_config.json``. JSON files must parse and weight files must be
    whole.

    Args:
        folder: The saved pipeline folder.
        variant: The weight variant that will be requested, if any.
        skip: Component names not to check (e.g. those passed to ``from_pretrained`` directly).

    Raises:
        ValueError: Naming the first missing, truncated or unparsable file.
    """
    folder = Path(folder)
    index_path = folder / DiffusionPipeline.config_name
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a saved pipeline: {index_path} is missing.")
    index = read_json(index_path, "the pipeline's component list")
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} (the pipeline's component list) holds no JSON object.")
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
        candidates = [SAFETENSORS_WEIGHTS_NAME, SAFETENSORS_WEIGHTS_NAME + ".index.json"]
        if variant is not None:
            candidates = [_add_variant(c, variant) for c in candidates] + candidates
        _check_weights(component, name, candidates, folder)
