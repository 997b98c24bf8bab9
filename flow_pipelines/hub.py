"""Model cards for saved pipelines, and publishing a pipeline folder to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .file_utils import atomic_file

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "flow_pipeline.md"
# Never uploaded with a pipeline: training checkpoints, logs, and staging folders of atomic writes.
UPLOAD_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "logs/**", "wandb/**", ".*", ".*/**"]
_SECRET_WORDS = ("token", "secret", "password")


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """A training configuration without credentials, safe to log, print or publish.

    Args:
        config: Settings, e.g. ``vars(args)`` of a training script.

    Returns:
        A copy without any key that names a token, secret or password.
    """
    return {
        key: value for key, value in config.items() if not any(word in key.lower() for word in _SECRET_WORDS)
    }


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value).replace("|", "\\|")


def write_model_card(
    pipeline_dir: str | os.PathLike,
    *,
    training_config: dict[str, Any],
    dataset_name: str,
    id2label: dict[int, str] | None = None,
    sample_grid: str | None = None,
    evaluation: dict[str, float | str] | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    prediction_type: str = "velocity",
    guidance_scale: float = 4.0,
    license: str = "apache-2.0",
    template_path: str | os.PathLike | None = None,
) -> Path:
    """Render the model card of a saved pipeline into ``pipeline_dir/README.md`` (replaced atomically).

    Args:
        pipeline_dir: The saved `FlowPipeline` folder.
        training_config: The run's settings (credentials are dropped, see `public_config`).
        dataset_name: What it was trained on (a Hub dataset id, a folder name, or ``"digits"``).
        id2label: Class names by id.
        sample_grid: Path of a sample grid image relative to ``pipeline_dir``.
        evaluation: Metric name to value, shown as a table.
        repo_id: The Hub repository the card will live in; the loading example uses it.
        model_name: The card's title; the repository's name, else the folder's, by default.
        prediction_type: What the model predicts (``velocity``, ``sample`` or ``epsilon``).
        guidance_scale: The guidance scale suggested in the example.
        license: The card's license identifier.
        template_path: A Jinja template; ``model_cards/flow_pipeline.md`` by default.

    Returns:
        The path of the written card.

    Raises:
        FileNotFoundError: If the folder or the template does not exist.
        ValueError: If ``sample_grid`` names a file that is not in ``pipeline_dir``.
    """
    pipeline_dir = Path(pipeline_dir)
    if not pipeline_dir.is_dir():
        raise FileNotFoundError(f"Pipeline folder {str(pipeline_dir)!r} does not exist.")
    template_path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {str(template_path)!r} not found.")
    if sample_grid is not None and not (pipeline_dir / sample_grid).is_file():
        raise ValueError(f"sample_grid={sample_grid!r} is not a file inside {str(pipeline_dir)!r}.")

    id2label = {int(k): v for k, v in (id2label or {}).items()}
    is_hub_dataset = "/" in dataset_name and not Path(dataset_name).exists()
    card_data = ModelCardData(
        library_name="flow_pipelines",
        license=license,
        tags=["flow-matching", "diffusers", "class-conditional", "image-generation", "dit", "flow_pipelines"],
        datasets=[dataset_name]
        if is_hub_dataset or dataset_name in {"mnist", "cifar10", "imagenet-1k"}
        else None,
        pipeline_tag="unconditional-image-generation",
    )
    config = public_config(training_config)
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name or (repo_id.split("/")[-1] if repo_id else pipeline_dir.name),
        repo_id=repo_id or str(pipeline_dir),
        dataset_name=dataset_name,
        sample_grid=sample_grid,
        example_labels=list(id2label)[:4] if id2label else [0],
        guidance_scale=guidance_scale,
        prediction_type=prediction_type,
        num_classes=len(id2label) if id2label else "?",
        class_names=", ".join(f"{k}: {v}" for k, v in sorted(id2label.items()))
        if len(id2label) <= 100
        else "",
        training_rows=[
            (key, _format_value(value)) for key, value in sorted(config.items()) if value is not None
        ],
        evaluation_rows=[(key, _format_value(value)) for key, value in (evaluation or {}).items()],
    )
    path = pipeline_dir / "README.md"
    # Rendered in full before anything is written, then renamed into place: a failure never leaves a
    # truncated card where the previous one was.
    text = str(card)
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))
    return path


def check_push_access(
    repo_id: str, token: str | None = None, private: bool = False, api: HfApi | None = None
) -> str:
    """Make sure a later upload can succeed: the Hub is reachable and the repository exists or can be created.

    Called before a training run, so that a missing login or a bad repo id fails in seconds, not after hours.

    Args:
        repo_id: ``"user/name"`` of the repository.
        token: A Hub token; the cached login (``hf auth login``, ``HF_TOKEN``) is used when ``None``.
        private: Create the repository as private.
        api: The Hub client to use; a default `HfApi` otherwise.

    Returns:
        The repository's URL.

    Raises:
        ValueError: If the Hub cannot be reached, the token is missing or refused, or the repo id is invalid.
    """
    api = api or HfApi()
    try:
        return str(api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model"))
    except Exception as error:  # offline mode, HTTP and validation errors alike: one message, before any work
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"--push_to_hub: cannot create or reach the Hub repository {repo_id!r} ({type(error).__name__}: "
            f"{reason}). Log in with `hf auth login` (or set HF_TOKEN), check --hub_model_id, or drop --push_to_hub."
        ) from error


def push_pipeline_to_hub(
    pipeline_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload FlowPipeline",
    api: HfApi | None = None,
) -> str:
    """Create (if needed) a model repository and upload a saved pipeline folder to it.

    Checkpoints (``checkpoint-*``), logs and hidden staging folders are left out. The token is passed to
    the Hub client only; it is never written anywhere.

    Args:
        pipeline_dir: The saved `FlowPipeline` folder (with its model card).
        repo_id: ``"user/name"`` of the repository.
        token: A Hub token; the cached login is used when ``None``.
        private: Create the repository as private.
        commit_message: The commit message of the upload.
        api: The Hub client to use (another endpoint, for instance); a default `HfApi` otherwise.

    Returns:
        The URL of the commit.

    Raises:
        FileNotFoundError: If the folder has no ``model_index.json``.
    """
    pipeline_dir = Path(pipeline_dir)
    if not (pipeline_dir / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{str(pipeline_dir)!r} is not a saved pipeline: model_index.json is missing."
        )
    api = api or HfApi()
    api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=pipeline_dir,
        token=token,
        commit_message=commit_message,
        ignore_patterns=UPLOAD_IGNORE_PATTERNS,
        repo_type="model",
    )
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)
