"""Model cards of saved pipelines: the Hub's metadata, machine-readable results, usage that works.

A card is rendered from ``model_cards/flow_pipeline.md`` into ``README.md`` with the Hub's metadata format
(huggingface_hub's ``ModelCardData``): ``library_name: diffusers`` with a ``flow_pipelines`` tag, the license given,
the Hub datasets it was trained on, and every evaluation result as machine-readable ``model-index`` entries
(`CardResult`: metric, value, dataset, and the sampler, steps / NFE and guidance it was measured at). What the card
was rendered from is kept beside it in ``.model_card.json`` (never uploaded), so that `update_model_card` can add
results (``python -m flow_pipelines.evaluate --update-card``) and ``hub.push_pipeline_to_hub`` can name the repository
the card is pushed to, both by rendering it again; a card edited by hand keeps its text, and only its metadata is
updated. Nothing local is published: credentials are dropped, local paths are reduced to their last component.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data_sources import DIGITS_DATASET, DIGITS_DESCRIPTION
from .file_utils import atomic_file, write_json
from .pipelines.remote_code import INSTALL_HINT

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "flow_pipeline.md"
CARD_STATE_FILE = ".model_card.json"
"""What a card was rendered from, kept beside ``README.md`` (hidden: never uploaded)."""
TASK_TYPE = "class-conditional-image-generation"
"""The ``model-index`` task of our results. The Hub has no class-conditional task id (its image-generation tasks take
no input or text), so the card sets no ``pipeline_tag`` and says what the model does with this task and its tags."""
CARD_TAGS = [
    "flow_pipelines",
    "flow-matching",
    "dit",
    "class-conditional-image-generation",
    "image-generation",
]
METRIC_NAMES: dict[str, str] = {
    "fid": "FID",
    "fd_dinov2": "FD-DINOv2",
    "fd": "FD",
    "fd_ratio": "FD / real-vs-real floor",
    "precision": "Precision",
    "recall": "Recall",
    "digit_accuracy": "Digit accuracy",
    "per_class_min_accuracy": "Lowest per-class digit accuracy",
    "bpd": "Bits per dimension",
}
# Settings of a run that mean nothing on the Hub: where it wrote, what it resumed from.
_LOCAL_SETTINGS = {"output_dir", "logging_dir", "cache_dir", "resume_from_checkpoint", "overwrite_output_dir"}
_SECRET_WORDS = ("token", "secret", "password")
PREDICTION_TYPES: tuple[str, ...] = ("velocity", "sample", "epsilon")
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A training configuration without credentials, safe to log, print or publish.

    Args:
        config: Settings, e.g. ``vars(args)`` of a training script.

    Returns:
        A copy without any key that names a token, secret or password.
    """
    return {
        key: value for key, value in config.items() if not any(word in key.lower() for word in _SECRET_WORDS)
    }


def _is_local_path(text: str) -> bool:
    """Whether a string names a place on this machine (absolute, home- or dot-relative, or an existing path)."""
    if os.path.isabs(text) or text.startswith(("./", "../", "~")):
        return True
    return ("/" in text or os.sep in text) and Path(text).exists()


def public_text(text: str) -> str:
    """``text`` with every local path in it reduced to its last component, safe to publish.

    Args:
        text: A setting or a description, e.g. ``"image folder /home/me/data/cats"``.

    Returns:
        The text with local paths shortened (``"image folder cats"``); Hub ids such as ``"org/name"`` stay.
    """
    return " ".join(Path(word).name or word if _is_local_path(word) else word for word in text.split(" "))


