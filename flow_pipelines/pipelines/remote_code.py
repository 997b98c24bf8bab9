"""The module files that let diffusers load a saved `FlowPipeline` without anyone importing ``flow_pipelines``.

diffusers resolves the classes of a pipeline folder through ``model_index.json``. For classes outside diffusers and
transformers its supported route is remote code: an entry names a module file shipped in the folder, and the
loaders import it when called with ``trust_remote_code=True``. A saved `FlowPipeline` therefore holds:

- ``pipeline_flow.py`` at the top, named by ``"_class_name": ["pipeline_flow", "FlowPipeline"]``;
- the same file in each component folder of this package's classes (``"transformer": ["pipeline_flow",
  "DiTModel"]``, ``"scheduler": ["pipeline_flow", "FlowEulerScheduler"]``) and in every model folder;
- ``"auto_map": {"AutoModel": "pipeline_flow.FlowAutoModel"}``, so that ``diffusers.AutoModel.from_pretrained(id,
  subfolder=..., trust_remote_code=True)`` loads any model folder of it.

Every copy has the same text (diffusers copies module files into one flat cache folder, so files of one name must
not differ), and that text only imports the installed package (`MODULE_TEXT`): it carries no code of its own, and
without the package installed it says how to install it. ``FlowPipeline.from_pretrained`` never runs these files:
it reads the entries that name them as this package's own classes (`resolve_module_entries`), so it needs no
``trust_remote_code``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODULE_NAME = "pipeline_flow"
"""The module diffusers imports: ``pipeline_flow.py`` in the folder and in its component folders."""

MODULE_FILE = f"{MODULE_NAME}.py"
LIBRARY_NAME = "flow_pipelines"
INSTALL_HINT = "pip install flow_pipelines"
"""How to install the package, as the module files and the model card say it."""

PIPELINE_CLASSES: tuple[str, ...] = ("FlowPipeline",)
COMPONENT_CLASSES: tuple[str, ...] = (
    "DiTModel",
    "FlowEulerScheduler",
    "FlowHeunScheduler",
    "FlowMultistepScheduler",
    "FlowSDEScheduler",
)
AUTO_MAP = {"AutoModel": f"{MODULE_NAME}.FlowAutoModel"}

MODULE_TEXT = f'''"""Loads the classes of this model from the `flow_pipelines` package, for diffusers' remote-code loading.

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("<this repository>", trust_remote_code=True)

