#!/usr/bin/env python
"""Train a class-conditional DiT by flow matching with accelerate and save a ``FlowPipeline``.

    accelerate launch train_scripts/train_flow.py [flags]

With no flags it trains on scikit-learn's bundled 8×8 digits (upsampled to 16×16) on a CPU in a few
minutes and leaves in ``--output_dir`` (``outputs/digits``):

- ``pipeline/``: the saved ``FlowPipeline`` (EMA weights, scheduler, ``id2label``), its model card
  ``README.md`` and ``samples.png`` (one row per class);
- ``train_log.jsonl`` (metrics every ``--logging_steps``), ``train.log`` (messages), ``training_args.json``
  and ``train_summary.json`` (final figures: throughput, digit accuracy, ...);
- ``checkpoint-<step>/`` folders (``--checkpointing_steps``) and ``samples/`` validation grids.

The path convention is the package's: ``x_sigma = (1 - sigma) x0 + sigma noise``, the model is called with
``sigma * 1000`` and predicts ``--prediction_type``; see ``flow_pipelines.training.objectives``.

Flags follow diffusers' training examples (``--output_dir``, ``--train_batch_size``, ``--max_train_steps``,
``--gradient_accumulation_steps``, ``--mixed_precision``, ``--report_to``, ``--checkpointing_steps``,
``--resume_from_checkpoint latest``, ``--push_to_hub``, ...). Run with ``--help`` for the list.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flow_pipelines.images import INTERPOLATION_MODES, dequantize, pixels_to_model_range  # noqa: E402
from flow_pipelines.paths import PATH_NAMES, PREDICTION_TYPES, AffinePath, get_path  # noqa: E402
from flow_pipelines.training.checkpointing import (  # noqa: E402
    read_training_state,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from flow_pipelines.training.data import (  # noqa: E402
    CACHE_MODES,
    DIGITS_DATASET,
    DataConfig,
    EpochShuffleSampler,
    collate_examples,
    prepare_training_data,
    random_flip,
)
from flow_pipelines.training.objectives import (  # noqa: E402
    LOSS_WEIGHTINGS,
    TIME_SAMPLING_SCHEMES,
    FlowMatchingObjective,
    drop_labels,
)

logger = logging.getLogger("train_flow")

# The embedded default: a DiT small enough to learn the 8x8 digits on a 2-core CPU in minutes (0.18M
# parameters, 16 tokens of 4x4 pixels at 16x16). Measured on the digits: 1,500 steps at batch 128 give
# 99-100% digit accuracy at guidance 2-3; 1,000 steps about 95%, 4 layers instead of 2 no better per second.
DIGITS_MODEL_DEFAULTS: dict[str, Any] = {
    "patch_size": 4,
    "hidden_size": 64,
    "num_layers": 2,
    "num_attention_heads": 4,
    "mlp_ratio": 4.0,
}
REPORT_TO_CHOICES = ("none", "tensorboard", "wandb")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial")
# Optimizer steps of the embedded default run (about 107 epochs of the digits at batch 128).
DIGITS_TRAIN_STEPS = 1500
PIPELINE_FOLDER = "pipeline"
SAMPLE_GRID_NAME = "samples.png"
EVAL_METRICS = ("auto", "digit_accuracy", "fd_dinov2")


# ----------------------------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    """The script's command-line flags.

    Returns:
        The argument parser.
    """
    parser = argparse.ArgumentParser(
        description="Train a class-conditional DiT by flow matching and save a FlowPipeline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help=f"A datasets.load_dataset name or local path, a save_to_disk folder, or {DIGITS_DATASET!r}. "
        "Default (with no --train_data_dir): scikit-learn's 8x8 digits.",
    )
    data.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name.")
    data.add_argument("--train_data_dir", default=None, help="An image folder; the class is the sub-folder.")
    data.add_argument("--image_column", default=None, help="Image column (detected: image, img, ...).")
    data.add_argument(
        "--label_column", default=None, help="Label column (detected: label, labels, fine_label, ...)."
    )
    data.add_argument("--cache_dir", default=None, help="Where datasets caches downloads.")
    data.add_argument("--resolution", type=int, default=16, help="Training image side, in pixels.")
    data.add_argument("--center_crop", action="store_true", help="Crop the centre (default: a random crop).")
    data.add_argument("--random_flip", action="store_true", help="Mirror images left-right at random.")
    data.add_argument(
        "--num_channels",
        type=int,
        default=None,
        choices=(1, 3, 4),
        help="Image channels (default: the data's).",
    )
    data.add_argument("--dequantize", action="store_true", help="Add uniform noise one 8-bit level wide.")
    data.add_argument(
        "--max_train_samples", type=int, default=None, help="Train on the first N examples only."
    )
    data.add_argument("--streaming", action="store_true", help="Stream the dataset (sharded by process).")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer when streaming.")
    data.add_argument(
        "--cache_images",
        default="auto",
        choices=CACHE_MODES,
        help="Decode the images once and hold them in memory (auto: when they fit in 2 GiB).",
    )
    data.add_argument(
        "--image_interpolation_mode",
        default="bilinear",
        choices=tuple(INTERPOLATION_MODES),
        help="Resize filter.",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="Data-loading worker processes.")

    latent = parser.add_argument_group("latent training")
    latent.add_argument(
        "--vae", default=None, help="AutoencoderKL folder or repo id: train in its latent space."
    )
    latent.add_argument(
        "--vae_subfolder", default=None, help="Subfolder of --vae holding the VAE (e.g. 'vae')."
    )
    latent.add_argument(
        "--vae_batch_size", type=int, default=32, help="Images per VAE call when caching latents."
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_preset", default=None, help="A DiT preset, e.g. 'DiT-S/2'; flags below override it."
    )
    model.add_argument("--patch_size", type=int, default=None)
    model.add_argument("--hidden_size", type=int, default=None)
    model.add_argument("--num_layers", type=int, default=None)
    model.add_argument("--num_attention_heads", type=int, default=None)
    model.add_argument("--mlp_ratio", type=float, default=None)
    model.add_argument("--pos_embed", default=None, choices=("sincos", "rope"))
    model.add_argument("--qk_norm", default=None, choices=("rms_norm", "layer_norm"))
    model.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute activations in backward."
    )

    objective = parser.add_argument_group("objective")
    objective.add_argument(
        "--path",
        default="linear",
        choices=PATH_NAMES,
        help="The noising path trained on (flow_pipelines.paths); the pipeline samples any of them.",
    )
    objective.add_argument(
        "--vp_beta_min", type=float, default=None, help="beta_min of --path vp (default: the path's, 0.1)."
    )
    objective.add_argument(
        "--vp_beta_max", type=float, default=None, help="beta_max of --path vp (default: the path's, 20)."
    )
    objective.add_argument("--prediction_type", default="velocity", choices=PREDICTION_TYPES)
    objective.add_argument(
        "--loss_target", default=None, choices=PREDICTION_TYPES, help="Default: prediction_type."
    )
    objective.add_argument(
        "--time_sampling",
        "--weighting_scheme",
        dest="time_sampling",
        default="logit_normal",
        choices=TIME_SAMPLING_SCHEMES,
    )
    objective.add_argument("--logit_mean", type=float, default=0.0)
    objective.add_argument("--logit_std", type=float, default=1.0)
    objective.add_argument("--mode_scale", type=float, default=1.29)
    objective.add_argument("--shift", type=float, default=1.0, help="Shift of the training noise levels.")
    objective.add_argument("--loss_weighting", default="none", choices=LOSS_WEIGHTINGS)
    objective.add_argument(
        "--label_dropout", type=float, default=0.1, help="Chance of the null class (for CFG)."
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=128, help="Batch size per process.")
    optim.add_argument("--num_train_epochs", type=int, default=None)
    optim.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--learning_rate", type=float, default=2e-3)
    optim.add_argument("--lr_scheduler", default="cosine", choices=LR_SCHEDULERS)
    optim.add_argument("--lr_warmup_steps", type=int, default=100)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.99)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument(
        "--max_grad_norm", type=float, default=1.0, help="Clip the gradient norm (0: no clipping)."
    )
    optim.add_argument(
        "--mixed_precision",
        default=None,
        choices=("no", "fp16", "bf16"),
        help="Default: accelerate's setting.",
    )
    optim.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, default=True, help="Keep EMA weights."
    )
    optim.add_argument("--ema_decay", type=float, default=0.999)
    optim.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--output_dir", default="outputs/digits")
    run.add_argument("--checkpointing_steps", type=int, default=500)
    run.add_argument("--checkpoints_total_limit", type=int, default=2)
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder.")
    run.add_argument("--report_to", default="none", choices=REPORT_TO_CHOICES)
    run.add_argument("--logging_dir", default="logs", help="Tracker folder, relative to --output_dir.")
    run.add_argument("--tracker_project_name", default="flow_pipelines")
    run.add_argument("--logging_steps", type=int, default=10, help="Write metrics every N steps.")
    run.add_argument(
        "--validation_steps", type=int, default=500, help="Sample a grid every N steps (0: never)."
    )
    run.add_argument("--validation_images_per_class", type=int, default=8)
    run.add_argument(
        "--validation_classes", type=int, nargs="*", default=None, help="Default: up to the first 10."
    )

    evaluation = parser.add_argument_group("evaluation during training")
    evaluation.add_argument(
        "--eval_steps", type=int, default=0, help="Log an evaluation metric every N steps (0: never)."
    )
    evaluation.add_argument(
        "--eval_num_samples", type=int, default=100, help="Images sampled per evaluation."
    )
    evaluation.add_argument(
        "--eval_metric",
        default="auto",
        choices=EVAL_METRICS,
        help="auto: digit accuracy on the digits, else fd_dinov2 when --eval_extractor is given.",
    )
    evaluation.add_argument(
        "--eval_extractor",
        default=None,
        help="A local Dinov2Model folder for fd_dinov2 (never downloaded; without it FD is skipped).",
    )

    final = parser.add_argument_group("sampling and evaluation of the result")
    final.add_argument("--num_inference_steps", type=int, default=20, help="Steps of the sample grids.")
    final.add_argument("--guidance_scale", type=float, default=3.0, help="CFG scale of the sample grids.")
    final.add_argument(
        "--sampling_shift", type=float, default=None, help="Saved scheduler's shift (default: --shift)."
    )
    final.add_argument(
        "--evaluation_samples_per_class",
        type=int,
        default=50,
        help="Digit-accuracy samples per class when training on the digits (0: skip).",
    )

    hub = parser.add_argument_group("hub")
    hub.add_argument(
        "--push_to_hub", action="store_true", help="Upload the pipeline folder (not checkpoints)."
    )
    hub.add_argument("--hub_model_id", default=None, help="'user/name'; default: the output folder's name.")
    hub.add_argument(
        "--hub_token", default=None, help="Hub token (never written anywhere); prefer `hf auth login`."
    )
    hub.add_argument("--hub_private_repo", action="store_true")

    run.add_argument(
        "--cpu_threads",
        type=int,
        default=None,
        help="torch threads per process on a CPU (default: the idle cores, at least 1; see choose_cpu_threads).",
    )

    debug = parser.add_argument_group("debugging")
    debug.add_argument("--overfit_one_batch", action="store_true", help="Train on the first batch only.")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags.

    Args:
        argv: Arguments (``sys.argv[1:]`` if None).

    Returns:
        The parsed arguments.

    Raises:
        ValueError: For inconsistent or out-of-range values.
    """
    args = build_parser().parse_args(argv)
    check_args(args)
    return args


