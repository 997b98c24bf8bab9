"""The exactly solvable Gaussian flow that the sampler, path and likelihood tests are checked against."""

from __future__ import annotations

import torch

from .oracles import GAUSSIAN, noise


def test_gaussian_flow_velocity_is_the_derivative_of_its_transport():
    z = noise(16)
    for sigma in (0.9, 0.5, 0.1):
        x = GAUSSIAN.transport(z, 1.0, sigma)
        h = 1e-6
        numeric = (GAUSSIAN.transport(z, 1.0, sigma + h) - GAUSSIAN.transport(z, 1.0, sigma - h)) / (2 * h)
        assert torch.allclose(GAUSSIAN.velocity(x, sigma), numeric, atol=1e-6)
