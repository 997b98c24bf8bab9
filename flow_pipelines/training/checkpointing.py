"""Training checkpoints: ``checkpoint-<step>`` folders written atomically, found again for resuming.

A checkpoint is ``accelerator.save_state`` output (optimizer, LR scheduler, random states; the model and
its EMA as safetensors folders through the hooks of :func:`register_checkpoint_hooks`) plus
``training_state.json`` (the :class:`TrainingPosition`). It is written into a staging folder and renamed into
place only when every process has finished writing, so an interrupted save never leaves a half-written
``checkpoint-<step>`` and never touches the previous ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..file_utils import atomic_directory
from .ema import load_ema, save_ema
from .sharding import full_tensors, is_sharded

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_NAME = "training_state.json"
RUN_FLAGS_NAME = "training_args.json"
SHARDED_MODEL_FOLDER = "pytorch_model_fsdp_0"
"""What accelerate writes for a sharded (FSDP2) model: its slices, in ``torch.distributed.checkpoint`` format."""
RESUMABLE_FLAGS: frozenset[str] = frozenset(
    {
        # Where and how the run is kept, looked at and published: none of it changes the trajectory.
        "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "checkpointing_steps",
        "checkpoints_total_limit", "cpu_threads", "dataloader_num_workers", "cache_dir", "cache_images",
        "check_images", "vae_batch_size", "report_to", "logging_dir", "tracker_project_name", "logging_steps",
        "validation_steps", "validation_images_per_class", "validation_classes", "num_inference_steps",
        "guidance_scale", "sampling_shift", "eval_steps", "eval_num_samples", "eval_metric", "eval_extractor",
        "evaluation_samples_per_class", "push_to_hub", "hub_model_id", "hub_private_repo",
        # A run may be extended: the LR schedule is rebuilt for the new length from the step reached.
        "max_train_steps", "num_train_epochs",
    }
)  # fmt: skip
"""Flags a resumed run may change; every other one must keep the value the run was started with."""
_CHECKPOINT_PATTERN = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a checkpoint folder was saved at, from its name ``checkpoint-<step>``.

    Args:
        path: The checkpoint folder.

    Returns:
        The step.

    Raises:
        ValueError: If the name does not have that form.
    """
    match = _CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{str(path)!r} is not named like a checkpoint ({CHECKPOINT_PREFIX}<step>).")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders in ``output_dir``, oldest first (staging folders are ignored).

    Args:
        output_dir: The training output folder.

    Returns:
        Paths of ``checkpoint-<step>`` folders sorted by step.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | None, output_dir: str | os.PathLike
) -> Path | None:
    """Find the checkpoint to resume from.

    Args:
        resume_from_checkpoint: ``None`` (start fresh), ``"latest"`` (the newest in ``output_dir``, or a fresh
            start if there is none), or a checkpoint folder (absolute, or a name inside ``output_dir``).
        output_dir: The training output folder.

    Returns:
        The checkpoint folder, or None to start from scratch.

    Raises:
        ValueError: If a named checkpoint does not exist or is not a checkpoint folder.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    candidates = [Path(resume_from_checkpoint), Path(output_dir) / resume_from_checkpoint]
    for candidate in candidates:
        if candidate.is_dir():
            checkpoint_step(candidate)
            if not (candidate / TRAINING_STATE_NAME).is_file():
                raise ValueError(
                    f"--resume_from_checkpoint {resume_from_checkpoint!r}: {str(candidate)!r} has no "
                    f"{TRAINING_STATE_NAME}, so it is not a complete checkpoint of this script."
                )
            return candidate
    available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
    raise ValueError(
        f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist (looked for "
        f"{', '.join(repr(str(c)) for c in candidates)}); checkpoints in {str(output_dir)!r}: {available}. "
        "Pass 'latest' to resume from the newest one."
    )


@dataclass
class TrainingPosition:
    """Where a run stands: what a checkpoint stores besides the weights and optimizer state.

    Args:
        global_step: Optimizer steps taken.
        epoch: The epoch the next batch comes from.
        batch_in_epoch: Batches of that epoch already consumed (per process).
        samples_seen: Examples used so far, over all processes.
    """

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0


def read_training_state(checkpoint: str | os.PathLike) -> TrainingPosition:
    """Read a checkpoint's ``training_state.json``.

    Args:
        checkpoint: The checkpoint folder.

    Returns:
        The stored position.
    """
    with open(Path(checkpoint) / TRAINING_STATE_NAME, encoding="utf-8") as handle:
        state = json.load(handle)
    return TrainingPosition(**{key: int(state.get(key, 0)) for key in TrainingPosition.__dataclass_fields__})


def register_checkpoint_hooks(accelerator: Any, model: Any, ema: Any | None) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` write and read the model and its EMA as safetensors folders.

    ``checkpoint/transformer/`` holds the trained weights and ``checkpoint/transformer_ema/`` the EMA's
    (see :func:`~flow_pipelines.training.ema.save_ema`), whole, written by the main process. Unsharded, accelerate's
    own pickled model files are not written, and a resume reads the weights from ``transformer/``. Sharded (FSDP2),
    accelerate also writes and reads the model and optimizer slices itself (``pytorch_model_fsdp_0/``,
    ``optimizer_0/``); every process then takes part in gathering the safetensors folders' weights.

    Args:
        accelerator: The run's accelerator.
        model: The trained model, unwrapped (``accelerator.unwrap_model``), after ``prepare``.
        ema: The ``EMAModel``, created after ``prepare``, or None.
    """
    is_main = accelerator.is_main_process

    def save_hook(models: list, weights: list, folder: str) -> None:
        trained, shadow = model, None
        if is_sharded(
            accelerator
        ):  # every process takes part in the gathers, the main process keeps the result
            state = accelerator.get_state_dict(model)  # whole, on the main process's CPU (empty elsewhere)
            if is_main:
                trained = type(model).from_config(model.config)
                trained.load_state_dict(state)
            if ema is not None:
                shadow = [None if t is None else t.cpu() for t in full_tensors(ema.shadow_params, is_main)]
        if is_main:
            trained.save_pretrained(os.path.join(folder, "transformer"))
            if ema is not None:
                save_ema(ema, model, os.path.join(folder, "transformer_ema"), shadow)
        weights.clear()

    def load_hook(models: list, folder: str) -> None:
        # Accelerate hands over the models it has not restored itself: none when sharded.
        if models:
            loaded = type(model).from_pretrained(folder, subfolder="transformer")
            model.load_state_dict(loaded.state_dict())
        models.clear()
        if ema is not None:
            load_ema(ema, type(model), os.path.join(folder, "transformer_ema"))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_checkpoint(accelerator: Any, checkpoint: str | os.PathLike) -> TrainingPosition:
    """Restore a run from a checkpoint (weights, EMA, optimizer, LR schedule, random states) on every process.

    Args:
        accelerator: The run's accelerator, with :func:`register_checkpoint_hooks` registered.
        checkpoint: The checkpoint folder.

    Returns:
        Where the run stood.

    Raises:
        ValueError: If the checkpoint was written by a sharded (FSDP2) run and this one is not, or the reverse:
            the optimizer state is stored differently.
    """
    written_sharded = (Path(checkpoint) / SHARDED_MODEL_FOLDER).is_dir()
    if written_sharded != is_sharded(accelerator):
        kind = {True: "a sharded (FSDP2)", False: "an unsharded (one process or DDP)"}
        raise ValueError(
            f"{Path(checkpoint).name} was written by {kind[written_sharded]} run, and this is {kind[not written_sharded]} "
            "run: the optimizer state is stored differently. Resume it with the accelerate config it was trained with."
        )
    accelerator.load_state(str(checkpoint))
    return read_training_state(checkpoint)


