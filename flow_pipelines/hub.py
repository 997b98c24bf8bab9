"""Publishing a pipeline folder to the Hugging Face Hub (its model card: :mod:`flow_pipelines.model_card`)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from .model_card import (
    CardResult,
    card_config,
    public_config,
    rendered_state,
    update_model_card,
    write_model_card,
)

__all__ = [
    "UPLOAD_IGNORE_PATTERNS",
    "CardResult",
    "card_config",
    "check_push_access",
    "public_config",
    "push_pipeline_to_hub",
    "update_model_card",
    "write_model_card",
]

# Never uploaded with a pipeline: training checkpoints, logs, and hidden files (staging folders, the card state).
UPLOAD_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "logs/**", "wandb/**", ".*", ".*/**"]


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
        The repository's URL (huggingface_hub's ``RepoUrl``, a ``str`` whose ``repo_id`` includes the namespace).

    Raises:
        ValueError: If the Hub cannot be reached, the token is missing or refused, or the repo id is invalid.
    """
    api = api or HfApi()
    try:
        return api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
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

    The model card (if `write_model_card` rendered it) is first rendered again naming the repository, with its
    namespace as the Hub resolved it (``"name"`` becomes ``"user/name"``), so that its usage snippets load what is
    uploaded. Checkpoints (``checkpoint-*``), logs and hidden files (the card's state, staging folders) are left
    out. The token is passed to the Hub client only; it is never written anywhere.

    Args:
        pipeline_dir: The saved `FlowPipeline` folder (with its model card).
        repo_id: ``"user/name"`` of the repository (or ``"name"``, in the token's own namespace).
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
    url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    full_repo_id = getattr(url, "repo_id", None) or repo_id
    if rendered_state(pipeline_dir) is not None:
        update_model_card(pipeline_dir, repo_id=full_repo_id)
    commit = api.upload_folder(
        repo_id=full_repo_id,
        folder_path=pipeline_dir,
        token=token,
        commit_message=commit_message,
        ignore_patterns=UPLOAD_IGNORE_PATTERNS,
        repo_type="model",
    )
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)