def is_digits(args: argparse.Namespace) -> bool:
    """Whether the run trains on the embedded digits."""
    return args.train_data_dir is None and args.dataset_name in (None, DIGITS_DATASET)


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Architecture settings: the digits defaults (or a preset), overridden by explicit flags."""
    from flow_pipelines.models import DIT_PRESETS

    if args.model_preset is not None:
        if args.model_preset not in DIT_PRESETS:
            raise ValueError(
                f"--model_preset {args.model_preset!r} is unknown; allowed: {', '.join(DIT_PRESETS)}."
            )
        settings: dict[str, Any] = dict(DIT_PRESETS[args.model_preset])
    else:
        settings = dict(DIGITS_MODEL_DEFAULTS)
    for name in (
        "patch_size",
        "hidden_size",
        "num_layers",
        "num_attention_heads",
        "mlp_ratio",
        "pos_embed",
        "qk_norm",
    ):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings


def check_args(args: argparse.Namespace) -> None:
    """Check what can be checked from the flags alone, before any work.

    Args:
        args: The parsed arguments.

    Raises:
        ValueError: Naming the flag, its value and what is allowed.
    """

    def positive(name: str, allow_none: bool = False) -> None:
        value = getattr(args, name)
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            raise ValueError(f"--{name}={value} must be a positive number.")

    for name in (
        "resolution",
        "train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "logging_steps",
    ):
        positive(name)
    for name in ("max_train_steps", "num_train_epochs", "checkpoints_total_limit", "max_train_samples"):
        positive(name, allow_none=True)
    for name in (
        "checkpointing_steps",
        "validation_steps",
        "lr_warmup_steps",
        "evaluation_samples_per_class",
    ):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name}={getattr(args, name)} must be >= 0 (0 disables).")
    if args.num_inference_steps < 1 or args.validation_images_per_class < 1:
        raise ValueError("--num_inference_steps and --validation_images_per_class must be >= 1.")
    if not 0.0 <= args.label_dropout <= 1.0:
        raise ValueError(f"--label_dropout={args.label_dropout} must lie in [0, 1].")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay={args.ema_decay} must lie in [0, 1).")
    if args.max_grad_norm < 0:
        raise ValueError(f"--max_grad_norm={args.max_grad_norm} must be >= 0 (0 disables clipping).")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("Give either --dataset_name or --train_data_dir, not both.")
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps: a stream's length is not known in advance.")
    if args.overfit_one_batch and args.max_train_steps is None:
        raise ValueError("--overfit_one_batch needs --max_train_steps.")
    if args.vae is not None and args.dequantize:
        raise ValueError("--dequantize applies to pixels; it cannot be combined with --vae.")
    if args.push_to_hub and args.hub_model_id is not None and args.hub_model_id.count("/") > 1:
        raise ValueError(f"--hub_model_id={args.hub_model_id!r} must look like 'user/name'.")
    if args.eval_steps < 0 or args.eval_num_samples < 1:
        raise ValueError(
            f"--eval_steps={args.eval_steps} must be >= 0 (0 disables) and --eval_num_samples="
            f"{args.eval_num_samples} >= 1."
        )
    if args.eval_metric == "digit_accuracy" and not is_digits(args):
        raise ValueError("--eval_metric digit_accuracy needs the digits dataset; use fd_dinov2 or auto.")
    if args.eval_extractor is not None and not Path(args.eval_extractor).is_dir():
        raise ValueError(f"--eval_extractor {args.eval_extractor!r} is not a local folder.")
    build_path(args)
    FlowMatchingObjective(
        prediction_type=args.prediction_type,
        loss_target=args.loss_target or args.prediction_type,
        time_sampling=args.time_sampling,
        logit_mean=args.logit_mean,
        logit_std=args.logit_std,
        mode_scale=args.mode_scale,
        shift=args.shift,
        loss_weighting=args.loss_weighting,
    )
    if args.sampling_shift is not None and args.sampling_shift <= 0:
        raise ValueError(f"--sampling_shift={args.sampling_shift} must be > 0.")
    settings = model_settings(args)
    if args.vae is None and args.resolution % settings["patch_size"]:
        raise ValueError(
            f"--resolution={args.resolution} is not divisible by the patch size {settings['patch_size']}; "
            f"allowed: multiples of {settings['patch_size']}."
        )


# ----------------------------------------------------------------------------------------------- helpers
def public_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings without credentials (for logs, trackers and the model card)."""
    from flow_pipelines.hub import public_config

    return public_config(dict(vars(args)))


