"""File-system helpers: atomic writes of files and folders, and cheap change detection.

Atomic writes: a crash or Ctrl-C never leaves a half-written file or folder where a good one was. Both
:func:`atomic_file` and :func:`atomic_directory` write into a hidden staging sibling of the target (``.<name>.tmp-<token>``: same folder, so
same file system, so the final move is a rename), flush it to disk and rename it into place only when the
block finished without error; on any exception, ``KeyboardInterrupt`` included, the staging copy is removed
and the target is left as it was. :func:`atomic_update` writes into a folder the user owns (a saved pipeline,
a converted model): it replaces only the files and sub-folders it writes, each atomically, and never removes
anything else there.

Permissions: what these helpers publish gets the ordinary mode of a new file under the process umask (0644
and 0755 under umask 022), whatever mode the writer used (safetensors writes 0600).

Change detection: :func:`file_fingerprint` (sizes and modification times) keys caches of what was computed
from a file or folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

# diffusers' weight file names (``diffusers.utils.SAFETENSORS_WEIGHTS_NAME`` and its index), with the variant
# before the last suffix as diffusers' ``_add_variant`` puts it.
_WEIGHTS_STEM = "diffusion_pytorch_model"


def _sibling(target: Path, role: str) -> Path:
    """A fresh hidden path beside ``target``: ``.<name>.<role>-<token>``."""
    return target.parent / f".{target.name}.{role}-{uuid.uuid4().hex[:8]}"


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``).

    Returns:
        The umask, e.g. ``0o022``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only way to read it is to set it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_default_permissions(root: Path) -> None:
    """Give ``root`` and everything below it the mode a new file or folder gets under the current umask.

    Writers that stage through private temporary files (safetensors, ``tempfile``) leave 0600; published files
    get 0666 (0777 for folders and executables) less the umask, as ``open`` and ``mkdir`` would give them.
    Symbolic links are left alone.

    Args:
        root: A file or folder.
    """
    mask = current_umask()
    paths = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
    for path in paths:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        full = 0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666
        os.chmod(path, full & ~mask)


def is_weights_file(path: PurePosixPath | str, variant: str | None = None) -> bool:
    """Whether a file name is one of diffusers' weight files of a variant, in safetensors or PyTorch (``.bin``) form.

    Those are the single file, the shards and the shard index of a model saved with that variant (``None``:
    no variant): ``diffusion_pytorch_model[.VARIANT].safetensors``,
    ``diffusion_pytorch_model[.VARIANT]-00001-of-00003.safetensors``,
    ``diffusion_pytorch_model.safetensors.index[.VARIANT].json``, and the same with ``.bin``. A save of that variant
    owns all of them, in both formats: the shards of an earlier sharded save are stale once a single file is
    written, and an earlier safetensors file would be loaded instead of a new ``.bin`` (and vice versa).

    Args:
        path: The file (only its name is looked at).
        variant: The weight variant, e.g. ``"fp16"``.

    Returns:
        True for a weights file of that variant.
    """
    name = PurePosixPath(path).name
    tag = re.escape(f".{variant}") if variant else ""
    weights = rf"{_WEIGHTS_STEM}{tag}(-\d+-of-\d+)?\.(safetensors|bin)"
    index = rf"{_WEIGHTS_STEM}\.(safetensors|bin)\.index{tag}\.json"
    return re.fullmatch(weights, name) is not None or re.fullmatch(index, name) is not None


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
        apply_default_permissions(staging)
        previous = None
        if target.exists():
            previous = _sibling(target, "old")
            os.replace(target, previous)
        os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    """Hard-link a file (no data copied, the user's file untouched); copy where links are not possible."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _carry_over(
    previous: Path, staged: Path, root: Path, superseded: Callable[[PurePosixPath], bool]
) -> None:
    """Put into ``staged`` every entry of ``previous`` that the new write did not produce or supersede."""
    for entry in previous.iterdir():
        destination = staged / entry.name
        relative = PurePosixPath(entry.relative_to(root).as_posix())
        if destination.is_dir() and entry.is_dir() and not entry.is_symlink():
            _carry_over(entry, destination, root, superseded)
        elif destination.exists() or destination.is_symlink() or superseded(relative):
            continue
        elif entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, destination, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), destination)
        else:
            _link_or_copy(str(entry), str(destination))


