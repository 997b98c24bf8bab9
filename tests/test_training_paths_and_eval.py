"""Training on the cosine and VP paths, the evaluation hook of the training script, and the likelihood of a
model of another path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.configuration_utils import FrozenDict
from PIL import Image

from flow_pipelines import FlowPipeline
from flow_pipelines.analytic import GaussianFlow
from flow_pipelines.evaluation.likelihood import log_likelihood
from flow_pipelines.guidance import GuidedVelocity
from flow_pipelines.paths import get_path
from flow_pipelines.training.architecture import build_model
from flow_pipelines.training.objectives import FlowMatchingObjective, path_from_args

from .training_support import SCRIPT, TINY, load_training_script, offline_training_env, run  # noqa: F401

pytestmark = pytest.mark.usefixtures("offline_training_env")
MODULE_NAME = "train_flow_paths"


@pytest.fixture(scope="module")
def train_flow():
    """The training script as a module."""
    return load_training_script(MODULE_NAME)


def log_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- objective
def test_linear_path_objective_is_the_straight_path_bit_for_bit() -> None:
    x0 = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = FlowMatchingObjective(prediction_type="sample", loss_target="velocity")
    linear = FlowMatchingObjective(prediction_type="sample", loss_target="velocity", path=get_path("linear"))
    first = plain.training_inputs(x0, torch.Generator().manual_seed(1))
    second = linear.training_inputs(x0, torch.Generator().manual_seed(1))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    output = torch.randn_like(x0)
    noisy, _, noise, sigmas = first
    assert torch.equal(
        plain.loss(output, x0, noise, sigmas, noisy), linear.loss(output, x0, noise, sigmas, noisy)
    )


@pytest.mark.parametrize("path_name", ["cosine", "vp"])
@pytest.mark.parametrize("prediction_type", ["velocity", "sample", "epsilon"])
def test_exact_path_targets_have_zero_loss_and_the_path_time_has_our_noise_level(path_name, prediction_type):
    path = get_path(path_name)
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Uniform draws reach the data end, where the VP velocity target would be infinite without the floor.
    objective = FlowMatchingObjective(
        prediction_type=prediction_type, loss_target="velocity", time_sampling="uniform", path=path
    )
    noisy, timesteps, noise, sigmas = objective.training_inputs(x0, torch.Generator().manual_seed(1))
    times = objective.path_times(sigmas)
    floor = path.training_time_range[0]
    assert float(times.min()) >= floor and torch.allclose(timesteps, times * 1000)
    # The model input is the path point, i.e. our x_sigma scaled by a + b wherever sigma lies in the path's range.
    a, b = path.coefficients(times.double())
    assert torch.allclose(noisy, a.view(-1, 1, 1, 1) * x0 + b.view(-1, 1, 1, 1) * noise)
    inside = (sigmas < path.sigma_range[1]) & (times > floor)
    assert torch.allclose(path.sigma_from_time(times)[inside], sigmas[inside].double(), atol=1e-6)
    exact = path.target(x0, noise, times, prediction_type)
    assert torch.isfinite(exact).all()
    assert float(objective.loss(exact, x0, noise, sigmas, noisy)) < 1e-8
    assert float(objective.loss(exact + 0.1, x0, noise, sigmas, noisy)) > 1e-3


# ----------------------------------------------------------------------------------------------- script
def test_cosine_run_overfits_one_batch_and_saves_a_cosine_pipeline(train_flow, tmp_path: Path) -> None:
    from flow_pipelines.data_sources import load_digits_dataset

    run(
        train_flow, tmp_path, "--max_train_samples", "4", "--overfit_one_batch", "--max_train_steps", "250",
        "--hidden_size", "64", "--num_layers", "2", "--learning_rate", "3e-3", "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0", "--label_dropout", "0", "--no-use_ema", "--prediction_type", "sample",
        "--path", "cosine",
    )  # fmt: skip
    losses = [record["loss"] for record in log_records(tmp_path)]
    assert losses[0] > 0.3 and losses[-1] < 0.01, losses
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
    digits = load_digits_dataset()
    batch = np.stack([np.asarray(digits[i]["image"], dtype=np.float64) / 255.0 for i in range(4)])
    distances = ((images[:, None, ..., 0] - batch[None]) ** 2).sum(axis=(2, 3))
    assert distances.argmin(axis=1).tolist() == [0, 1, 2, 3]
    assert np.abs(images[..., 0] - batch).mean() < 0.05


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


def test_eval_steps_log_digit_accuracy_to_the_jsonl_log_and_tensorboard(train_flow, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(
        train_flow, tmp_path, "--max_train_steps", "4", "--eval_steps", "2", "--eval_num_samples", "10",
        "--report_to", "tensorboard",
    )  # fmt: skip
    evaluations = [record for record in log_records(tmp_path) if "eval/digit_accuracy" in record]
    assert [record["step"] for record in evaluations] == [2, 4]
    assert all(0.0 <= record["eval/digit_accuracy"] <= 1.0 for record in evaluations)
    steps = set()
    for event_file in (tmp_path / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        if "eval/digit_accuracy" in accumulator.Tags()["scalars"]:
            steps |= {event.step for event in accumulator.Scalars("eval/digit_accuracy")}
    assert steps == {2, 4}


def test_eval_without_an_offline_extractor_is_skipped_with_one_log_line(train_flow, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    output = tmp_path / "run"
    run(
        train_flow, output, "--train_data_dir", str(tmp_path / "images"), "--max_train_samples", "8",
        "--max_train_steps", "2", "--eval_steps", "1",
    )  # fmt: skip
    log = (output / "train.log").read_text()
    assert log.count("Evaluation during training skipped") == 1 and "--eval_extractor" in log
    assert not any(key.startswith("eval/") for record in log_records(output) for key in record)


# ----------------------------------------------------------------------------------------------- likelihood
class GaussianPathModel(torch.nn.Module):
    """The exact model of Gaussian data ``N(mean, std^2)`` trained on a path, in closed form on that path.

    At path time ``s`` the input is ``x_s = a x0 + b noise``; with ``k = a^2 std^2 + b^2`` the posterior means
    are ``E[x0 | x_s] = mean + a std^2 (x_s - a mean) / k`` and ``E[noise | x_s] = b (x_s - a mean) / k``.
    """

    def __init__(self, path_name: str, prediction_type: str, num_train_timesteps: int = 500) -> None:
        super().__init__()
        self.mean = torch.tensor([0.5, -0.5, 0.1, 0.9], dtype=torch.float64).view(1, 1, 2, 2)
        self.std = 0.3
        self.path = get_path(path_name)
        self.config = FrozenDict(
            prediction_type=prediction_type,
            num_train_timesteps=num_train_timesteps,
            num_classes=10,
            in_channels=1,
            path=path_name,
        )

    def forward(self, hidden_states, timestep, class_labels=None, return_dict=True):
        time = timestep.double() / self.config["num_train_timesteps"]
        a, b = (value.view(-1, 1, 1, 1) for value in self.path.coefficients(time))
        da, db = (value.view(-1, 1, 1, 1) for value in self.path.derivatives(time))
        centred = hidden_states - a * self.mean
        variance = a**2 * self.std**2 + b**2
        x0 = self.mean + a * self.std**2 * centred / variance
        noise = b * centred / variance
        kind = self.config["prediction_type"]
        output = x0 if kind == "sample" else noise if kind == "epsilon" else da * x0 + db * noise
        return (output,)


@pytest.mark.parametrize("prediction_type", ["velocity", "sample", "epsilon"])
def test_likelihood_of_the_exact_gaussian_model_is_the_same_on_the_cosine_and_linear_paths(prediction_type):
    flow = GaussianFlow(torch.tensor([0.5, -0.5, 0.1, 0.9]).view(1, 2, 2), torch.tensor(0.3))
    x = flow.sample_marginal((40, 1, 2, 2), 0.0, generator=torch.Generator().manual_seed(6))
    sigma_max = 0.9999 if prediction_type == "epsilon" else 1.0
    options = {"num_steps": 24, "divergence": "exact", "sigma_max": sigma_max}
    cosine = log_likelihood(GuidedVelocity(GaussianPathModel("cosine", prediction_type)), x, **options)
    linear = log_likelihood(GuidedVelocity(GaussianPathModel("linear", prediction_type)), x, **options)
    dims = x[0].numel()
    assert (cosine.log_prob - linear.log_prob).abs().max().item() / dims < 1e-3
    assert (cosine.log_prob - flow.log_prob(x)).abs().max().item() / dims < 1e-3
    # Pointwise, the model's output becomes our velocity at our noise level only through the mapping.
    sigma = torch.linspace(0.05, 0.95, len(x), dtype=torch.float64)
    points = flow.sample_marginal((len(x), 1, 2, 2), 0.5, generator=torch.Generator().manual_seed(7))
    model = GaussianPathModel("cosine", prediction_type)
    mapped = GuidedVelocity(model)(points, sigma)
    assert torch.allclose(mapped, flow.velocity(points, sigma), atol=1e-6)
    model.config = FrozenDict({**model.config, "path": "linear"})
    assert (GuidedVelocity(model)(points, sigma) - flow.velocity(points, sigma)).abs().max() > 0.1


def test_eval_steps_log_fd_dinov2_with_a_local_extractor_folder(train_flow, tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    # A tiny randomly initialised DINOv2 saved to a folder: the real loading and feature code, no download.
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=28
    )
    Dinov2Model(config).save_pretrained(tmp_path / "dinov2")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(8):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    output = tmp_path / "run"
    run(
        train_flow, output, "--train_data_dir", str(tmp_path / "images"), "--max_train_samples", "16",
        "--max_train_steps", "2", "--eval_steps", "2", "--eval_num_samples", "12",
        "--eval_extractor", str(tmp_path / "dinov2"),
    )  # fmt: skip
    scores = [record["eval/fd_dinov2"] for record in log_records(output) if "eval/fd_dinov2" in record]
    assert len(scores) == 1 and math.isfinite(scores[0]) and scores[0] > 0
