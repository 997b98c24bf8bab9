"""Atomic writes: a finished block publishes the new file or folder; a failed one leaves the old one and no litter."""

from __future__ import annotations

from pathlib import Path

import pytest

from flow_pipelines.file_utils import atomic_directory, atomic_file


def test_atomic_file_creates_the_file_and_its_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "metrics.json"
    with atomic_file(target) as handle:
        handle.write(b"{}")
        assert not target.exists()  # nothing is visible before the block ends
    assert target.read_bytes() == b"{}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_atomic_file_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "samples.npz"
    target.write_bytes(b"old")
    with atomic_file(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_file_write_keeps_the_previous_file_and_leaves_no_temporary(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "stats.npz"
    target.write_bytes(b"previous")
    with pytest.raises(error):
        with atomic_file(target) as handle:
            handle.write(b"half of the new cont")
            raise error("interrupted")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.npz"]


def test_a_failed_first_file_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "metrics.json") as handle:
            handle.write(b"[")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_an_existing_folder(tmp_path: Path) -> None:
    target = tmp_path / "pipeline"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # the old folder stays until the block ends
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["sub", "sub/new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_folder_write_keeps_the_previous_folder_and_leaves_no_staging(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "checkpoint-10"
    target.mkdir()
    (target / "state.json").write_text("previous")
    with pytest.raises(error):
        with atomic_directory(target) as staging:
            (staging / "state.json").write_text("half")
            raise error("interrupted")
    assert (target / "state.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]
