"""The training script end to end: in-process runs (``main(args)``) with tiny models, and under
``accelerate launch``.

Resuming, checkpoints, what a run saves, prediction types and paths, precision, image folders and latents,
W&B and TensorBoard, evaluation during training, bad flags, two processes, and the Hub upload."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from flow_pipelines import FlowPipeline
from flow_pipelines.training import overfit
from flow_pipelines.training.architecture import DIGITS_MODEL_DEFAULTS, build_model, model_settings
from flow_pipelines.training.batches import trains_on_digits
from flow_pipelines.training.objectives import path_from_args

from .cli_support import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_scripts" / "train_flow.py"

TINY = [
    "--hidden_size", "32", "--num_layers", "1", "--num_attention_heads", "2", "--patch_size", "2",
    "--resolution", "8", "--train_batch_size", "4", "--max_train_samples", "40",
    "--validation_steps", "0", "--checkpointing_steps", "0", "--evaluation_samples_per_class", "0",
    "--validation_images_per_class", "1", "--num_inference_steps", "2", "--logging_steps", "1",
    "--lr_warmup_steps", "2", "--lr_scheduler", "constant_with_warmup",
    # A fixed thread count keeps float reductions in the same order from run to run.
    "--cpu_threads", "1",
]  # fmt: skip

WEIGHTS = "diffusion_pytorch_model.safetensors"

pytestmark = pytest.mark.usefixtures("offline_training_env")


@pytest.fixture
def offline_training_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hub access, W&B writes locally and quietly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="module")
def train_flow() -> ModuleType:
    """The training script, imported as a module so tests can call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location("train_flow", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(train_flow, output_dir: Path, *flags: str) -> dict:
    """Call the script's main in-process with the tiny settings (later flags win)."""
    from accelerate.state import AcceleratorState, GradientState

    # Each run builds its own Accelerator; accelerate keeps process-wide singletons between them.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return train_flow.main(train_flow.parse_args(["--output_dir", str(output_dir), *TINY, *flags]))


def free_port() -> int:
    """A port nothing listens on now, so that two launches on one machine never share a rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LAUNCH_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def launch(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch ARGUMENTS`` on a free port; the launch must succeed."""
    environment = {**os.environ, **LAUNCH_ENVIRONMENT}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    result = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, env=environment, timeout=timeout, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def launch_machines(log_dir: Path, *arguments: str, num_machines: int = 2, timeout: int = 300) -> None:
    """One ``accelerate launch`` per "machine" (one process each), all on this one, meeting over the loopback.

    The flags are those a user passes on a cluster (``--num_machines``, ``--machine_rank``, ``--main_process_ip``,
    ``--main_process_port``); each launch's output goes to ``log_dir/machine-<rank>.log``. All must succeed.
    """
    port, processes = str(free_port()), []
    common = ["--multi_gpu", "--num_machines", str(num_machines), "--num_processes", str(num_machines)]
    common += ["--main_process_ip", "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no"]
    for rank in range(num_machines):
        with open(
            log_dir / f"machine-{rank}.log", "w"
        ) as log:  # a file, not a pipe: a full pipe stalls a rank
            command = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                *common,
                "--machine_rank",
                str(rank),
            ]
            processes.append(
                subprocess.Popen(
                    [*command, "--dynamo_backend", "no", *arguments],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **LAUNCH_ENVIRONMENT},
                    cwd=REPO,
                )
            )
    try:
        for process in processes:
            process.wait(timeout=timeout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, process in enumerate(processes):
        log = (log_dir / f"machine-{rank}.log").read_text()
        assert process.returncode == 0, f"machine {rank}:\n{log[-3000:]}"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS))


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def log_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def write_random_images(folder: Path, classes: tuple[str, ...], per_class: int, shape=(8, 8, 3)) -> Path:
    """Class sub-folders of random RGB PNGs, drawn class by class from one numpy generator seeded with 0."""
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name / f"{index}.png")
    return folder


def read_wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline ``run-*.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    position, pending, records = header, b"", []
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + header])
        chunk = data[position + header : position + header + length]
        position += header + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            records.append(record)
            pending = b""
        elif kind in (2, 3):  # first or middle piece
            pending += chunk
    return records


# ----------------------------------------------------------------------------- checkpoints and resuming
def test_resuming_continues_the_same_run_exactly(train_flow, tmp_path: Path) -> None:
    # 40 examples at batch 4: 10 steps per epoch, so the resumed half starts mid-epoch and crosses an epoch.
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(train_flow, straight, "--max_train_steps", "12", "--checkpointing_steps", "6")
    run(train_flow, split, "--max_train_steps", "6", "--checkpointing_steps", "6")
    summary = run(
        train_flow,
        split,
        "--max_train_steps",
        "12",
        "--checkpointing_steps",
        "6",
        "--resume_from_checkpoint",
        "latest",
    )
    assert summary["global_step"] == 12 and summary["samples_seen"] == 48
    for sub in ("checkpoint-12/transformer", "checkpoint-12/transformer_ema", "pipeline/transformer"):
        assert max_difference(weights(straight / sub), weights(split / sub)) <= 1e-6, sub
    log = log_records(split)
    assert [entry["step"] for entry in log] == list(range(1, 13))

    # The data position matters: resuming at the start of the epoch instead gives other weights.
    state_file = split / "checkpoint-6" / "training_state.json"
    state = json.loads(state_file.read_text())
    assert state == {"global_step": 6, "epoch": 0, "batch_in_epoch": 6, "samples_seen": 24}
    state_file.write_text(json.dumps({**state, "batch_in_epoch": 0}))
    wrong = tmp_path / "wrong"
    run(
        train_flow, wrong, "--max_train_steps", "12", "--checkpointing_steps", "6",
        "--resume_from_checkpoint", str(split / "checkpoint-6"),
    )  # fmt: skip
    assert (
        max_difference(
            weights(straight / "checkpoint-12/transformer"), weights(wrong / "checkpoint-12/transformer")
        )
        > 1e-4
    )


