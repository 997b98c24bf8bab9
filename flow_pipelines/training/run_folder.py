"""The run's output folder: one run per folder, continued only when asked, and never a file of the user's lost.

A folder that already holds a run (its ``training_args.json``, ``train_log.jsonl``, ``train_summary.json``,
``pipeline/`` or ``checkpoint-*``) is refused unless the run is resumed (``--resume_from_checkpoint``) or
replaced (``--overwrite_output_dir``, which removes that run's own files and nothing else). Resuming from a
checkpoint older than the folder's newest would mix two histories, and is refused the same way. Staging
folders that an interrupted save left behind (``.checkpoint-N.tmp-*``, gigabytes at DiT-XL size) are removed
when a run starts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .checkpointing import checkpoint_step, list_checkpoints

RUN_FILES: tuple[str, ...] = (
    "training_args.json",
    "train_log.jsonl",
    "train_summary.json",
    "pipeline",
    "samples",
)
"""What a run writes into its folder besides checkpoints (the tracker and latent-cache folders are kept)."""

# Staging and previous-version folders of file_utils.atomic_directory, named after their target.
_STAGING = re.compile(r"^\.(checkpoint-\d+|pipeline)\.(tmp|old)-[0-9a-f]+$")
_PIPELINE_STAGING = re.compile(r"^\.(tmp|[^/]+\.(tmp|old))-[0-9a-f]+$")


def earlier_run(output_dir: str | Path) -> list[Path]:
    """The files of a run that already lives in ``output_dir`` (empty when there is none).

    Args:
        output_dir: The run's folder.

    Returns:
        The run's own files and folders found there.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return [output_dir / name for name in RUN_FILES if (output_dir / name).exists()] + list_checkpoints(
        output_dir
    )


def check_run_folder(output_dir: str | Path, resume_from: Path | None, overwrite: bool) -> list[Path]:
    """Decide whether this run may use ``output_dir``, without changing anything (every process calls it).

    Args:
        output_dir: ``--output_dir``.
        resume_from: The checkpoint being resumed, or None for a new run.
        overwrite: ``--overwrite_output_dir``.

    Returns:
        What must be removed before the run starts: the earlier run's files (with ``overwrite``), or the
        checkpoints newer than the one resumed from (with ``overwrite``); empty otherwise.

    Raises:
        ValueError: If the folder holds another run and neither resuming nor overwriting was asked for, or the
            resumed checkpoint is not the folder's newest.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(
            f"--output_dir {str(output_dir)!r} is a file; it must be a folder (or not exist yet)."
        )
    if resume_from is None:
        found = earlier_run(output_dir)
        if found and not overwrite:
            names = ", ".join(path.name for path in found[:6])
            raise ValueError(
                f"--output_dir {str(output_dir)!r} already holds a run ({names}). Pass --resume_from_checkpoint "
                "latest to continue it, --overwrite_output_dir to replace it (its own files only), or another "
                "--output_dir."
            )
        return found
    newer = [
        path for path in list_checkpoints(output_dir) if checkpoint_step(path) > checkpoint_step(resume_from)
    ]
    if newer and not overwrite:
        raise ValueError(
            f"--resume_from_checkpoint {resume_from.name} is older than {newer[-1].name} in {str(output_dir)!r}; "
            "continuing from it would mix two histories. Resume from 'latest', or pass --overwrite_output_dir to "
            f"continue from {resume_from.name} and remove the later checkpoints."
        )
    return newer


def prepare_run_folder(output_dir: str | Path, remove: list[Path]) -> list[Path]:
    """Remove what :func:`check_run_folder` listed and the staging folders of interrupted saves (main process).

    Args:
        output_dir: The run's folder (created if missing).
        remove: Paths to remove (from :func:`check_run_folder`).

    Returns:
        The stale staging folders removed.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in remove:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    stale = [path for path in output_dir.iterdir() if path.is_dir() and _STAGING.match(path.name)]
    pipeline = output_dir / "pipeline"
    if pipeline.is_dir():  # file_utils.atomic_update stages inside the folder it updates
        stale += [path for path in pipeline.iterdir() if _PIPELINE_STAGING.match(path.name)]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
