"""Atomic folder writes: a crash or Ctrl-C never leaves a half-written folder where a good one was."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _fsync_tree(folder: Path) -> None:
    """Flush every file below ``folder`` to disk, so that the rename publishes complete files."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Write a folder aside and move it into place only when the block finishes without error.

    The block receives an empty staging folder next to ``target`` (same file system, so the final
    move is a rename). On success an existing ``target`` is first renamed aside, the staging folder
    is renamed to ``target`` and the old one is deleted; on any exception, ``KeyboardInterrupt``
    included, the staging folder is removed and ``target`` is left as it was. A crash between the
    two renames leaves the previous folder intact as ``.<name>.old-*`` beside ``target``.

    Args:
        target: The folder to create or replace.

    Yields:
        The staging folder to write into.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.tmp-{token}"
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if target.exists():
        previous = target.parent / f".{target.name}.old-{token}"
        os.replace(target, previous)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