def _public_value(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        return public_text(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return [_public_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _public_value(item) for key, item in value.items()}
    return value


def card_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings a model card shows: no credentials, no local-only settings, no local paths.

    Args:
        config: The run's settings (``vars(args)``).

    Returns:
        The settings without tokens and the like (`public_config`), without where the run wrote locally
        (``output_dir``, ``logging_dir``, ``cache_dir``, ``resume_from_checkpoint``), and with local paths in the
        other values reduced to their last component.
    """
    kept = public_config(dict(config))
    return {key: _public_value(value) for key, value in kept.items() if key not in _LOCAL_SETTINGS}


def hub_dataset_id(dataset_name: str) -> str | None:
    """The Hub dataset id a training data description names, if it names one.

    Args:
        dataset_name: A ``datasets`` name (``"cifar10"``, ``"ylecun/mnist"``, ``"cifar10 (plain_text)"``), a local
            folder, or the embedded digits.

    Returns:
        The id, or None for local data and the scikit-learn digits.
    """
    if dataset_name in (DIGITS_DATASET, DIGITS_DESCRIPTION, "digits"):
        return None
    candidate = dataset_name.split(" (")[0].strip()
    if not _HUB_ID.fullmatch(candidate) or _is_local_path(candidate):
        return None
    return candidate


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a finite number.")
    return float(value)


def _plain(value: Any) -> Any:
    """A value as JSON and YAML write it: numpy scalars and paths become numbers and strings."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


@dataclass(frozen=True)
class CardResult:
    """One evaluation result of a model card: a metric's value on a dataset, with the settings it was measured at.

    Written into the card's ``model-index`` (huggingface_hub's ``EvalResult``: the settings become the metric's
    ``args``) and its results table.

    Args:
        metric: The metric's id, e.g. ``"fid"``, ``"fd_dinov2"``, ``"precision"``, ``"digit_accuracy"``.
        value: Its value.
        dataset: The reference data: a Hub dataset id, ``"sklearn_digits"``, or a local folder's name.
        sampler: The scheduler, e.g. ``"heun"``.
        num_inference_steps: Sampling steps.
        nfe: Model evaluations per sample, where they differ from the steps (Heun: about twice).
        guidance_scale: The classifier-free guidance scale.
        num_samples: Generated samples the figure is computed from.
        dataset_split: The reference split, e.g. ``"train"``.
        details: Further settings or context (``num_reference``, ``protocol``, a real-vs-real floor, ...).

    Raises:
        ValueError: For an empty metric or dataset name, a value or guidance scale that is not a finite number, a
            count (steps, NFE, samples) that is not a positive integer, an empty sampler or split name, or details
            that are not a dict.
    """

    metric: str
    value: float
    dataset: str
    sampler: str | None = None
    num_inference_steps: int | None = None
    nfe: int | None = None
    guidance_scale: float | None = None
    num_samples: int | None = None
    dataset_split: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("metric", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not allowed; allowed: a non-empty string."
                )
        object.__setattr__(self, "value", _finite_number("value", self.value))
        object.__setattr__(self, "dataset", public_text(self.dataset))
        for name in ("sampler", "dataset_split"):
            if getattr(self, name) is not None and (
                not isinstance(getattr(self, name), str) or not getattr(self, name).strip()
            ):
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not allowed; allowed: a non-empty string or None."
                )
        for name in ("num_inference_steps", "nfe", "num_samples"):
            count = getattr(self, name)
            if count is None:
                continue
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
                raise ValueError(f"{name}={count!r} is not allowed; allowed: a positive integer or None.")
            object.__setattr__(self, name, int(count))
        if self.guidance_scale is not None:
            object.__setattr__(self, "guidance_scale", _finite_number("guidance_scale", self.guidance_scale))
        if not isinstance(self.details, Mapping):
            raise ValueError(f"details={self.details!r} is not allowed; allowed: a dict of settings.")
        object.__setattr__(self, "details", {str(key): _plain(value) for key, value in self.details.items()})

    @property
    def settings(self) -> dict[str, Any]:
        """The settings given (sampler, steps, NFE, guidance, samples) and the details, by name."""
        named = {
            "sampler": self.sampler,
            "num_inference_steps": self.num_inference_steps,
            "nfe": self.nfe,
            "guidance_scale": self.guidance_scale,
            "num_samples": self.num_samples,
        }
        return {**{k: v for k, v in named.items() if v is not None}, **_public_value(self.details)}

    def _identity(self) -> tuple:
        """What makes two results the same measurement (a new value then replaces the old): metric, data, settings."""
        named = tuple(getattr(self, name) for name in _NAMED_SETTINGS)
        return (self.metric, self.dataset, self.dataset_split, named)

    def to_eval_result(self) -> EvalResult:
        """The result as a ``model-index`` entry.

        Returns:
            huggingface_hub's ``EvalResult`` for this result.
        """
        return EvalResult(
            task_type=TASK_TYPE,
            task_name="Class-conditional image generation",
            dataset_type=self.dataset,
            dataset_name=self.dataset,
            dataset_split=self.dataset_split,
            metric_type=self.metric,
            metric_name=METRIC_NAMES.get(self.metric, self.metric),
            metric_value=self.value,
            metric_args=self.settings or None,
        )

    @classmethod
    def from_eval_result(cls, result: EvalResult) -> CardResult:
        """Read a ``model-index`` entry back.

        Args:
            result: An ``EvalResult`` (as `to_eval_result` writes it, or any other).

        Returns:
            The result.
        """
        settings = dict(result.metric_args or {})
        named = {name: settings.pop(name) for name in _NAMED_SETTINGS if name in settings}
        return cls(
            metric=result.metric_type,
            value=result.metric_value,
            dataset=result.dataset_type,
            dataset_split=result.dataset_split,
            details=settings,
            **named,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CardResult:
        """Read a record of ``python -m flow_pipelines.evaluate``'s ``metrics.json``.

        Args:
            record: ``{"metric", "value", "reference", "scheduler", "steps", "guidance", "num_samples", ...}``;
                other fields (``num_reference``, ``protocol``, ``extractor``, ...) become details.

        Returns:
            The result.

        Raises:
            ValueError: If the record lacks ``metric``, ``value`` or ``reference``.
        """
        missing = [name for name in ("metric", "value", "reference") if name not in record]
        if missing:
            raise ValueError(f"evaluation record {dict(record)!r} lacks {', '.join(missing)}.")
        renamed = {"scheduler": "sampler", "steps": "num_inference_steps", "guidance": "guidance_scale"}
        named = {new: record.get(old) for old, new in renamed.items()}
        named.update({name: record.get(name) for name in ("nfe", "num_samples", "dataset_split")})
        skipped = {"metric", "value", "reference", "model", "seed", *renamed, *named}
        details = {k: v for k, v in record.items() if k not in skipped and v is not None}
        return cls(record["metric"], record["value"], str(record["reference"]), details=details, **named)


_NAMED_SETTINGS = ("sampler", "num_inference_steps", "nfe", "guidance_scale", "num_samples")


_ROW_SETTINGS: dict[str, str] = {
    "sampler": "sampler",
    "scheduler": "sampler",
    "num_inference_steps": "num_inference_steps",
    "steps": "num_inference_steps",
    "nfe": "nfe",
    "num_model_evaluations": "nfe",
    "guidance_scale": "guidance_scale",
    "guidance": "guidance_scale",
    "num_samples": "num_samples",
    "dataset_split": "dataset_split",
}
"""Keys of a figure row that are settings of every figure in it, and the `CardResult` field each one fills."""
_FLOOR_SUFFIX = "_floor"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def results_from_evaluation(evaluation: Mapping[str, Any], dataset: str) -> list[CardResult]:
    """Results from one row of figures measured at one setting, e.g. a record of digit evaluation.

    Each number is a result, except:

    - the settings: ``sampler`` / ``scheduler``, ``num_inference_steps`` / ``steps``, ``nfe`` /
      ``num_model_evaluations``, ``guidance_scale`` / ``guidance``, ``num_samples``, ``dataset_split``;
    - ``<metric>_floor`` (the real-vs-real value of a metric): the ``real_vs_real_floor`` detail of that metric's
      result (a detail of every result when the row has no such metric);
    - other counts (``num_*``, e.g. ``num_reference``), ``seed``, and the classifier's own accuracies
      (``classifier_*``), and any non-number: details of every result, describing how the figures were measured.

    Example::

        rows = [{"guidance_scale": 2.0, "num_model_evaluations": 8, "scheduler": "euler", "digit_accuracy": 0.99,
                 "fd_ratio": 1.2, "precision": 0.8, "recall": 0.8, "num_samples": 500}]
        results = [r for row in rows for r in results_from_evaluation(row, "sklearn_digits")]

    Args:
        evaluation: The row, e.g. ``{"digit_accuracy": 0.97, "num_samples": 500, "num_inference_steps": 20,
            "guidance_scale": 3.0, "classifier_heldout_accuracy": 0.99}``.
        dataset: The data the figures were measured against (a Hub dataset id, ``"sklearn_digits"``, a folder).

    Returns:
        One result per figure, in the row's order.

    Raises:
        ValueError: If a setting or a figure is malformed (see `CardResult`), or two keys give the same setting
            different values (``steps`` and ``num_inference_steps``, ...).
    """
    settings: dict[str, Any] = {}
    for key, field_name in _ROW_SETTINGS.items():
        value = evaluation.get(key)
        if value is None:
            continue
        if field_name in settings and settings[field_name] != value:
            raise ValueError(
                f"{key}={value!r} contradicts {field_name}={settings[field_name]!r} in the same row; allowed: one "
                "value per setting."
            )
        settings[field_name] = value
    metrics = [
        key
        for key, value in evaluation.items()
        if key not in _ROW_SETTINGS
        and _is_number(value)
        and not key.endswith(_FLOOR_SUFFIX)
        and not key.startswith(("num_", "classifier_"))
        and key != "seed"
    ]
    floors = {f"{metric}{_FLOOR_SUFFIX}" for metric in metrics}
    shared = {
        key: value
        for key, value in evaluation.items()
        if key not in _ROW_SETTINGS and key not in metrics and key not in floors and value is not None
    }
    return [
        CardResult(
            metric=str(metric),
            value=evaluation[metric],
            dataset=dataset,
            details={
                **shared,
                **(
                    {"real_vs_real_floor": evaluation[f"{metric}{_FLOOR_SUFFIX}"]}
                    if f"{metric}{_FLOOR_SUFFIX}" in evaluation
                    else {}
                ),
            },
            **settings,
        )
        for metric in metrics
    ]


def results_from_rows(rows: Iterable[Mapping[str, Any]], dataset: str) -> list[CardResult]:
    """Results from several rows of figures, each measured at its own setting (see `results_from_evaluation`).

    Args:
        rows: E.g. ``[{"guidance_scale": 2.0, "num_model_evaluations": 8, "scheduler": "euler",
            "digit_accuracy": 0.99, "fd_ratio": 1.2, "precision": 0.8, "recall": 0.8, "num_samples": 500}, ...]``.
        dataset: The data every figure was measured against.

    Returns:
        The results of all rows, row after row.

    Raises:
        ValueError: If a row is not a dict, or is malformed (see `results_from_evaluation`).
    """
    results = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise ValueError(f"row {row!r} is not allowed; allowed: a dict of figures and settings.")
        results.extend(results_from_evaluation(row, dataset))
    return results


def _as_card_result(result: CardResult | EvalResult | Mapping[str, Any]) -> CardResult:
    if isinstance(result, CardResult):
        return result
    if isinstance(result, EvalResult):
        return CardResult.from_eval_result(result)
    if isinstance(result, Mapping):
        if "reference" in result:
            return CardResult.from_record(result)
        fields = {field.name for field in dataclasses.fields(CardResult)}
        missing = [name for name in ("metric", "value", "dataset") if name not in result]
        unknown = sorted(set(result) - fields)
        if missing or unknown:
            raise ValueError(
                f"results entry {dict(result)!r} lacks {missing} / has unknown {unknown}; allowed: the fields of "
                "CardResult, or a record of flow_pipelines.evaluate's metrics.json (turn rows of figures such as "
                "{'digit_accuracy': 0.99, 'guidance_scale': 2.0, ...} into results with results_from_rows)."
            )
        return CardResult(**result)
    raise ValueError(f"results entry {result!r} is not allowed; allowed: CardResult, EvalResult or a dict.")


def _card_results(results: Any) -> list[CardResult]:
    """``results`` (a list of `CardResult`, ``EvalResult`` or dicts) as `CardResult` objects."""
    if results is None:
        return []
    if isinstance(results, (str, bytes, Mapping, CardResult, EvalResult)) or not isinstance(
        results, Iterable
    ):
        raise ValueError(
            f"results={results!r} is not allowed; allowed: a list of CardResult, EvalResult or dicts (wrap a single "
            "one in a list; turn rows of figures into results with results_from_rows)."
        )
    return [_as_card_result(result) for result in results]


def merge_results(old: Sequence[CardResult], new: Sequence[CardResult]) -> list[CardResult]:
    """``old`` with each result of ``new`` replacing the one of the same metric, data and settings, or added.

    Args:
        old: The results a card has.
        new: Newly measured results.

    Returns:
        The merged list, in the order first seen.
    """
    merged = {result._identity(): result for result in old}
    merged.update((result._identity(), result) for result in new)
    return list(merged.values())


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value).replace("|", "\\|")


def _check_license(license: str | None) -> None:
    if license is not None and (not isinstance(license, str) or not _LICENSE.fullmatch(license)):
        raise ValueError(
            f"license={license!r} is not allowed; allowed: a Hub license identifier such as 'apache-2.0', 'mit', "
            "'cc-by-4.0' or 'other' (see https://huggingface.co/docs/hub/repositories-licenses), or None."
        )


def _check_hub_id(name: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _HUB_ID.fullmatch(value)):
        raise ValueError(
            f"{name}={value!r} is not allowed; allowed: a Hub id 'user/name' (or 'name'), or None."
        )


def _card_text(state: dict[str, Any], template_path: Path) -> str:
    """Render a card from its state (see `write_model_card`)."""
    results = [CardResult(**{**r, "details": r.get("details") or {}}) for r in state["results"]]
    id2label = {int(k): v for k, v in state["id2label"].items()}
    dataset_id = state["dataset_id"]
    repo_id = state["repo_id"]
    model_name = state["model_name"] or (repo_id.split("/")[-1] if repo_id else state["folder_name"])
    base_model = state.get("base_model")
    card_data = ModelCardData(
        library_name="diffusers",
        license=state["license"],
        tags=list(CARD_TAGS),
        datasets=[dataset_id] if dataset_id else None,
        pipeline_tag=state.get("pipeline_tag"),
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        # The model-index's name; without results there is no model-index to name.
        model_name=model_name if results else None,
        eval_results=[result.to_eval_result() for result in results] or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=repo_id or "<namespace>/<model-name>",
        on_hub=repo_id is not None,
        install_command=state["install_command"],
        dataset_name=state["dataset_name"],
        dataset_id=dataset_id,
        base_model=base_model,
        sample_grid=state["sample_grid"],
        example_labels=list(id2label)[:4] if id2label else [0],
        guidance_scale=state["guidance_scale"],
        prediction_type=state["prediction_type"],
        num_classes=len(id2label) if id2label else "?",
        class_names=", ".join(f"{k}: {v}" for k, v in sorted(id2label.items()))
        if len(id2label) <= 100
        else "",
        training_rows=[
            (key, _format_value(value))
            for key, value in sorted(state["training_config"].items())
            if value is not None
        ],
        result_rows=[
            (
                METRIC_NAMES.get(r.metric, r.metric),
                _format_value(r.value),
                r.dataset + (f" ({r.dataset_split})" if r.dataset_split else ""),
                r.sampler or "",
                "" if r.num_inference_steps is None else str(r.num_inference_steps),
                "" if r.nfe is None else str(r.nfe),
                "" if r.guidance_scale is None else _format_value(r.guidance_scale),
                "" if r.num_samples is None else str(r.num_samples),
            )
            for r in results
        ],
        note_rows=[(key, _format_value(value)) for key, value in state.get("notes", [])],
    )
    return str(card)


def _publish_card(pipeline_dir: Path, state: dict[str, Any], template_path: Path) -> Path:
    """Render the card in full, then write README.md and its state, each atomically."""
    text = _card_text(state, template_path)
    path = pipeline_dir / "README.md"
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))
    write_json(
        pipeline_dir / CARD_STATE_FILE, {**state, "readme_sha256": hashlib.sha256(text.encode()).hexdigest()}
    )
    return path


