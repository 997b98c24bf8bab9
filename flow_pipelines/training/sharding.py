"""Sharded training (accelerate's FSDP2): whole tensors gathered from the shards, and shards cut from whole tensors.

Under FSDP2 (``fsdp_version: 2``) ``accelerator.prepare`` shards the model in place: every parameter becomes a
``torch.distributed.tensor.DTensor`` of which each process holds one slice. The EMA is created after ``prepare``
from those parameters, so its shadow weights are sliced alike and its update stays local to each process. What
needs whole tensors (the safetensors folders of a checkpoint, the weight digest, sampling on the main process)
gathers them here, every process taking part, one tensor at a time; a resumed EMA is cut back into slices.

On one process or under DDP nothing is sharded and every function here returns its input: no copy and no
communication, so the training script runs the same lines in both cases.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def _is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def is_sharded(accelerator: Any) -> bool:
    """Whether the run's model is sharded across processes (accelerate's FSDP2).

    Args:
        accelerator: The run's accelerator.

    Returns:
        True under FSDP2.
    """
    return bool(getattr(accelerator, "is_fsdp2", False))


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every process when it is sharded (every process must call), else itself.

    Args:
        tensor: A tensor or a ``DTensor``.

    Returns:
        The whole tensor, on the tensor's device.
    """
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def full_tensors(tensors: Iterable[torch.Tensor], keep: bool = True) -> Iterator[torch.Tensor | None]:
    """Each tensor whole, one at a time (so that at most one gathered tensor is alive beyond what the caller keeps).

    Every process must run the iteration to its end when a tensor is sharded: each gather is a collective.

    Args:
        tensors: Tensors or ``DTensor``\\ s, in the same order on every process.
        keep: Whether this process wants the result; if not, it takes part in the gathers and gets None.

    Yields:
        The whole tensor (the tensor itself when it is not sharded), or None where ``keep`` is False.
    """
    for tensor in tensors:
        whole = full_tensor(tensor.detach())
        yield whole if keep else None


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Cut this process's slice of ``whole`` as ``like`` is sliced (no communication: every process holds ``whole``).

    Args:
        whole: The whole tensor (e.g. read from a safetensors file).
        like: A tensor or ``DTensor`` whose device and sharding the result takes.

    Returns:
        A ``DTensor`` with ``like``'s mesh and placements, or ``whole`` on ``like``'s device.
    """
    whole = whole.to(device=like.device, dtype=like.dtype)
    if not _is_dtensor(like):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Whether each tensor is finite everywhere, the same answer on every process (every process must call).

    Each process checks its own slices; one all-reduce makes the answer common when a tensor is sharded.

    Args:
        tensors: Tensors or ``DTensor``\\ s, in the same order on every process.

    Returns:
        A boolean vector, one entry per tensor.
    """
    finite = torch.stack(
        [torch.isfinite(t.to_local() if _is_dtensor(t) else t).all() for t in (x.detach() for x in tensors)]
    )
    sharded = next((t for t in tensors if _is_dtensor(t)), None)
    if sharded is not None:
        import torch.distributed as dist

        agreed = finite.to(torch.int32)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=sharded.device_mesh.get_group())
        finite = agreed.bool()
    return finite


class SamplingModel:
    """What validation, evaluation and the saved pipeline sample from: the trained model, or a whole copy of it.

    Unsharded, it is the trained model itself, and whoever samples swaps the EMA weights in and out
    (:func:`~flow_pipelines.training.ema.ema_weights`). Sharded, the model cannot run on the main process alone
    (each forward gathers slices from every process) and the EMA is sliced alike: the main process then keeps an
    unsharded copy, and :meth:`refresh`, which every process calls, gathers the weights to sample (the EMA's when
    there is one) into it. The copy takes parameters only: the DiT's buffers are fixed by its config.

    Args:
        accelerator: The run's accelerator.
        model: The trained model (unwrapped; sharded in place under FSDP2).
        ema: Its ``EMAModel`` (created after ``prepare``), or None.
    """

    def __init__(self, accelerator: Any, model: torch.nn.Module, ema: Any | None) -> None:
        self.accelerator, self.trained, self.ema = accelerator, model, ema
        self.sharded = is_sharded(accelerator)
        self.model = model
        if self.sharded and accelerator.is_main_process:
            self.model = type(model).from_config(model.config).to(accelerator.device)

    def refresh(self) -> Any | None:
        """Bring the weights to sample from up to date; every process calls it, only the main process samples.

        Returns:
            The EMA for :func:`~flow_pipelines.training.ema.ema_weights` to swap in: the run's EMA when
            unsharded, None when sharded (the copy holds the EMA weights already).
        """
        if not self.sharded:
            return self.ema
        keep = self.accelerator.is_main_process
        source = self.ema.shadow_params if self.ema is not None else list(self.trained.parameters())
        targets = self.model.parameters() if keep else itertools.repeat(None)
        with torch.no_grad():
            # The gathers lead: every process runs all of them, whatever it keeps.
            for whole, target in zip(full_tensors(source, keep), targets, strict=False):
                if target is not None:
                    target.copy_(whole)
        return None
