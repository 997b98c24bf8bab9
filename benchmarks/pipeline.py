"""Pipeline overhead: FlowPipeline wall time against NFE bare transformer forwards at the same batch.

For each sampler and guidance setting the script times a whole pipeline call (output_type="latent", no
VAE) and, interleaved with it, a loop of the same number of bare ``transformer(x, t, labels)`` calls at
the batch the pipeline uses (2B with classifier-free guidance, B without). The ratio of the medians is
the pipeline's overhead factor: 1.00 means the loop, guidance arithmetic, scheduler and bookkeeping
cost nothing next to the model. Three estimates: wall time (what a user waits), process CPU time
(with ``--threads 1`` on CPU, less sensitive to other processes on a shared machine), and "in-run": the
pipeline's wall time over the time spent inside its own transformer calls in the same run (timed by
forward hooks), which machine load cannot skew between the two sides.

    python benchmarks/pipeline.py                        # digits-sized DiT on CPU, DiT-S/2 32x32x4 on GPU
    python benchmarks/pipeline.py --preset S/2-32x32x4 --batch 8 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from flow_pipelines import DiTModel, FlowPipeline
from flow_pipelines.schedulers import make_scheduler

PRESETS: dict[str, dict] = {
    # DiT paper's S/2 on the SD-VAE latents of 256 px images.
    "S/2-32x32x4": {"preset": "DiT-S/2", "sample_size": 32, "in_channels": 4, "num_classes": 1000},
    # A digits-sized model: 8x8 grayscale, 10 classes.
    "digits": {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 1,
        "hidden_size": 128,
        "num_layers": 4,
        "num_attention_heads": 4,
        "num_classes": 10,
    },
}


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> DiTModel:
    """A model of the named preset with perturbed weights (a fresh DiT outputs zeros)."""
    config = dict(PRESETS[name])
    preset = config.pop("preset", None)
    model = DiTModel.from_preset(preset, **config) if preset else DiTModel(**config)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    model = model.to(device)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall time and process CPU time of one call, in seconds."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


class ForwardClock:
    """Wall time spent inside ``module.forward`` while the block runs (hooks around every call)."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device, self.total, self._start = module, device, 0.0, 0.0

    def _before(self, *args) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def _after(self, *args) -> None:
        synchronize(self.device)
        self.total += time.perf_counter() - self._start

    def __enter__(self) -> ForwardClock:
        self._handles = [
            self.module.register_forward_pre_hook(self._before),
            self.module.register_forward_hook(self._after),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="S/2-32x32x4" if torch.cuda.is_available() else "digits"
    )
    parser.add_argument("--batch", type=int, default=8, help="Images per pipeline call (B).")
    parser.add_argument("--steps", type=int, default=10, help="Sampling steps.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats; the median is reported.")
    parser.add_argument("--schedulers", nargs="+", default=["euler", "heun", "dpm"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    transformer = build_model(args.preset, device, dtype)
    pipe = FlowPipeline(transformer, make_scheduler("euler", {})).to(device)
    pipe.set_progress_bar_config(disable=True)
    config = transformer.config
    labels = [i % config.num_classes for i in range(args.batch)]

    print(
        f"device={device} dtype={args.dtype} preset={args.preset} batch={args.batch} steps={args.steps} "
        f"repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    print(
        "| sampler | guidance | NFE | model batch | NFE x bare forward (ms) | pipeline (ms) | ratio (wall) "
        "| ratio (CPU) | ratio (in-run) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for scheduler_name in args.schedulers:
        pipe.scheduler = make_scheduler(scheduler_name, pipe.scheduler.config)
        for guidance in (1.0, 4.0):
            model_batch = args.batch * (2 if guidance != 1.0 else 1)
            x = torch.randn(
                model_batch, config.in_channels, config.sample_size, config.sample_size, device=device
            )
            x = x.to(dtype)
            class_ids = torch.tensor([i % config.num_classes for i in range(model_batch)], device=device)

            def run_pipeline(guidance: float = guidance) -> None:
                pipe(labels, num_inference_steps=args.steps, guidance_scale=guidance, output_type="latent")

            run_pipeline()  # warm-up, and the NFE of this sampler
            timesteps = pipe.scheduler.timesteps.float().to(device)
            nfe = len(timesteps)

            def run_bare(
                x: torch.Tensor = x, class_ids: torch.Tensor = class_ids, timesteps=timesteps
            ) -> None:
                with torch.no_grad():
                    for t in timesteps:
                        transformer(x, t.expand(x.shape[0]), class_ids)

            run_bare()
            bare, full, in_run = [], [], []
            for repeat in range(args.repeats):
                # Interleaved, in alternating order, so that drifting machine load hits both alike.
                order = (run_bare, run_pipeline) if repeat % 2 == 0 else (run_pipeline, run_bare)
                times = {}
                for function in order:
                    if function is run_pipeline:
                        with ForwardClock(transformer, device) as clock:
                            times[function] = timed(function, device)
                        in_run.append(times[function][0] / clock.total)
                    else:
                        times[function] = timed(function, device)
                bare.append(times[run_bare])
                full.append(times[run_pipeline])
            bare_ms, full_ms = (1000 * statistics.median(wall for wall, _ in runs) for runs in (bare, full))
            bare_cpu, full_cpu = (1000 * statistics.median(cpu for _, cpu in runs) for runs in (bare, full))
            print(
                f"| {scheduler_name} | {guidance:g} | {nfe} | {model_batch} | {bare_ms:.1f} | {full_ms:.1f} "
                f"| {full_ms / bare_ms:.3f} | {full_cpu / bare_cpu:.3f} | {statistics.median(in_run):.4f} |"
            )


if __name__ == "__main__":
    main()
