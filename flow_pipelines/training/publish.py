"""The result of a run: the saved `FlowPipeline` with its sample grid, evaluation and model card, on disk and on the Hub."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from ..data_sources import DIGITS_DATASET
from ..evaluation.digits import MAX_SAMPLES_PER_DIGIT, digit_report, format_digit_report
from ..file_utils import atomic_file, write_json
from ..hub import check_push_access, push_pipeline_to_hub, write_model_card
from ..model_card import results_from_rows
from ..pipelines import FlowPipeline
from ..schedulers import FlowMultistepScheduler
from .guards import check_finite_weights
from .runtime import end_run, gather_digests
from .sharding import SamplingModel
from .tracking import log_images
from .validation import run_sample_grid

logger = logging.getLogger("train_flow")

PIPELINE_FOLDER = "pipeline"
SAMPLE_GRID_NAME = "samples.png"


def add_publish_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the final evaluation and of the Hub upload.

    Args:
        parser: The training script's parser.
    """
    result = parser.add_argument_group("the result")
    result.add_argument(
        "--evaluation_samples_per_class",
        type=int,
        default=50,
        help=f"Samples per digit for the final report on the digits (0: skip; at most {MAX_SAMPLES_PER_DIGIT}).",
    )
    result.add_argument(
        "--push_to_hub", action="store_true", help="Upload the pipeline folder (not checkpoints)."
    )
    result.add_argument(
        "--hub_model_id", default=None, help="'user/name'; default: the output folder's name."
    )
    result.add_argument(
        "--hub_token", default=None, help="Hub token (never written anywhere); prefer `hf auth login`."
    )
    result.add_argument("--hub_private_repo", action="store_true")


def check_publish_args(args: argparse.Namespace) -> None:
    """Check the result flags on their own, before any work.

    Args:
        args: The parsed flags.

    Raises:
        ValueError: Naming the flag, its value and what is allowed.
    """
    if not 0 <= args.evaluation_samples_per_class <= MAX_SAMPLES_PER_DIGIT:
        raise ValueError(
            f"--evaluation_samples_per_class={args.evaluation_samples_per_class} must lie in "
            f"[0, {MAX_SAMPLES_PER_DIGIT}] (0 disables; {MAX_SAMPLES_PER_DIGIT} is the most the digits' real-vs-real "
            "floor can match)."
        )
    if args.push_to_hub and args.hub_model_id is not None and args.hub_model_id.count("/") > 1:
        raise ValueError(f"--hub_model_id={args.hub_model_id!r} must look like 'user/name'.")


