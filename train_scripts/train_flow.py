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
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import set_seed  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from flow_pipelines.hub import public_config  # noqa: E402
from flow_pipelines.training.architecture import add_model_args, build_model, model_settings  # noqa: E402
from flow_pipelines.training.batches import (  # noqa: E402
    BatchStream,
    add_data_args,
    check_data_args,
    load_training_data,
    make_loader,
    to_model_space,
    total_steps,
    trains_on_digits,
)
from flow_pipelines.training.checkpointing import (  # noqa: E402
    TrainingPosition,
    load_checkpoint,
    register_checkpoint_hooks,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from flow_pipelines.training.ema import ema_weights  # noqa: E402
from flow_pipelines.training.latents import vae_scale_factor  # noqa: E402
from flow_pipelines.training.objectives import add_objective_args, drop_labels, objective_from_args  # noqa: E402
from flow_pipelines.training.publish import (  # noqa: E402
    add_publish_args,
    check_publish_args,
    save_result,
    training_pipeline,
)
from flow_pipelines.training.runtime import (  # noqa: E402
    Throughput,
    gather_digests,
    logger,
    make_accelerator,
    start_file_logging,
    step_generator,
)
from flow_pipelines.training.tracking import MetricsLog, add_tracking_args, log_images, start_trackers  # noqa: E402
from flow_pipelines.training.validation import (
    TrainingEvaluator,
    add_validation_args,
    check_validation_args,
    grid_classes,
    sample_grid,
)  # noqa: E402

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
    add_data_args(parser)
    add_model_args(parser)
    add_objective_args(parser)
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
    run = parser.add_argument_group("checkpoints")
    run.add_argument("--output_dir", default="outputs/digits")
    run.add_argument("--checkpointing_steps", type=int, default=500)
    run.add_argument("--checkpoints_total_limit", type=int, default=2)
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder.")
    run.add_argument(
        "--cpu_threads",
        type=int,
        default=None,
        help="torch threads per process on a CPU (default: the idle cores).",
    )
    add_tracking_args(parser)
    add_validation_args(parser)
    add_publish_args(parser)
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


def check_args(args: argparse.Namespace) -> None:
    """Check what can be checked from the flags alone, before any work.

    Args:
        args: The parsed arguments.

    Raises:
        ValueError: Naming the flag, its value and what is allowed.
    """
    positive = ["train_batch_size", "gradient_accumulation_steps", "learning_rate", "logging_steps"]
    optional = ["max_train_steps", "num_train_epochs", "checkpoints_total_limit"]
    for name in positive + [name for name in optional if getattr(args, name) is not None]:
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name}={getattr(args, name)} must be a positive number.")
    for name in ("checkpointing_steps", "lr_warmup_steps"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name}={getattr(args, name)} must be >= 0 (0 disables).")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay={args.ema_decay} must lie in [0, 1).")
    if args.max_grad_norm < 0:
        raise ValueError(f"--max_grad_norm={args.max_grad_norm} must be >= 0 (0 disables clipping).")
    if args.overfit_one_batch and args.max_train_steps is None:
        raise ValueError("--overfit_one_batch needs --max_train_steps.")
    check_validation_args(args, trains_on_digits(args))
    check_publish_args(args)
    check_data_args(args)
    objective_from_args(args)
    patch = model_settings(args)["patch_size"]
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
        FloatingPointError: If the loss becomes NaN or infinite (naming the step); checkpoints are kept.
    """
    check_args(args)
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(
        output_dir, args.mixed_precision, args.report_to, args.logging_dir, args.cpu_threads
    )
    resume_from = resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    device, is_main = accelerator.device, accelerator.is_main_process
    num_processes = accelerator.num_processes
    accumulation = args.gradient_accumulation_steps
    start_file_logging(output_dir, is_main)
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
    data, dataset, vae = load_training_data(args, accelerator, model_settings(args)["patch_size"])
    loader, sampler, batches_per_epoch = make_loader(
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
    max_train_steps = total_steps(args, steps_per_epoch)
    # ------------------------------------------------------------------ model, objective, optimiser, EMA
    objective = objective_from_args(args)
    sample_size = args.resolution // (vae_scale_factor(vae) if vae is not None else 1)
    in_channels = vae.config.latent_channels if vae is not None else data.num_channels
    transformer = build_model(args, objective.path, in_channels, sample_size, len(data.id2label))
    num_parameters = sum(p.numel() for p in transformer.parameters())
    logger.info("Model: DiT %s, %.2fM parameters", model_settings(args), num_parameters / 1e6)
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
    ema = EMAModel(transformer.parameters(), decay=args.ema_decay, foreach=True) if args.use_ema else None
    register_checkpoint_hooks(accelerator, transformer, ema)
    if sampler is not None:
        model, optimizer, loader, lr_scheduler = accelerator.prepare(
            transformer, optimizer, loader, lr_scheduler
        )
    else:  # a stream is already split by process: accelerate must not split it again
        model, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(device)
    # ------------------------------------------------------------------ records, resume, what to look at
    config = public_config(vars(args))
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_args.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    start_trackers(accelerator, args, config)
    position = TrainingPosition()
    if resume_from is not None:
        logger.info("Resuming from %s", resume_from)
        position = load_checkpoint(accelerator, resume_from)
    elif args.resume_from_checkpoint == "latest":
        logger.info("No checkpoint in %s; starting a new run.", output_dir)
    evaluator = TrainingEvaluator.from_args(args, data, trains_on_digits(args), vae is not None, device)
    # Samples whatever weights the transformer holds.
    pipeline = training_pipeline(transformer, args, vae, data.id2label)
    stream = BatchStream(loader, sampler, batches_per_epoch, args.train_batch_size * num_processes, device)
    batches = stream.iterate(position.epoch, position.batch_in_epoch)
    if args.overfit_one_batch:
        batches = itertools.repeat(next(batches))
    global_step, samples_seen, last_loss = position.global_step, position.samples_seen, float("nan")
    logger.info(
        "Training %d steps (%s per epoch), %d examples per step",
        max_train_steps,
        steps_per_epoch or "?",
        args.train_batch_size * num_processes * accumulation,
    )
    # ------------------------------------------------------------------ the loop
    throughput = Throughput(warmup_steps=min(5, max(0, max_train_steps - global_step - 1)))
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="Training", unit="step", disable=not is_main
    )
    with MetricsLog(accelerator, output_dir, resume=resume_from is not None) as metrics, progress:
        while global_step < max_train_steps:
            losses, step_samples = [], 0
            for micro_step in range(accumulation):
                # All randomness of a micro-step comes from its own generator: a resumed run replays it.
                generator = step_generator(
                    args.seed, global_step, micro_step, accelerator.process_index, device
                )
                batch = next(batches)
                x0 = to_model_space(batch, generator, args.random_flip, args.dequantize, vae)
                labels = drop_labels(
                    batch["class_labels"].to(device),
                    args.label_dropout,
                    transformer.config.num_classes,
                    generator,
                )
                noisy, timesteps, noise, sigmas = objective.training_inputs(x0, generator)
                # Gradients are averaged across processes once, on the last micro-batch.
                last = micro_step == accumulation - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss = objective.loss(model(noisy, timesteps, labels).sample, x0, noise, sigmas, noisy)
                    # One collective gives the mean loss over all processes and the examples they used.
                    count = torch.tensor(float(x0.shape[0]), device=device)
                    totals = accelerator.reduce(torch.stack([loss.detach().float() * count, count]), "sum")
                    if not torch.isfinite(totals[0]).item():
                        raise FloatingPointError(
                            f"The loss is {(totals[0] / totals[1]).item()} at step {global_step + 1} (micro-batch "
                            f"{micro_step + 1}); training stopped before updating the weights. Checkpoints already "
                            f"in {output_dir} are intact: lower --learning_rate or --max_grad_norm and resume."
                        )
                    accelerator.backward(loss / accumulation)
                losses.append(totals[0] / totals[1])
                step_samples += int(totals[1].item())
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
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
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                state = TrainingPosition(global_step, *stream.position(), samples_seen)
                logger.info(
                    "Saved %s",
                    save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit),
                )
                throughput.pause()
            if (
                args.validation_steps
                and global_step % args.validation_steps == 0
                and global_step < max_train_steps
            ):
                if is_main:
                    with ema_weights(transformer, ema):
                        grid = sample_grid(
                            pipeline,
                            grid_classes(args.validation_classes, data.id2label),
                            args.validation_images_per_class,
                            args.num_inference_steps,
                            args.guidance_scale,
                            args.seed,
                        )
                    (output_dir / "samples").mkdir(parents=True, exist_ok=True)
                    grid.save(output_dir / "samples" / f"step-{global_step:07d}.png")
                    log_images(accelerator, grid, global_step)
                accelerator.wait_for_everyone()
                throughput.pause()
            if evaluator is not None and global_step % args.eval_steps == 0:
                if is_main:
                    with ema_weights(transformer, ema):
                        metrics.log(global_step, evaluator(pipeline, global_step))
                accelerator.wait_for_everyone()
                throughput.pause()
    # ------------------------------------------------------------------ the result
    accelerator.wait_for_everyone()
    digests = gather_digests(accelerator, transformer)
    summary: dict[str, Any] = {
        "global_step": global_step,
        "num_processes": num_processes,
        "samples_seen": samples_seen,
        "final_loss": last_loss,
        "train_samples_per_second": throughput.samples_per_second,
        "weights_digest_per_process": digests,
        "num_parameters": num_parameters,
    }
    if is_main:
        if len(set(digests)) > 1:
            logger.warning("Processes ended with different weights: %s", digests)
        if ema is not None:
            ema.copy_to(transformer.parameters())
        transformer.eval()
        dataset_name = data.description if trains_on_digits(args) else (args.dataset_name or data.description)
        card_config = {**config, "num_parameters": num_parameters}
        summary.update(
            save_result(
                pipeline,
                args,
                accelerator,
                global_step,
                card_config,
                dataset_name,
                trains_on_digits(args),
            )
        )
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main(parse_args())