def test_checkpoint_limit_and_atomic_folders(train_flow, tmp_path: Path) -> None:
    run(
        train_flow,
        tmp_path,
        "--max_train_steps",
        "6",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "2",
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.startswith("checkpoint")] == ["checkpoint-4", "checkpoint-6"]
    assert not [n for n in names if n.startswith(".")], names  # no staging folders left behind
    checkpoint = tmp_path / "checkpoint-6"
    assert (checkpoint / "transformer" / WEIGHTS).is_file() and (
        checkpoint / "transformer_ema" / WEIGHTS
    ).is_file()
    assert not list(checkpoint.glob("*.bin.*")) and not (checkpoint / "model.safetensors").exists()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(train_flow, tmp_path: Path) -> None:
    # An absurd learning rate makes the first update overflow the next forward pass.
    with pytest.raises(FloatingPointError, match="at step 2"):
        run(
            train_flow, tmp_path, "--max_train_steps", "10", "--checkpointing_steps", "1", "--learning_rate", "1e30",
            "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_grad_norm", "0",
        )  # fmt: skip
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-1"]
    assert json.loads((tmp_path / "checkpoint-1" / "training_state.json").read_text())["global_step"] == 1
    assert not (tmp_path / "pipeline").exists()


# ----------------------------------------------------------------------------- what a run saves
def test_default_run_produces_a_loadable_pipeline_with_card_grid_and_log(train_flow, tmp_path: Path) -> None:
    summary = run(train_flow, tmp_path, "--max_train_steps", "3", "--evaluation_samples_per_class", "2")
    pipeline_dir = tmp_path / "pipeline"
    pipeline = FlowPipeline.from_pretrained(pipeline_dir)
    assert pipeline.id2label == {d: str(d) for d in range(10)}
    assert (
        pipeline.scheduler.config.prediction_type == pipeline.transformer.config.prediction_type == "velocity"
    )
    card = (pipeline_dir / "README.md").read_text()
    assert "samples.png" in card
    grid = Image.open(pipeline_dir / "samples.png")
    assert grid.height > grid.width / 2  # ten rows of one image each
    # The report: the run's guidance and none, each at 8 and 20 model evaluations of the saved sampler.
    guidance = train_flow.parse_args([]).guidance_scale
    report = summary["evaluation"]
    assert [(row["guidance_scale"], row["num_model_evaluations"]) for row in report] == [
        (guidance, 8), (guidance, 20), (1.0, 8), (1.0, 20)
    ]  # fmt: skip
    for row in report:
        assert row["num_samples"] == 20 and 0.0 <= row["digit_accuracy"] <= 1.0
        assert row["fd_ratio"] == pytest.approx(row["fd"] / row["fd_floor"]) and row["fd_ratio"] > 1.0
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
    assert report[0]["classifier_heldout_accuracy"] > 0.97
    # Each figure is in the card's metadata with the settings it was measured at.
    results = ModelCard.load(pipeline_dir / "README.md").data.eval_results
    assert len(results) == 4 * len(report)  # accuracy, FD ratio, precision and recall of each row
    for row in report:
        measured = {
            r.metric_type: r
            for r in results
            if (r.metric_args["guidance_scale"], r.metric_args["nfe"])
            == (row["guidance_scale"], row["num_model_evaluations"])
        }
        assert {
            name: measured[name].metric_value
            for name in ("digit_accuracy", "fd_ratio", "precision", "recall")
        } == {name: row[name] for name in ("digit_accuracy", "fd_ratio", "precision", "recall")}
        accuracy = measured["digit_accuracy"]
        assert accuracy.dataset_type == "sklearn_digits"
        assert (accuracy.metric_args["sampler"], accuracy.metric_args["num_samples"]) == ("multistep", 20)
    log = log_records(tmp_path)
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "step_time", "samples_per_second"} <= set(log[0])
    assert json.loads((tmp_path / "train_summary.json").read_text())["global_step"] == 3


def test_ema_weights_are_what_the_pipeline_saves(train_flow, tmp_path: Path) -> None:
    run(train_flow, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "4", "--ema_decay", "0.5")
    saved = weights(tmp_path / "pipeline" / "transformer")
    assert max_difference(saved, weights(tmp_path / "checkpoint-4" / "transformer_ema")) == 0.0
    assert max_difference(saved, weights(tmp_path / "checkpoint-4" / "transformer")) > 1e-6


@pytest.mark.parametrize(
    ("prediction_type", "loss_target", "path"),
    [("epsilon", "velocity", "vp"), ("sample", "sample", "linear"), ("velocity", "epsilon", "linear")],
)
def test_prediction_type_is_stored_for_sampling(
    train_flow, tmp_path: Path, prediction_type: str, loss_target: str, path: str
) -> None:
    flags = ("--prediction_type", prediction_type, "--loss_target", loss_target, "--path", path)
    run(train_flow, tmp_path, "--max_train_steps", "2", *flags)
    pipeline = FlowPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipeline.transformer.config.prediction_type == prediction_type
    # The model's config alone says what it predicts; the saved scheduler is handed velocities.
    assert pipeline.scheduler.config.prediction_type == "velocity"
    images = pipeline(class_labels=[3], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 8, 1) and np.isfinite(images).all()


