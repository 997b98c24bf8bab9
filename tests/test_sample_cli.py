"""The sampling command line: a labelled grid from a saved pipeline, every scheduler, labels by id, name or at
random, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flow_pipelines.sample import _parse_labels, main, run
from flow_pipelines.schedulers import SCHEDULERS, make_scheduler

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def test_random_and_named_labels():
    labels = _parse_labels(["-1", "-1", "3", "digit 2", "-1"], num_classes=10, seed=0)
    assert labels == _parse_labels(["-1", "-1", "3", "digit 2", "-1"], num_classes=10, seed=0)
    assert labels[2:4] == [3, "digit 2"]
    assert all(isinstance(label, int) and 0 <= label < 10 for label in (labels[0], labels[1], labels[4]))
    assert len({tuple(_parse_labels(["-1"] * 4, num_classes=10, seed=seed)) for seed in range(5)}) > 1


def test_cli_runs_as_a_module(saved_digits_pipeline, tmp_path):
    out = tmp_path / "random.png"
    command = [sys.executable, "-m", "flow_pipelines.sample", "--model", str(saved_digits_pipeline)]
    command += ["--class-labels", "-1", "-1", "-1", "--steps", "2", "--batch-size", "2", "--out", str(out)]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).height == 2 + 3 * 66


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