This file holds no model code: it imports the installed package ({INSTALL_HINT}).
"""

try:
    from flow_pipelines import (
        DiTModel,
        FlowEulerScheduler,
        FlowHeunScheduler,
        FlowMultistepScheduler,
        FlowPipeline,
        FlowSDEScheduler,
    )
    from flow_pipelines.pipelines.remote_code import FlowAutoModel
except ImportError as error:
    raise ImportError(
        "This model is a flow_pipelines FlowPipeline: install the package to load it, with `{INSTALL_HINT}` "
        f"(the import failed: {{error}})."
    ) from error

__all__ = [
    "DiTModel",
    "FlowAutoModel",
    "FlowEulerScheduler",
    "FlowHeunScheduler",
    "FlowMultistepScheduler",
    "FlowPipeline",
    "FlowSDEScheduler",
]
'''


def _is_own_library(library: Any) -> bool:
    """Whether a ``model_index.json`` library entry names this package (registered, or as a module path)."""
    return isinstance(library, str) and (library == LIBRARY_NAME or library.startswith(LIBRARY_NAME + "."))


def _component_entries(index: dict[str, Any]) -> dict[str, list[Any]]:
    """The component entries ``name: [library, class]`` of a ``model_index.json``."""
    return {
        name: entry
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2
    }


def add_module_files(folder: str | os.PathLike) -> dict[str, Any]:
    """Make a freshly saved pipeline folder loadable through diffusers' remote-code route.

    Rewrites ``model_index.json`` so that this package's pipeline and component classes are named by the module
    file (``["pipeline_flow", "DiTModel"]``), adds ``auto_map`` for ``AutoModel``, and writes the module file at the
    top and in each component folder that needs it. Classes of other libraries (a diffusers scheduler or VAE) keep
    their entries.

    Args:
        folder: A folder ``DiffusionPipeline.save_pretrained`` has just written (a staging copy).

    Returns:
        The new ``model_index.json`` content.

    Raises:
        FileNotFoundError: If the folder has no ``model_index.json``.
    """
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    module_folders = []
    if index.get("_class_name") in PIPELINE_CLASSES:
        index["_class_name"] = [MODULE_NAME, index["_class_name"]]
        module_folders.append(folder)
    for name, (library, class_name) in _component_entries(index).items():
        component = folder / name
        if _is_own_library(library) and class_name in COMPONENT_CLASSES:
            index[name] = [MODULE_NAME, class_name]
            module_folders.append(component)
        elif library is not None and (component / "config.json").is_file():
            module_folders.append(component)  # a model of another library: for AutoModel's auto_map
    if any(path != folder and (path / "config.json").is_file() for path in module_folders):
        index["auto_map"] = dict(AUTO_MAP)
    for path in module_folders:
        (path / MODULE_FILE).write_text(MODULE_TEXT, encoding="utf-8")
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return index


def resolve_module_entries(index: dict[str, Any]) -> dict[str, Any]:
    """A ``model_index.json`` as ``FlowPipeline.from_pretrained`` reads it: module-file entries become classes.

    ``["pipeline_flow", X]`` for one of this package's classes becomes ``["flow_pipelines", X]`` (the top-level
    ``_class_name`` becomes ``X``) and ``auto_map`` is dropped, so that diffusers loads the installed classes and
    runs no file of the folder. Entries naming other module files (code of someone else's) are kept, and diffusers
    then asks for ``trust_remote_code`` as it should.

    Args:
        index: The parsed ``model_index.json``.

    Returns:
        A new dict (the argument is not changed).
    """
    resolved = dict(index)
    resolved.pop("auto_map", None)
    class_name = resolved.get("_class_name")
    if (
        isinstance(class_name, list)
        and class_name[:1] == [MODULE_NAME]
        and class_name[1:] in ([c] for c in PIPELINE_CLASSES)
    ):
        resolved["_class_name"] = class_name[1]
    for name, (library, component_class) in _component_entries(index).items():
        if library == MODULE_NAME and component_class in COMPONENT_CLASSES:
            resolved[name] = [LIBRARY_NAME, component_class]
    return resolved


class FlowAutoModel:
    """What ``diffusers.AutoModel`` loads for a model folder of a saved `FlowPipeline` (through ``auto_map``).

    ``AutoModel`` reads one ``auto_map`` for all sub-folders of a pipeline; this class loads whichever model the
    sub-folder's ``config.json`` names: this package's `DiTModel`, or a diffusers model such as the VAE.
    """

    _HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs: Any
    ) -> Any:
        """Load the model that ``<subfolder>/config.json`` names.

        Args:
            pretrained_model_name_or_path: The pipeline folder or Hub repo id.
            subfolder: The model's folder (``"transformer"``, ``"vae"``).
            **kwargs: As for the model class's ``from_pretrained`` (``dtype``, ``variant``, Hub options, ...).

        Returns:
            The loaded model.

        Raises:
            ValueError: If the config names no model class this package or diffusers defines.
        """
        import diffusers

        from .. import models

        hub_kwargs = {name: kwargs[name] for name in cls._HUB_KWARGS if kwargs.get(name) is not None}
        config = models.DiTModel.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        class_name = config.get("_class_name")
        model_class = getattr(models, class_name, None) if class_name in COMPONENT_CLASSES else None
        model_class = model_class or getattr(diffusers, str(class_name), None)
        if not (isinstance(model_class, type) and issubclass(model_class, diffusers.ModelMixin)):
            where = (
                f"{pretrained_model_name_or_path}/{subfolder}"
                if subfolder
                else str(pretrained_model_name_or_path)
            )
            raise ValueError(
                f"{where}/config.json names _class_name={class_name!r}; allowed: DiTModel or a diffusers model class."
            )
        return model_class.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
