"""Evaluation numerics: likelihood error per NFE on exactly solvable flows, and three Fréchet-distance computations.

1. Log-likelihood by the probability-flow ODE against the closed-form log-density of Gaussian data, per solver
   and number of velocity evaluations (NFE), exact divergence; then the spread Hutchinson's estimator adds.
2. The Fréchet distance of the same statistics computed three ways (this package's symmetric eigh form,
   scipy's ``sqrtm`` as pytorch-fid / ADM do, torchmetrics' ``eigvals`` form): agreement and time.

Run: ``python benchmarks/evaluation.py`` (CPU, a few minutes; the 2048-d Fréchet row takes most of it).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.linalg
import torch

from flow_pipelines.analytic import GaussianFlow
from flow_pipelines.evaluation.frechet import frechet_distance
from flow_pipelines.evaluation.likelihood import log_likelihood


class RotatedGaussian:
    """Gaussian data with given per-axis stds in a random orthonormal basis (a non-diagonal Jacobian)."""

    def __init__(self, std: torch.Tensor, seed: int = 0) -> None:
        dims = std.numel()
        generator = torch.Generator().manual_seed(seed)
        self.base = GaussianFlow(torch.randn(dims, generator=generator, dtype=torch.float64), std)
        self.rotation = torch.linalg.qr(torch.randn(dims, dims, generator=generator, dtype=torch.float64))[0]
        self.dims = dims

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.base.velocity(x @ self.rotation, sigma) @ self.rotation.T

    def sample(self, count: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return self.base.sample_marginal((count, self.dims), 0.0, generator=generator) @ self.rotation.T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(x @ self.rotation)


def likelihood_tables(samples: int, budgets: list[int]) -> None:
    datasets = {
        "5-D, std 0.2..1.3": RotatedGaussian(torch.tensor([0.2, 0.5, 1.3, 1.0, 0.35], dtype=torch.float64)),
        "16-D, std 0.02 (sharp)": RotatedGaussian(torch.full((16,), 0.02, dtype=torch.float64)),
    }
    solvers = {
        "heun, uniform": {"method": "heun"},
        "rk4, uniform": {"method": "rk4"},
        "rk4, rho=3": {"method": "rk4", "rho": 3.0},
    }
    per_eval = {"heun": 2, "rk4": 4}
    for name, data in datasets.items():
        x = data.sample(samples)
        truth = data.log_prob(x)
        print(
            f"\nLog-likelihood max |error| per dimension (nats) vs the closed form — {name}, {samples} samples"
        )
        print(f"| solver            | {' | '.join(f'NFE {b:<5}' for b in budgets)} |")
        print(f"|-------------------|{'|'.join('-----------' for _ in budgets)}|")
        for label, options in solvers.items():
            cells = []
            for budget in budgets:
                steps = max(1, budget // per_eval[options["method"]])
                result = log_likelihood(data.velocity, x, num_steps=steps, divergence="exact", **options)
                cells.append(f"{(result.log_prob - truth).abs().max().item() / data.dims:9.2e}")
            print(f"| {label:<17} | {' | '.join(cells)} |")
        cells = []
        for tolerance in (1e-3, 1e-5, 1e-7):
            result = log_likelihood(
                data.velocity, x, method="adaptive", divergence="exact", rtol=tolerance, atol=tolerance
            )
            error = (result.log_prob - truth).abs().max().item() / data.dims
            cells.append(f"tol {tolerance:.0e}: {error:.2e} (NFE {result.num_function_evals})")
        print(f"| adaptive RK45     | {'; '.join(cells)} |")

    data = datasets["5-D, std 0.2..1.3"]
    x = data.sample(samples)
    truth = data.log_prob(x)
    print(
        f"\nHutchinson spread: std over samples of the error per dimension (nats), rk4 32 NFE — 5-D, {samples} samples"
    )
    print("| probe      | 1 probe  | 4 probes | 16 probes |")
    print("|------------|----------|----------|-----------|")
    for probe in ("rademacher", "gaussian"):
        cells = []
        for count in (1, 4, 16):
            result = log_likelihood(
                data.velocity,
                x,
                num_steps=8,
                divergence="hutchinson",
                probe=probe,
                num_probes=count,
                generator=torch.Generator().manual_seed(0),
            )
            cells.append(f"{((result.log_prob - truth) / data.dims).std().item():8.2e}")
        print(f"| {probe:<10} | {' | '.join(cells)} |")


def frechet_table(samples: int, dims: list[int]) -> None:
    from torchmetrics.image.fid import _compute_fid

    print(
        f"\nFréchet distance of two {samples}-sample feature sets, three ways (value, |difference| to ours, seconds)"
    )
    print(
        "| D    | ours (eigh)           | scipy sqrtm (ADM)               | torchmetrics eigvals            |"
    )
    print(
        "|------|-----------------------|---------------------------------|---------------------------------|"
    )
    rng = np.random.default_rng(0)
    for dim in dims:
        mixing = rng.normal(size=(dim, dim)) / math.sqrt(dim)
        a = rng.normal(size=(samples, dim)) @ mixing
        b = (
            rng.normal(size=(samples, dim)) @ (mixing + 0.05 * rng.normal(size=(dim, dim)) / math.sqrt(dim))
            + 0.01
        )
        mu1, mu2 = a.mean(0), b.mean(0)
        sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

        start = time.perf_counter()
        ours = frechet_distance(mu1, sigma1, mu2, sigma2)
        ours_time = time.perf_counter() - start

        start = time.perf_counter()
        root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
        scipy_value = float(
            ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root)
        )
        scipy_time = time.perf_counter() - start

        start = time.perf_counter()
        tm = float(_compute_fid(*(torch.from_numpy(v) for v in (mu1, sigma1, mu2, sigma2))))
        tm_time = time.perf_counter() - start
        print(
            f"| {dim:<4} | {ours:.6f} ({ours_time:5.2f} s) | {scipy_value:.6f} {abs(scipy_value - ours):8.1e} "
            f"({scipy_time:5.2f} s) | {tm:.6f} {abs(tm - ours):8.1e} ({tm_time:5.2f} s) |"
        )


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--frechet-samples", type=int, default=5000)
    parser.add_argument("--frechet-dims", type=int, nargs="+", default=[768, 2048])
    args = parser.parse_args()
    torch.manual_seed(0)
    likelihood_tables(args.samples, args.budgets)
    frechet_table(args.frechet_samples, args.frechet_dims)


if __name__ == "__main__":
    main()
