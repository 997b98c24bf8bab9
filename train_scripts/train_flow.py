#!/usr/bin/env python
"""Train a class-conditional DiT by flow matching with accelerate and save a ``FlowPipeline``.

    accelerate launch train_scripts/train_flow.py [flags]

With no flags it trains on scikit-learn's bundled 8×8 digits (upsampled to 16×16) on a CPU in a few minutes
and leaves in ``--output_dir`` (``outputs/digits``):

- ``pipeline/``: the saved ``FlowPipeline`` (EMA weights, scheduler, ``id2label``), its model card
  ``README.md`` and ``samples.png`` (one row per class);
- ``train_log.jsonl`` (metrics every ``--logging_steps``), ``train.log`` (messages), ``training_args.json``
  and ``train_summary.json`` (final figures: throughput, digit accuracy, ...);
- ``checkpoint-<step>/`` folders (``--checkpointing_steps``) and ``samples/`` validation grids.

``main()`` is the whole run, its loop written out: batch -> noise level -> loss -> backward -> step -> EMA ->
log / validate / evaluate / checkpoint. The pieces it calls live in ``flow_pipelines.training`` (each owns its
flags); the path and what the model predicts are ``flow_pipelines.paths``'. Flags follow diffusers' training
examples (``--output_dir``, ``--train_batch_size``, ``--gradient_accumulation_steps``, ``--mixed_precision``,
``--report_to``, ``--checkpointing_steps``, ``--resume_from_checkpoint latest``, ``--push_to_hub``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from flow_pipelines.cli_utils import INPUT_ERRORS, USAGE_ERROR_STATUS, one_line
from flow_pipelines.file_utils import write_json
from flow_pipelines.hub import public_config
from flow_pipelines.training import (
    architecture,
    batches,
    checkpointing,
    flags,
    guards,
    latents,
    objectives,
    overfit,
    publish,
    run_folder,
    runtime,
    sharding,
    tracking,
    validation,
)
from flow_pipelines.training.ema import ema_weights

logger = logging.getLogger("train_flow")

LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial")


def build_parser() -> argparse.ArgumentParser:
    """The script's flags: the loop's own here, the others from the pieces that own them.

    Returns:
        The argument parser.
    """
    parser = argparse.ArgumentParser(
        description="Train a class-conditional DiT by flow matching and save a FlowPipeline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    batches.add_data_args(parser)
    architecture.add_model_args(parser)
    objectives.add_objective_args(parser)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=128, help="Batch size per process.")
    optim.add_argument("--num_train_epochs", type=int, default=None)
    optim.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--learning_rate", type=float, default=2e-3)
    # Constant, as DiT and SiT train: a decay to zero over a short run starves it (benchmarks/README.md).
    optim.add_argument("--lr_scheduler", default="constant", choices=LR_SCHEDULERS)
    optim.add_argument("--lr_warmup_steps", type=int, default=0)
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
    run = parser.add_argument_group("checkpoints")
    run.add_argument("--output_dir", default="outputs/digits")
    run.add_argument("--checkpointing_steps", type=int, default=500)
    run.add_argument("--checkpoints_total_limit", type=int, default=2)
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder.")
    run.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Replace a run already in --output_dir (its files only).",
    )
    run.add_argument(
        "--cpu_threads",
        type=int,
        default=None,
        help="torch threads per process on a CPU (default: the idle cores).",
    )
    tracking.add_tracking_args(parser)
    validation.add_validation_args(parser)
    publish.add_publish_args(parser)
    overfit.add_overfit_args(parser)
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
    overfit.apply_settings(args)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Check what can be checked from the flags alone, before any work.

    Args:
        args: The parsed arguments.

    Raises:
        ValueError: Naming the flag, its value and what is allowed.
    """
    positive = ("train_batch_size", "gradient_accumulation_steps", "learning_rate", "logging_steps")
    optional = ("max_train_steps", "num_train_epochs", "checkpoints_total_limit")
    flags.check_numbers(
        args, positive + optional, ("checkpointing_steps", "lr_warmup_steps", "max_grad_norm")
    )
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay={args.ema_decay} must lie in [0, 1).")
    batches.check_data_args(args)  # first: it fills in the digits' resolution
    validation.check_validation_args(args, batches.trains_on_digits(args))
    publish.check_publish_args(args)
    objectives.objective_from_args(args)
    patch = architecture.model_settings(args)["patch_size"]
    if args.vae is None and args.resolution % patch:
        raise ValueError(
            f"--resolution={args.resolution} is not divisible by the patch size {patch}; allowed: multiples of {patch}."
        )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save the pipeline (with model card and sample grid), optionally push it.

    Args:
        args: Flags from :func:`parse_args`.

    Returns:
        The run summary (also in ``train_summary.json``); on non-main processes without the saved result.

    Raises:
        ValueError: For bad input, before training starts.
        FloatingPointError: If the loss, the gradient or the weights become NaN or infinite (naming the step);
            checkpoints are kept.
    """
    check_args(args)
    runtime.redact_argv(sys.argv)  # before a tracker records the command line
    output_dir, config = Path(args.output_dir), public_config(vars(args))
    accelerator = runtime.make_accelerator(
        output_dir, args.mixed_precision, args.report_to, args.logging_dir, args.cpu_threads
    )
    device, is_main = accelerator.device, accelerator.is_main_process
    num_processes, accumulation = accelerator.num_processes, args.gradient_accumulation_steps
    on_digits = batches.trains_on_digits(args)
    resume_from = checkpointing.resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    if resume_from is not None:
        checkpointing.check_resume_flags(resume_from, config)
    publish.check_hub_before_training(args, accelerator)
    # One run per folder: every process checks (and fails alike); the main process clears what may go.
    remove = run_folder.check_run_folder(output_dir, resume_from, args.overwrite_output_dir)
    stale = run_folder.prepare_run_folder(output_dir, remove) if is_main else []
    accelerator.wait_for_everyone()
    runtime.start_file_logging(output_dir, is_main)
    for path in [*remove, *stale]:
        logger.info(
            "Removed %s (%s)", path, "an earlier run's" if path in remove else "an interrupted save's"
        )
    set_seed(args.seed)
    logger.info(
        "Process %d/%d on %s (%d torch threads), mixed precision %s",
        accelerator.process_index + 1,
        num_processes,
        device,
        torch.get_num_threads(),
        accelerator.mixed_precision,
    )
    # ------------------------------------------------------------------ data: pixels, or VAE latents cached once
    data, dataset, vae = batches.load_training_data(
        args, accelerator, architecture.model_settings(args)["patch_size"]
    )
    if args.overfit_one_batch:  # one image per class, so that the target is a function of the input
        data, dataset = overfit.one_example_per_class(data, dataset, args, num_processes)
    loader, sampler, batches_per_epoch = batches.make_loader(
        dataset,
        data.num_examples,
        args.train_batch_size,
        num_processes,
        accumulation,
        args.seed,
        shuffle=not args.overfit_one_batch,
        num_workers=args.dataloader_num_workers,
    )
    steps_per_epoch = batches_per_epoch // accumulation if batches_per_epoch else None
    max_train_steps = batches.total_steps(args, steps_per_epoch)
    # ------------------------------------------------------------------ model, objective, optimiser, EMA
    objective = objectives.objective_from_args(args)
    sample_size = args.resolution // (latents.vae_scale_factor(vae) if vae is not None else 1)
    in_channels = vae.config.latent_channels if vae is not None else data.num_channels
    transformer = architecture.build_model(args, objective.path, in_channels, sample_size, len(data.id2label))
    num_parameters = sum(p.numel() for p in transformer.parameters())
    logger.info("Model: DiT %s, %.2fM parameters", architecture.model_settings(args), num_parameters / 1e6)
    optimizer = torch.optim.AdamW(
        transformer.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    # The prepared scheduler steps once per process per optimizer step.
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
    )
    if sampler is not None:
        model, optimizer, loader, lr_scheduler = accelerator.prepare(
            transformer, optimizer, loader, lr_scheduler
        )
    else:  # a stream is already split by process: accelerate must not split it again
        model, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    # FSDP2 shards the model in place: the EMA (sharded alike) and the checkpoint hooks take the prepared weights.
    transformer = accelerator.unwrap_model(model)
    ema = EMAModel(transformer.parameters(), decay=args.ema_decay, foreach=True) if args.use_ema else None
    checkpointing.register_checkpoint_hooks(accelerator, transformer, ema)
    # ------------------------------------------------------------------ records, resume, what to look at
    if is_main:
        write_json(output_dir / "training_args.json", config)
    tracking.start_trackers(accelerator, args, config)
    position = checkpointing.TrainingPosition()
    if resume_from is not None:
        logger.info("Resuming from %s", resume_from)
        position = checkpointing.load_checkpoint(accelerator, resume_from)
    elif args.resume_from_checkpoint == "latest":
        logger.info("No checkpoint in %s; starting a new run.", output_dir)
    evaluator = validation.TrainingEvaluator.from_args(args, data, on_digits, vae is not None, device)
    # Samples the transformer (a whole copy on the main process when it is sharded), with the EMA weights swapped in.
    sampling = sharding.SamplingModel(accelerator, transformer, ema)
    pipeline = publish.training_pipeline(sampling.model, args, vae, data.id2label)
    stream = batches.BatchStream(
        loader, sampler, batches_per_epoch, args.train_batch_size * num_processes, device
    )
    batch_iterator = stream.iterate(position.epoch, position.batch_in_epoch)
    check = None
    if args.overfit_one_batch:  # the first batch at every step, judged at the end
        check, batch_iterator = overfit.OverfitCheck.on_first_batch(
            batch_iterator, model, objective, args, vae
        )
    global_step, samples_seen, last_loss = position.global_step, position.samples_seen, float("nan")
    logger.info(
        "Training %d steps (%s per epoch), %d examples per step",
        max_train_steps,
        steps_per_epoch or "?",
        args.train_batch_size * num_processes * accumulation,
    )
    # ------------------------------------------------------------------ the loop
    throughput = runtime.Throughput(warmup_steps=min(5, max(0, max_train_steps - global_step - 1)))
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="Training", unit="step", disable=not is_main
    )
    metrics = tracking.MetricsLog(accelerator, output_dir, resume=resume_from is not None)
    with metrics, progress, runtime.StopRequest() as stop:
        while global_step < max_train_steps:
            losses, step_samples, stopping = [], 0, False
            for micro_step in range(accumulation):
                # All randomness of a micro-step comes from its own generator: a resumed run replays it.
                generator = runtime.step_generator(
                    args.seed, global_step, micro_step, accelerator.process_index, device
                )
                batch = next(batch_iterator)
                x0 = batches.to_model_space(batch, generator, args.random_flip, args.dequantize, vae)
                labels = batch["class_labels"].to(device)
                labels = objectives.drop_labels(
                    labels, args.label_dropout, transformer.config.num_classes, generator
                )
                noisy, timesteps, noise, sigmas = objective.training_inputs(x0, generator)
                # Gradients are averaged across processes once, on the last micro-batch.
                last = micro_step == accumulation - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss = objective.loss(model(noisy, timesteps, labels).sample, x0, noise, sigmas, noisy)
                    # One collective: the loss and examples of all processes, and whether any was asked to stop.
                    count = torch.tensor(float(x0.shape[0]), device=device)
                    asked = torch.tensor(float(stop.requested), device=device)
                    totals = accelerator.reduce(
                        torch.stack([loss.detach().float() * count, count, asked]), "sum"
                    )
                    guards.check_finite_loss(totals[0] / totals[1], global_step, micro_step, output_dir)
                    accelerator.backward(loss / accumulation)
                losses.append(totals[0] / totals[1])
                step_samples += int(totals[1].item())
                stopping = stopping or bool(totals[2].item())
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
            # fp16's loss scaler skips steps with overflowing gradients itself; otherwise they are an error.
            if accelerator.mixed_precision != "fp16":
                guards.check_finite_gradients(grad_norm, global_step, output_dir)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(transformer.parameters())
            global_step, samples_seen = global_step + 1, samples_seen + step_samples
            throughput.step(step_samples)
            progress.update(1)

            if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                last_loss = float(torch.stack(losses).mean())
                speed = throughput.samples_per_second or step_samples / throughput.last_step_seconds
                metrics.log(
                    global_step,
                    {
                        "loss": last_loss,
                        "lr": lr_scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "step_time": throughput.last_step_seconds,
                        "samples_per_second": speed,
                        "epoch": stream.epoch,
                        "step_samples": step_samples,
                        "samples_seen": samples_seen,
                    },
                )
                progress.set_postfix(loss=f"{last_loss:.4f}", samples_s=f"{speed:.0f}")
            if stopping or (args.checkpointing_steps and global_step % args.checkpointing_steps == 0):
                guards.check_finite_weights(
                    transformer, ema, global_step
                )  # never a checkpoint of non-finite weights
                state = checkpointing.TrainingPosition(global_step, *stream.position(), samples_seen)
                saved = checkpointing.save_checkpoint(
                    accelerator, output_dir, state, args.checkpoints_total_limit, config
                )
                logger.info("Saved %s", saved)
                throughput.pause()
            if stopping:
                logger.warning(
                    "Stopped at step %d (%s): resume with --resume_from_checkpoint latest.",
                    global_step,
                    stop.signal_name,
                )
                runtime.end_run(accelerator)
                return {
                    "global_step": global_step,
                    "interrupted": stop.signal_name or "signal",
                    "checkpoint": str(saved),
                }
            if (
                args.validation_steps
                and global_step % args.validation_steps == 0
                and global_step < max_train_steps
            ):
                sampling_ema = sampling.refresh()  # every process: a sharded model's weights are gathered
                if is_main:
                    validation.save_validation_grid(pipeline, sampling_ema, args, accelerator, global_step)
                accelerator.wait_for_everyone()
                throughput.pause()
            if evaluator is not None and global_step % args.eval_steps == 0:
                sampling_ema = sampling.refresh()
                if is_main:
                    with ema_weights(pipeline.transformer, sampling_ema):
                        metrics.log(global_step, evaluator(pipeline, global_step))
                accelerator.wait_for_everyone()
                throughput.pause()
    # ------------------------------------------------------------------ the result: EMA weights, grid, card, push
    summary = {
        "global_step": global_step,
        "num_processes": num_processes,
        "samples_seen": samples_seen,
        "final_loss": last_loss,
        "train_samples_per_second": throughput.samples_per_second,
        "num_parameters": num_parameters,
    }
    if check is not None and is_main:
        summary["overfit"] = check.verdict(pipeline)
    dataset_name = data.description if on_digits else (args.dataset_name or data.description)
    card_config = {**config, "num_parameters": num_parameters}
    return publish.finish_run(
        accelerator, args, pipeline, sampling, summary, card_config, dataset_name, on_digits
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """The command: :func:`main`, with a user error as one line on stderr and the exit status saying how it ended.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        0 when done, 2 for bad input, 1 when training failed (non-finite values), the Hub upload did or the
        ``--overfit_one_batch`` check did,
        128 + the signal's number when stopped by SIGINT / SIGTERM (after saving a checkpoint).
    """
    try:
        summary = main(parse_args(argv))
    except (*INPUT_ERRORS, FloatingPointError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1 if isinstance(error, FloatingPointError) else USAGE_ERROR_STATUS
    except KeyboardInterrupt:
        print("error: interrupted before training started; nothing was saved.", file=sys.stderr)
        return 128 + signal.SIGINT
    if "interrupted" in summary:
        return 128 + signal.Signals[summary["interrupted"]].value
    return 1 if "hub_error" in summary or not summary.get("overfit", {}).get("passed", True) else 0


if __name__ == "__main__":
    sys.exit(cli())