def check_resume_flags(checkpoint: str | os.PathLike, config: dict[str, Any]) -> None:
    """Refuse flags that a resumed run cannot honour: those of the data, model, objective and optimisation.

    A resumed run continues with the checkpoint's weights, optimizer and schedule, so a new learning rate, batch
    size, ... would be silently ignored (or change the run halfway). The checkpoint's ``training_args.json``
    says what the run used; only the flags of :data:`RESUMABLE_FLAGS` may differ.

    Args:
        checkpoint: The checkpoint resumed from.
        config: This run's flags.

    Raises:
        ValueError: Listing every flag whose value differs from the run's, with both values.
    """
    path = Path(checkpoint) / RUN_FLAGS_NAME
    if not path.is_file():
        return  # a checkpoint written before the flags were stored with it
    with open(path, encoding="utf-8") as handle:
        recorded = json.load(handle)
    changed = [
        f"--{name} was {recorded[name]!r}, now {value!r}"
        for name, value in sorted(config.items())
        if name in recorded and name not in RESUMABLE_FLAGS and recorded[name] != value
    ]
    if changed:
        raise ValueError(
            f"Resuming from {Path(checkpoint).name} continues a run whose flags differ: {'; '.join(changed)}. A resumed "
            "run keeps its optimizer, schedule and data order; resume with the run's values, or start a new run in "
            "another --output_dir."
        )


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    position: TrainingPosition,
    total_limit: int | None = None,
    run_flags: dict[str, Any] | None = None,
) -> Path:
    """Save the accelerator state as ``output_dir/checkpoint-<global_step>``, atomically, on all processes.

    Every process must call this (each writes its own random state). The main process stages the folder,
    all write into it, and the main process renames it into place after a barrier; then it deletes the
    oldest checkpoints beyond ``total_limit`` (only once the new one is in place).

    Args:
        accelerator: The ``accelerate.Accelerator``.
        output_dir: The training output folder.
        position: Where the run stands (its ``global_step`` names the folder).
        total_limit: Keep at most this many checkpoints (None keeps all).
        run_flags: The run's public flags, stored beside (see :func:`check_resume_flags`).

    Returns:
        The checkpoint folder.
    """
    from accelerate.utils import broadcast_object_list

    target = Path(output_dir) / f"{CHECKPOINT_PREFIX}{position.global_step}"
    distributed = accelerator.num_processes > 1
    if accelerator.is_main_process:
        with atomic_directory(target) as staging:
            if distributed:
                broadcast_object_list([str(staging)])
            accelerator.save_state(str(staging))
            with open(staging / TRAINING_STATE_NAME, "w", encoding="utf-8") as handle:
                json.dump(asdict(position), handle, indent=2)
            if run_flags is not None:
                (staging / RUN_FLAGS_NAME).write_text(json.dumps(run_flags, indent=2), encoding="utf-8")
            # The other processes' random states must be on disk before the rename publishes the folder.
            accelerator.wait_for_everyone()
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    else:
        staging = [None]
        broadcast_object_list(staging)
        accelerator.save_state(staging[0])
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    return target
