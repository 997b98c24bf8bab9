"""What a run records as it goes: metrics to ``train_log.jsonl`` and the trackers (wandb, TensorBoard), images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

REPORT_TO_CHOICES: tuple[str, ...] = ("none", "tensorboard", "wandb")
METRICS_LOG_NAME = "train_log.jsonl"


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    """The logging flags, named as in diffusers' training examples.

    Args:
        parser: The training script's parser.
    """
    tracking = parser.add_argument_group("logging")
    tracking.add_argument("--report_to", default="none", choices=REPORT_TO_CHOICES)
    tracking.add_argument("--logging_dir", default="logs", help="Tracker folder, relative to --output_dir.")
    tracking.add_argument("--tracker_project_name", default="flow_pipelines")
    tracking.add_argument("--logging_steps", type=int, default=10, help="Write metrics every N steps.")


def tracker_config(config: dict[str, Any]) -> dict[str, Any]:
    """Settings as trackers accept them (TensorBoard's hparams take only scalars and strings).

    Args:
        config: The run's settings.

    Returns:
        The settings with every non-scalar value JSON-encoded.
    """
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in config.items()
    }


def start_trackers(accelerator: Any, args: argparse.Namespace, config: dict[str, Any]) -> None:
    """Start the trackers of ``--report_to`` (wandb writes under ``--output_dir/--logging_dir``).

    Args:
        accelerator: The run's accelerator (created with ``log_with``).
        args: The parsed flags.
        config: The run's public settings, recorded by the trackers.
    """
    if args.report_to == "none":
        return
    tracker_dir = Path(args.output_dir) / args.logging_dir
    if accelerator.is_main_process:
        tracker_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(
        args.tracker_project_name,
        config=tracker_config(config),
        init_kwargs={"wandb": {"dir": str(tracker_dir)}},
    )


class MetricsLog:
    """Metrics of a run, sent to the trackers (all processes call) and appended to ``train_log.jsonl`` (main).

    A resumed run continues the file; a new one starts it anew. Use as a context manager.

    Args:
        accelerator: The run's accelerator.
        output_dir: The run's folder.
        resume: Whether this run continues an earlier one.
    """

    def __init__(self, accelerator: Any, output_dir: str | Path, resume: bool) -> None:
        self.accelerator = accelerator
        self.handle = None
        if accelerator.is_main_process:
            self.handle = open(Path(output_dir) / METRICS_LOG_NAME, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record metrics of one step.

        Args:
            step: The optimizer step.
            metrics: Name to value.
        """
        self.accelerator.log(metrics, step=step)
        if self.handle is not None:
            self.handle.write(json.dumps({"step": step, **metrics}) + "\n")
            self.handle.flush()

    def close(self) -> None:
        """Close the file."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def log_images(accelerator: Any, grid: Any, step: int) -> None:
    """Send a sample grid to the active trackers.

    Args:
        accelerator: The run's accelerator.
        grid: A PIL image.
        step: The optimizer step.
    """
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(grid, caption=f"step {step}")]}, step=step)