def tracker_config(config: dict[str, Any]) -> dict[str, Any]:
    """Settings as trackers accept them (TensorBoard's hparams take only scalars and strings)."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in config.items()
    }


def step_seed(seed: int, global_step: int, micro_step: int, process_index: int) -> int:
    """A seed for one micro-step's noise: a function of the run seed and position only, so resuming replays it."""
    blob = f"{seed}:{global_step}:{micro_step}:{process_index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters (to check that all processes hold the same weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def setup_file_logging(output_dir: Path, is_main: bool) -> logging.Handler | None:
    """Log messages of the main process to stdout and ``output_dir/train.log``."""
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if not is_main:
        logger.addHandler(logging.NullHandler())
        return None
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(formatter)
    logger.addHandler(stream)
    output_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(output_dir / "train.log", encoding="utf-8")
    file_handler.setFormatter(formatter)
    logger.addHandler(file_handler)
    return file_handler


def load_vae(args: argparse.Namespace) -> Any:
    """Load the ``AutoencoderKL`` named by ``--vae`` (frozen, eval mode)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(args.vae, subfolder=args.vae_subfolder, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"--vae {args.vae!r}: cannot load an AutoencoderKL from it ({error}).") from error
    vae.requires_grad_(False)
    vae.eval()
    return vae


def build_path(args: argparse.Namespace) -> AffinePath:
    """The path of ``--path`` (with ``--vp_beta_min`` / ``--vp_beta_max`` for ``vp``).

    Raises:
        ValueError: For beta flags with another path, or invalid betas.
    """
    betas = {
        key: value
        for key, value in (("beta_min", args.vp_beta_min), ("beta_max", args.vp_beta_max))
        if value is not None
    }
    if betas and args.path != "vp":
        raise ValueError(f"--vp_beta_min / --vp_beta_max apply to --path vp only; got --path {args.path}.")
    return get_path(args.path, **betas)


def build_model(args: argparse.Namespace, in_channels: int, sample_size: int, num_classes: int) -> Any:
    """Create the DiT for this run.

    Args:
        args: The flags.
        in_channels: Image (or latent) channels.
        sample_size: Image (or latent) side.
        num_classes: Number of real classes.

    Returns:
        A freshly initialised ``DiTModel``.
    """
    from flow_pipelines.models import DiTModel

    settings = model_settings(args)
    path = build_path(args)
    if path.name != "linear":
        # The config names the path, so that FlowPipeline samples the model through its mapping.
        settings.update(path=path.name, path_kwargs=path.kwargs or None)
    return DiTModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        num_classes=num_classes,
        prediction_type=args.prediction_type,
        **settings,
    )


def build_scheduler(args: argparse.Namespace) -> Any:
    """The scheduler saved with the pipeline: Euler with the sampling shift, predicting the model's type on
    our straight path and the velocity for a model of another path (the pipeline maps its output)."""
    from flow_pipelines import FlowEulerScheduler

    shift = args.sampling_shift if args.sampling_shift is not None else args.shift
    return FlowEulerScheduler(num_train_timesteps=1000, shift=shift)


def sample_grid(
    pipeline: Any,
    id2label: dict[int, str],
    classes: Sequence[int],
    per_class: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
) -> Any:
    """Sample ``per_class`` images of each class and arrange them one row per class, labelled.

    Args:
        pipeline: The ``FlowPipeline``.
        id2label: Class names.
        classes: The classes to show.
        per_class: Images per row.
        num_inference_steps: Sampling steps.
        guidance_scale: CFG scale.
        seed: Sampling seed.

    Returns:
        The grid as a PIL image.
    """
    from flow_pipelines.visualization import make_labelled_grid

    labels = [c for c in classes for _ in range(per_class)]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    images = pipeline(
        class_labels=labels,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="pil",
    ).images
    rows = [images[i * per_class : (i + 1) * per_class] for i in range(len(classes))]
    return make_labelled_grid(rows, [id2label.get(c, str(c)) for c in classes])


def ema_state(ema: Any) -> dict[str, Any]:
    """The EMA's scalar state (everything but the shadow weights)."""
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


