"""Non-finite values stop a run before they reach the weights, a checkpoint or the saved pipeline.

Each guard raises ``FloatingPointError`` naming the step and what to do; checkpoints already written stay intact
(and the newest of them is the one ``--resume_from_checkpoint latest`` takes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .sharding import all_finite


def check_finite_loss(mean_loss: torch.Tensor, step: int, micro_step: int, output_dir: str | Path) -> None:
    """Stop before the backward pass of a non-finite loss.

    Args:
        mean_loss: The loss of the micro-batch, averaged over all processes.
        step: Optimizer steps taken so far.
        micro_step: The micro-batch within the step.
        output_dir: The run's folder (named in the message).

    Raises:
        FloatingPointError: If the loss is NaN or infinite.
    """
    if not torch.isfinite(mean_loss).item():
        raise FloatingPointError(
            f"The loss is {mean_loss.item()} at step {step + 1} (micro-batch {micro_step + 1}); training stopped before "
            f"updating the weights. Checkpoints already in {output_dir} are intact: lower --learning_rate or "
            "--max_grad_norm and resume."
        )


def check_finite_gradients(grad_norm: torch.Tensor, step: int, output_dir: str | Path) -> None:
    """Stop before an update whose gradient is not finite (clipping cannot mend it: it would make the step NaN).

    Args:
        grad_norm: The gradient norm before clipping.
        step: Optimizer steps taken so far.
        output_dir: The run's folder (named in the message).

    Raises:
        FloatingPointError: If the norm is NaN or infinite.
    """
    if not torch.isfinite(grad_norm).item():
        raise FloatingPointError(
            f"The gradient norm is {float(grad_norm)} at step {step + 1}; training stopped before updating the "
            f"weights. Checkpoints already in {output_dir} are intact: lower --learning_rate and resume."
        )


def check_finite_weights(model: torch.nn.Module, ema: Any | None, step: int) -> None:
    """Refuse to go on with non-finite weights, so that no checkpoint or pipeline ever holds them.

    With a sharded model (FSDP2) every process checks its slices and all agree on the answer, so every process must
    call it.

    Args:
        model: The trained model.
        ema: Its ``EMAModel``, or None.
        step: The optimizer step (named in the message).

    Raises:
        FloatingPointError: Naming the first non-finite parameter (of the model or the EMA).
    """
    named = list(model.named_parameters())
    if ema is not None:
        named += [(f"EMA {name}", shadow) for (name, _), shadow in zip(named, ema.shadow_params, strict=True)]
    finite = all_finite([tensor for _, tensor in named])
    if not bool(finite.all()):
        name = named[int((~finite).nonzero()[0])][0]
        raise FloatingPointError(
            f"The weights are not finite after step {step} ({name}); nothing was saved. Earlier checkpoints are "
            "intact: lower --learning_rate or --max_grad_norm and resume from the latest one."
        )