def _remove_entry(path: Path) -> None:
    """Delete a file, link or folder tree (a link is removed, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_folder(staged: Path, target: Path) -> None:
    """Rename ``staged`` to ``target``, moving a previous ``target`` aside first and deleting it afterwards."""
    previous = None
    if target.exists() or target.is_symlink():
        previous = _sibling(target, "old")
        os.replace(target, previous)
    try:
        os.replace(staged, target)
    except BaseException:
        if previous is not None:
            os.replace(previous, target)
        raise
    if previous is not None:
        _remove_entry(previous)


def _check_kinds(staging: Path, folder: Path) -> None:
    """Refuse to publish a file where ``folder`` has a folder of that name, or a folder where it has a file."""
    for entry in staging.iterdir():
        existing = folder / entry.name
        if not (existing.exists() or existing.is_symlink()):
            continue
        if entry.is_dir() != existing.is_dir():
            written, found = ("folder", "file") if entry.is_dir() else ("file", "folder")
            raise ValueError(
                f"{existing} is a {found}, but this save writes a {written} of that name there; move it away "
                "first (nothing was changed)."
            )


@contextlib.contextmanager
def atomic_update(
    folder: str | os.PathLike, superseded: Callable[[PurePosixPath], bool] | None = None
) -> Iterator[Path]:
    """Write files and sub-folders into a folder the user owns, replacing only what is written.

    The block writes into an empty hidden staging folder inside ``folder`` (so ``"."`` works and every move is
    a rename on one file system). Nothing in ``folder`` changes until the block has finished without error;
    then each top-level entry written is moved into place, sub-folders first and plain files last (a
    ``model_index.json`` or ``config.json`` thus appears after what it describes):

    - a file replaces the file of that name by one rename: readers see the old file or the new one, never a
      part of either;
    - a sub-folder replaces the sub-folder of that name as a whole, after the files of the previous one that
      this write did not produce (a user's notes, other weight variants) have been hard-linked into it. A
      crash between the two renames leaves the previous folder intact as ``.<name>.old-*``.

    Nothing else in ``folder`` is removed, except files that ``superseded`` claims: stale weight shards of an
    earlier save of the same variant, say, which would otherwise be loaded instead of the new weights.

    Example::

        with atomic_update("outputs/model") as staging:
            model.save_pretrained(staging)

    Args:
        folder: The folder to write into (created if missing).
        superseded: Given a path relative to ``folder`` (``transformer/diffusion_pytorch_model.safetensors``),
            whether this write owns it even when it did not produce it: such files are not carried over or
            kept. None claims nothing.

    Yields:
        The staging folder to write into.

    Raises:
        ValueError: If ``folder`` is an existing file, or an entry written has the name of an existing entry of
            the other kind (a file where ``folder`` has a folder, or the reverse); nothing is changed then.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; a folder (new or existing) is needed here.")
    superseded = superseded or (lambda path: False)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):  # a folder made for this write, if still empty
                    folder.rmdir()
            raise
        _check_kinds(staging, folder)
        _fsync_tree(staging)
        apply_default_permissions(staging)
        entries = sorted(staging.iterdir(), key=lambda entry: (not entry.is_dir(), entry.name))
        for entry in entries:
            target = folder / entry.name
            if entry.is_dir():
                if target.is_dir():
                    _carry_over(target, entry, folder, superseded)
                _swap_folder(entry, target)
            else:
                os.replace(entry, target)
        written = {entry.name for entry in entries}
        for existing in folder.iterdir():
            if (
                existing.name not in written
                and existing.is_file()
                and superseded(PurePosixPath(existing.name))
            ):
                existing.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Write a file aside and rename it into place only when the block finishes without error.

    Example::

        with atomic_file("metrics.json") as handle:
            handle.write(json.dumps(records).encode())

    Args:
        target: The file to create or replace (its folder is created if missing).
        overwrite: Replace an existing ``target``. When False the file is published only if ``target`` still
            does not exist at the end (checked by the same system call that publishes it, so a file created
            meanwhile is never replaced).

    Yields:
        A binary handle on the staging file; it is flushed, synced and closed before the rename.

    Raises:
        FileExistsError: If ``overwrite`` is False and ``target`` exists when the file is published.
    """
    target = Path(target)
    create, discard = partial(Path.touch, exist_ok=False), partial(Path.unlink, missing_ok=True)
    with _staged(target, create, discard) as staging:
        with open(staging, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        apply_default_permissions(staging)
        if overwrite:
            os.replace(staging, target)
        else:
            _publish_new_file(staging, target)


def write_json(target: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (:func:`atomic_file`).

    Args:
        target: The file to create or replace.
        data: Anything ``json.dumps`` takes.

    Returns:
        The path written.
    """
    with atomic_file(target) as handle:
        handle.write(json.dumps(data, indent=2).encode("utf-8"))
    return Path(target)


def _publish_new_file(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target`` only if ``target`` does not exist (a hard link fails on an existing name)."""
    try:
        os.link(staging, target)
    except FileExistsError:
        raise FileExistsError(
            f"{target} was created by someone else meanwhile; it was not replaced."
        ) from None
    except OSError:
        # A file system without hard links: the check and the rename are then two steps.
        if target.exists():
            raise FileExistsError(
                f"{target} was created by someone else meanwhile; it was not replaced."
            ) from None
        os.replace(staging, target)
        return
    staging.unlink()


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
