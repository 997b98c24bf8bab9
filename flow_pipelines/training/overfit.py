"""``--overfit_one_batch``: the first check of a new recipe. Can the model memorise one batch?

A flow model's loss cannot reach zero on an ordinary batch: where two images share a class, the best
prediction at high noise is their average, and that error stays. The debug run therefore trains on one
image per class (the first of each, up to ``--train_batch_size``), where the target is a function of the
model's inputs, and switches off what stops a model from memorising it (:data:`OVERFIT_SETTINGS`: label
dropout, warmup and LR decay, EMA, flips). It ends with a verdict, on the same noise draws before and after
training: the error of the model's estimate of the clean batch (its output converted to a sample
prediction) must fall below :data:`PASS_FRACTION` of what it was, and samples drawn for the batch's classes
must be closer to their own image than to any other. ``overfit_one_batch.png`` shows the batch next to its samples.

Why the estimate and not the training loss: once the image is known, a velocity target is
``(x_t - x0) / sigma``, so an error in the estimate is amplified by ``1 / sigma`` at low noise. The velocity
loss of a model whose samples already reproduce the batch stays well above zero for hundreds of steps more.
Both are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..file_utils import atomic_file
from ..images import quantize_images
from ..visualization import make_labelled_grid
from .batches import to_model_space
from .runtime import step_generator

logger = logging.getLogger("train_flow")

OVERFIT_SETTINGS: dict[str, Any] = {
    "label_dropout": 0.0,
    "lr_scheduler": "constant",
    "lr_warmup_steps": 0,
    "use_ema": False,
    "random_flip": False,
    "dequantize": False,
    "guidance_scale": 1.0,  # no null class is trained
    "evaluation_samples_per_class": 0,
}
"""What ``--overfit_one_batch`` sets, whatever the flags say: nothing that keeps a model from memorising."""
OVERFIT_STEPS = 300
"""Steps of an overfitting run without ``--max_train_steps``."""
PASS_FRACTION = 0.05
"""The batch counts as memorised when the error of the model's clean-batch estimate (mean squared, model space)
falls below this fraction of its error before training: a 20-fold reduction, whatever the data's scale. On
the digits an untrained model starts near 0.5, so the pass mark is an RMS error of about 0.16 in [-1, 1]."""
GRID_NAME = "overfit_one_batch.png"
_DRAWS = 8


def add_overfit_args(parser: argparse.ArgumentParser) -> None:
    """The debugging flag.

    Args:
        parser: The training script's parser.
    """
    parser.add_argument_group("debugging").add_argument(
        "--overfit_one_batch",
        action="store_true",
        help="Memorise one image per class, with nothing that prevents it, and end with a pass/fail verdict.",
    )


def apply_settings(args: argparse.Namespace) -> None:
    """Give an ``--overfit_one_batch`` run its settings (:data:`OVERFIT_SETTINGS`, and its step count).

    Args:
        args: The parsed flags (changed in place; nothing happens without ``--overfit_one_batch``).
    """
    if not args.overfit_one_batch:
        return
    for name, value in OVERFIT_SETTINGS.items():
        setattr(args, name, value)
    if args.max_train_steps is None:
        args.max_train_steps = OVERFIT_STEPS


def one_example_per_class(
    data: Any, dataset: torch.utils.data.Dataset, args: argparse.Namespace, num_processes: int
):
    """Keep the first example of each class (up to the global batch) and make the batch exactly that size.

    Args:
        data: The run's ``TrainingData`` (its labels are read without decoding images where possible).
        dataset: The dataset the run trains on (pixels or cached latents, same order).
        args: The parsed flags (``--train_batch_size`` becomes the batch's size per process).
        num_processes: Processes of the run.

    Returns:
        ``(data, dataset)`` with only the batch's examples.

    Raises:
        ValueError: For streamed data, or fewer distinct classes than processes.
    """
    if data.num_examples is None:
        raise ValueError("--overfit_one_batch needs map-style data; drop --streaming.")
    labels = _labels(data, dataset)
    _, first = np.unique(labels, return_index=True)
    indices = sorted(first.tolist())[: args.train_batch_size * num_processes]
    per_process = len(indices) // num_processes
    if per_process < 1:
        raise ValueError(f"{len(indices)} classes cannot make a batch for each of {num_processes} processes.")
    indices = indices[: per_process * num_processes]
    args.train_batch_size = per_process
    logger.info(
        "Overfitting one batch of %d images, one per class, for %d steps: label dropout 0, constant LR %g without "
        "warmup, no EMA, no flips",
        len(indices),
        args.max_train_steps,
        args.learning_rate,
    )
    subset = torch.utils.data.Subset(dataset, indices)
    return dataclasses.replace(data, dataset=subset, num_examples=len(indices)), subset


def _labels(data: Any, dataset: torch.utils.data.Dataset) -> np.ndarray:
    """Every example's class, from the label column (or the in-memory labels) rather than by decoding images."""
    held = getattr(data.dataset, "class_labels", None)
    if held is not None:
        return np.asarray(held)
    if data.source is not None and data.label_column in getattr(data.source, "column_names", ()):
        return np.asarray(data.source[data.label_column])
    return np.asarray([int(dataset[index]["class_labels"]) for index in range(len(dataset))])


@torch.no_grad()
def batch_errors(
    model: Any, objective: Any, x0: torch.Tensor, labels: torch.Tensor, seed: int
) -> tuple[float, float]:
    """The training loss on the batch and the error of the model's clean-batch estimate, over fixed draws.

    Args:
        model: The transformer.
        objective: The run's objective (its ``training_inputs``, ``loss`` and ``path``).
        x0: The batch in model space.
        labels: Its classes.
        seed: Seed of the draws of noise and noise levels (the same before and after training).

    Returns:
        ``(loss, estimate_error)``: the mean training loss, and the mean squared difference between the model's
        output converted to a sample prediction and ``x0``.
    """
    generator = torch.Generator(device=x0.device).manual_seed(seed)
    loss = error = 0.0
    for _ in range(_DRAWS):
        noisy, timesteps, noise, sigmas = objective.training_inputs(x0, generator)
        output = model(noisy, timesteps, labels).sample.float()
        loss += float(objective.loss(output, x0, noise, sigmas, noisy))
        times = objective.path_times(sigmas.float())
        estimate = objective.path.convert(output, noisy.float(), times, objective.prediction_type, "sample")
        error += float((estimate - x0.float()).pow(2).mean())
    return loss / _DRAWS, error / _DRAWS


class OverfitCheck:
    """The batch an ``--overfit_one_batch`` run memorises, its loss before training, and the final verdict.

    Args:
        batch: The batch (as the loader gives it).
        model: The transformer (wrapped or not).
        objective: The run's objective.
        x0: The batch in model space.
        args: The parsed flags (output folder, seed, sampling steps).
    """

    def __init__(
        self, batch: dict[str, torch.Tensor], model: Any, objective: Any, x0: torch.Tensor, args: Any
    ) -> None:
        self.batch, self.objective, self.x0, self.args = batch, objective, x0, args
        self.labels = batch["class_labels"].to(x0.device)
        self.loss_before, self.error_before = batch_errors(model, objective, x0, self.labels, args.seed)

    @classmethod
    def on_first_batch(
        cls,
        batches: Iterator[dict[str, torch.Tensor]],
        model: Any,
        objective: Any,
        args: Any,
        vae: Any = None,
    ) -> tuple[OverfitCheck, Iterator[dict[str, torch.Tensor]]]:
        """Take the run's first batch, measure it, and repeat it for every step.

        Args:
            batches: The run's batches.
            model: The transformer (wrapped or not).
            objective: The run's objective.
            args: The parsed flags.
            vae: The run's VAE (latents are made with it), if any.

        Returns:
            ``(check, iterator)``: the check, and the first batch repeated forever.
        """
        batch = next(batches)
        device = batch["class_labels"].device
        x0 = to_model_space(batch, step_generator(args.seed, 0, 0, 0, device), vae=vae)
        return cls(batch, model, objective, x0, args), itertools.repeat(batch)

    @torch.no_grad()
    def verdict(self, pipeline: Any) -> dict[str, Any]:
        """Judge the run: the batch's loss, and whether samples reproduce their own images; save the grid.

        Args:
            pipeline: The pipeline around the trained transformer.

        Returns:
            ``{"passed", "estimate_error_before", "estimate_error_after", "loss_before", "loss_after",
            "samples_match"}`` (``samples_match`` is None for a latent
            run, whose samples are not compared pixel by pixel).
        """
        args, transformer = self.args, pipeline.transformer
        was_training = transformer.training
        transformer.eval()
        loss_after, error_after = batch_errors(transformer, self.objective, self.x0, self.labels, args.seed)
        samples = pipeline(
            self.labels.tolist(),
            num_inference_steps=max(args.num_inference_steps, 20),
            guidance_scale=1.0,  # no null class was trained
            generator=torch.Generator(device="cpu").manual_seed(args.seed),
            output_type="pt",
        ).images.cpu()
        transformer.train(was_training)
        samples_match, rows = None, [_pictures(samples)]
        if pipeline.vae is None:
            batch = ((self.x0.detach().float().cpu() + 1.0) / 2.0).clamp(0, 1)
            distances = ((samples[:, None] - batch[None]) ** 2).flatten(2).sum(-1)
            samples_match = bool((distances.argmin(dim=1) == torch.arange(len(batch))).all())
            rows.insert(0, _pictures(batch))
        passed = error_after < PASS_FRACTION * self.error_before and samples_match is not False
        grid_path = Path(args.output_dir) / GRID_NAME
        with atomic_file(grid_path) as handle:
            make_labelled_grid(rows, ["batch", "samples"][-len(rows) :]).save(handle, format="PNG")
        matched = {
            None: "",
            True: "; every sample is closest to its own image",
            False: "; samples miss the batch",
        }
        logger.info(
            "Overfit check %s after %d steps: the error of the model's estimate of the batch went from %.4f to %.4f "
            "(pass: below %.4f), its training loss from %.4f to %.4f%s. Grid: %s",
            "PASSED" if passed else "FAILED",
            args.max_train_steps,
            self.error_before,
            error_after,
            PASS_FRACTION * self.error_before,
            self.loss_before,
            loss_after,
            matched[samples_match],
            grid_path,
        )
        if not passed:
            logger.warning(
                "The model did not memorise one batch: look for a bug between data, model and loss before tuning "
                "(a wrong target, labels not reaching the model, a learning rate far off)."
            )
        return {
            "passed": passed,
            "estimate_error_before": self.error_before,
            "estimate_error_after": error_after,
            "loss_before": self.loss_before,
            "loss_after": loss_after,
            "samples_match": samples_match,
        }


def _pictures(images: torch.Tensor) -> list[Any]:
    """Images in [0, 1] ``(B, C, H, W)`` as PIL images, quantised as saved."""
    from PIL import Image

    pixels = quantize_images(images).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
