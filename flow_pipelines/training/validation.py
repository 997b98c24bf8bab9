"""Looking at a model while it trains: labelled sample grids and a metric every ``--eval_steps``.

Both run on the EMA weights through a `FlowPipeline` around the transformer being trained (no copy).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..evaluation.digits import (
    MAX_SAMPLES_PER_DIGIT,
    DigitClassifier,
    DigitDistribution,
    evaluate_digit_pipeline,
)
from ..file_utils import atomic_file
from ..images import quantize_images
from ..visualization import make_labelled_grid

logger = logging.getLogger("train_flow")

EVAL_METRICS: tuple[str, ...] = ("auto", "digit_accuracy", "fd_dinov2")


def add_validation_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the sample grids and of the evaluation during training.

    Args:
        parser: The training script's parser.
    """
    grids = parser.add_argument_group("sampling (grids, evaluation, the saved pipeline)")
    grids.add_argument(
        "--validation_steps", type=int, default=500, help="Sample a grid every N steps (0: never)."
    )
    grids.add_argument("--validation_images_per_class", type=int, default=8)
    grids.add_argument(
        "--validation_classes", type=int, nargs="*", default=None, help="Default: up to the first 10."
    )
    grids.add_argument("--num_inference_steps", type=int, default=20, help="Steps of the sample grids.")
    grids.add_argument(
        "--guidance_scale",
        type=float,
        default=1.25,
        help="CFG scale of the sample grids and the final report (1.25: the digits' best FD at 99 %% accuracy).",
    )
    grids.add_argument(
        "--sampling_shift", type=float, default=None, help="Saved scheduler's shift (default: --shift)."
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


def check_validation_args(args: argparse.Namespace, on_digits: bool) -> None:
    """Check the sampling and evaluation flags on their own, before any work.

    Args:
        args: The parsed flags.
        on_digits: Whether the run trains on the digits.

    Raises:
        ValueError: Naming the flag, its value and what is allowed.
    """
    for name in ("num_inference_steps", "validation_images_per_class", "eval_num_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)} must be >= 1.")
    for name in ("validation_steps", "eval_steps"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name}={getattr(args, name)} must be >= 0 (0 disables).")
    if args.sampling_shift is not None and not args.sampling_shift > 0:
        raise ValueError(f"--sampling_shift={args.sampling_shift} must be > 0.")
    if args.eval_metric == "digit_accuracy" and not on_digits:
        raise ValueError("--eval_metric digit_accuracy needs the digits dataset; use fd_dinov2 or auto.")
    if (
        on_digits
        and args.eval_steps
        and args.eval_metric != "fd_dinov2"
        and args.eval_num_samples > 10 * MAX_SAMPLES_PER_DIGIT
    ):
        raise ValueError(
            f"--eval_num_samples={args.eval_num_samples} is more than the digits' real-vs-real floor can match; "
            f"allowed: 10 to {10 * MAX_SAMPLES_PER_DIGIT}."
        )
    if args.eval_extractor is not None and not Path(args.eval_extractor).is_dir():
        raise ValueError(f"--eval_extractor {args.eval_extractor!r} is not a local folder.")


def grid_classes(validation_classes: Sequence[int] | None, id2label: dict[int, str]) -> list[int]:
    """The classes shown in sample grids: the given ones, or up to the first 10.

    Args:
        validation_classes: ``--validation_classes`` (None or empty for the default).
        id2label: The class names.

    Returns:
        Class ids.

    Raises:
        ValueError: For ids that are not classes of the data.
    """
    if validation_classes:
        unknown = [c for c in validation_classes if c not in id2label]
        if unknown:
            raise ValueError(f"--validation_classes {unknown} are not class ids (0..{len(id2label) - 1}).")
        return list(validation_classes)
    return sorted(id2label)[:10]


@torch.no_grad()
def sample_grid(
    pipeline: Any,
    classes: Sequence[int],
    per_class: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
) -> Any:
    """Sample ``per_class`` images of each class and arrange them one labelled row per class.

    Args:
        pipeline: The ``FlowPipeline``.
        classes: The classes to show.
        per_class: Images per row.
        num_inference_steps: Sampling steps.
        guidance_scale: CFG scale.
        seed: Sampling seed.

    Returns:
        The grid as a PIL image.
    """
    labels = [c for c in classes for _ in range(per_class)]
    images = pipeline(
        class_labels=labels,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="pil",
    ).images
    rows = [images[i * per_class : (i + 1) * per_class] for i in range(len(classes))]
    names = pipeline.id2label
    return make_labelled_grid(rows, [names.get(c, str(c)) for c in classes])


def run_sample_grid(pipeline: Any, args: argparse.Namespace) -> Any:
    """The run's sample grid, as its flags ask: ``--validation_classes``, ``--validation_images_per_class``,
    ``--num_inference_steps``, ``--guidance_scale`` and ``--seed``.

    Args:
        pipeline: The ``FlowPipeline`` (with the weights to show).
        args: The parsed flags.

    Returns:
        The grid as a PIL image.

    Raises:
        ValueError: For ``--validation_classes`` that are not class ids.
    """
    classes = grid_classes(args.validation_classes, pipeline.id2label)
    return sample_grid(
        pipeline,
        classes,
        args.validation_images_per_class,
        args.num_inference_steps,
        args.guidance_scale,
        args.seed,
    )


def save_validation_grid(
    pipeline: Any, ema: Any | None, args: argparse.Namespace, accelerator: Any, step: int
) -> None:
    """Sample a grid with the EMA weights, save it as ``samples/step-<step>.png`` and send it to the trackers.

    Args:
        pipeline: The pipeline around the trained transformer.
        ema: The ``EMAModel``, or None.
        args: The parsed flags (grid classes, images per class, steps, guidance, seed, output folder).
        accelerator: The run's accelerator (its trackers get the grid).
        step: The optimizer step.
    """
    from .ema import ema_weights
    from .tracking import log_images

    with ema_weights(pipeline.transformer, ema):
        grid = run_sample_grid(pipeline, args)
    folder = Path(args.output_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / f"step-{step:07d}.png") as handle:
        grid.save(handle, format="PNG")
    log_images(accelerator, grid, step)


class TrainingEvaluator:
    """The metric of ``--eval_steps``, with what it needs (a classifier, or a feature extractor and the reference
    statistics) loaded once, before training starts.

    Args:
        metric: ``"digit_accuracy"`` (with the digits' FD ratio, precision and recall) or ``"fd_dinov2"``.
        args: The parsed flags (``--eval_num_samples``, sampling settings, seed).
        scorer: A fitted ``DigitClassifier`` and a ``DigitDistribution``, or a ``FrechetDistance`` holding the
            reference features.
        reference_labels: The reference images' classes, sampled for FD (None for digit accuracy).
    """

    def __init__(
        self, metric: str, args: argparse.Namespace, scorer: Any, reference_labels: list[int] | None = None
    ) -> None:
        self.metric = metric
        self.args = args
        self.scorer = scorer
        self.reference_labels = reference_labels

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, data: Any, on_digits: bool, on_latents: bool, device: torch.device
    ) -> TrainingEvaluator | None:
        """The evaluator the flags ask for, or None (no ``--eval_steps``, or FD without a local extractor).

        Args:
            args: The parsed flags.
            data: The prepared training data (the FD reference comes from it).
            on_digits: Whether the run trains on the digits.
            on_latents: Whether the run trains in a VAE's latent space.
            device: Where the extractor runs.

        Returns:
            The evaluator, or None.

        Raises:
            ValueError: For too few samples for the extractor's feature dimension.
        """
        if not args.eval_steps:
            return None
        metric = args.eval_metric
        if metric == "auto":
            metric = "digit_accuracy" if on_digits else "fd_dinov2"
        if metric == "digit_accuracy":
            distribution = DigitDistribution(args.resolution, args.image_interpolation_mode)
            return cls(metric, args, (DigitClassifier.fit(), distribution))
        if args.eval_extractor is None or on_latents:
            logger.info(
                "Evaluation during training skipped: fd_dinov2 needs a local DINOv2 folder (--eval_extractor DIR) "
                "and pixel training data%s; no feature extractor is downloaded.",
                " (this run trains on latents)" if on_latents else "",
            )
            return None
        from ..evaluation.dinov2 import DinoV2FeatureExtractor
        from ..evaluation.frechet import FrechetDistance, check_enough_samples
        from .data import collate_examples

        extractor = DinoV2FeatureExtractor.from_pretrained(args.eval_extractor).to(device)
        check_enough_samples(args.eval_num_samples, extractor.num_features, "--eval_num_samples")
        # Reference: the first --eval_num_samples training images, read once; their labels are sampled.
        examples = []
        if data.num_examples is not None:
            examples = [data.dataset[index] for index in range(min(args.eval_num_samples, data.num_examples))]
        else:
            for example in data.dataset:
                examples.append(example)
                if len(examples) == args.eval_num_samples:
                    break
        reference = collate_examples(examples)
        frechet = FrechetDistance(extractor, show_progress=False)
        frechet.update(reference["pixels"], real=True)
        return cls(metric, args, frechet, reference["class_labels"].tolist())

    @torch.no_grad()
    def __call__(self, pipeline: Any, step: int) -> dict[str, float]:
        """Score the pipeline's model on ``--eval_num_samples`` generated images.

        Args:
            pipeline: A ``FlowPipeline`` around the weights to score.
            step: The optimizer step (for the log line).

        Returns:
            ``{"eval/digit_accuracy", "eval/fd_ratio", "eval/precision", "eval/recall"}`` on the digits, else
            ``{"eval/fd_dinov2"}``.
        """
        args = self.args
        start = time.perf_counter()
        if self.metric == "digit_accuracy":
            classifier, distribution = self.scorer
            evaluation = evaluate_digit_pipeline(
                pipeline,
                classifier,
                distribution,
                samples_per_class=max(1, args.eval_num_samples // 10),
                num_inference_steps=args.num_inference_steps,
                guidance_scale=args.guidance_scale,
                seed=args.seed + 2,
                interpolation=args.image_interpolation_mode,
            )
            value = float(evaluation["digit_accuracy"])
            scores = {f"eval/{key}": float(evaluation[key]) for key in ("fd_ratio", "precision", "recall")}
        else:
            self.scorer.metric.reset()
            images = pipeline(
                class_labels=self.reference_labels,
                num_inference_steps=args.num_inference_steps,
                guidance_scale=args.guidance_scale,
                generator=torch.Generator(device="cpu").manual_seed(args.seed + 2),
                output_type="pt",
            ).images
            self.scorer.update(quantize_images(images), real=False)
            value = float(self.scorer.compute())
            scores = {}
        scores = {f"eval/{self.metric}": value, **scores}
        logger.info(
            "Step %d: %s (%d samples, %.1f s)",
            step,
            ", ".join(f"{name} = {score:.4f}" for name, score in scores.items()),
            args.eval_num_samples,
            time.perf_counter() - start,
        )
        return scores