def training_pipeline(
    transformer: Any, args: argparse.Namespace, vae: Any, id2label: dict[int, str]
) -> FlowPipeline:
    """A ``FlowPipeline`` around the transformer being trained (whatever weights it holds), progress bar off.

    Its scheduler is the one saved with the result: the multistep solver with ``--sampling_shift`` (default
    ``--shift``), the most accurate per model evaluation on trained models (``benchmarks/README.md``,
    "Few-step sampling"); it is handed velocities whatever the model predicts.

    Args:
        transformer: The (unwrapped) transformer.
        args: The parsed flags.
        vae: The VAE of a latent run, or None.
        id2label: The class names.

    Returns:
        The pipeline.
    """
    shift = args.sampling_shift if args.sampling_shift is not None else args.shift
    pipeline = FlowPipeline(
        transformer=transformer,
        scheduler=FlowMultistepScheduler(num_train_timesteps=1000, shift=shift),
        vae=vae,
        id2label=id2label,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def check_hub_before_training(args: argparse.Namespace, accelerator: Any) -> None:
    """With ``--push_to_hub``, make sure the upload can succeed before the first step (every process fails alike).

    Args:
        args: The parsed flags.
        accelerator: The run's accelerator.

    Raises:
        ValueError: If the Hub cannot be reached or the repository cannot be created (see `check_push_access`).
    """
    from accelerate.utils import broadcast_object_list

    if not args.push_to_hub:
        return
    problem = [None]
    if accelerator.is_main_process:
        try:
            check_push_access(hub_repo_id(args), token=args.hub_token, private=args.hub_private_repo)
        except ValueError as error:
            problem = [str(error)]
    if accelerator.num_processes > 1:
        broadcast_object_list(problem)
    if problem[0] is not None:
        raise ValueError(problem[0])


def hub_repo_id(args: argparse.Namespace) -> str:
    """The repository of ``--push_to_hub``: ``--hub_model_id``, else the output folder's name.

    Args:
        args: The parsed flags.

    Returns:
        The repo id.
    """
    return args.hub_model_id or Path(args.output_dir).resolve().name


def finish_run(
    accelerator: Any,
    args: argparse.Namespace,
    pipeline: FlowPipeline,
    sampling: SamplingModel,
    summary: dict[str, Any],
    config: dict[str, Any],
    dataset_name: str,
    on_digits: bool,
) -> dict[str, Any]:
    """Save the result with the final (EMA) weights and write ``train_summary.json``; every process calls it.

    Args:
        accelerator: The run's accelerator.
        args: The parsed flags.
        pipeline: The pipeline around ``sampling.model``.
        sampling: The trained model, its EMA, and the model that samples them.
        summary: The run's figures so far (steps, samples, loss, throughput, ...).
        config: The run's public settings (for the model card).
        dataset_name: What the card names as the training data.
        on_digits: Whether the run trained on the digits.

    Returns:
        The summary, with each process's weight digest and, on the main process, the saved result.

    Raises:
        FloatingPointError: If the final weights are not finite (nothing is saved).
    """
    accelerator.wait_for_everyone()
    check_finite_weights(sampling.trained, sampling.ema, summary["global_step"])
    summary["weights_digest_per_process"] = digests = gather_digests(accelerator, sampling.trained)
    ema = sampling.refresh()
    if accelerator.is_main_process:
        if len(set(digests)) > 1:
            logger.warning("Processes ended with different weights: %s", digests)
        if ema is not None:
            ema.copy_to(pipeline.transformer.parameters())
        pipeline.transformer.eval()
        summary.update(
            save_result(pipeline, args, accelerator, summary["global_step"], config, dataset_name, on_digits)
        )
        write_json(Path(args.output_dir) / "train_summary.json", summary)
    end_run(accelerator)
    return summary


def save_result(
    pipeline: FlowPipeline,
    args: argparse.Namespace,
    accelerator: Any,
    step: int,
    config: dict[str, Any],
    dataset_name: str,
    on_digits: bool,
) -> dict[str, Any]:
    """Save the pipeline (with its grid and model card), evaluate it on the digits, push it; main process only.

    Args:
        pipeline: The pipeline around the final (EMA) weights.
        args: The parsed flags.
        accelerator: The run's accelerator (its trackers get the grid).
        step: The final optimizer step.
        config: The run's public settings (for the model card).
        dataset_name: What the card names as the training data.
        on_digits: Whether the run trained on the digits (then digit accuracy is measured).

    Returns:
        ``pipeline_dir``, ``sampling_seconds``, and ``evaluation`` / ``hub_url`` when made.
    """
    pipeline_dir = Path(args.output_dir) / PIPELINE_FOLDER
    result: dict[str, Any] = {"pipeline_dir": str(pipeline_dir)}
    start = time.perf_counter()
    grid = run_sample_grid(pipeline, args)
    if on_digits and args.evaluation_samples_per_class > 0:
        # The default guidance and none, each at a few-step and a comfortable sampling budget.
        result["evaluation"] = digit_report(
            pipeline,
            guidance_scales=(args.guidance_scale, 1.0),
            samples_per_class=args.evaluation_samples_per_class,
            seed=args.seed + 1,
            interpolation=args.image_interpolation_mode,
        )
    result["sampling_seconds"] = time.perf_counter() - start
    # Each component, the grid and the card is replaced whole; files of the user's in the folder stay.
    pipeline.save_pretrained(pipeline_dir)
    with atomic_file(pipeline_dir / SAMPLE_GRID_NAME) as handle:
        grid.save(handle, format="PNG")
    write_model_card(
        pipeline_dir,
        training_config=config,
        dataset_name=dataset_name,
        id2label=pipeline.id2label,
        sample_grid=SAMPLE_GRID_NAME,
        results=card_results(result["evaluation"]) if "evaluation" in result else None,
        repo_id=args.hub_model_id if args.push_to_hub else None,
        model_name=args.hub_model_id.split("/")[-1] if args.hub_model_id else Path(args.output_dir).name,
        prediction_type=args.prediction_type,
        guidance_scale=args.guidance_scale,
    )
    log_images(accelerator, grid, step)
    logger.info("Saved the pipeline (EMA weights) to %s", pipeline_dir)
    if "evaluation" in result:
        headline = result["evaluation"][0]
        logger.info(
            "Samples against real digits (%d per setting; FD in a PCA space of real digits against its "
            "real-vs-real floor; the classifier reads %.1f%% of real digits after the %dx%d round trip):\n%s",
            headline["num_samples"],
            100 * headline["classifier_roundtrip_accuracy"],
            args.resolution,
            args.resolution,
            format_digit_report(result["evaluation"]),
        )
    if args.push_to_hub:
        repo_id = hub_repo_id(args)
        try:
            result["hub_url"] = push_pipeline_to_hub(
                pipeline_dir, repo_id, token=args.hub_token, private=args.hub_private_repo
            )
            logger.info("Pushed %s to %s", pipeline_dir, result["hub_url"])
        except Exception as error:  # the local result is complete; the upload can be repeated on its own
            result["hub_error"] = f"{type(error).__name__}: {error}"
            logger.error(
                "The upload to %s failed (%s); everything is saved in %s. Push it later with: hf upload %s %s",
                repo_id,
                result["hub_error"],
                pipeline_dir,
                repo_id,
                pipeline_dir,
            )
    return result


def card_results(rows: list[dict[str, Any]]) -> list[Any]:
    """The model card's results: accuracy, FD ratio, precision and recall of each digits report row.

    Args:
        rows: The rows of :func:`~flow_pipelines.evaluation.digits.digit_report`, measured with the pipeline's
            own scheduler (the multistep solver saved with it).

    Returns:
        ``CardResult`` entries, each with its guidance, model evaluations and number of samples.
    """
    kept = ("digit_accuracy", "fd_ratio", "precision", "recall", "precision_floor", "recall_floor")
    settings = ("guidance_scale", "num_inference_steps", "num_model_evaluations", "num_samples")
    return results_from_rows(
        [{"sampler": "multistep", **{key: row[key] for key in (*settings, *kept)}} for row in rows],
        DIGITS_DATASET,
    )
