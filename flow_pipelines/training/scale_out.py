"""Which of accelerate's scale-out set-ups the training script honours; any other is refused at the start.

Honoured: one process, data parallel (DDP) on one or several machines, and FSDP2 (``fsdp_version: 2``, sharded
checkpoints). Refused, with what to use instead: DeepSpeed, Megatron-LM, FSDP1, FSDP2 with offloaded parameters or
full-state-dict checkpoints, and an FSDP config that accelerate does not apply (it shards only across several
accelerator processes: on CPUs, or with one process, it would silently run the job unsharded).

``accelerate launch`` hands a config to the script through environment variables (``ACCELERATE_USE_FSDP``,
``FSDP_VERSION``, ``ACCELERATE_USE_DEEPSPEED``, ...); :func:`check_launch_environment` reads them before the
``Accelerator`` exists, :func:`check_accelerator` what accelerate made of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HONOURED = "one process, DDP (--multi_gpu, one or several machines) or FSDP2 (fsdp_version: 2)"
"""The set-ups the training script runs, as error messages name them."""

SHARDED_STATE_DICT = "SHARDED_STATE_DICT"


def _asked(environ: Mapping[str, str], name: str) -> bool:
    """Whether ``accelerate launch`` turned a feature on (it compares the value's lower case with "true")."""
    return environ.get(name, "false").lower() == "true"


def check_launch_environment(environ: Mapping[str, str]) -> None:
    """Refuse the launch set-ups the script cannot honour, before any work.

    Args:
        environ: The process environment (``os.environ``), as ``accelerate launch`` set it from the config.

    Raises:
        ValueError: For DeepSpeed, Megatron-LM, FSDP1, or FSDP2 with offloaded parameters or another
            ``fsdp_state_dict_type`` than ``SHARDED_STATE_DICT``, naming the setting and what is allowed.
    """
    for variable, name in (
        ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
        ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM"),
    ):
        if _asked(environ, variable):
            raise ValueError(
                f"The accelerate config asks for {name} ({variable}=true), which train_flow.py does not support; "
                f"allowed: {HONOURED}. For sharded training use FSDP2 (see README, 'Scaling out')."
            )
    if not _asked(environ, "ACCELERATE_USE_FSDP"):
        return
    version = environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(
            f"The accelerate config asks for FSDP version {version} (fsdp_version: {version}); train_flow.py supports "
            "FSDP2 only: set fsdp_version: 2 (see README, 'Scaling out')."
        )
    if _asked(environ, "FSDP_OFFLOAD_PARAMS"):
        raise ValueError(
            "The accelerate config asks for fsdp_offload_params: true; train_flow.py gathers the EMA and checkpoint "
            "weights on the accelerator and does not support offloaded parameters: set fsdp_offload_params: false."
        )
    state_dict_type = environ.get("FSDP_STATE_DICT_TYPE", SHARDED_STATE_DICT).upper()
    if state_dict_type != SHARDED_STATE_DICT:
        raise ValueError(
            f"The accelerate config asks for fsdp_state_dict_type: {state_dict_type}; train_flow.py writes FSDP2 "
            f"checkpoints as {SHARDED_STATE_DICT} only (each checkpoint also holds the whole model as safetensors)."
        )


def check_accelerator(accelerator: Any, environ: Mapping[str, str]) -> None:
    """Refuse an FSDP config that accelerate did not apply, rather than run the job unsharded without a word.

    Args:
        accelerator: The run's accelerator.
        environ: The process environment, as for :func:`check_launch_environment`.

    Raises:
        ValueError: If FSDP was asked for and the model will not be sharded, naming how accelerate runs the job.
    """
    if _asked(environ, "ACCELERATE_USE_FSDP") and not getattr(accelerator, "is_fsdp2", False):
        processes = accelerator.num_processes
        raise ValueError(
            "The accelerate config asks for FSDP2, but accelerate applies it only across several GPU (or other "
            f"accelerator) processes and would run this job unsharded ({processes} process{'es' * (processes > 1)} "
            f"on {accelerator.device.type}). Launch it on several GPUs, or without the FSDP config (--multi_gpu) "
            "for data-parallel training."
        )
