"""DiTModel against diffusers' DiTTransformer2DModel at the same width, depth, heads and patch.

Prints parameters, forward time and train-step time (forward + backward + AdamW step) of both models
and their ratio (ours / diffusers'), each the median of several interleaved repeats. Runs on CPU in
float32 and, when CUDA is available, on the GPU under bf16 autocast.

    python benchmarks/model.py                      # DiT-S/2, 32x32x4 latents, batch 8
    python benchmarks/model.py --preset DiT-B/2 --repeats 10
    python benchmarks/model.py --threads 1 --clock cpu   # steadier on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import DiTTransformer2DModel

from flow_pipelines import DiTModel
from flow_pipelines.models import DIT_PRESETS


def build_models(
    preset: str, sample_size: int, channels: int, num_classes: int
) -> dict[str, torch.nn.Module]:
    """Both models with the preset's width, depth, heads and patch, velocity output (out = in channels)."""
    dims = DIT_PRESETS[preset]
    torch.manual_seed(0)
    ours = DiTModel.from_preset(
        preset, sample_size=sample_size, in_channels=channels, num_classes=num_classes
    )
    theirs = DiTTransformer2DModel(
        num_attention_heads=dims["num_attention_heads"],
        attention_head_dim=dims["hidden_size"] // dims["num_attention_heads"],
        in_channels=channels,
        out_channels=channels,
        num_layers=dims["num_layers"],
        sample_size=sample_size,
        patch_size=dims["patch_size"],
        num_embeds_ada_norm=num_classes,
    )
    # Time both in a trained-like state: DiT's zero-initialised adaLN and output layer give near-zero
    # gradients at first, whose squares in AdamW become denormal floats that slow CPU arithmetic many-fold.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in (ours, theirs):
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return {"DiTModel": ours, "diffusers DiT": theirs}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[], None], device: torch.device, clock: str) -> float:
    """Seconds taken by one call of ``step``: wall clock, or CPU time of this process (``clock="cpu"``).

    CPU time is steadier than wall clock on a machine shared with other jobs: waiting for a core does
    not count. It is used only for CPU runs.
    """
    timer = time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter
    synchronize(device)
    start = timer()
    step()
    synchronize(device)
    return timer() - start


def benchmark_device(args: argparse.Namespace, device: torch.device) -> None:
    """Time both models on one device and print the table."""
    models = build_models(args.preset, args.sample_size, args.channels, args.num_classes)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    generator = torch.Generator().manual_seed(0)
    batch = args.batch_size
    sample = torch.randn(batch, args.channels, args.sample_size, args.sample_size, generator=generator).to(
        device
    )
    target = torch.randn(sample.shape, generator=generator).to(device)
    timestep = (torch.rand(batch, generator=generator) * 1000).to(device)
    labels = torch.randint(0, args.num_classes, (batch,), generator=generator).to(device)

    steps: dict[str, dict[str, Callable[[], None]]] = {}
    for name, model in models.items():
        model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def forward(model: torch.nn.Module = model) -> None:
            with torch.inference_mode(), autocast:
                model(sample, timestep=timestep, class_labels=labels)

        def train_step(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            with autocast:
                prediction = model(sample, timestep=timestep, class_labels=labels).sample
                loss = torch.nn.functional.mse_loss(prediction.float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = {"forward": forward, "train step": train_step}

    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "train step": []} for name in models}
    for kind in ("forward", "train step"):
        for _ in range(args.warmup):
            for name in models:
                steps[name][kind]()
        # Interleaved, so that drifting machine load hits both models alike.
        for _ in range(args.repeats):
            for name in models:
                times[name][kind].append(measure(steps[name][kind], device, args.clock))

    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    clock = "process CPU time" if args.clock == "cpu" and device.type == "cpu" else "wall clock"
    print(
        f"\n{args.preset}, {args.sample_size}x{args.sample_size}x{args.channels}, batch {batch}, "
        f"{device.type} ({precision}), {clock}, median of {args.repeats} (ms)"
    )
    header = f"{'model':<15}{'parameters':>13}{'forward':>11}{'train step':>13}"
    print(header)
    print("-" * len(header))
    medians = {
        name: {kind: statistics.median(values) for kind, values in kinds.items()}
        for name, kinds in times.items()
    }
    for name, model in models.items():
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"{name:<15}{parameters / 1e6:>12.2f}M{medians[name]['forward'] * 1e3:>11.1f}"
            f"{medians[name]['train step'] * 1e3:>13.1f}"
        )
    ours, theirs = medians["DiTModel"], medians["diffusers DiT"]
    parameter_ratio = sum(p.numel() for p in models["DiTModel"].parameters()) / sum(
        p.numel() for p in models["diffusers DiT"].parameters()
    )
    print(
        f"{'ratio':<15}{parameter_ratio:>13.3f}{ours['forward'] / theirs['forward']:>11.3f}"
        f"{ours['train step'] / theirs['train step']:>13.3f}"
    )


def main() -> None:
    """Parse arguments and run the benchmark on CPU (and CUDA when available)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="DiT-S/2", choices=list(DIT_PRESETS))
    parser.add_argument("--sample_size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpu_only", action="store_true", help="Skip CUDA even when it is available.")
    parser.add_argument(
        "--clock", default="wall", choices=("wall", "cpu"), help="CPU runs: wall clock or process CPU time."
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's).")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    benchmark_device(args, torch.device("cpu"))
    if torch.cuda.is_available() and not args.cpu_only:
        benchmark_device(args, torch.device("cuda"))


if __name__ == "__main__":
    main()
