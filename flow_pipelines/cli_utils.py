"""What the command-line tools (``flow_pipelines.sample``, ``flow_pipelines.evaluate``) share.

The precision names of ``--dtype``, the default device, loading a saved pipeline for sampling, checking
count flags, and turning bad input into one ``error: ...`` line and an exit status. No CLI imports
another; each imports this.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

import torch

from .pipelines import FlowPipeline
from .schedulers import SCHEDULERS

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""``--dtype`` choices: model precision by name."""


def sampling_parser(prog: str, description: str, guidance: float, seed_help: str) -> argparse.ArgumentParser:
    """A parser with the flags every sampling command takes: the model, sampler, steps, guidance, seed, device.

    Args:
        prog: The command (``python -m flow_pipelines.sample``).
        description: What it does.
        guidance: The default ``--guidance``.
        seed_help: How the command uses ``--seed``.

    Returns:
        The parser, ready for the command's own flags.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", required=True, help="Saved pipeline folder or Hub repo id.")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="euler", help="Sampler.")
    parser.add_argument("--steps", type=int, default=30, help="Sampling steps.")
    parser.add_argument(
        "--guidance", type=float, default=guidance, help="Classifier-free guidance scale (1 = none)."
    )
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="Model precision for sampling."
    )
    return parser


def default_device(requested: str | None = None) -> torch.device:
    """The device to run on: the one requested, else CUDA when available, else the CPU.

    Args:
        requested: A torch device string (``--device``), or None.

    Returns:
        The device.
    """
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_pipeline(model: str, dtype: str, device: torch.device) -> FlowPipeline:
    """Load a saved `FlowPipeline` in the given precision onto a device.

    Args:
        model: A folder written by ``save_pretrained``, or a Hub repo id.
        dtype: A key of :data:`DTYPES`.
        device: Where the pipeline runs.

    Returns:
        The `FlowPipeline`.

    Raises:
        ValueError: If a local folder lacks a file the pipeline needs.
    """
    with warnings.catch_warnings():
        # `torch_dtype` works on every supported diffusers; newer ones prefer the name `dtype` and say so.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        pipeline = FlowPipeline.from_pretrained(model, torch_dtype=DTYPES[dtype])
    return pipeline.to(device)


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Require count flags to be at least 1 (None means not given and passes).

    Args:
        args: The parsed flags.
        *names: The flags' attribute names; ``num_samples`` names ``--num-samples``.

    Raises:
        ValueError: Naming the first flag below 1.
    """
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value} must be >= 1.")


def exit_status(
    main: Callable[[Sequence[str] | None], object],
    argv: Sequence[str] | None,
    errors: tuple[type[Exception], ...] = (ValueError,),
    failure_status: int = 1,
) -> int:
    """Run a CLI's ``main``, reporting the expected errors as one ``error: ...`` line on stderr.

    Args:
        main: The CLI's main function.
        argv: Arguments without the program name (``sys.argv[1:]`` when None).
        errors: The exceptions that mean bad input (others propagate with their traceback).
        failure_status: The exit status after such an error.

    Returns:
        0 on success, ``failure_status`` after an expected error.
    """
    try:
        main(argv)
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return failure_status
    return 0