def write_model_card(
    pipeline_dir: str | os.PathLike,
    *,
    training_config: Mapping[str, Any],
    dataset_name: str,
    id2label: Mapping[int, str] | None = None,
    sample_grid: str | None = None,
    results: Sequence[CardResult | EvalResult | Mapping[str, Any]] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    prediction_type: str = "velocity",
    guidance_scale: float = 4.0,
    license: str | None = None,
    dataset_id: str | None = None,
    base_model: str | None = None,
    pipeline_tag: str | None = None,
    install_command: str = INSTALL_HINT,
    template_path: str | os.PathLike | None = None,
) -> Path:
    """Render the model card of a saved pipeline into ``pipeline_dir/README.md`` (replaced atomically).

    The card's metadata is the Hub's: ``library_name: diffusers``, tags (``flow_pipelines``, ``flow-matching``,
    ``class-conditional-image-generation``, ...), ``license``, ``datasets`` (the Hub dataset trained on, if any) and a
    ``model-index`` with every result. Its usage section installs the package and loads the repository with
    ``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` (and ``FlowPipeline.from_pretrained``).
    What it was rendered from is saved beside it (``.model_card.json``) for `update_model_card`.

    Args:
        pipeline_dir: The saved `FlowPipeline` folder.
        training_config: The run's settings; credentials, local-only settings and local paths are left out
            (`card_config`).
        dataset_name: What it was trained on: a Hub dataset id, a description, a folder (local paths are shortened).
        id2label: Class names by id.
        sample_grid: Path of a sample grid image relative to ``pipeline_dir``.
        results: Evaluation results: `CardResult` objects, huggingface_hub ``EvalResult`` objects, or dicts (records
            of ``flow_pipelines.evaluate``'s ``metrics.json``, or `CardResult` fields).
        evaluation: The older form of one row of figures, ``{"digit_accuracy": 0.97, "num_samples": 500,
            "num_inference_steps": 20, "guidance_scale": 3.0, ...}``: its numbers and settings are mapped with
            `results_from_evaluation` (measured on ``dataset_id``, else ``"sklearn_digits"`` for the digits, else
            ``dataset_name``) and added to ``results`` (an entry of ``results`` for the same measurement wins); its
            other text values (``{"setting": "guidance 2, 8 steps"}``) are shown as they are, in a table of notes
            under the results, and are not part of the metadata.
        repo_id: The Hub repository (``"user/name"``) the card will live in; the usage snippets load it. Without one,
            they show ``<namespace>/<model-name>`` until ``hub.push_pipeline_to_hub`` names the repository.
        model_name: The card's title; the repository's name, else the folder's, by default.
        prediction_type: What the model predicts (``velocity``, ``sample`` or ``epsilon``).
        guidance_scale: The guidance scale suggested in the example.
        license: A Hub license identifier (``"apache-2.0"``, ``"cc-by-nc-4.0"``, ``"other"``, ...): the terms the
            weights are published under, which the training data's terms may constrain. None leaves it out.
        dataset_id: The Hub dataset id for the metadata; guessed from ``dataset_name`` (`hub_dataset_id`) if None.
        base_model: The Hub model this one was fine-tuned from (``"user/name"``), for the ``base_model`` metadata;
            None for a model trained from scratch.
        pipeline_tag: The Hub task to list the model under, e.g. ``"unconditional-image-generation"``. None (the
            default) sets none: the Hub has no class-conditional generation task, and its image-generation tasks
            promise a widget call without class labels that this pipeline does not take; the tags and the
            ``model-index`` task (`TASK_TYPE`) say what it does instead.
        install_command: The install line shown before the snippets (e.g. a ``pip install git+...`` URL).
        template_path: A Jinja template; ``model_cards/flow_pipeline.md`` by default.

    Returns:
        The path of the written card.

    Raises:
        FileNotFoundError: If the folder or the template does not exist.
        ValueError: If ``sample_grid`` names a file that is not in ``pipeline_dir``, ``license`` or
            ``pipeline_tag`` is not an identifier, ``repo_id`` or ``base_model`` does not look like ``"user/name"``,
            ``dataset_name`` is empty, ``prediction_type`` is unknown, ``guidance_scale`` is not a finite number, or a
            result is malformed.
    """
    pipeline_dir = Path(pipeline_dir)
    if not pipeline_dir.is_dir():
        raise FileNotFoundError(f"Pipeline folder {str(pipeline_dir)!r} does not exist.")
    template_path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {str(template_path)!r} not found.")
    if sample_grid is not None and not (pipeline_dir / sample_grid).is_file():
        raise ValueError(f"sample_grid={sample_grid!r} is not a file inside {str(pipeline_dir)!r}.")
    _check_license(license)
    _check_hub_id("repo_id", repo_id)
    _check_hub_id("base_model", base_model)
    _check_hub_id("dataset_id", dataset_id)
    if pipeline_tag is not None and (
        not isinstance(pipeline_tag, str) or not _LICENSE.fullmatch(pipeline_tag)
    ):
        raise ValueError(
            f"pipeline_tag={pipeline_tag!r} is not allowed; allowed: a Hub task id such as "
            "'unconditional-image-generation', or None."
        )
    if not isinstance(dataset_name, str) or not dataset_name.strip():
        raise ValueError(f"dataset_name={dataset_name!r} is not allowed; allowed: a non-empty string.")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not allowed; allowed: {', '.join(PREDICTION_TYPES)}."
        )
    guidance_scale = _finite_number("guidance_scale", guidance_scale)
    if not isinstance(install_command, str) or not install_command.strip():
        raise ValueError(f"install_command={install_command!r} is not allowed; allowed: a non-empty string.")
    if evaluation is not None and not isinstance(evaluation, Mapping):
        raise ValueError(f"evaluation={evaluation!r} is not allowed; allowed: a dict of figures, or None.")
    dataset_id = dataset_id if dataset_id is not None else hub_dataset_id(dataset_name)
    all_results = _card_results(results)
    notes: list[tuple[str, str]] = []
    if evaluation:
        measured_on = dataset_id or (DIGITS_DATASET if "digits" in dataset_name else dataset_name)
        figures = {
            key: value
            for key, value in evaluation.items()
            if key in _ROW_SETTINGS or not isinstance(value, str)
        }
        notes = [(str(key), value) for key, value in evaluation.items() if key not in figures]
        all_results = merge_results(results_from_evaluation(figures, measured_on), all_results)
    state = {
        "training_config": {key: _jsonable(value) for key, value in card_config(training_config).items()},
        "dataset_name": public_text(dataset_name),
        "dataset_id": dataset_id,
        "id2label": {str(k): v for k, v in (id2label or {}).items()},
        "sample_grid": sample_grid,
        "results": [dataclasses.asdict(result) for result in all_results],
        "repo_id": repo_id,
        "model_name": model_name,
        "folder_name": pipeline_dir.resolve().name,
        "prediction_type": prediction_type,
        "guidance_scale": guidance_scale,
        "license": license,
        "base_model": base_model,
        "pipeline_tag": pipeline_tag,
        "notes": notes,
        "install_command": install_command,
        "template_path": str(template_path),
    }
    return _publish_card(pipeline_dir, state, template_path)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def update_model_card(
    pipeline_dir: str | os.PathLike,
    *,
    results: Sequence[CardResult | EvalResult | Mapping[str, Any]] = (),
    repo_id: str | None = None,
) -> Path:
    """Add results to a pipeline's card and/or name the repository it lives in; the card is replaced atomically.

    A card `write_model_card` rendered, unchanged since, is rendered again with the results merged (`merge_results`)
    and the new repository id. A card without that state, or edited by hand, keeps its text: only the results in
    its ``model-index`` metadata are merged (the repository id is then left to its author).

    Args:
        pipeline_dir: The pipeline folder holding ``README.md``.
        results: New results (see `write_model_card`).
        repo_id: The repository the card names from now on, or None to keep it.

    Returns:
        The path of the card.

    Raises:
        FileNotFoundError: If the folder has no ``README.md``.
        ValueError: If a result is malformed or ``repo_id`` does not look like ``"user/name"``.
    """
    pipeline_dir = Path(pipeline_dir)
    path = pipeline_dir / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: there is no model card to update.")
    _check_hub_id("repo_id", repo_id)
    new = _card_results(results)
    state = rendered_state(pipeline_dir)
    if state is not None:
        old = [CardResult(**r) for r in state["results"]]
        state["results"] = [dataclasses.asdict(r) for r in merge_results(old, new)]
        if repo_id is not None:
            state["repo_id"] = repo_id
        return _publish_card(pipeline_dir, state, Path(state["template_path"]))
    if repo_id is not None:
        logger.warning(
            "%s was not rendered by write_model_card or was edited: its text is left as it is.", path
        )
    card = ModelCard.load(path)
    old = [CardResult.from_eval_result(r) for r in card.data.eval_results or [] if r.task_type == TASK_TYPE]
    others = [r for r in card.data.eval_results or [] if r.task_type != TASK_TYPE]
    card.data.eval_results = others + [r.to_eval_result() for r in merge_results(old, new)] or None
    card.data.model_name = card.data.model_name or pipeline_dir.resolve().name
    text = str(card)
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))
    return path


def rendered_state(pipeline_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What a card was rendered from, if `write_model_card` rendered ``README.md`` and it is unchanged since.

    Args:
        pipeline_dir: The pipeline folder.

    Returns:
        The state saved with the card, or None (no state, or the card was edited or replaced).
    """
    pipeline_dir = Path(pipeline_dir)
    state_path = pipeline_dir / CARD_STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        rendered = hashlib.sha256((pipeline_dir / "README.md").read_bytes()).hexdigest()
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("readme_sha256") != rendered:
        return None
    if not Path(state.get("template_path", "")).is_file():
        state["template_path"] = str(DEFAULT_TEMPLATE)
    return state
