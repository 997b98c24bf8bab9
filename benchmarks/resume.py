"""Exact resume: N steps, a checkpoint, a restart from it and N more steps, against 2N steps straight.

Both runs go through ``train_scripts/train_flow.py`` in-process on the digits with the same flags; the table
gives the largest absolute difference of the final weights, EMA weights and optimizer state (0 means the
resumed run is the same run, bit for bit), and whether the metric logs agree step by step.

Run: ``python benchmarks/resume.py`` (about a minute on a 2-core CPU); ``--steps`` sets N.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "diffusion_pytorch_model.safetensors"


def load_script():
    """The training script as a module."""
    spec = importlib.util.spec_from_file_location("train_flow", REPO / "train_scripts" / "train_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(train_flow, output_dir: Path, flags: list[str]) -> None:
    """One in-process run of the script (accelerate's process-wide state reset first)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_flow.main(train_flow.parse_args(["--output_dir", str(output_dir), *flags]))


def largest_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Max |a - b| over all tensors of two state dicts with the same keys."""
    return max(float((first[key].double() - second[key].double()).abs().max()) for key in first)


def optimizer_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The AdamW moments of a checkpoint, flattened to name -> tensor."""
    state = torch.load(checkpoint / "optimizer.bin", map_location="cpu", weights_only=True)["state"]
    return {f"{index}.{name}": value for index, entry in state.items() for name, value in entry.items()}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="N: steps before and after the restart.")
    args = parser.parse_args()
    train_flow = load_script()
    n = args.steps
    common = [
        "--max_train_samples", "512", "--train_batch_size", "32", "--validation_steps", "0",
        "--evaluation_samples_per_class", "0", "--validation_images_per_class", "1", "--num_inference_steps", "1",
        "--logging_steps", "1", "--cpu_threads", "1", "--max_train_steps", str(2 * n),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        straight, split = Path(folder) / "straight", Path(folder) / "split"
        train(train_flow, straight, [*common, "--checkpointing_steps", str(2 * n)])
        # The first run of the split pair stops at its checkpoint, as a crash would leave it.
        train(train_flow, split, [*common, "--checkpointing_steps", str(n), "--max_train_steps", str(n)])
        train(
            train_flow,
            split,
            [*common, "--checkpointing_steps", str(n), "--resume_from_checkpoint", "latest"],
        )
        finals = (straight / f"checkpoint-{2 * n}", split / f"checkpoint-{2 * n}")
        rows = {
            "weights": [load_file(str(final / "transformer" / WEIGHTS)) for final in finals],
            "EMA weights": [load_file(str(final / "transformer_ema" / WEIGHTS)) for final in finals],
            "optimizer state": [optimizer_tensors(final) for final in finals],
        }
        logs = [
            [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]
            for run in (straight, split)
        ]
    print(f"\n{2 * n} steps straight vs {n} + restart from checkpoint-{n} + {n} (digits, batch 32)\n")
    print("| compared | max abs difference |")
    print("|---|---|")
    for name, (first, second) in rows.items():
        print(f"| {name} | {largest_difference(first, second):.3g} |")
    print(f"| logged losses, step by step | {max(abs(a - b) for a, b in zip(*logs, strict=True)):.3g} |")


if __name__ == "__main__":
    main()
