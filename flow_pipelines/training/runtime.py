"""Where and how a training run executes: the accelerator, CPU threads, per-step randomness, throughput, logs.

Pieces the training script's ``main()`` calls around its loop; none of them holds the loop's state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import scale_out
from .sharding import full_tensor

logger = logging.getLogger("train_flow")


def choose_cpu_threads(requested: int | None, num_processes: int) -> int:
    """Threads per process for training on a CPU.

    The idle cores (physical cores minus those busy with other jobs over a quarter of a second), shared among
    this run's processes, at least 1. Small models step through hundreds of short kernels, and an OpenMP
    thread that another job has descheduled stalls every one of them: on a 2-core machine with other
    jobs running, two threads made a digits step 10x slower than one thread did.

    Args:
        requested: ``--cpu_threads``; used as given when set.
        num_processes: Processes of this run on the machine.

    Returns:
        The thread count.

    Raises:
        ValueError: If ``requested`` is below 1.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--cpu_threads={requested} must be >= 1.")
        return requested
    import psutil  # an accelerate dependency

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Hyper-threads add nothing to matrix products.
    cores = min(cores, psutil.cpu_count(logical=False) or cores)
    # Busy cores now (other jobs: this process waits meanwhile), not the 1-minute load average, which still
    # counts a job that ended seconds ago, such as the `pip install` before the README's first command.
    busy = psutil.cpu_percent(interval=0.25) / 100.0 * (os.cpu_count() or cores)
    return max(1, int(cores - busy + 0.5) // max(1, num_processes))


def chose_omp_threads(environment: Mapping[str, str]) -> bool:
    """Whether ``OMP_NUM_THREADS`` is somebody's choice, to be kept, rather than a launcher's default.

    ``accelerate launch`` sets ``OMP_NUM_THREADS=1`` in every process it starts on a machine without a GPU
    (unless told ``--cpu``), which would leave all cores but one idle; it passes a value the user set on unchanged.
    So a 1 under accelerate counts as unset (``--cpu_threads 1`` asks for one thread explicitly).

    Args:
        environment: The process's environment.

    Returns:
        True when ``OMP_NUM_THREADS`` is set and is not accelerate's default.
    """
    value = environment.get("OMP_NUM_THREADS")
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in environment
    return value is not None and not (launched_by_accelerate and value.strip() == "1")


def make_accelerator(
    output_dir: str | os.PathLike,
    mixed_precision: str | None = None,
    report_to: str = "none",
    logging_dir: str = "logs",
    cpu_threads: int | None = None,
) -> Any:
    """Create the run's ``Accelerator`` and check that the device can do the requested precision.

    Args:
        output_dir: The run's folder (accelerate's project folder).
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or None (accelerate's configured default).
        report_to: ``"none"``, ``"tensorboard"`` or ``"wandb"``.
        logging_dir: Tracker folder, relative to ``output_dir``.
        cpu_threads: torch threads per process on a CPU (None: see :func:`choose_cpu_threads`).

    Returns:
        The accelerator.

    Raises:
        ValueError: For fp16 on a CPU, or bf16 on a GPU without it; for a launch set-up the script does not honour
            (DeepSpeed, FSDP1, an FSDP config accelerate would not apply: see :mod:`.scale_out`).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    scale_out.check_launch_environment(os.environ)
    output_dir = Path(output_dir)
    # `accelerate launch --multi_gpu` on a machine without GPUs starts processes that accelerate would
    # otherwise treat as independent single-process runs: make them one CPU (gloo) job.
    force_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / logging_dir)
        ),
        cpu=force_cpu,
    )
    scale_out.check_accelerator(accelerator, os.environ)
    device = accelerator.device
    if accelerator.mixed_precision == "fp16" and device.type == "cpu":
        raise ValueError("--mixed_precision fp16 needs a GPU; this run is on the CPU. Use bf16 or no.")
    if accelerator.mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--mixed_precision bf16 is not supported by this GPU; use fp16 or no.")
    if device.type == "cpu" and not (cpu_threads is None and chose_omp_threads(os.environ)):
        torch.set_num_threads(choose_cpu_threads(cpu_threads, accelerator.num_processes))
    return accelerator


def start_file_logging(output_dir: Path, is_main: bool) -> None:
    """Send the script's messages (main process only) to stdout and ``output_dir/train.log``.

    Handlers of an earlier run in the same process are closed first, so each run logs to its own folder.

    Args:
        output_dir: The run's folder.
        is_main: Whether this is the main process (the others log nothing).
    """
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if not is_main:
        logger.addHandler(logging.NullHandler())
        return
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(formatter)
    logger.addHandler(stream)
    output_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(output_dir / "train.log", encoding="utf-8")
    file_handler.setFormatter(formatter)
    logger.addHandler(file_handler)


def step_generator(
    seed: int, global_step: int, micro_step: int, process_index: int, device: torch.device
) -> torch.Generator:
    """The random source of one micro-step: a function of the run seed and the position only.

    All randomness of a step (noise, noise levels, label dropout, flips) comes from it, so a resumed run
    replays exactly what the uninterrupted one drew.

    Args:
        seed: The run seed.
        global_step: The optimizer step being taken (0-based).
        micro_step: The micro-batch within it (gradient accumulation).
        process_index: This process's rank.
        device: Where the generator draws.

    Returns:
        A seeded generator on ``device``.
    """
    blob = f"{seed}:{global_step}:{micro_step}:{process_index}".encode()
    derived = int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator(device=device).manual_seed(derived)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters (to check that all processes hold the same weights).

    A sharded model's tensors are gathered whole first (then every process must call it).

    Args:
        model: The model.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(full_tensor(tensor.detach()).float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_digests(accelerator: Any, model: torch.nn.Module) -> list[str]:
    """Every process's weight digest, in rank order (identical when data-parallel training stayed in sync).

    Every process must call it; a sharded model's digest is that of its whole, gathered weights.

    Args:
        accelerator: The run's accelerator.
        model: The (unwrapped) model.

    Returns:
        One digest per process.
    """
    from accelerate.utils import gather_object

    digest = weights_digest(model)
    return [digest] if accelerator.num_processes == 1 else list(gather_object([digest]))


_LAST_BARRIER: list[Any] = []


def end_run(accelerator: Any) -> None:
    """Wait for every process, then end the run (trackers, process group); every process calls it last.

    The barrier's handle is kept for the rest of the process. gloo frees a finished collective (and the earlier ones
    a barrier waited for) on its worker thread, which takes the GIL for the tensors; DDP frees the process group on
    the main thread at exit without releasing the GIL, and waits for that worker. If the worker had not got the GIL
    by then, the process hung after its last line (seen now and then with two CPU processes). With the handle kept,
    the main thread frees the barrier itself.

    Args:
        accelerator: The run's accelerator.
    """
    if accelerator.num_processes > 1 and torch.distributed.is_initialized():
        barrier = torch.distributed.barrier(async_op=True)
        barrier.wait()
        _LAST_BARRIER.append(barrier)
    accelerator.end_training()


class Throughput:
    """Training samples per second, leaving out warm-up steps and the time spent outside training steps.

    The first ``warmup_steps`` steps (allocation, worker start-up) are not timed; :meth:`pause` after a
    checkpoint or validation restarts the clock, so their time is not charged to training.

    Args:
        warmup_steps: Steps not timed at the start.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.seconds = 0.0
        self.samples = 0
        self.last_step_seconds = 0.0
        self._mark = time.perf_counter()

    def step(self, samples: int) -> None:
        """Count one finished optimizer step of ``samples`` examples (all processes)."""
        now = time.perf_counter()
        self.last_step_seconds, self._mark = now - self._mark, now
        self.steps += 1
        if self.steps > self.warmup_steps:
            self.seconds += self.last_step_seconds
            self.samples += samples

    def pause(self) -> None:
        """Restart the clock: what happened since the last step is not training time."""
        self._mark = time.perf_counter()

    @property
    def samples_per_second(self) -> float | None:
        """The timed throughput (None until a step past the warm-up has been timed)."""
        return self.samples / self.seconds if self.seconds > 0 else None


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM become a request to stop after the current step; a second signal stops at once.

    The loop reads :attr:`requested` once per step (all processes agree through the step's all-reduce), saves a
    resumable checkpoint and returns. Use as a context manager around the loop: the previous handlers come back
    after it. Outside the main thread, where Python cannot install handlers, it does nothing.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signal_name is not None

    def _handle(self, number: int, frame: Any) -> None:
        self.signal_name = signal.Signals(number).name
        # The next signal is not caught: a second Ctrl-C interrupts whatever runs (saves are atomic).
        for handled, previous in self._previous.items():
            signal.signal(handled, previous)
        logger.warning(
            "%s received: stopping after this step with a checkpoint (again to stop now).", self.signal_name
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()


SECRET_FLAGS: tuple[str, ...] = ("--hub_token",)


def redact_argv(argv: list[str], flags: tuple[str, ...] = SECRET_FLAGS) -> None:
    """Replace the values of secret flags in ``argv`` in place, before anything (wandb, a log) records it.

    Args:
        argv: The command line, usually ``sys.argv``.
        flags: Flags whose values are secret (``--flag value`` and ``--flag=value`` forms).
    """
    for index, item in enumerate(argv):
        for flag in flags:
            if item == flag and index + 1 < len(argv):
                argv[index + 1] = "***"
            elif item.startswith(flag + "="):
                argv[index] = f"{flag}=***"
