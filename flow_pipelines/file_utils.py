"""File-system helpers: atomic writes of files and folders, and cheap change detection.

Atomic writes: a crash or Ctrl-C never leaves a half-written file or folder where a good one was. Both
:func:`atomic_file` and :func:`atomic_directory` write into a hidden staging sibling of the target (``.<name>.tmp-<token>``: same folder, so
same file system, so the final move is a rename), flush it to disk and rename it into place only when the
block finished without error; on any exception, ``KeyboardInterrupt`` included, the staging copy is removed
and the target is left as it was.

Change detection: :func:`file_fingerprint` (sizes and modification times) keys caches of what was computed
from a file or folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO


def _sibling(target: Path, role: str) -> Path:
    """A fresh hidden path beside ``target``: ``.<name>.<role>-<token>``."""
    return target.parent / f".{target.name}.{role}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _staged(target: Path, create: Callable[[Path], None], discard: Callable[[Path], None]) -> Iterator[Path]:
    """A new staging sibling of ``target``, made by ``create`` and discarded if the block raises.

    Args:
        target: The file or folder the staging copy will replace.
        create: Makes the staging path (exclusively: an existing path is never taken over).
        discard: Removes the staging path.

    Yields:
        The staging path.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "tmp")
    create(staging)
    try:
        yield staging
    except BaseException:
        discard(staging)
        raise


def _fsync_tree(folder: Path) -> None:
    """Flush every file below ``folder`` to disk, so that the rename publishes complete files."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Write a folder aside and move it into place only when the block finishes without error.

    The block receives an empty staging folder next to ``target``. On success an existing ``target`` is
    first renamed aside, the staging folder is renamed to ``target`` and the old one is deleted; on any
    exception the staging folder is removed and ``target`` is left as it was. A crash between the two
    renames leaves the previous folder intact as ``.<name>.old-*`` beside ``target``.

    Args:
        target: The folder to create or replace.

    Yields:
        The staging folder to write into.
    """
    target = Path(target)
    with _staged(target, Path.mkdir, partial(shutil.rmtree, ignore_errors=True)) as staging:
        yield staging
        _fsync_tree(staging)
        previous = None
        if target.exists():
            previous = _sibling(target, "old")
            os.replace(target, previous)
        os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write a file aside and rename it into place only when the block finishes without error.

    Example::

        with atomic_file("metrics.json") as handle:
            handle.write(json.dumps(records).encode())

    Args:
        target: The file to create or replace (its folder is created if missing).

    Yields:
        A binary handle on the staging file; it is flushed, synced and closed before the rename.
    """
    target = Path(target)
    create, discard = partial(Path.touch, exist_ok=False), partial(Path.unlink, missing_ok=True)
    with _staged(target, create, discard) as staging:
        with open(staging, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, target)


def file_fingerprint(path: Path) -> str:
    """Size and modification time of a file, or of every file below a folder: cheap change detection.

    Args:
        path: A file or folder.

    Returns:
        A short string that changes when a file is added, removed, resized or rewritten.
    """
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"
    digest = hashlib.sha1()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]
