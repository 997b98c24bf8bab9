"""The sampling command line: a labelled grid from a saved pipeline, every scheduler, labels by id, name or at
random, and bad input."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flow_pipelines.sample
from flow_pipelines.sample import _parse_labels, main, run
from flow_pipelines.schedulers import SCHEDULERS, make_scheduler, scheduler_name
from flow_pipelines.training.publish import PIPELINE_FOLDER

from .cli_support import REPO_ROOT, assert_one_line_error, example_commands, run_command, truncate


@pytest.fixture
def saved_digits_pipeline(make_flow_pipeline, tmp_path) -> Path:
    folder = tmp_path / "digits"
    make_flow_pipeline(id2label="digits").save_pretrained(folder)
    return folder


def test_cli_writes_one_row_per_class(saved_digits_pipeline, tmp_path, capsys):
    out = tmp_path / "grids" / "grid.png"
    argv = ["--model", str(saved_digits_pipeline), "--class-labels", "3", "digit 7", "--steps", "3"]
    argv += ["--guidance", "4", "--scheduler", "heun", "--seed", "0", "--batch-size", "4", "--out", str(out)]
    assert main(argv) == out
    grid = Image.open(out)
    # 8x8 digits are upscaled 8x to 64-pixel cells: 2 rows, 4 columns, 2-pixel padding.
    assert grid.height == 2 + 2 * 66
    assert (grid.width - 2 - 4 * 66) > 20
    assert "2 classes x 4 images, FlowHeunScheduler, 3 steps, guidance 4" in capsys.readouterr().out

    again = tmp_path / "again.png"
    main([*argv[:-1], str(again)])
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(grid))  # seeded: reproducible


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_cli_accepts_every_scheduler(saved_digits_pipeline, tmp_path, capsys, scheduler):
    out = tmp_path / f"{scheduler}.png"
    main(
        ["--model", str(saved_digits_pipeline), "--class-labels", "1", "--steps", "2", "--batch-size", "1"]
        + ["--scheduler", scheduler, "--out", str(out)]
    )
    assert Image.open(out).height == 2 + 66
    assert f"{type(make_scheduler(scheduler, {})).__name__}, 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("saved", ["heun", "multistep", "unipc"])
def test_without_scheduler_the_pipeline_samples_with_its_own(make_flow_pipeline, tmp_path, capsys, saved):
    # As diffusers' pipelines do: the saved scheduler, settings included, unless --scheduler names another.
    folder = tmp_path / "model"
    pipeline = make_flow_pipeline(id2label="digits")
    pipeline.scheduler = make_scheduler(saved, {"shift": 2.0})
    pipeline.save_pretrained(folder)
    main(["--model", str(folder), "--class-labels", "1", "--steps", "2", "--out", str(tmp_path / "grid.png")])
    assert f"{type(pipeline.scheduler).__name__}, 2 steps" in capsys.readouterr().out
    assert scheduler_name(pipeline.scheduler) == saved


def test_random_and_named_labels():
    labels = _parse_labels(["-1", "-1", "3", "digit 2", "-1"], num_classes=10, seed=0)
    assert labels == _parse_labels(["-1", "-1", "3", "digit 2", "-1"], num_classes=10, seed=0)
    assert labels[2:4] == [3, "digit 2"]
    assert all(isinstance(label, int) and 0 <= label < 10 for label in (labels[0], labels[1], labels[4]))
    assert len({tuple(_parse_labels(["-1"] * 4, num_classes=10, seed=seed)) for seed in range(5)}) > 1


def test_cli_runs_as_a_module(saved_digits_pipeline, tmp_path):
    out = tmp_path / "random.png"
    command = ["-m", "flow_pipelines.sample", "--model", str(saved_digits_pipeline)]
    command += ["--class-labels", "-1", "-1", "-1", "--steps", "2", "--batch-size", "2", "--out", str(out)]
    result = run_command(command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).height == 2 + 3 * 66

    # A broken model is one line on stderr and exit status 2, from the real command too.
    truncate(saved_digits_pipeline / "transformer" / "diffusion_pytorch_model.safetensors")
    result = run_command([*command[:-1], str(tmp_path / "other.png")], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, "diffusion_pytorch_model.safetensors is not a readable safetensors file"
    )


def test_cli_reports_bad_input_in_one_line(saved_digits_pipeline, tmp_path, capsys):
    status = run(
        [
            "--model",
            str(saved_digits_pipeline),
            "--class-labels",
            "digit 11",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert status == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: unknown class name 'digit 11'; known names: 'digit 0', 'digit 1', 'digit 2', 'digit 3', "
        "'digit 4', 'digit 5', 'digit 6', 'digit 7', ... (10 names in all)."
    )
    assert not (tmp_path / "x.png").exists()


def test_cli_rejects_bad_arguments(saved_digits_pipeline, tmp_path):
    with pytest.raises(ValueError, match="class label 12 is out of range"):
        main(
            ["--model", str(saved_digits_pipeline), "--class-labels", "12", "--out", str(tmp_path / "x.png")]
        )
    with pytest.raises(ValueError, match="--batch-size 0 must be >= 1"):
        main(["--model", str(saved_digits_pipeline), "--batch-size", "0"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is not a saved pipeline"):
        main(["--model", str(empty)])
    with pytest.raises(SystemExit):
        main(["--model", str(saved_digits_pipeline), "--scheduler", "ddim"])
    assert not (tmp_path / "x.png").exists()


def test_an_existing_out_is_refused_before_any_work_unless_overwrite(saved_digits_pipeline, tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"a grid the user keeps")
    argv = ["--model", str(saved_digits_pipeline), "--class-labels", "1", "--steps", "2", "--batch-size", "2"]
    assert run([*argv, "--out", str(out)]) == 2
    assert_one_line_error(
        capsys.readouterr().err, f"'{out}' (from --out) exists; pass --overwrite to replace it"
    )
    assert out.read_bytes() == b"a grid the user keeps"

    assert run([*argv, "--out", str(tmp_path / "grid.xyz")]) == 2
    assert_one_line_error(capsys.readouterr().err, "grid.xyz' has no image suffix to write; allowed: .png")

    assert run([*argv, "--out", str(out), "--overwrite"]) == 0
    assert capsys.readouterr().out.startswith(f"replaced {out}: 1 classes x 2 images")
    assert Image.open(out).height == 2 + 66
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "grid.png"]


def test_a_failed_grid_write_keeps_the_previous_file(saved_digits_pipeline, tmp_path, monkeypatch):
    out = tmp_path / "grid.png"
    out.write_bytes(b"the previous grid")

    def half_written(image, target, *args, **kwargs):
        (target if hasattr(target, "write") else open(target, "wb")).write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_written)
    argv = ["--model", str(saved_digits_pipeline), "--class-labels", "1", "--steps", "2", "--batch-size", "1"]
    with pytest.raises(OSError, match="No space left"):
        main([*argv, "--out", str(out), "--overwrite"])
    assert out.read_bytes() == b"the previous grid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "grid.png"]


def test_the_grid_gets_ordinary_permissions(saved_digits_pipeline, tmp_path, umask):
    out = tmp_path / "grids" / "grid.png"
    main(
        [
            "--model",
            str(saved_digits_pipeline),
            "--class-labels",
            "1",
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--out",
            str(out),
        ]
    )
    assert oct(stat.S_IMODE(out.stat().st_mode)) == "0o644"


@pytest.mark.parametrize(
    ("breakage", "fragments"),
    [
        ("missing", ["--model", "is no folder here, and loading it as a Hub repo id failed"]),
        ("empty", ["is not a saved pipeline", "model_index.json is missing"]),
        ("file", ["is a file; allowed: a folder written by FlowPipeline.save_pretrained or a Hub repo id"]),
        ("truncated", ["diffusion_pytorch_model.safetensors is not a readable safetensors file (truncated"]),
        ("json", ["config.json (the transformer configuration) is not valid JSON"]),
    ],
)
def test_unusable_models_end_in_one_line(saved_digits_pipeline, tmp_path, capsys, breakage, fragments):
    model = {
        "missing": tmp_path / "no" / "such" / "folder",
        "empty": tmp_path / "empty",
        "file": tmp_path / "model.safetensors",
        "truncated": saved_digits_pipeline,
        "json": saved_digits_pipeline,
    }[breakage]
    if breakage == "empty":
        model.mkdir()
    elif breakage == "file":
        model.write_bytes(b"weights")
    elif breakage == "truncated":
        truncate(model / "transformer" / "diffusion_pytorch_model.safetensors")
    elif breakage == "json":
        (model / "transformer" / "config.json").write_text('{"sample_size": 8,')
    capsys.readouterr()
    assert run(["--model", str(model), "--out", str(tmp_path / "x.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "x.png").exists()
    assert run(["--model", "someone/not-cached", "--out", str(tmp_path / "x.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, "'someone/not-cached' is no folder here")


def test_the_docstring_example_runs_as_written(make_flow_pipeline, tmp_path, monkeypatch, capsys):
    (example,) = example_commands(flow_pipelines.sample.__doc__, "python -m flow_pipelines.sample")
    model = example[example.index("--model") + 1]
    # The folder the training command leaves (README's quickstart says so too).
    assert (
        model == f"outputs/digits/{PIPELINE_FOLDER}"
        and f"`{model}/`" in (REPO_ROOT / "README.md").read_text()
    )
    monkeypatch.chdir(tmp_path)
    make_flow_pipeline(id2label="digits").save_pretrained(model)
    assert main(example) == Path("grid.png")
    assert Image.open(tmp_path / "grid.png").height == 2 + 3 * 66  # three rows of 8 images
    assert "3 classes x 8 images, FlowHeunScheduler, 30 steps, guidance 4" in capsys.readouterr().out
