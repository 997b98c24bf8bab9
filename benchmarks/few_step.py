"""Few-step sampling on a trained model: every scheduler at 4, 6, 8 and 16 model evaluations.

For each sampler and budget (model evaluations per image, a guided evaluation counted once; Heun spends two
per step but the last, so it gets the most steps that fit), the same class-balanced noise is integrated (sample
``i`` of class ``i mod 10``, from seed ``i``: the evaluation command's samples) and the samples, 8-bit as saved,
are compared

- with real digits: FD against its real-vs-real floor (:class:`flow_pipelines.evaluation.digits.DigitDistribution`);
- with a reference solution of the same noise: Heun with 200 steps (399 evaluations). The distance is the RMS
  pixel difference in 8-bit levels. The stochastic sampler (``sde``) follows another path by design, so its
  distance is not shown.

The multistep solver is run in several settings (order, corrector, grid) to choose its defaults by result.

Run: ``python benchmarks/few_step.py --model outputs/digits/pipeline`` (the first README command's result;
a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flow_pipelines import FlowHeunScheduler, FlowMultistepScheduler, FlowPipeline  # noqa: E402
from flow_pipelines.evaluate import generate_samples  # noqa: E402
from flow_pipelines.evaluation.digits import DigitDistribution  # noqa: E402
from flow_pipelines.schedulers import (  # noqa: E402
    SCHEDULERS,
    make_scheduler,
    model_evaluations,
    steps_for_model_evaluations,
)

BUDGETS = (4, 6, 8, 16)
REFERENCE_STEPS = 200
MULTISTEP_VARIANTS: dict[str, dict] = {
    "multistep order 2, uniform": {"solver_order": 2, "sigma_schedule": "uniform"},
    "multistep order 2, logsnr": {"solver_order": 2, "sigma_schedule": "logsnr"},
    "multistep order 3, uniform": {"solver_order": 3, "sigma_schedule": "uniform"},
    "multistep order 3, logsnr": {"solver_order": 3, "sigma_schedule": "logsnr"},
    "multistep order 2, logsnr, no corrector": {
        "solver_order": 2,
        "sigma_schedule": "logsnr",
        "use_corrector": False,
    },
    "multistep order 3, logsnr, no corrector": {
        "solver_order": 3,
        "sigma_schedule": "logsnr",
        "use_corrector": False,
    },
}


def main() -> None:
    """Print the table: sampler, budget, FD / real floor, distance to the reference solution."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("outputs/digits/pipeline"))
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    if not (args.model / "model_index.json").is_file():
        sys.exit(f"{args.model} is not a saved pipeline; run the README's first command, or pass --model.")
    pipeline = FlowPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    config = pipeline.scheduler.config
    resolution = pipeline.transformer.config.sample_size
    distribution = DigitDistribution(resolution)
    num_samples = 10 * args.samples_per_class

    def draw(steps: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = generate_samples(
            pipeline, num_samples, args.batch_size, steps, args.guidance, seed=0
        )
        return images.astype(np.float64), labels

    def score(images: np.ndarray, labels: np.ndarray) -> float:
        return distribution.compare(torch.from_numpy(images / 255).permute(0, 3, 1, 2), labels).fd_ratio

    pipeline.scheduler = FlowHeunScheduler.from_config(config)
    reference, labels = draw(REFERENCE_STEPS)
    samplers = {name: make_scheduler(name, config) for name in SCHEDULERS}
    for name, settings in MULTISTEP_VARIANTS.items():
        samplers[name] = FlowMultistepScheduler.from_config({**config, **settings})
    rows = []
    for name, scheduler in tqdm(samplers.items(), desc="samplers"):
        pipeline.scheduler = scheduler
        for budget in BUDGETS:
            steps = steps_for_model_evaluations(scheduler, budget)
            images, _ = draw(steps)
            distance = float(np.sqrt(((images - reference) ** 2).mean()))
            rows.append((name, budget, model_evaluations(scheduler, steps), score(images, labels), distance))
    print(
        f"\n{args.model}: {len(labels)} samples, guidance {args.guidance:g}; reference: Heun, {REFERENCE_STEPS} "
        f"steps, FD / floor {score(reference, labels):.2f}\n"
    )
    print("| sampler | " + " | ".join(f"{b} evals: FD / floor, distance" for b in BUDGETS) + " |")
    print("|---|" + "---|" * len(BUDGETS))
    for name in samplers:
        cells = []
        for _, budget, used, ratio, distance in (row for row in rows if row[0] == name):
            shown = "—" if name == "sde" else f"{distance:.2f}"
            cells.append(f"{ratio:.2f}, {shown}" + (f" ({used})" if used != budget else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(n): the sampler used n evaluations; distance: RMS difference to the reference in 8-bit levels.")


if __name__ == "__main__":
    main()
