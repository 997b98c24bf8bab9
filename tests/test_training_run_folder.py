"""The run's output folder: one run per folder, replaced only when asked, user files and hidden folders kept,
staging folders of interrupted saves cleared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flow_pipelines.training.run_folder import check_run_folder, earlier_run, prepare_run_folder


def make_run(folder: Path, steps: tuple[int, ...]) -> None:
    """The files a finished run leaves (checkpoints hold their training state)."""
    (folder / "pipeline").mkdir(parents=True)
    (folder / "training_args.json").write_text("{}")
    (folder / "train_log.jsonl").write_text("")
    for step in steps:
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "training_state.json").write_text(json.dumps({"global_step": step}))


def test_a_new_run_needs_an_empty_folder_or_permission_to_replace_the_run_in_it(tmp_path: Path) -> None:
    assert check_run_folder(tmp_path / "new", None, overwrite=False) == []
    make_run(tmp_path, (2, 4))
    (tmp_path / "my_notes.md").write_text("mine")
    (tmp_path / ".git").mkdir()
    with pytest.raises(ValueError, match="already holds a run"):
        check_run_folder(tmp_path, None, overwrite=False)
    remove = check_run_folder(tmp_path, None, overwrite=True)
    assert sorted(path.name for path in remove) == sorted(path.name for path in earlier_run(tmp_path))
    prepare_run_folder(tmp_path, remove)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".git", "my_notes.md"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_run_folder(tmp_path / "file", None, overwrite=False)


def test_resuming_continues_the_newest_checkpoint_only(tmp_path: Path) -> None:
    make_run(tmp_path, (2, 4, 6))
    assert check_run_folder(tmp_path, tmp_path / "checkpoint-6", overwrite=False) == []
    with pytest.raises(ValueError, match="checkpoint-2 is older than checkpoint-6"):
        check_run_folder(tmp_path, tmp_path / "checkpoint-2", overwrite=False)
    later = check_run_folder(tmp_path, tmp_path / "checkpoint-2", overwrite=True)
    assert [path.name for path in later] == ["checkpoint-4", "checkpoint-6"]


def test_staging_folders_of_interrupted_saves_are_cleared_and_nothing_else(tmp_path: Path) -> None:
    stale = [tmp_path / ".checkpoint-8.tmp-0a1b2c3d", tmp_path / ".pipeline.old-deadbeef"]
    kept = [tmp_path / ".checkpoint-notes", tmp_path / ".cache", tmp_path / "checkpoint-4"]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "weights").write_bytes(b"x" * 100)
    assert sorted(prepare_run_folder(tmp_path, [])) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
