"""The files a saved `FlowPipeline` folder must hold, checked before diffusers loads it.

diffusers reports a missing component file deep in its loader, often as an unrelated error; a local folder is
checked here first so that the message names the file.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from diffusers import DiffusionPipeline, ModelMixin
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from diffusers.utils.hub_utils import _add_variant


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


def check_saved_pipeline(
    folder: str | os.PathLike, variant: str | None = None, skip: set[str] | None = None
) -> None:
    """Check that a saved pipeline folder has every file its ``model_index.json`` needs.

    Models need ``config.json`` and safetensors weights (single file or sharded index, plain or of the
    given variant); schedulers need ``scheduler_config.json``.

    Args:
        folder: The saved pipeline folder.
        variant: The weight variant that will be requested, if any.
        skip: Component names not to check (e.g. those passed to ``from_pretrained`` directly).

    Raises:
        ValueError: Naming the first missing file.
    """
    folder = Path(folder)
    index_path = folder / DiffusionPipeline.config_name
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a saved pipeline: {index_path} is missing.")
    with open(index_path, encoding="utf-8") as handle:
        index = json.load(handle)
    for name, entry in index.items():
        if name.startswith("_") or name in (skip or set()) or not isinstance(entry, list) or len(entry) != 2:
            continue
        if entry[0] is None:
            continue
        base = _component_base(*entry)
        if base is None:
            continue
        component = folder / name
        if base is SchedulerMixin:
            required = component / "scheduler_config.json"
            if not required.is_file():
                raise ValueError(f"{folder} lacks {required.relative_to(folder)}, the {name} configuration.")
            continue
        config = component / "config.json"
        if not config.is_file():
            raise ValueError(f"{folder} lacks {config.relative_to(folder)}, the {name} configuration.")
        candidates = [SAFETENSORS_WEIGHTS_NAME, SAFETENSORS_WEIGHTS_NAME + ".index.json"]
        if variant is not None:
            candidates = [_add_variant(c, variant) for c in candidates] + candidates
        if not any((component / c).is_file() for c in candidates):
            raise ValueError(
                f"{folder} lacks the {name} weights: {(component / candidates[0]).relative_to(folder)} is missing "
                f"(looked for {', '.join(candidates)} in {component})."
            )