def test_a_model_that_could_not_be_sampled_from_pure_noise_is_refused_before_training(train_flow) -> None:
    # An epsilon prediction says nothing about the data where the path reaches pure noise (sigma = 1).
    for path in ("linear", "cosine"):
        with pytest.raises(
            ValueError, match=f"--prediction_type epsilon on --path {path} could not be sampled"
        ):
            train_flow.parse_args(["--prediction_type", "epsilon", "--path", path])


OVERFIT_MODEL = [
    "--hidden_size",
    "64",
    "--num_layers",
    "2",
    "--train_batch_size",
    "4",
    "--max_train_steps",
    "500",
]


def first_digits(count: int) -> np.ndarray:
    """The first ``count`` digits in [0, 1], ``(count, 8, 8)``: 0, 1, 2, 3, ..., one of each class."""
    from flow_pipelines.data_sources import load_digits_dataset

    digits = load_digits_dataset()
    assert digits[:count]["label"] == list(range(count))
    return np.stack([np.asarray(digits[i]["image"], dtype=np.float64) / 255.0 for i in range(count)])


def test_overfit_one_batch_memorises_it_with_the_default_objective(
    train_flow, tmp_path: Path, capsys
) -> None:
    # Velocity target, logit-normal noise levels, the default learning rate: only the model is smaller.
    summary = run(train_flow, tmp_path, "--overfit_one_batch", *OVERFIT_MODEL)
    verdict = summary["overfit"]
    assert verdict["passed"] and verdict["samples_match"]
    assert verdict["estimate_error_before"] > 0.3
    assert verdict["estimate_error_after"] < overfit.PASS_FRACTION * verdict["estimate_error_before"]
    assert verdict["loss_after"] < verdict["loss_before"] / 5
    assert "Overfit check PASSED" in capsys.readouterr().out
    # What was switched off: no label dropout (so no null class to guide with), constant LR, no EMA.
    flags = json.loads((tmp_path / "training_args.json").read_text())
    assert {name: flags[name] for name in overfit.OVERFIT_SETTINGS} == overfit.OVERFIT_SETTINGS
    assert {record["lr"] for record in log_records(tmp_path)} == {flags["learning_rate"]}
    # The grid: the batch above, its samples below, each sample closest to its own image.
    grid = np.asarray(Image.open(tmp_path / overfit.GRID_NAME).convert("L"), dtype=np.float64)
    assert grid.shape[0] > grid.shape[1] / 4  # two rows of four
    pipeline = FlowPipeline.from_pretrained(tmp_path / "pipeline")
    images = pipeline(
        class_labels=[0, 1, 2, 3], num_inference_steps=20, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[..., 0]  # fmt: skip
    batch = first_digits(4)
    distances = ((images[:, None] - batch[None]) ** 2).sum(axis=(2, 3))
    assert distances.argmin(axis=1).tolist() == [0, 1, 2, 3]
    assert np.abs(images - batch).mean() < 0.05


def test_an_overfit_run_that_cannot_memorise_fails_with_exit_status_1(
    train_flow, tmp_path: Path, capsys
) -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    # A learning rate far too small for 20 steps: the batch is not learnt, and the run says so.
    status = train_flow.cli(
        [
            "--output_dir",
            str(tmp_path),
            *TINY,
            "--overfit_one_batch",
            "--max_train_steps",
            "20",
            "--learning_rate",
            "1e-6",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "Overfit check FAILED" in out and "did not memorise one batch" in out
    assert (tmp_path / overfit.GRID_NAME).is_file() and (tmp_path / "pipeline" / "model_index.json").is_file()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert (
        summary["overfit"]["passed"] is False
        and summary["overfit"]["estimate_error_after"] > 0.5 * summary["overfit"]["estimate_error_before"]
    )


def test_cosine_run_overfits_one_batch_and_saves_a_cosine_pipeline(train_flow, tmp_path: Path) -> None:
    summary = run(
        train_flow, tmp_path, "--overfit_one_batch", *OVERFIT_MODEL, "--prediction_type", "sample", "--path", "cosine",
    )  # fmt: skip
    assert summary["overfit"]["passed"], summary["overfit"]
    pipeline = FlowPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipeline.transformer.config.path == "cosine" and pipeline.path.name == "cosine"
    assert pipeline.transformer.config.prediction_type == "sample"
    # The scheduler works on our straight path; the pipeline's mapping hands it velocities.
    assert pipeline.scheduler.config.prediction_type == "velocity"
    images = pipeline(
        class_labels=[0, 1, 2, 3],
        num_inference_steps=20,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert np.isfinite(images).all()
    batch = first_digits(4)
    distances = ((images[:, None, ..., 0] - batch[None]) ** 2).sum(axis=(2, 3))
    assert distances.argmin(axis=1).tolist() == [0, 1, 2, 3]
    assert np.abs(images[..., 0] - batch).mean() < 0.05


# ----------------------------------------------------------------------------- precision and memory
def test_gradient_checkpointing_and_accumulation(train_flow, tmp_path: Path) -> None:
    plain = run(train_flow, tmp_path / "plain", "--max_train_steps", "3", "--checkpointing_steps", "3")
    checkpointed = run(
        train_flow,
        tmp_path / "gc",
        "--max_train_steps",
        "3",
        "--checkpointing_steps",
        "3",
        "--gradient_checkpointing",
    )
    assert plain["final_loss"] == checkpointed["final_loss"]
    first, second = (weights(tmp_path / name / "checkpoint-3" / "transformer") for name in ("plain", "gc"))
    assert max_difference(first, second) <= 1e-6
    accumulated = run(
        train_flow, tmp_path / "acc", "--max_train_steps", "3", "--gradient_accumulation_steps", "2"
    )
    assert accumulated["samples_seen"] == 3 * 2 * 4


def test_bf16_mixed_precision_runs_on_cpu(train_flow, tmp_path: Path) -> None:
    summary = run(train_flow, tmp_path, "--max_train_steps", "2", "--mixed_precision", "bf16")
    assert summary["global_step"] == 2 and np.isfinite(summary["final_loss"])
    pipeline = FlowPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipeline.transformer.dtype == torch.float32


# ----------------------------------------------------------------------------- data
def test_image_folder_streamed_and_latent_training(train_flow, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    folder = write_random_images(tmp_path / "images", ("cat", "dog"), 6, shape=(12, 10, 3))

    streamed = run(
        train_flow, tmp_path / "streamed", "--train_data_dir", str(folder), "--streaming", "--max_train_steps", "4",
        "--random_flip", "--dequantize",
    )  # fmt: skip
    assert streamed["samples_seen"] == 16
    assert FlowPipeline.from_pretrained(tmp_path / "streamed" / "pipeline").id2label == {0: "cat", 1: "dog"}

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=8, scaling_factor=0.7, shift_factor=0.1,
    )  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    output = tmp_path / "latent"
    run(
        train_flow, output, "--train_data_dir", str(folder), "--vae", str(tmp_path / "vae"), "--max_train_steps", "3",
        "--random_flip",
    )  # fmt: skip
    caches = list((output / "latent_cache").glob("*.safetensors"))
    assert len(caches) == 1
    cache = load_file(str(caches[0]))
    assert cache["means"].shape == (12, 2, 4, 4, 4)  # 12 images, original and mirror, 4 x 4x4 latents
    # The cache holds the encoder's posterior of the centre-cropped 8x8 images (and their mirrors).
    from flow_pipelines.images import ImageTransform, decode_image
    from flow_pipelines.training.latents import encode_pixels

    first = sorted((folder / "cat").iterdir())[0]
    pixels = ImageTransform(8, 3, center_crop=True)(decode_image({"path": str(first)}))[None]
    mean, std = encode_pixels(AutoencoderKL.from_pretrained(tmp_path / "vae"), pixels)
    index = int(cache["class_labels"].tolist().index(0))
    torch.testing.assert_close(cache["means"][index, 0], mean[0], atol=1e-5, rtol=1e-5)
    pipeline = FlowPipeline.from_pretrained(output / "pipeline")
    assert pipeline.vae is not None and pipeline.vae.config.scaling_factor == 0.7
    assert pipeline.transformer.config.in_channels == 4 and pipeline.transformer.config.sample_size == 4
    images = pipeline(class_labels=["dog"], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 8, 3)

    # A streamed dataset cannot be cached: its images are encoded as they come.
    streamed_latent = run(
        train_flow, tmp_path / "streamed_latent", "--train_data_dir", str(folder), "--streaming",
        "--vae", str(tmp_path / "vae"), "--max_train_steps", "2",
    )  # fmt: skip
    assert streamed_latent["global_step"] == 2
    assert not (tmp_path / "streamed_latent" / "latent_cache").exists()
    assert (tmp_path / "streamed_latent" / "pipeline" / "vae" / WEIGHTS).is_file()


# ----------------------------------------------------------------------------- tracking
def test_wandb_offline_run_records_metrics_images_and_scrubbed_config(train_flow, tmp_path: Path) -> None:
    secret = "hf_do_not_leak_1234567890"
    run(
        train_flow, tmp_path, "--max_train_steps", "4", "--report_to", "wandb", "--validation_steps", "2",
        "--hub_token", secret,
    )  # fmt: skip
    runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = read_wandb_records(next(runs[0].glob("run-*.wandb")))
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [row["_step"] for row in history] == [1, 2, 3, 4]
    assert all({"loss", "lr", "grad_norm", "samples_per_second", "step_time"} <= set(row) for row in history)
    assert [row.get("samples/_type") for row in history] == [
        None,
        "images/separated",
        None,
        "images/separated",
    ]
    config_keys = {i.key for r in records if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert {
        "learning_rate",
        "train_batch_size",
        "prediction_type",
    } <= config_keys and "hub_token" not in config_keys
    assert list((runs[0] / "files" / "media" / "images").glob("samples_*.png"))
    assert (tmp_path / "samples" / "step-0000002.png").is_file()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_tensorboard_run_records_scalars_and_images(train_flow, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(
        train_flow,
        tmp_path,
        "--max_train_steps",
        "4",
        "--report_to",
        "tensorboard",
        "--validation_steps",
        "2",
    )
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert events
    tags = {"scalars": set(), "images": set()}
    steps = set()
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags["scalars"] |= set(accumulator.Tags()["scalars"])
        tags["images"] |= set(accumulator.Tags()["images"])
        if "loss" in accumulator.Tags()["scalars"]:
            steps |= {event.step for event in accumulator.Scalars("loss")}
    assert {"loss", "lr", "grad_norm", "samples_per_second"} <= tags["scalars"]
    assert "samples" in tags["images"] and steps == {1, 2, 3, 4}


# ----------------------------------------------------------------------------- evaluation during training
def test_eval_steps_log_digit_figures_to_the_jsonl_log_and_tensorboard(train_flow, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(
        train_flow, tmp_path, "--max_train_steps", "4", "--eval_steps", "2", "--eval_num_samples", "10",
        "--report_to", "tensorboard",
    )  # fmt: skip
    evaluations = [record for record in log_records(tmp_path) if "eval/digit_accuracy" in record]
    assert [record["step"] for record in evaluations] == [2, 4]
    assert all(0.0 <= record["eval/digit_accuracy"] <= 1.0 for record in evaluations)
    # Beside accuracy, the distribution: FD against its real-vs-real floor, precision and recall.
    for record in evaluations:
        assert record["eval/fd_ratio"] > 1.0 and math.isfinite(record["eval/fd_ratio"])
        assert 0.0 <= record["eval/precision"] <= 1.0 and 0.0 <= record["eval/recall"] <= 1.0
    steps = set()
    for event_file in (tmp_path / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        if "eval/digit_accuracy" in accumulator.Tags()["scalars"]:
            steps |= {event.step for event in accumulator.Scalars("eval/digit_accuracy")}
    assert steps == {2, 4}


def test_eval_without_an_offline_extractor_is_skipped_with_one_log_line(train_flow, tmp_path: Path) -> None:
    write_random_images(tmp_path / "images", ("a", "b"), 4)
    output = tmp_path / "run"
    run(
        train_flow, output, "--train_data_dir", str(tmp_path / "images"), "--max_train_samples", "8",
        "--max_train_steps", "2", "--eval_steps", "1",
    )  # fmt: skip
    log = (output / "train.log").read_text()
    assert log.count("Evaluation during training skipped") == 1 and "--eval_extractor" in log
    assert not any(key.startswith("eval/") for record in log_records(output) for key in record)


def test_eval_steps_log_fd_dinov2_with_a_local_extractor_folder(
    train_flow, tmp_path: Path, make_dinov2
) -> None:
    # A tiny randomly initialised DINOv2 saved to a folder: the real loading and feature code, no download.
    make_dinov2(hidden_size=8, intermediate_size=16).save_pretrained(tmp_path / "dinov2")
    write_random_images(tmp_path / "images", ("a", "b"), 8)
    output = tmp_path / "run"
    run(
        train_flow, output, "--train_data_dir", str(tmp_path / "images"), "--max_train_samples", "16",
        "--max_train_steps", "2", "--eval_steps", "2", "--eval_num_samples", "12",
        "--eval_extractor", str(tmp_path / "dinov2"),
    )  # fmt: skip
    scores = [record["eval/fd_dinov2"] for record in log_records(output) if "eval/fd_dinov2" in record]
    assert len(scores) == 1 and math.isfinite(scores[0]) and scores[0] > 0


# ----------------------------------------------------------------------------- flags
def test_default_flags_describe_the_digits_job(train_flow) -> None:
    args = train_flow.parse_args([])
    assert trains_on_digits(args) and args.resolution == 8 and args.output_dir == "outputs/digits"
    assert model_settings(args) == DIGITS_MODEL_DEFAULTS
    assert args.use_ema and args.label_dropout == 0.1 and args.prediction_type == "velocity"
    assert (args.lr_scheduler, args.lr_warmup_steps) == ("constant", 0)
    # Other data has no natural side: the run asks for one before any work.
    with pytest.raises(ValueError, match="--resolution is needed for 'cifar10'"):
        train_flow.parse_args(["--dataset_name", "cifar10"])


def test_vp_path_flags_reach_the_model_config_and_are_checked(train_flow) -> None:
    args = train_flow.parse_args(["--path", "vp", "--vp_beta_min", "0.2", "--vp_beta_max", "10"])
    model = build_model(args, path_from_args(args), in_channels=1, sample_size=8, num_classes=10)
    assert model.config.path == "vp" and model.config.path_kwargs == {"beta_min": 0.2, "beta_max": 10.0}
    default = train_flow.parse_args([])
    linear = build_model(default, path_from_args(default), in_channels=1, sample_size=8, num_classes=10)
    assert linear.config.path == "linear" and linear.config.path_kwargs is None
    with pytest.raises(ValueError, match="--path vp only"):
        train_flow.parse_args(["--path", "cosine", "--vp_beta_max", "10"])
    with pytest.raises(ValueError, match="beta_max"):
        train_flow.parse_args(["--path", "vp", "--vp_beta_max", "0"])
    with pytest.raises(ValueError, match="eval_extractor"):
        train_flow.parse_args(["--eval_steps", "5", "--eval_extractor", "/nonexistent/dinov2"])


def test_bad_input_fails_before_training_with_a_clear_message(train_flow, tmp_path: Path) -> None:
    import datasets

    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        train_flow.parse_args(["--resolution", "9"])
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        run(train_flow, tmp_path / "fp16", "--max_train_steps", "1", "--mixed_precision", "fp16")
    with pytest.raises(ValueError, match="does not exist.*checkpoint-99"):
        run(
            train_flow,
            tmp_path / "resume",
            "--max_train_steps",
            "1",
            "--resume_from_checkpoint",
            "checkpoint-99",
        )

    unlabelled = tmp_path / "unlabelled"
    datasets.Dataset.from_dict(
        {"image": [Image.new("L", (8, 8))] * 8, "caption": ["x"] * 8},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    ).save_to_disk(str(unlabelled))
    with pytest.raises(ValueError, match="columns are: 'image', 'caption'"):
        run(train_flow, tmp_path / "nolabel", "--dataset_name", str(unlabelled), "--max_train_steps", "1")

    folder = tmp_path / "images"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for index in range(3):
            Image.new("L", (8, 8), color=index * 40).save(folder / name / f"{index}.png")
    (folder / "b" / "truncated.png").write_bytes((folder / "b" / "0.png").read_bytes()[:20])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        run(train_flow, tmp_path / "corrupt", "--train_data_dir", str(folder), "--max_train_steps", "1")
    # Nothing was trained or saved by any of these.
    assert not list(tmp_path.glob("*/pipeline")) and not list(tmp_path.glob("*/checkpoint-*"))


# ----------------------------------------------------------------------------- accelerate launch, scale-out
# 64 examples, 4 per process per step, 2 processes: one epoch is 8 steps of 8 examples; checkpoints at 4 and 8.
TWO_PROCESSES = [*TINY, "--max_train_samples", "64", "--checkpointing_steps", "4"]
FSDP2_CONFIG = REPO / "train_scripts" / "accelerate_configs" / "fsdp2.yaml"
FSDP2_ON_GLOO = REPO / "tests" / "fsdp2_on_gloo.py"
RESULTS = (
    "checkpoint-4/transformer",
    "checkpoint-8/transformer",
    "checkpoint-8/transformer_ema",
    "pipeline/transformer",
)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One machine, two processes (DDP), one epoch: the run the scale-out tests compare with (run once)."""
    output_dir = tmp_path_factory.mktemp("two_processes")
    launch(
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", str(SCRIPT), "--output_dir", str(output_dir), *TWO_PROCESSES,
        "--num_train_epochs", "1",
    )  # fmt: skip
    return output_dir


def test_two_processes_stay_in_sync_and_split_each_global_batch(two_process_run: Path) -> None:
    summary = json.loads((two_process_run / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_step"] == 8 and summary["samples_seen"] == 64
    digests = summary["weights_digest_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]
    log = log_records(two_process_run)
    assert [entry["step_samples"] for entry in log] == [8] * 8
    checkpoint = two_process_run / "checkpoint-8"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert FlowPipeline.from_pretrained(two_process_run / "pipeline").id2label[7] == "7"


def test_two_machines_train_the_weights_of_one_and_resume(two_process_run: Path, tmp_path: Path) -> None:
    # Two "machines" of one process each on the loopback: the first 4 steps, then a resume for the other 4.
    output_dir = tmp_path / "run"
    flags = [str(SCRIPT), "--output_dir", str(output_dir), *TWO_PROCESSES]
    launch_machines(tmp_path, *flags, "--max_train_steps", "4")
    states = sorted(path.name for path in (output_dir / "checkpoint-4").glob("random_states_*"))
    assert states == ["random_states_0.pkl", "random_states_1.pkl"]
    launch_machines(tmp_path, *flags, "--max_train_steps", "8", "--resume_from_checkpoint", "latest")
    summary = json.loads((output_dir / "train_summary.json").read_text())
    reference = json.loads((two_process_run / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["samples_seen"] == 64
    # Bit for bit the one-machine run: weights, EMA, what the pipeline saves, and the losses step by step.
    assert summary["weights_digest_per_process"] == reference["weights_digest_per_process"]
    for result in RESULTS:
        assert max_difference(weights(output_dir / result), weights(two_process_run / result)) == 0.0, result
    losses = [(entry["step"], entry["loss"]) for entry in log_records(output_dir)]
    assert losses == [(entry["step"], entry["loss"]) for entry in log_records(two_process_run)]


def test_fsdp2_on_gloo_shards_checkpoints_resumes_exactly_and_saves_the_ddp_pipeline(
    train_flow, two_process_run: Path, tmp_path: Path
) -> None:
    # The README's FSDP2 config on two CPU processes (tests/fsdp2_on_gloo.py makes accelerate apply it there);
    # the training script runs unchanged.
    def fsdp2(output_dir: Path, *flags: str) -> None:
        launch(
            "--config_file", str(FSDP2_CONFIG), "--num_processes", "2", "--mixed_precision", "no",
            str(FSDP2_ON_GLOO), "--output_dir", str(output_dir), *TWO_PROCESSES, "--max_train_steps", "8", *flags,
        )  # fmt: skip

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fsdp2(straight)
    for step in (4, 8):  # accelerate's model and optimizer slices: a run fallen back to DDP writes neither
        checkpoint = straight / f"checkpoint-{step}"
        assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file(), sorted(checkpoint.iterdir())
        assert (checkpoint / "optimizer_0" / ".metadata").is_file() and not (
            checkpoint / "optimizer.bin"
        ).exists()
    fsdp2(resumed, "--resume_from_checkpoint", str(straight / "checkpoint-4"))
    for result in RESULTS[1:]:
        assert max_difference(weights(straight / result), weights(resumed / result)) == 0.0, result
    assert [entry["loss"] for entry in log_records(resumed)] == [
        entry["loss"] for entry in log_records(straight)
    ][4:]
    # The DDP run's weights, up to the order of float sums (the gradient norm is summed slice by slice).
    for result in RESULTS:
        assert max_difference(weights(straight / result), weights(two_process_run / result)) < 1e-5, result
    digests = json.loads((straight / "train_summary.json").read_text())["weights_digest_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]
    pipeline = FlowPipeline.from_pretrained(straight / "pipeline")
    images = pipeline(class_labels=[3], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 8, 1) and np.isfinite(images).all()
    # Its checkpoints hold the optimizer in slices: an unsharded run refuses to resume them, saying why.
    with pytest.raises(ValueError, match="written by a sharded \\(FSDP2\\) run, and this is an unsharded"):
        resume = ["--max_train_steps", "8", "--resume_from_checkpoint", str(straight / "checkpoint-4")]
        run(train_flow, tmp_path / "unsharded", *TWO_PROCESSES[len(TINY) :], *resume)


def test_cli_smoke_single_process(tmp_path: Path) -> None:
    result = launch(
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPT), "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "2",
        "--evaluation_samples_per_class", "1",
    )  # fmt: skip
    assert "Samples against real digits" in result.stdout + result.stderr
    assert (tmp_path / "pipeline" / "model_index.json").is_file()
    assert (tmp_path / "train.log").read_text().count("Saved the pipeline") == 1


# ----------------------------------------------------------------------------- the Hub
def test_push_to_hub_uploads_the_pipeline_only_and_never_writes_the_token(
    train_flow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from .hub_stand_in import HubStandIn

    secret = "hf_" + "s" * 34
    # Offline everywhere else; this test talks to a server on 127.0.0.1 only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubStandIn(tmp_path / "hub") as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        summary = run(
            train_flow, tmp_path / "out", "--max_train_steps", "2", "--checkpointing_steps", "1",
            "--report_to", "tensorboard", "--push_to_hub", "--hub_model_id", "someone/tiny-digits",
            "--hub_token", secret, "--hub_private_repo",
        )  # fmt: skip
    assert summary["hub_url"].startswith(hub.endpoint)
    # Created (or found) once before the first step, so a bad login fails early, and again by the upload.
    expected = {"name": "tiny-digits", "organization": "someone", "visibility": "private", "type": "model"}
    assert hub.created == [expected, expected]
    assert hub.authorization_headers and all(h == f"Bearer {secret}" for h in hub.authorization_headers)
    uploaded = hub.repo_folder("someone/tiny-digits")
    names = {p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file()}
    assert {
        "model_index.json",
        "README.md",
        "samples.png",
        "transformer/diffusion_pytorch_model.safetensors",
    } <= names
    assert not any(name.startswith(("checkpoint", "logs", "train")) for name in names)
    assert 'from_pretrained("someone/tiny-digits")' in (uploaded / "README.md").read_text()
    assert FlowPipeline.from_pretrained(uploaded).id2label[0] == "0"
    for path in [*uploaded.rglob("*"), *(tmp_path / "out").rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_push_to_hub_fails_before_training_when_the_hub_is_unreachable(train_flow, tmp_path: Path) -> None:
    # HF_HUB_OFFLINE=1 in the tests: the repository cannot be created, which must show at once.
    with pytest.raises(
        ValueError, match="--push_to_hub: cannot create or reach the Hub repository 'someone/x'"
    ):
        run(train_flow, tmp_path, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "someone/x")
    assert not (tmp_path / "training_args.json").exists() and not list(tmp_path.glob("checkpoint-*"))


def test_a_failed_upload_keeps_every_local_result_and_says_how_to_push_later(
    train_flow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flow_pipelines.training import publish

    monkeypatch.setattr(publish, "check_push_access", lambda *args, **kwargs: "checked")

    def refuse(*args, **kwargs):
        raise ConnectionError("the Hub went away")

    monkeypatch.setattr(publish, "push_pipeline_to_hub", refuse)
    summary = run(
        train_flow, tmp_path, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "someone/x"
    )
    assert summary["hub_error"] == "ConnectionError: the Hub went away"
    assert json.loads((tmp_path / "train_summary.json").read_text())["hub_error"] == summary["hub_error"]
    assert FlowPipeline.from_pretrained(tmp_path / "pipeline").id2label[0] == "0"
    assert f"hf upload someone/x {tmp_path / 'pipeline'}" in (tmp_path / "train.log").read_text()


# ----------------------------------------------------------------------------- nothing lost, nothing silent
def test_a_folder_holding_a_run_is_refused_and_replaced_only_when_asked_keeping_user_files(
    train_flow, tmp_path: Path
) -> None:
    run(train_flow, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2")
    (tmp_path / "my_notes.md").write_text("mine")
    with pytest.raises(
        ValueError, match="already holds a run .*--resume_from_checkpoint latest.*--overwrite_output_dir"
    ):
        run(train_flow, tmp_path, "--max_train_steps", "2")
    assert json.loads((tmp_path / "train_summary.json").read_text())["global_step"] == 4  # untouched
    # An earlier, longer run left higher-numbered checkpoints: replacing the run removes them, so neither the
    # rotation of the new run's checkpoints nor 'latest' can ever pick the other run's.
    (tmp_path / "checkpoint-12").mkdir()
    summary = run(
        train_flow, tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
        "--overwrite_output_dir",
    )  # fmt: skip
    assert summary["global_step"] == 3 and (tmp_path / "my_notes.md").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert [entry["step"] for entry in log_records(tmp_path)] == [1, 2, 3]
    assert "Removed" in (tmp_path / "train.log").read_text()
    with pytest.raises(ValueError, match="checkpoint-2 is older than checkpoint-3.*mix two histories"):
        run(train_flow, tmp_path, "--max_train_steps", "5", "--resume_from_checkpoint", "checkpoint-2")


def test_a_resumed_run_refuses_flags_it_cannot_honour(train_flow, tmp_path: Path) -> None:
    run(train_flow, tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2")
    with pytest.raises(
        ValueError, match=r"--learning_rate was 0\.002, now 0\.01; --train_batch_size was 4, now 8"
    ):
        run(
            train_flow, tmp_path, "--max_train_steps", "4", "--resume_from_checkpoint", "latest",
            "--learning_rate", "0.01", "--train_batch_size", "8",
        )  # fmt: skip
    # What only changes how the run is kept or looked at may change, and the run may be extended.
    summary = run(
        train_flow,
        tmp_path,
        "--max_train_steps",
        "4",
        "--resume_from_checkpoint",
        "latest",
        "--logging_steps",
        "2",
    )
    assert summary["global_step"] == 4
    assert json.loads((tmp_path / "training_args.json").read_text())["logging_steps"] == 2


def test_non_finite_flags_gradients_and_weights_never_reach_a_checkpoint(train_flow, tmp_path: Path) -> None:
    for value in ("inf", "nan"):
        with pytest.raises(ValueError, match=f"--learning_rate={value} must be a finite number"):
            train_flow.parse_args(["--learning_rate", value])
    # A huge rate with no clipping: an update makes the gradients (or the next loss) overflow. The run stops
    # before that update, and every checkpoint it left holds finite weights.
    with pytest.raises(FloatingPointError, match="(gradient norm|loss) is (inf|nan)"):
        run(
            train_flow, tmp_path, "--max_train_steps", "20", "--checkpointing_steps", "1", "--learning_rate", "1e6",
            "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_grad_norm", "0", "--adam_epsilon", "1e-30",
        )  # fmt: skip
    checkpoints = list(tmp_path.glob("checkpoint-*"))
    assert checkpoints and not (tmp_path / "pipeline").exists()
    for checkpoint in checkpoints:
        for folder in ("transformer", "transformer_ema"):
            assert all(torch.isfinite(t).all() for t in weights(checkpoint / folder).values()), checkpoint


def test_the_hub_token_is_redacted_from_the_command_line_before_wandb_records_it(
    train_flow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hf_" + "q" * 34
    monkeypatch.setattr(sys, "argv", ["train_flow.py", "--hub_token", secret, f"--hub_token={secret}"])
    run(train_flow, tmp_path, "--max_train_steps", "1", "--report_to", "wandb", "--hub_token", secret)
    assert sys.argv == ["train_flow.py", "--hub_token", "***", "--hub_token=***"]
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.suffix == ".wandb" for path in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


def start_training(tmp_path: Path, *flags: str) -> subprocess.Popen:
    """The script in a subprocess (stdout and stderr to files in ``tmp_path``), on the tiny settings."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "out"), *TINY, *flags]
    with open(tmp_path / "stdout.txt", "w") as stdout, open(tmp_path / "stderr.txt", "w") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=environment)


def wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_sigterm_stops_after_a_resumable_checkpoint_without_a_traceback(train_flow, tmp_path: Path) -> None:
    process = start_training(tmp_path, "--max_train_steps", "100000", "--logging_steps", "1")
    log = tmp_path / "out" / "train_log.jsonl"
    wait_for(lambda: log.is_file() and log.read_text().count("\n") >= 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and "SIGTERM received" in stderr + (tmp_path / "stdout.txt").read_text()
    (checkpoint,) = (tmp_path / "out").glob("checkpoint-*")
    step = json.loads((checkpoint / "training_state.json").read_text())["global_step"]
    assert step >= 3 and "Stopped at step" in (tmp_path / "out" / "train.log").read_text()
    summary = run(
        train_flow, tmp_path / "out", "--max_train_steps", str(step + 2), "--resume_from_checkpoint", "latest"
    )
    assert summary["global_step"] == step + 2


def test_kill_9_during_a_save_leaves_the_last_checkpoint_and_the_next_run_clears_the_staging(
    train_flow, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    def saving_after_a_complete_save() -> bool:
        names = [path.name for path in out.iterdir()] if out.is_dir() else []
        return any(n.startswith("checkpoint-") for n in names) and any(
            n.startswith(".checkpoint-") for n in names
        )

    for _ in range(5):  # the kill must land inside a save; a save that just finished is tried again
        shutil.rmtree(out, ignore_errors=True)
        process = start_training(tmp_path, "--max_train_steps", "100000", "--checkpointing_steps", "1")
        wait_for(saving_after_a_complete_save, process)
        process.kill()
        process.wait(timeout=60)
        if any(p.name.startswith(".checkpoint-") for p in out.iterdir()):
            break
    complete = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p for p in out.iterdir() if p.name.startswith(".checkpoint-")] and complete
    step = json.loads((complete[-1] / "training_state.json").read_text())["global_step"]
    summary = run(train_flow, out, "--max_train_steps", str(step + 1), "--resume_from_checkpoint", "latest")
    assert summary["global_step"] == step + 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert "an interrupted save's" in (out / "train.log").read_text()


def test_user_errors_end_in_one_line_and_exit_status_2(tmp_path: Path) -> None:
    for flags, message in (
        (["--learning_rate", "-1"], "error: --learning_rate=-1.0 must be a positive number."),
        (["--train_data_dir", str(tmp_path / "missing")], "is not a folder"),
        (["--dataset_name", "someone/unreachable"], "error: "),  # offline: the Hub cannot be reached
    ):
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "out"), *TINY, *flags],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=300,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "asks for FSDP version 1 (fsdp_version: 1)"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true)"),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
            "would run this job unsharded (1 process on cpu)",
        ),
    ],
    ids=["fsdp1", "deepspeed", "fsdp2-not-applied"],
)
def test_a_launch_the_script_cannot_honour_is_refused_before_any_work(
    train_flow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, environment: dict, message: str
) -> None:
    # What `accelerate launch` passes on from an FSDP1 or a DeepSpeed config, and from an FSDP2 config that
    # accelerate would not apply (one CPU process): each ends in one line, before the run folder exists.
    from accelerate.state import AcceleratorState, GradientState

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    status = train_flow.cli(["--output_dir", str(tmp_path / "run"), *TINY, "--max_train_steps", "1"])
    assert status == 2
    assert_one_line_error(capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()
