"""Atomic writes: a finished block publishes the new file or folder; a failed one leaves the old one and no litter.
Updates of a user's folder replace only what they write; what is published gets ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from flow_pipelines.file_utils import atomic_directory, atomic_file, atomic_update, is_weights_file

from .conftest import file_modes


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


@pytest.mark.parametrize("write", [atomic_directory, atomic_update])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_folder_write_keeps_the_previous_folder_and_leaves_no_staging(
    tmp_path: Path, error: type[BaseException], write
) -> None:
    target = tmp_path / "checkpoint-10"
    target.mkdir()
    (target / "state.json").write_text("previous")
    with pytest.raises(error):
        with write(target) as staging:
            (staging / "state.json").write_text("half")
            raise error("interrupted")
    assert (target / "state.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]
    assert sorted(p.name for p in target.iterdir()) == ["state.json"]


def test_atomic_file_without_overwrite_never_replaces_a_file_created_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "grid.png"
    with pytest.raises(FileExistsError, match="grid.png was created by someone else meanwhile"):
        with atomic_file(target, overwrite=False) as handle:
            handle.write(b"new")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
    with atomic_file(tmp_path / "fresh.png", overwrite=False) as handle:
        handle.write(b"new")
    assert (tmp_path / "fresh.png").read_bytes() == b"new"


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_update_replaces_what_it_writes_and_keeps_everything_else(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "component").mkdir(parents=True)
    (folder / "component" / "config.json").write_text("old config")
    (folder / "component" / "weights-00001-of-00002").write_text("old shard")
    (folder / "component" / "notes.md").write_text("the user's")
    (folder / "index.json").write_text("old index")
    (folder / "checkpoint.pt").write_text("the user's checkpoint")
    (folder / "weights-00002-of-00002").write_text("stale top-level shard")

    def superseded(path: PurePosixPath) -> bool:
        return path.name.startswith("weights-")

    with atomic_update(folder, superseded=superseded) as staging:
        (staging / "component").mkdir()
        (staging / "component" / "config.json").write_text("new config")
        (staging / "index.json").write_text("new index")
        assert tree(folder)["index.json"] == "old index"  # nothing changes before the block ends
    assert tree(folder) == {
        "checkpoint.pt": "the user's checkpoint",
        "component/config.json": "new config",
        "component/notes.md": "the user's",
        "index.json": "new index",
    }
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "component", "index.json"]


def test_a_failed_update_of_a_new_folder_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_update(tmp_path / "new") as staging:
            (staging / "config.json").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # the folder made for it is gone again


def test_atomic_update_of_the_current_folder_and_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with atomic_update(".") as staging:
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    with pytest.raises(ValueError, match="config.json is a file; a folder"):
        with atomic_update("config.json"):
            pass
    (tmp_path / "transformer").write_text("a file")
    with pytest.raises(ValueError, match="transformer is a file, but this save writes a folder"):
        with atomic_update(".") as staging:
            (staging / "transformer").mkdir()
            (staging / "config.json").write_text("new")
    assert tree(tmp_path) == {"config.json": "{}", "transformer": "a file"}


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_weights_files_of_a_variant_in_either_format(suffix):
    for name in (
        f"diffusion_pytorch_model.{suffix}",
        f"diffusion_pytorch_model-00001-of-00003.{suffix}",
        f"diffusion_pytorch_model.{suffix}.index.json",
    ):
        assert is_weights_file(PurePosixPath("transformer") / name)
        assert not is_weights_file(name, variant="fp16")
    assert is_weights_file(f"diffusion_pytorch_model.fp16-00002-of-00002.{suffix}", variant="fp16")
    assert is_weights_file(f"diffusion_pytorch_model.{suffix}.index.fp16.json", variant="fp16")
    assert not is_weights_file(f"diffusion_pytorch_model.fp16.{suffix}")
    assert not is_weights_file("config.json") and not is_weights_file(f"model.{suffix}")
    assert not is_weights_file("diffusion_pytorch_model.pt")


@pytest.mark.parametrize(
    ("mask", "file_mode", "folder_mode"), [(0o022, "0o644", "0o755"), (0o002, "0o664", "0o775")]
)
def test_published_files_get_ordinary_permissions(
    tmp_path: Path, umask, mask, file_mode, folder_mode
) -> None:
    umask(mask)

    def write_private(folder: Path) -> None:
        # As safetensors and tempfile write: readable by the owner only.
        (folder / "sub").mkdir(mode=0o700)
        (folder / "sub" / "weights.safetensors").write_bytes(b"w")
        os.chmod(folder / "sub" / "weights.safetensors", 0o600)

    with atomic_directory(tmp_path / "checkpoint") as staging:
        write_private(staging)
    with atomic_update(tmp_path / "model") as staging:
        write_private(staging)
    with atomic_file(tmp_path / "metrics.json") as handle:
        handle.write(b"{}")
    assert file_modes(tmp_path) == {
        "checkpoint": folder_mode,
        "checkpoint/sub": folder_mode,
        "checkpoint/sub/weights.safetensors": file_mode,
        "metrics.json": file_mode,
        "model": folder_mode,
        "model/sub": folder_mode,
        "model/sub/weights.safetensors": file_mode,
    }