# ----------------------------------------------------------------------------------------------- batches
class BatchStream:
    """Yields training batches step after step, epoch after epoch, from any position.

    Map-style data uses an :class:`EpochShuffleSampler`: the order is a function of ``(seed, epoch)``, so
    a resumed run skips the consumed part of an epoch by dropping that many indices and continues with
    exactly the batches the uninterrupted run would have seen (on every process). A stream is re-read each
    epoch (reshuffled by epoch) and consumed batches are skipped by reading them.

    Args:
        loader: The (accelerate-prepared, for map-style data) data loader.
        sampler: The loader's sampler (None for a stream).
        batches_per_epoch: Batches used per epoch per process (None for a stream).
        global_batch: Examples per batch over all processes.
        device: Where batches go (for an unprepared stream loader).
    """

    def __init__(
        self,
        loader: Any,
        sampler: EpochShuffleSampler | None,
        batches_per_epoch: int | None,
        global_batch: int,
        device: torch.device,
    ) -> None:
        self.loader = loader
        self.sampler = sampler
        self.batches_per_epoch = batches_per_epoch
        self.global_batch = global_batch
        self.device = device
        self.epoch = 0
        self.batch_in_epoch = 0

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        if self.sampler is not None:
            self.loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch, skip_examples=skip * self.global_batch)
            for index, batch in enumerate(self.loader):
                if skip + index < self.batches_per_epoch:
                    yield batch
            return
        self.loader.dataset.set_epoch(epoch)
        for index, batch in enumerate(self.loader):
            if index >= skip:
                yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def iterate(self, epoch: int, batch_in_epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches forever, starting at batch ``batch_in_epoch`` of ``epoch``."""
        self.epoch, skip = epoch, batch_in_epoch
        while True:
            self.batch_in_epoch = skip
            produced = False
            for batch in self._epoch_batches(self.epoch, skip):
                produced = True
                self.batch_in_epoch += 1
                yield batch
            if not produced and skip == 0:
                raise ValueError(
                    "The training data yielded no batch: it is smaller than one batch per process."
                )
            self.epoch, skip = self.epoch + 1, 0


# ----------------------------------------------------------------------------------------------- trainer
class FlowTrainer:
    """One training run: data, model, optimisation, checkpoints, logging and the saved result.

    :func:`main` drives it as ``setup()`` then ``train()``; the benchmark times the same object.

    Args:
        args: Flags from :func:`parse_args`.
        accelerator: The ``accelerate.Accelerator`` of the run.
        resume_path: The checkpoint to resume from, or None.
    """

    def __init__(self, args: argparse.Namespace, accelerator: Any, resume_path: Path | None = None) -> None:
        self.args = args
        self.accelerator = accelerator
        self.resume_path = resume_path
        self.output_dir = Path(args.output_dir)
        self.device = accelerator.device
        self.is_main = accelerator.is_main_process
        self.num_processes = accelerator.num_processes
        self.global_step = 0
        self.samples_seen = 0
        self.vae = None
        self.scaling_factor, self.shift_factor = 1.0, 0.0
        self.ema = None

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Load the data, build the model and optimiser, register checkpoint hooks, prepare and resume."""
        from accelerate.utils import set_seed

        set_seed(self.args.seed)
        logger.info(
            "Process %d/%d on %s (%d torch threads), mixed precision %s",
            self.accelerator.process_index + 1,
            self.num_processes,
            self.device,
            torch.get_num_threads(),
            self.accelerator.mixed_precision,
        )
        self._setup_data()
        self._setup_model()
        self._register_checkpoint_hooks()
        if self.sampler is not None:
            self.model, self.optimizer, self.loader, self.lr_scheduler = self.accelerator.prepare(
                self.model, self.optimizer, self.loader, self.lr_scheduler
            )
        else:
            # A stream is already split by process; accelerate must not split it again.
            self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
                self.model, self.optimizer, self.lr_scheduler
            )
        if self.ema is not None:
            self.ema.to(self.device)
        self._start_records()
        self._resume()
        self.eval_metric = self._choose_eval_metric()

    def _setup_data(self) -> None:
        args = self.args
        vae_factor = 1
        num_channels = args.num_channels
        if args.vae is not None:
            from flow_pipelines.training.latents import latent_normalization, vae_scale_factor

            self.vae = load_vae(args)
            vae_factor = vae_scale_factor(self.vae)
            self.scaling_factor, self.shift_factor = latent_normalization(self.vae)
            patch = model_settings(args)["patch_size"]
            if args.resolution % (vae_factor * patch):
                raise ValueError(
                    f"--resolution={args.resolution} must be divisible by the VAE's downsampling "
                    f"({vae_factor}) times the patch size ({patch}) = {vae_factor * patch}."
                )
            in_channels = self.vae.config.in_channels
            num_channels = num_channels or in_channels
            if num_channels != in_channels:
                raise ValueError(
                    f"--num_channels={num_channels} differs from the VAE's in_channels={in_channels}."
                )
            self.vae.to(self.device)
        self.sample_size = args.resolution // vae_factor
        config = DataConfig(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_data_dir=args.train_data_dir,
            image_column=args.image_column,
            label_column=args.label_column,
            resolution=args.resolution,
            # Latents are encoded once, so their crop is fixed: the centre.
            center_crop=args.center_crop or self.vae is not None,
            num_channels=num_channels,
            max_train_samples=args.max_train_samples,
            streaming=args.streaming,
            cache_images=args.cache_images,
            interpolation=args.image_interpolation_mode,
            seed=args.seed,
            cache_dir=args.cache_dir,
            dataloader_num_workers=args.dataloader_num_workers,
            shuffle_buffer_size=args.shuffle_buffer_size,
        )
        with self.accelerator.main_process_first():
            self.data = prepare_training_data(
                config, self.accelerator.process_index, self.num_processes, disable_progress=not self.is_main
            )
        self.id2label = self.data.id2label
        logger.info(
            "Data: %s, %s examples, %d classes, %d channels at %dx%d%s",
            self.data.description,
            self.data.num_examples if self.data.num_examples is not None else "streamed",
            len(self.id2label),
            self.data.num_channels,
            args.resolution,
            args.resolution,
            ", decoded into memory" if self.data.cached else "",
        )
        dataset = self.data.dataset
        if self.vae is not None and self.data.num_examples is not None:
            dataset = self._latent_dataset()

        self.global_batch = args.train_batch_size * self.num_processes
        accumulation = args.gradient_accumulation_steps
        self.sampler = None
        if self.data.num_examples is None:
            self.loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=args.train_batch_size,
                num_workers=args.dataloader_num_workers,
                collate_fn=collate_examples,
            )
            self.batches_per_epoch = self.steps_per_epoch = None
        else:
            if self.data.num_examples < self.global_batch:
                raise ValueError(
                    f"The dataset has {self.data.num_examples} examples, fewer than one global batch "
                    f"({args.train_batch_size} x {self.num_processes} processes = {self.global_batch}); "
                    "lower --train_batch_size."
                )
            self.sampler = EpochShuffleSampler(
                len(dataset), seed=args.seed, shuffle=not args.overfit_one_batch
            )
            self.loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=args.train_batch_size,
                sampler=self.sampler,
                drop_last=True,
                num_workers=args.dataloader_num_workers,
                collate_fn=collate_examples,
                persistent_workers=args.dataloader_num_workers > 0,
            )
            self.steps_per_epoch = self.data.num_examples // self.global_batch // accumulation
            if self.steps_per_epoch == 0:
                raise ValueError(
                    f"One epoch ({self.data.num_examples // self.global_batch} batches per process) is shorter "
                    f"than --gradient_accumulation_steps={accumulation}; lower it or the batch size."
                )
            self.batches_per_epoch = self.steps_per_epoch * accumulation
        if args.max_train_steps is not None:
            self.max_train_steps = args.max_train_steps
        elif args.num_train_epochs is not None:
            self.max_train_steps = args.num_train_epochs * self.steps_per_epoch
        elif is_digits(args):
            self.max_train_steps = DIGITS_TRAIN_STEPS
        else:
            self.max_train_steps = 10 * self.steps_per_epoch

    def _latent_dataset(self) -> torch.utils.data.Dataset:
        from flow_pipelines.training.latents import LATENT_CACHE_FOLDER, build_latent_dataset, cache_key

        args = self.args
        vae_name = args.vae + (f"/{args.vae_subfolder}" if args.vae_subfolder else "")
        settings = {
            "interpolation": args.image_interpolation_mode,
            "max_train_samples": args.max_train_samples,
        }
        key = cache_key(vae_name, self.vae, self.data, args.resolution, args.random_flip, settings)
        cache_path = self.output_dir / LATENT_CACHE_FOLDER / f"{key}.safetensors"
        # The main process encodes and writes the cache; the others then read it.
        with self.accelerator.main_process_first():
            dataset = build_latent_dataset(
                self.vae,
                self.data,
                cache_path,
                args.random_flip,
                args.vae_batch_size,
                args.dataloader_num_workers,
                disable_progress=not self.is_main,
            )
        logger.info("Latents cached on disk at %s (%d examples)", cache_path, len(dataset))
        return dataset

    def _setup_model(self) -> None:
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        args = self.args
        in_channels = self.data.num_channels if self.vae is None else self.vae.config.latent_channels
        self.transformer = build_model(args, in_channels, self.sample_size, len(self.id2label))
        if args.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()
        self.num_parameters = sum(p.numel() for p in self.transformer.parameters())
        tokens = (self.sample_size // self.transformer.config.patch_size) ** 2
        logger.info(
            "Model: DiT %s, %.2fM parameters, %d tokens",
            model_settings(args),
            self.num_parameters / 1e6,
            tokens,
        )
        if args.use_ema:
            self.ema = EMAModel(self.transformer.parameters(), decay=args.ema_decay, foreach=True)
        self.model = self.transformer
        self.optimizer = torch.optim.AdamW(
            self.transformer.parameters(),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        self.lr_scheduler = get_scheduler(
            args.lr_scheduler,
            optimizer=self.optimizer,
            # The prepared scheduler steps once per process per optimizer step.
            num_warmup_steps=args.lr_warmup_steps * self.num_processes,
            num_training_steps=self.max_train_steps * self.num_processes,
        )
        self.objective = FlowMatchingObjective(
            prediction_type=args.prediction_type,
            loss_target=args.loss_target or args.prediction_type,
            time_sampling=args.time_sampling,
            logit_mean=args.logit_mean,
            logit_std=args.logit_std,
            mode_scale=args.mode_scale,
            shift=args.shift,
            loss_weighting=args.loss_weighting,
            num_train_timesteps=self.transformer.config.num_train_timesteps,
            path=build_path(args),
        )

    def _register_checkpoint_hooks(self) -> None:
        """Checkpoints hold the model and its EMA as safetensors folders, through accelerate's state hooks."""
        from flow_pipelines.models import DiTModel

        def save_hook(models: list, weights: list, folder: str) -> None:
            if self.accelerator.is_main_process:
                self.transformer.save_pretrained(os.path.join(folder, "transformer"))
                if self.ema is not None:
                    ema_model = DiTModel.from_config(self.transformer.config)
                    self.ema.copy_to(ema_model.parameters())
                    ema_folder = os.path.join(folder, "transformer_ema")
                    ema_model.save_pretrained(ema_folder)
                    with open(os.path.join(ema_folder, "ema_state.json"), "w", encoding="utf-8") as handle:
                        json.dump(ema_state(self.ema), handle)
            weights.clear()

        def load_hook(models: list, folder: str) -> None:
            models.clear()
            loaded = DiTModel.from_pretrained(folder, subfolder="transformer")
            self.transformer.load_state_dict(loaded.state_dict())
            if self.ema is not None:
                ema_folder = os.path.join(folder, "transformer_ema")
                shadow = [
                    p.detach().to(self.device) for p in DiTModel.from_pretrained(ema_folder).parameters()
                ]
                with open(os.path.join(ema_folder, "ema_state.json"), encoding="utf-8") as handle:
                    self.ema.load_state_dict({**json.load(handle), "shadow_params": shadow})

        self.accelerator.register_save_state_pre_hook(save_hook)
        self.accelerator.register_load_state_pre_hook(load_hook)

    def _start_records(self) -> None:
        args = self.args
        self.config = public_args(args)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "training_args.json", "w", encoding="utf-8") as handle:
                json.dump(self.config, handle, indent=2)
        if args.report_to != "none":
            tracker_dir = self.output_dir / args.logging_dir
            if self.is_main:
                tracker_dir.mkdir(parents=True, exist_ok=True)
            self.accelerator.init_trackers(
                args.tracker_project_name,
                config=tracker_config(self.config),
                init_kwargs={"wandb": {"dir": str(tracker_dir)}},
            )

    def _resume(self) -> None:
        self.epoch, self.batch_in_epoch = 0, 0
        if self.resume_path is None:
            if self.args.resume_from_checkpoint == "latest":
                logger.info("No checkpoint in %s; starting a new run.", self.output_dir)
            return
        logger.info("Resuming from %s", self.resume_path)
        self.accelerator.load_state(str(self.resume_path))
        state = read_training_state(self.resume_path)
        self.global_step = int(state["global_step"])
        self.samples_seen = int(state.get("samples_seen", 0))
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])

    # ------------------------------------------------------------------------------------------- steps
    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The training batches from the current position (the first batch forever with --overfit_one_batch)."""
        self.stream = BatchStream(
            self.loader, self.sampler, self.batches_per_epoch, self.global_batch, self.device
        )
        if self.args.overfit_one_batch:
            first = next(self.stream.iterate(0, 0))
            return iter(lambda: first, None)
        return self.stream.iterate(self.epoch, self.batch_in_epoch)

    def clean_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Model-space training inputs ``x0`` of a batch: pixels in [-1, 1], or normalised latents."""
        args = self.args
        if "latent_mean" in batch:
            from flow_pipelines.training.latents import sample_latents

            return sample_latents(
                batch, self.scaling_factor, self.shift_factor, generator, flip=args.random_flip
            )
        images = pixels_to_model_range(batch["pixels"])
        if args.random_flip:
            images = random_flip(images, generator)
        if self.vae is not None:
            # A streamed dataset with a VAE: encode as we go.
            from flow_pipelines.training.latents import encode_pixels, normalize_latents

            mean, std = encode_pixels(self.vae, ((images + 1.0) * 127.5).round().to(torch.uint8))
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            return normalize_latents(mean + std * eps, self.scaling_factor, self.shift_factor)
        if args.dequantize:
            images = dequantize(images, generator)
        return images

    def train_step(
        self, batches: Iterator[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], torch.Tensor, int]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        All randomness (noise, noise levels, label dropout, flips) comes from a generator seeded by the
        run seed, the step and the process, so a resumed run replays exactly what it would have drawn.

        Args:
            batches: The batch iterator.

        Returns:
            ``(losses, grad_norm, samples)``: the mean loss over processes of each micro-batch, the gradient
            norm before clipping, and the examples used by all processes in this step.

        Raises:
            FloatingPointError: If a loss is NaN or infinite; the weights are not updated.
        """
        args, accelerator = self.args, self.accelerator
        accumulation = args.gradient_accumulation_steps
        losses, samples = [], 0
        for micro_step in range(accumulation):
            batch = next(batches)
            seed = step_seed(args.seed, self.global_step, micro_step, accelerator.process_index)
            generator = torch.Generator(device=self.device).manual_seed(seed)
            x0 = self.clean_batch(batch, generator)
            labels = batch["class_labels"].to(self.device)
            labels = drop_labels(labels, args.label_dropout, self.transformer.config.num_classes, generator)
            noisy, timesteps, noise, sigmas = self.objective.training_inputs(x0, generator)
            last = micro_step == accumulation - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                output = self.model(noisy, timesteps, labels).sample
                loss = self.objective.loss(output, x0, noise, sigmas, noisy)
                # One collective gives the mean loss over all processes and the examples they used.
                count = torch.tensor(float(x0.shape[0]), device=self.device)
                totals = accelerator.reduce(
                    torch.stack([loss.detach().float() * count, count]), reduction="sum"
                )
                mean_loss = totals[0] / totals[1]
                if not torch.isfinite(mean_loss).item():
                    raise FloatingPointError(
                        f"The loss is {mean_loss.item()} at step {self.global_step + 1} (micro-batch "
                        f"{micro_step + 1}); training stopped before updating the weights. Checkpoints already "
                        f"in {self.output_dir} are intact: lower --learning_rate or --max_grad_norm and resume."
                    )
                accelerator.backward(loss / accumulation)
            losses.append(mean_loss)
            samples += int(totals[1].item())
        max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.transformer.parameters())
        self.global_step += 1
        self.samples_seen += samples
        return losses, grad_norm, samples

    # ------------------------------------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run the loop to ``max_train_steps``, then save, evaluate and (optionally) push the result.

        Returns:
            The run summary (also written to ``train_summary.json`` by the main process).
        """
        from tqdm.auto import tqdm

        args = self.args
        logger.info(
            "Training %d steps (%s per epoch), %d examples per step (%d x %d processes x %d accumulation)",
            self.max_train_steps,
            self.steps_per_epoch if self.steps_per_epoch is not None else "?",
            self.global_batch * args.gradient_accumulation_steps,
            args.train_batch_size,
            self.num_processes,
            args.gradient_accumulation_steps,
        )
        batches = self.batches()
        log_file = None
        if self.is_main:
            # A resumed run continues the log; a fresh one starts it anew.
            log_file = open(
                self.output_dir / "train_log.jsonl", "a" if self.resume_path else "w", encoding="utf-8"
            )  # noqa: SIM115
        progress = tqdm(
            total=self.max_train_steps,
            initial=self.global_step,
            desc="Training",
            unit="step",
            disable=not self.accelerator.is_local_main_process,
        )
        self.last_loss = float("nan")
        # Throughput leaves out the first steps (allocation, worker start-up) and the time spent on
        # checkpoints and validation, which are reported by their own log lines.
        untimed = min(5, max(0, self.max_train_steps - self.global_step - 1))
        timed_seconds, timed_samples, steps_this_run = 0.0, 0, 0
        mark = time.perf_counter()
        try:
            while self.global_step < self.max_train_steps:
                losses, grad_norm, samples = self.train_step(batches)
                steps_this_run += 1
                progress.update(1)
                now = time.perf_counter()
                step_seconds, mark = now - mark, now
                if steps_this_run > untimed:
                    timed_seconds += step_seconds
                    timed_samples += samples
                if self.global_step % args.logging_steps == 0 or self.global_step == self.max_train_steps:
                    self.last_loss = float(torch.stack(losses).mean())
                    speed = timed_samples / timed_seconds if timed_seconds > 0 else samples / step_seconds
                    metrics = {
                        "loss": self.last_loss,
                        "lr": self.lr_scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "step_time": step_seconds,
                        "samples_per_second": speed,
                        "epoch": self.stream.epoch,
                        "step_samples": samples,
                        "samples_seen": self.samples_seen,
                    }
                    self.accelerator.log(metrics, step=self.global_step)
                    if log_file is not None:
                        log_file.write(json.dumps({"step": self.global_step, **metrics}) + "\n")
                        log_file.flush()
                    progress.set_postfix(loss=f"{self.last_loss:.4f}", samples_s=f"{speed:.0f}")
                if args.checkpointing_steps and self.global_step % args.checkpointing_steps == 0:
                    self.save_checkpoint()
                    mark = time.perf_counter()
                validating = args.validation_steps and self.global_step % args.validation_steps == 0
                if validating and self.global_step < self.max_train_steps:
                    if self.is_main:
                        self.validate()
                    self.accelerator.wait_for_everyone()
                    mark = time.perf_counter()
                if self.eval_metric is not None and self.global_step % args.eval_steps == 0:
                    if self.is_main:
                        scores = self.evaluate()
                        self.accelerator.log(scores, step=self.global_step)
                        log_file.write(json.dumps({"step": self.global_step, **scores}) + "\n")
                        log_file.flush()
                    self.accelerator.wait_for_everyone()
                    mark = time.perf_counter()
        finally:
            progress.close()
            if log_file is not None:
                log_file.close()
        self.train_samples_per_second = timed_samples / timed_seconds if timed_seconds > 0 else None
        return self.finish()

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` (all processes take part) and prune old ones."""
        epoch, batch_in_epoch = self.stream.epoch, self.stream.batch_in_epoch
        if self.batches_per_epoch is not None and batch_in_epoch >= self.batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        state = {
            "global_step": self.global_step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "samples_seen": self.samples_seen,
        }
        path = save_checkpoint(
            self.accelerator, self.output_dir, self.global_step, state, self.args.checkpoints_total_limit
        )
        logger.info("Saved %s", path)
        return path

    # ------------------------------------------------------------------------------------------- results
    def pipeline(self) -> Any:
        """A ``FlowPipeline`` around the transformer (whatever weights it holds now), progress bar off."""
        from flow_pipelines import FlowPipeline

        pipeline = FlowPipeline(
            transformer=self.transformer,
            scheduler=build_scheduler(self.args),
            vae=self.vae,
            id2label=self.id2label,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def sample_grid(self) -> Any:
        """The labelled sample grid (one row per class) of the current weights."""
        args = self.args
        with torch.no_grad():
            return sample_grid(
                self.pipeline(),
                self.id2label,
                grid_classes(args, self.id2label),
                args.validation_images_per_class,
                args.num_inference_steps,
                args.guidance_scale,
                args.seed,
            )

    def validate(self) -> None:
        """Sample a grid with the EMA weights, save it under ``samples/`` and send it to the trackers."""
        self.transformer.eval()
        with ema_weights(self.transformer, self.ema):
            grid = self.sample_grid()
        self.transformer.train()
        folder = self.output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        grid.save(folder / f"step-{self.global_step:07d}.png")
        log_images(self.accelerator, grid, self.global_step)

    def _choose_eval_metric(self) -> str | None:
        """The metric of ``--eval_steps``: digit accuracy on the digits, FD-DINOv2 with a local extractor,
        else None (logged once: nothing is ever downloaded for it)."""
        args = self.args
        if not args.eval_steps:
            return None
        metric = args.eval_metric
        if metric == "auto":
            metric = "digit_accuracy" if is_digits(args) else "fd_dinov2"
        if metric == "fd_dinov2" and (args.eval_extractor is None or self.vae is not None):
            logger.info(
                "Evaluation during training skipped: fd_dinov2 needs a local DINOv2 folder (--eval_extractor "
                "DIR) and pixel training data%s; no feature extractor is downloaded.",
                "" if self.vae is None else " (this run trains on latents)",
            )
            return None
        if metric == "fd_dinov2":
            from flow_pipelines.evaluation.dinov2 import DinoV2FeatureExtractor
            from flow_pipelines.evaluation.frechet import check_enough_samples

            # Loaded now so that a bad folder or too few samples fail before training, not at the first eval.
            self._extractor = DinoV2FeatureExtractor.from_pretrained(args.eval_extractor).to(self.device)
            check_enough_samples(args.eval_num_samples, self._extractor.num_features, "--eval_num_samples")
        return metric

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Score the EMA weights with ``--eval_metric`` on ``--eval_num_samples`` generated images.

        Returns:
            ``{"eval/digit_accuracy": ...}`` or ``{"eval/fd_dinov2": ...}``.
        """
        args = self.args
        start = time.perf_counter()
        self.transformer.eval()
        with ema_weights(self.transformer, self.ema):
            if self.eval_metric == "digit_accuracy":
                scores = {"eval/digit_accuracy": self._digit_accuracy()}
            else:
                scores = {"eval/fd_dinov2": self._frechet_distance()}
        self.transformer.train()
        logger.info(
            "Step %d: %s (%d samples, %.1f s)",
            self.global_step,
            ", ".join(f"{key} = {value:.4f}" for key, value in scores.items()),
            args.eval_num_samples,
            time.perf_counter() - start,
        )
        return scores

    def _digit_accuracy(self) -> float:
        from flow_pipelines.evaluation.digits import DigitClassifier, evaluate_digit_pipeline

        if getattr(self, "_digit_classifier", None) is None:
            self._digit_classifier = DigitClassifier.fit()
        args = self.args
        evaluation = evaluate_digit_pipeline(
            self.pipeline(),
            classifier=self._digit_classifier,
            samples_per_class=max(1, args.eval_num_samples // 10),
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed + 2,
            interpolation=args.image_interpolation_mode,
        )
        return float(evaluation["digit_accuracy"])

    def _frechet_distance(self) -> float:
        from flow_pipelines.evaluation.frechet import FrechetDistance
        from flow_pipelines.images import quantize_images

        args = self.args
        if getattr(self, "_frechet", None) is None:
            # Reference: the first --eval_num_samples training images, read once; their labels are sampled.
            examples = []
            if self.data.num_examples is not None:
                count = min(args.eval_num_samples, self.data.num_examples)
                examples = [self.data.dataset[index] for index in range(count)]
            else:
                for example in self.data.dataset:
                    examples.append(example)
                    if len(examples) == args.eval_num_samples:
                        break
            reference = collate_examples(examples)
            self._frechet = FrechetDistance(self._extractor, show_progress=False)
            self._frechet.update(reference["pixels"], real=True)
            self._frechet_labels = reference["class_labels"].tolist()
        self._frechet.metric.reset()
        generator = torch.Generator(device="cpu").manual_seed(args.seed + 2)
        images = self.pipeline()(
            class_labels=self._frechet_labels,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=generator,
            output_type="pt",
        ).images
        self._frechet.update(quantize_images(images), real=False)
        return float(self._frechet.compute())

    def finish(self) -> dict[str, Any]:
        """Save the EMA pipeline with its grid and model card, evaluate the digits, push; write the summary."""
        self.accelerator.wait_for_everyone()
        digests = gather_digests(self.accelerator, self.transformer)
        summary: dict[str, Any] = {
            "global_step": self.global_step,
            "num_processes": self.num_processes,
            "samples_seen": self.samples_seen,
            "final_loss": self.last_loss,
            "train_samples_per_second": self.train_samples_per_second,
            "weights_digest_per_process": digests,
            "num_parameters": self.num_parameters,
        }
        if self.is_main:
            if len(set(digests)) > 1:
                logger.warning("Processes ended with different weights: %s", digests)
            summary.update(self._save_result())
            with open(self.output_dir / "train_summary.json", "w", encoding="utf-8") as handle:
                json.dump(summary, handle, indent=2)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return summary

    def _save_result(self) -> dict[str, Any]:
        from flow_pipelines.evaluation.digits import evaluate_digit_pipeline
        from flow_pipelines.file_utils import atomic_directory
        from flow_pipelines.hub import push_pipeline_to_hub, write_model_card

        args = self.args
        pipeline_dir = self.output_dir / PIPELINE_FOLDER
        result: dict[str, Any] = {"pipeline_dir": str(pipeline_dir)}
        if self.ema is not None:
            self.ema.copy_to(self.transformer.parameters())
        self.transformer.eval()
        start = time.perf_counter()
        grid = self.sample_grid()
        evaluation = None
        if is_digits(args) and args.evaluation_samples_per_class > 0:
            evaluation = evaluate_digit_pipeline(
                self.pipeline(),
                samples_per_class=args.evaluation_samples_per_class,
                num_inference_steps=args.num_inference_steps,
                guidance_scale=args.guidance_scale,
                seed=args.seed + 1,
                interpolation=args.image_interpolation_mode,
            )
            result["evaluation"] = evaluation
        result["sampling_seconds"] = time.perf_counter() - start
        # Weights, configs and grid appear at once; the card is then added to the finished folder.
        with atomic_directory(pipeline_dir) as staging:
            self.pipeline().save_pretrained(staging)
            grid.save(staging / SAMPLE_GRID_NAME)
        write_model_card(
            pipeline_dir,
            training_config={**self.config, "num_parameters": self.num_parameters},
            dataset_name=self.data.description
            if is_digits(args)
            else (args.dataset_name or self.data.description),
            id2label=self.id2label,
            sample_grid=SAMPLE_GRID_NAME,
            evaluation=evaluation,
            repo_id=args.hub_model_id if args.push_to_hub else None,
            model_name=args.hub_model_id.split("/")[-1] if args.hub_model_id else self.output_dir.name,
            prediction_type=args.prediction_type,
            guidance_scale=args.guidance_scale,
        )
        log_images(self.accelerator, grid, self.global_step)
        logger.info("Saved the pipeline (EMA weights) to %s", pipeline_dir)
        if evaluation is not None:
            logger.info(
                "Digit accuracy: %.1f%% of %d guided samples read as the class asked for (guidance %.1f, %d "
                "steps; the classifier's held-out accuracy on real digits: %.1f%%, after the %dx%d round trip: "
                "%.1f%%)",
                100 * evaluation["digit_accuracy"],
                evaluation["num_samples"],
                args.guidance_scale,
                args.num_inference_steps,
                100 * evaluation["classifier_heldout_accuracy"],
                args.resolution,
                args.resolution,
                100 * evaluation["classifier_roundtrip_accuracy"],
            )
        if args.push_to_hub:
            repo_id = args.hub_model_id or self.output_dir.resolve().name
            result["hub_url"] = push_pipeline_to_hub(
                pipeline_dir, repo_id, token=args.hub_token, private=args.hub_private_repo
            )
            logger.info("Pushed %s to %s", pipeline_dir, result["hub_url"])
        return result


def gather_digests(accelerator: Any, model: torch.nn.Module) -> list[str]:
    """Every process's weight digest, in rank order (identical when data-parallel training stayed in sync)."""
    from accelerate.utils import gather_object

    digest = weights_digest(model)
    if accelerator.num_processes == 1:
        return [digest]
    return list(gather_object([digest]))


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: Any) -> Iterator[None]:
    """Temporarily put the EMA weights into ``model`` (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def grid_classes(args: argparse.Namespace, id2label: dict[int, str]) -> list[int]:
    """The classes shown in sample grids: ``--validation_classes`` or up to the first 10."""
    if args.validation_classes:
        unknown = [c for c in args.validation_classes if c not in id2label]
        if unknown:
            raise ValueError(f"--validation_classes {unknown} are not class ids (0..{len(id2label) - 1}).")
        return list(args.validation_classes)
    return sorted(id2label)[:10]


def log_images(accelerator: Any, grid: Any, global_step: int) -> None:
    """Send a sample grid to the active trackers."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", np.asarray(grid), global_step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(grid, caption=f"step {global_step}")]}, step=global_step)


# ----------------------------------------------------------------------------------------------- main
def choose_cpu_threads(requested: int | None, num_processes: int) -> int:
    """Threads per process for training on a CPU.

    The idle cores (cores minus the 1-minute load average, which counts other jobs), shared among this
    run's processes, at least 1. Small models step through hundreds of short kernels, and an OpenMP
    thread that another job has descheduled stalls every one of them: on a 2-core machine with other
    jobs running, two threads made a digits step 10x slower than one thread did.

    Args:
        requested: ``--cpu_threads``; used as given when set.
        num_processes: Processes of this run on the machine.

    Returns:
        The thread count.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--cpu_threads={requested} must be >= 1.")
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(torch.get_num_threads(), int(cores - busy + 0.5) // max(1, num_processes)))


def make_accelerator(args: argparse.Namespace) -> Any:
    """Create the run's ``Accelerator`` and check that the device can do the requested precision.

    Raises:
        ValueError: For fp16 on a CPU, or bf16 on a GPU without it.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = Path(args.output_dir)
    # `accelerate launch --multi_gpu` on a machine without GPUs starts processes that accelerate would
    # otherwise treat as independent single-process runs: make them one CPU (gloo) job.
    force_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        cpu=force_cpu,
    )
    device = accelerator.device
    if accelerator.mixed_precision == "fp16" and device.type == "cpu":
        raise ValueError("--mixed_precision fp16 needs a GPU; this run is on the CPU. Use bf16 or no.")
    if accelerator.mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--mixed_precision bf16 is not supported by this GPU; use fp16 or no.")
    if device.type == "cpu" and not (args.cpu_threads is None and "OMP_NUM_THREADS" in os.environ):
        torch.set_num_threads(choose_cpu_threads(args.cpu_threads, accelerator.num_processes))
    return accelerator


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save the pipeline (with model card and sample grid), optionally push it.

    Args:
        args: Flags from :func:`parse_args`.

    Returns:
        The run summary (also in ``train_summary.json``); on non-main processes without the saved result.

    Raises:
        ValueError: For bad input, before training starts.
        FloatingPointError: If the loss becomes NaN or infinite (naming the step); checkpoints are kept.
    """
    check_args(args)
    accelerator = make_accelerator(args)
    resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    file_handler = setup_file_logging(Path(args.output_dir), accelerator.is_main_process)
    try:
        trainer = FlowTrainer(args, accelerator, resume_path)
        trainer.setup()
        return trainer.train()
    finally:
        if file_handler is not None:
            logger.removeHandler(file_handler)
            file_handler.close()


if __name__ == "__main__":
    main(parse_args())
