"""Sampler accuracy per model evaluation on an exactly solvable flow.

Data are Gaussian, so the exact velocity and the exact endpoint of every noise sample are closed-form
(`flow_pipelines.analytic.GaussianFlow`). Each sampler gets a budget of model evaluations (NFE); a
method that needs two evaluations per step gets as many steps as fit in the budget.

Run: ``python benchmarks/samplers.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import argparse

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from flow_pipelines import FlowEulerScheduler, FlowHeunScheduler, FlowMultistepScheduler, FlowSDEScheduler
from flow_pipelines.analytic import GaussianFlow, sample_with_scheduler

FLOW_MODE = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}
SAMPLERS = {
    "FlowEulerScheduler": lambda: FlowEulerScheduler(),
    "FlowHeunScheduler": lambda: FlowHeunScheduler(),
    "FlowSDEScheduler (sigma)": lambda: FlowSDEScheduler(),
    "FlowMultistepScheduler": lambda: FlowMultistepScheduler(),
    "FlowMultistep (order 2)": lambda: FlowMultistepScheduler(solver_order=2),
    "FlowMultistep (uniform)": lambda: FlowMultistepScheduler(sigma_schedule="uniform"),
    "diffusers FlowMatchEuler": lambda: FlowMatchEulerDiscreteScheduler(),
    "diffusers FlowMatchHeun": lambda: FlowMatchHeunDiscreteScheduler(),
    "diffusers DPMSolver++ (flow)": lambda: DPMSolverMultistepScheduler(**FLOW_MODE),
    "diffusers UniPC (flow)": lambda: UniPCMultistepScheduler(**FLOW_MODE),
}


def steps_for_budget(scheduler, nfe: int) -> int:
    """The most steps whose model evaluations fit in ``nfe`` (Heun: ``2 * steps - 1``)."""
    return (nfe + 1) // 2 if scheduler.order == 2 else nfe


def main() -> None:
    """Print endpoint and moment errors per NFE budget for each sampler."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16, 32])
    args = parser.parse_args()

    target = GaussianFlow(mean=torch.tensor([1.5, -2.0, 0.3, 0.0]), std=torch.tensor([0.2, 0.5, 1.3, 1.0]))
    noise = torch.randn(args.samples, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = target.transport(noise, 1.0)

    def predict(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return target.velocity(sample.double(), float(timestep) / 1000).to(sample.dtype)

    endpoint, moments = {}, {}
    for name, make in SAMPLERS.items():
        for budget in args.budgets:
            scheduler = make()
            steps = steps_for_budget(scheduler, budget)
            generator = torch.Generator().manual_seed(1)
            out, nfe = sample_with_scheduler(scheduler, predict, noise.float(), steps, generator=generator)
            out = out.double()
            endpoint[name, budget] = ((out - exact).abs().max().item(), nfe)
            # Against the exact endpoints' own moments, so that the finite sample cancels out.
            mean_error = (out.mean(0) - exact.mean(0)).abs().max().item()
            std_error = (out.std(0) - exact.std(0)).abs().max().item()
            moments[name, budget] = (max(mean_error, std_error), nfe)

    def table(title: str, cells: dict, names: list[str]) -> None:
        print(f"\n{title}\n")
        print(f"| {'sampler':<28} | " + " | ".join(f"NFE {b:<9}" for b in args.budgets) + " |")
        print(f"|{'-' * 30}|" + "|".join("-" * 15 for _ in args.budgets) + "|")
        for name in names:
            row = " | ".join(f"{cells[name, b][0]:.2e} ({cells[name, b][1]:>2})" for b in args.budgets)
            print(f"| {name:<28} | {row} |")

    deterministic = [n for n in SAMPLERS if "SDE" not in n]
    table("Endpoint max |error| vs the exact flow map (NFE used in brackets)", endpoint, deterministic)
    table("Moment error max(|mean - exact mean|, |std - exact std|) over dimensions", moments, list(SAMPLERS))


if __name__ == "__main__":
    main()
