"""Training throughput: the training script's loop against a bare PyTorch loop over the same model and batch.

The script's loop is ``train_scripts/train_flow.py`` run in-process on its default data (the digits,
decoded into memory, drawn by its epoch sampler through accelerate's data loader) with its per-step work:
seeded noise and noise levels, label dropout, the loss reduction across processes, the NaN check,
gradient clipping, the LR schedule, the EMA update, metrics every ``--logging_steps`` and the progress
bar. Its figure is the throughput the script itself measures, which leaves out the first 5 steps.

The bare loop trains a fresh copy of the same DiT on one fixed batch already in memory: noise levels,
interpolation, forward, MSE, backward, AdamW step; nothing else. A third row adds the EMA update and
gradient clipping to the bare loop, to show what those cost by themselves. Each loop runs
``--repeats`` times, interleaved, and the table shows medians.

Run: ``python benchmarks/train.py`` (a few minutes on a 2-core CPU); ``--threads 1`` is steadier when
other jobs share the cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flow_pipelines.paths import STRAIGHT_PATH  # noqa: E402
from flow_pipelines.training.architecture import build_model, model_settings  # noqa: E402

UNTIMED_STEPS = 5


def load_script():
    """The training script as a module."""
    spec = importlib.util.spec_from_file_location("train_flow", REPO / "train_scripts" / "train_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_throughput(train_flow, flags: list[str], steps: int) -> float:
    """Samples per second of the script's own loop, as it reports it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with tempfile.TemporaryDirectory() as output_dir:
        args = train_flow.parse_args(
            [
                "--output_dir", output_dir, "--max_train_steps", str(steps), "--checkpointing_steps", "0",
                "--validation_steps", "0", "--evaluation_samples_per_class", "0",
                "--validation_images_per_class", "1", "--num_inference_steps", "1", *flags,
            ]
        )  # fmt: skip
        summary = train_flow.main(args)
    return float(summary["train_samples_per_second"])


def bare_throughput(train_flow, flags: list[str], steps: int, with_ema_and_clipping: bool) -> float:
    """Samples per second of a minimal flow-matching loop on the same model and batch size."""
    from diffusers.training_utils import EMAModel

    args = train_flow.parse_args(flags)
    torch.manual_seed(args.seed)
    model = build_model(args, STRAIGHT_PATH, 1, args.resolution, 10)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    ema = EMAModel(model.parameters(), decay=args.ema_decay, foreach=True) if with_ema_and_clipping else None
    batch = args.train_batch_size
    x0 = torch.rand(batch, 1, args.resolution, args.resolution) * 2 - 1
    labels = torch.randint(0, 11, (batch,))
    for step in range(steps):
        if step == UNTIMED_STEPS:
            start = time.perf_counter()
        sigmas = torch.sigmoid(torch.randn(batch))
        noise = torch.randn_like(x0)
        noisy = STRAIGHT_PATH.interpolate(x0, noise, sigmas)
        output = model(noisy, sigmas * 1000, labels).sample
        loss = (output - (noise - x0)).pow(2).mean()
        loss.backward()
        if ema is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(model.parameters())
    return batch * (steps - UNTIMED_STEPS) / (time.perf_counter() - start)


def main() -> None:
    """Print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="Steps per run (the first 5 are not timed).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument(
        "script_flags", nargs="*", help="Extra training-script flags after '--', e.g. -- --hidden_size 128"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train_flow = load_script()
    # The script would pick its own thread count; both loops get the same one.
    flags = ["--cpu_threads", str(torch.get_num_threads()), *args.script_flags]
    runs: dict[str, list[float]] = {"script": [], "bare": [], "bare + EMA + clipping": []}
    for _ in range(args.repeats):
        runs["script"].append(script_throughput(train_flow, flags, args.steps))
        runs["bare"].append(bare_throughput(train_flow, flags, args.steps, with_ema_and_clipping=False))
        runs["bare + EMA + clipping"].append(bare_throughput(train_flow, flags, args.steps, True))
    settings = train_flow.parse_args(flags)
    model = model_settings(settings)
    print(
        f"\nDiT hidden {model['hidden_size']}, {model['num_layers']} layers, patch {model['patch_size']}, "
        f"{settings.resolution}x{settings.resolution}x1, batch {settings.train_batch_size}; {args.steps} steps "
        f"({args.steps - UNTIMED_STEPS} timed) x {args.repeats} repeats, torch threads {torch.get_num_threads()}\n"
    )
    bare = statistics.median(runs["bare"])
    print("| loop | samples/s (median) | runs | ratio to bare |")
    print("|---|---|---|---|")
    for name, values in runs.items():
        median = statistics.median(values)
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {median:.0f} | {shown} | {median / bare:.3f} |")


if __name__ == "__main__":
    main()
