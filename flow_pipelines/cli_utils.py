"""What the command-line tools (``flow_pipelines.sample``, ``flow_pipelines.evaluate``,
``train_scripts/convert_checkpoint.py``) share.

The precision names of ``--dtype``, the default device, loading a saved pipeline for sampling, checking
count flags and output files, and turning bad input into one ``error: ...`` line and an exit status. No CLI
imports another; each imports this.

Exit status, the same for every command: 0 on success; 2 after an ``error: ...`` line on stderr, for anything
the user can fix (a bad flag value, a missing, unreadable or truncated model, checkpoint or config, an output
file that exists), as argparse itself exits 2 for a malformed command line; 1 for anything unexpected, which
keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import constants as hub_constants
from safetensors import SafetensorError

from .pipelines import FlowPipeline
from .schedulers import SCHEDULERS, make_scheduler, scheduler_name

USAGE_ERROR_STATUS = 2
"""Exit status after an ``error: ...`` line: input the user can fix (argparse's own status for bad flags)."""

INPUT_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, SafetensorError)
"""What bad input raises: ``ValueError`` (the package's checks, JSON errors), ``OSError`` (a missing or
unreadable file, diffusers' ``EnvironmentError`` for a model it cannot find) and safetensors' error for a
truncated weights file read by another library."""

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
    parser.add_argument(
        "--scheduler",
        choices=sorted(SCHEDULERS),
        default=None,
        help="Sampler (default: the one saved with the pipeline, as diffusers' pipelines do).",
    )
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
        ValueError: If ``model`` is a file, a local folder lacks a file the pipeline needs or holds one that
            is truncated or unparsable, or ``model`` is no folder here and cannot be loaded as a Hub repo id.
    """
    path = Path(model).expanduser()
    if path.is_file():
        raise ValueError(
            f"--model {model!r} is a file; allowed: a folder written by FlowPipeline.save_pretrained or a Hub "
            "repo id."
        )
    with warnings.catch_warnings():
        # `torch_dtype` works on every supported diffusers; newer ones prefer the name `dtype` and say so.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        if path.is_dir():
            pipeline = FlowPipeline.from_pretrained(path, torch_dtype=DTYPES[dtype])
        else:
            pipeline = _load_from_hub(model, DTYPES[dtype])
    return pipeline.to(device)


def load_sampling_pipeline(args: argparse.Namespace) -> FlowPipeline:
    """The pipeline a sampling command's flags name, with the sampler they ask for.

    Args:
        args: Flags of a :func:`sampling_parser`: ``--model``, ``--dtype``, ``--device`` and ``--scheduler``.

    Returns:
        The pipeline on its device, its scheduler replaced by ``--scheduler``'s (same config) when one is
        asked for; ``args.scheduler`` then names the scheduler sampled with either way.

    Raises:
        ValueError: See :func:`load_pipeline`.
    """
    pipeline = load_pipeline(str(args.model), args.dtype, default_device(args.device))
    if args.scheduler is None:
        args.scheduler = scheduler_name(pipeline.scheduler)
    else:
        pipeline.scheduler = make_scheduler(args.scheduler, pipeline.scheduler.config)
    return pipeline


def _load_from_hub(repo_id: str, dtype: torch.dtype) -> FlowPipeline:
    """Load a pipeline by Hub repo id; a failure becomes one ``ValueError`` that says why, and nothing else."""
    # diffusers warns on the way to its error (offline, trying the cache); the error below says it all.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return FlowPipeline.from_pretrained(repo_id, torch_dtype=dtype)
    except (OSError, ValueError) as error:
        offline = (
            " (HF_HUB_OFFLINE is set: only the local cache was searched)"
            if hub_constants.HF_HUB_OFFLINE
            else ""
        )
        reason = one_line(error).replace(" Please check out the root cause in the stacktrace above.", "")
        raise ValueError(
            f"--model {repo_id!r} is no folder here, and loading it as a Hub repo id failed{offline}: {reason}"
        ) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)


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


def check_output_file(path: Path, overwrite: bool, flag: str) -> None:
    """Refuse, before any work, an output file that exists (unless it may be replaced) or is a folder.

    Args:
        path: Where the command will write.
        overwrite: Whether ``--overwrite`` was given.
        flag: The flag that names the path, for the message (``"--out"``).

    Raises:
        ValueError: If ``path`` is a folder, lies in a "folder" that is a file, or exists and ``overwrite`` is
            False.
    """
    taken = next((parent for parent in path.parents if parent.exists()), None)
    if taken is not None and not taken.is_dir():
        raise ValueError(
            f"{str(taken)!r} (from {flag}) is a file; allowed: a folder to write {path.name} into."
        )
    if path.is_dir():
        raise ValueError(f"{str(path)!r} (from {flag}) is a folder; allowed: a file path.")
    if path.exists() and not overwrite:
        raise ValueError(
            f"{str(path)!r} (from {flag}) exists; pass --overwrite to replace it, or choose another path."
        )


def one_line(error: BaseException) -> str:
    """An error's message on one line (diffusers' and torch's messages run over several).

    Args:
        error: The exception.

    Returns:
        Its message with every run of white space, line breaks included, made one space; its type's name if
        the message is empty.
    """
    return " ".join(str(error).split()) or type(error).__name__


def exit_status(
    main: Callable[[Sequence[str] | None], object],
    argv: Sequence[str] | None,
    errors: tuple[type[Exception], ...] = INPUT_ERRORS,
    failure_status: int = USAGE_ERROR_STATUS,
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
        print(f"error: {one_line(error)}", file=sys.stderr)
        return failure_status
    return 0
