"""What the training-script tests share: the script loaded as a module and a tiny in-process run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_scripts" / "train_flow.py"

TINY = [
    "--hidden_size", "32", "--num_layers", "1", "--num_attention_heads", "2", "--patch_size", "2",
    "--resolution", "8", "--train_batch_size", "4", "--max_train_samples", "40",
    "--validation_steps", "0", "--checkpointing_steps", "0", "--evaluation_samples_per_class", "0",
    "--validation_images_per_class", "1", "--num_inference_steps", "2", "--logging_steps", "1",
    "--lr_warmup_steps", "2", "--lr_scheduler", "constant_with_warmup",
    # A fixed thread count keeps float reductions in the same order from run to run.
    "--cpu_threads", "1",
]  # fmt: skip


def load_training_script(module_name: str = "train_flow") -> ModuleType:
    """The training script, imported as a module so tests can call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location(module_name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline_training_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hub access, W&B writes locally and quietly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def run(train_flow, output_dir: Path, *flags: str) -> dict:
    """Call the script's main in-process with the tiny settings (later flags win)."""
    from accelerate.state import AcceleratorState, GradientState

    # Each run builds its own Accelerator; accelerate keeps process-wide singletons between them.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return train_flow.main(train_flow.parse_args(["--output_dir", str(output_dir), *TINY, *flags]))
