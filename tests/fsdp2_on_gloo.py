"""Test only: run ``train_scripts/train_flow.py`` sharded with FSDP2 on CPU processes (gloo).

accelerate applies an FSDP config only to processes on GPUs (or other accelerators); on CPUs it runs the job as
DDP. Launched by ``accelerate launch --config_file train_scripts/accelerate_configs/fsdp2.yaml`` in place of the
training script, this file makes accelerate take its GPU road on CPU processes: it initialises the process state
(gloo) and labels it multi-GPU before the script creates its ``Accelerator``. From there accelerate's own code
turns on FSDP2 from the config (``FullyShardedDataParallelPlugin`` from the environment, the distributed type
FSDP on both ``PartialState`` and ``AcceleratorState``), and the script runs unchanged, as on a GPU cluster.

Nothing in the package reads anything this file sets: the training script cannot take this road by accident.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "train_scripts" / "train_flow.py"


def take_the_accelerator_road_on_cpus() -> None:
    """Initialise accelerate's process state on the CPU (gloo) and label it multi-GPU, so that the script's
    ``Accelerator`` applies the launch's FSDP config as it would on GPUs."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    if state.num_processes < 2 or state.backend != "gloo":
        raise SystemExit(f"fsdp2_on_gloo.py needs several CPU processes on gloo, got {state!r}")
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


if __name__ == "__main__":
    take_the_accelerator_road_on_cpus()
    sys.argv[0] = str(SCRIPT)
    runpy.run_path(str(SCRIPT), run_name="__main__")
