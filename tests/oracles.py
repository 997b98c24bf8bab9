"""Independent references the tests check results against, written out rather than taken from the package.

- `GAUSSIAN`, the Gaussian data of ``benchmarks/samplers.py``; `exact_model`, the exact model of any
  `GaussianFlow` on the straight path, called like a transformer; `noise`, seeded float64 starting points.
- `cosine_reference` and `vp_reference` (`REFERENCES`): the coefficients ``(a, b, a', b')`` of the cosine and
  VP paths, and `reference_time`: a noise level's time on them by root finding, independent of
  `flow_pipelines.paths`.
- `scipy_frechet`: the textbook Fréchet distance with scipy's general matrix square root.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
from scipy.optimize import brentq

from flow_pipelines.analytic import GaussianFlow

# The target of benchmarks/samplers.py.
GAUSSIAN = GaussianFlow(mean=torch.tensor([1.5, -2.0, 0.3, 0.0]), std=torch.tensor([0.2, 0.5, 1.3, 1.0]))


def exact_model(target: GaussianFlow = GAUSSIAN, prediction_type: str = "velocity"):
    """The exact model of a Gaussian flow, called like a transformer: (sample, timestep) -> output."""

    def predict(sample, timestep):
        return target.prediction(sample.double(), float(timestep) / 1000, prediction_type).to(sample.dtype)

    return predict


def noise(batch: int = 2048, dim: int = 4, seed: int = 0) -> torch.Tensor:
    """Standard normal ``(batch, dim)`` float64 samples from a generator seeded with ``seed``."""
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- path coefficients
def cosine_reference(s: float) -> tuple[float, float, float, float]:
    """``(a, b, a', b')`` of the cosine path, written out."""
    return (
        math.cos(math.pi * s / 2),
        math.sin(math.pi * s / 2),
        -math.pi / 2 * math.sin(math.pi * s / 2),
        math.pi / 2 * math.cos(math.pi * s / 2),
    )


def vp_reference(
    s: float, beta_min: float = 0.1, beta_max: float = 20.0
) -> tuple[float, float, float, float]:
    """``(a, b, a', b')`` of the VP path: ``abar = exp(-int_0^s beta)``, ``beta(s)`` linear."""
    integral = beta_min * s + 0.5 * (beta_max - beta_min) * s * s
    beta = beta_min + (beta_max - beta_min) * s
    abar = math.exp(-integral)
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    return a, b, -0.5 * beta * a, 0.5 * beta * abar / b if b > 0 else math.inf


REFERENCES = {"cosine": cosine_reference, "vp": vp_reference}


def reference_time(name: str, sigma: float, **path_kwargs: float) -> float:
    """``s`` with ``b / (a + b) = sigma`` by root finding on the written-out coefficients; 1 beyond the range."""

    def excess(s: float) -> float:
        a, b, _, _ = REFERENCES[name](s, **path_kwargs)
        return b / (a + b) - sigma

    if excess(1.0) <= 0:
        return 1.0
    if sigma <= 0:
        return 0.0
    return brentq(excess, 0.0, 1.0, xtol=1e-15, rtol=1e-15)


# ----------------------------------------------------------------------------- Fréchet distance
def scipy_frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The textbook computation (pytorch-fid / ADM): scipy's general matrix square root of sigma1 sigma2."""
    mu1, mu2 = features_a.mean(0), features_b.mean(0)
    sigma1, sigma2 = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))
