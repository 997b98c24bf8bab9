"""Registration of ``flow_pipelines`` as a library diffusers loads components from.

diffusers resolves every entry of a pipeline's ``model_index.json`` (``"transformer": ["flow_pipelines",
"DiTModel"]``) through a table of known libraries, ``LOADABLE_CLASSES``. A library missing from it is
recorded under its full module path by ``save_pretrained``, and ``DiffusionPipeline.download`` rejects
it when loading from the Hub. Registering ``flow_pipelines`` there (``register``) makes our components
save as ``["flow_pipelines", "<Class>"]`` and load from local folders and Hub repos alike. For the
lookup ``getattr(library, base_class)`` that diffusers does, the package exposes ``ModelMixin``,
``SchedulerMixin`` and ``DiffusionPipeline`` at top level.

``DiffusionPipeline.from_pretrained`` finds the pipeline class by looking up ``_class_name`` on the
``diffusers`` module itself; ``register`` therefore also sets ``diffusers.FlowPipeline``. Importing
``flow_pipelines`` runs ``register``, so::

    import flow_pipelines  # noqa: F401  (registers the plugin)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("org/name")  # a FlowPipeline

works for a local folder and a Hub repo id, without ``custom_pipeline`` or ``trust_remote_code``.
"""

from __future__ import annotations

import diffusers
from diffusers.pipelines import pipeline_loading_utils, pipeline_utils

LIBRARY_NAME = "flow_pipelines"

# Base class name -> [save method, load method], the layout of diffusers' LOADABLE_CLASSES.
_LOADABLE_BASE_CLASSES: dict[str, list[str]] = {
    "ModelMixin": ["save_pretrained", "from_pretrained"],
    "SchedulerMixin": ["save_pretrained", "from_pretrained"],
    "DiffusionPipeline": ["save_pretrained", "from_pretrained"],
}


def register(pipeline_classes: dict[str, type] | None = None) -> None:
    """Make diffusers load and save ``flow_pipelines`` components; safe to call more than once.

    Adds ``flow_pipelines`` to ``LOADABLE_CLASSES`` (the table that ``save_pretrained``, ``download`` and
    ``load_sub_model`` consult), to the flattened ``ALL_IMPORTABLE_CLASSES`` and to
    ``pipeline_utils.LIBRARIES`` (copies diffusers takes at import), and publishes the given pipeline
    classes on the ``diffusers`` module so that ``DiffusionPipeline.from_pretrained`` resolves their
    ``_class_name``.

    Args:
        pipeline_classes: Pipeline classes to publish by name, e.g. ``{"FlowPipeline": FlowPipeline}``.
    """
    loadable = pipeline_loading_utils.LOADABLE_CLASSES
    if LIBRARY_NAME not in loadable:
        loadable[LIBRARY_NAME] = {name: list(methods) for name, methods in _LOADABLE_BASE_CLASSES.items()}
    # pipeline_utils imports the same dict objects; both are named in case a diffusers version copies them.
    for importable in (pipeline_loading_utils.ALL_IMPORTABLE_CLASSES, pipeline_utils.ALL_IMPORTABLE_CLASSES):
        for name, methods in _LOADABLE_BASE_CLASSES.items():
            importable.setdefault(name, list(methods))
    if LIBRARY_NAME not in pipeline_utils.LIBRARIES:
        pipeline_utils.LIBRARIES.append(LIBRARY_NAME)
    for name, cls in (pipeline_classes or {}).items():
        existing = getattr(diffusers, name, None)
        if existing is not None and existing is not cls and not existing.__module__.startswith(LIBRARY_NAME):
            # Never shadow a class that diffusers itself defines under the same name.
            continue
        setattr(diffusers, name, cls)


def is_registered() -> bool:
    """Whether `register` has run in this process.

    Returns:
        True if diffusers knows ``flow_pipelines`` as a loadable library.
    """
    return LIBRARY_NAME in pipeline_loading_utils.LOADABLE_CLASSES
