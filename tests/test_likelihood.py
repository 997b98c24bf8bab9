"""Likelihood by the probability-flow ODE, checked against Gaussian data whose log-density is closed-form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.configuration_utils import FrozenDict

from flow_pipelines import DiTModel
from flow_pipelines.analytic import GaussianFlow
from flow_pipelines.evaluation.likelihood import (
    bits_per_dim,
    image_bits_per_dim,
    likelihood_sigmas,
    log_likelihood,
    velocity_divergence,
)
from flow_pipelines.guidance import GuidedVelocity
from flow_pipelines.images import dequantize, pixels_to_model_range
from flow_pipelines.paths import get_path

MEAN = torch.tensor([1.5, -2.0, 0.3, 0.0, 0.7])
STD = torch.tensor([0.2, 0.5, 1.3, 1.0, 0.35])


class RotatedGaussianFlow:
    """GaussianFlow seen through an orthogonal rotation ``x = R y``: correlated data, a non-diagonal Jacobian.

    Densities are unchanged by the rotation, so the truth is ``GaussianFlow.log_prob(R^T x)``; the integrated
    Jacobian of the velocity along any path is ``A = R diag(-log std) R^T``, which fixes the Hutchinson variance.
    """

    def __init__(self, seed: int = 0) -> None:
        self.base = GaussianFlow(MEAN, STD)
        generator = torch.Generator().manual_seed(seed)
        self.rotation = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64))[0]
        self.integrated_jacobian = self.rotation @ torch.diag(-torch.log(STD.double())) @ self.rotation.T

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        rotation = self.rotation.to(x.dtype)
        return self.base.velocity(x @ rotation, sigma) @ rotation.T

    def sample(self, count: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return self.base.sample_marginal((count, 5), 0.0, generator=generator) @ self.rotation.T

    def log_prob(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        return self.base.log_prob(x @ self.rotation, sigma)


@pytest.fixture(scope="module")
def rotated() -> RotatedGaussianFlow:
    return RotatedGaussianFlow()


# ---------------------------------------------------------------------------------------------- exact divergence
def test_exact_divergence_recovers_the_closed_form_log_density(rotated):
    x = rotated.sample(200, seed=1)
    result = log_likelihood(
        rotated.velocity, x, num_steps=24, method="rk4", divergence="exact", sigma_min=1e-5
    )
    per_dim_error = (result.log_prob - rotated.log_prob(x)).abs().max().item() / 5
    assert per_dim_error < 1e-3  # the stated tolerance: 1e-3 nats per dimension against the data density
    # Against the density at sigma_min, where the ODE starts, only the integration error remains.
    assert (result.log_prob - rotated.log_prob(x, sigma=1e-5)).abs().max().item() / 5 < 1e-5
    torch.testing.assert_close(result.log_prob, result.prior_log_prob + result.delta_log_prob)
    # The latent is the exact flow map of x to noise.
    torch.testing.assert_close(
        result.latent @ rotated.rotation,
        rotated.base.transport(x @ rotated.rotation, 1e-5, 1.0),
        rtol=0,
        atol=1e-5,
    )
    assert result.num_function_evals == 4 * 24


def test_fixed_grid_solvers_converge_at_their_order_and_adaptive_meets_its_tolerance(rotated):
    x = rotated.sample(64, seed=2)
    truth = rotated.log_prob(x, sigma=1e-5)

    def error(**options) -> float:
        return (
            (log_likelihood(rotated.velocity, x, divergence="exact", **options).log_prob - truth)
            .abs()
            .max()
            .item()
        )

    heun_coarse, heun_fine = error(method="heun", num_steps=8), error(method="heun", num_steps=16)
    rk4_coarse, rk4_fine = error(method="rk4", num_steps=8), error(method="rk4", num_steps=16)
    assert 3.5 < heun_coarse / heun_fine < 5.0  # second order: halving the step divides the error by ~4
    assert rk4_coarse / rk4_fine > 12.0  # fourth order: by ~16 (more before the asymptotic regime)
    assert rk4_coarse < heun_fine  # at equal evaluations (32), RK4 is far ahead
    assert error(method="adaptive", rtol=1e-7, atol=1e-7) < 1e-5


def test_integration_grid_spans_the_range_and_concentrates_towards_the_data_for_rho_above_one():
    uniform = likelihood_sigmas(4, sigma_min=0.0, sigma_max=1.0)
    torch.testing.assert_close(uniform, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    spaced = likelihood_sigmas(8, sigma_min=1e-5, sigma_max=1.0, rho=3.0)
    assert spaced[0].item() == pytest.approx(1e-5) and spaced[-1].item() == pytest.approx(1.0)
    steps = spaced.diff()
    assert (steps > 0).all() and (steps.diff() > 0).all()


# ---------------------------------------------------------------------------------------------- Hutchinson
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased_with_the_predicted_variance(rotated, probe):
    x = rotated.sample(3000, seed=3)
    generator = torch.Generator().manual_seed(4)
    result = log_likelihood(
        rotated.velocity, x, num_steps=12, divergence="hutchinson", probe=probe, generator=generator
    )
    errors = (result.log_prob - rotated.log_prob(x, sigma=1e-5)).numpy()
    # With a probe held fixed along the path the estimate is eps^T A eps, A the integrated Jacobian:
    # its variance is 2 sum_{i != j} A_ij^2 (Rademacher) or 2 |A|_F^2 (Gaussian).
    a = rotated.integrated_jacobian.numpy()
    off_diagonal = (a**2).sum() - (np.diag(a) ** 2).sum()
    variance = 2 * (off_diagonal if probe == "rademacher" else (a**2).sum())
    standard_error = math.sqrt(variance / len(errors))
    assert abs(errors.mean()) < 4 * standard_error
    assert errors.var() == pytest.approx(variance, rel=0.15)

    averaged = log_likelihood(
        rotated.velocity,
        x,
        num_steps=12,
        divergence="hutchinson",
        probe=probe,
        num_probes=4,
        generator=generator,
    )
    averaged_errors = (averaged.log_prob - rotated.log_prob(x, sigma=1e-5)).numpy()
    assert averaged_errors.var() == pytest.approx(variance / 4, rel=0.15)


def test_rademacher_probes_are_exact_for_a_diagonal_jacobian():
    # eps_i^2 = 1: with a diagonal Jacobian the Rademacher estimate equals the exact divergence.
    flow = GaussianFlow(MEAN, STD)
    x = flow.sample_marginal((50, 5), 0.0, generator=torch.Generator().manual_seed(5))
    estimated = log_likelihood(
        flow.velocity, x, num_steps=16, divergence="hutchinson", generator=torch.Generator()
    )
    exact = log_likelihood(flow.velocity, x, num_steps=16, divergence="exact")
    torch.testing.assert_close(estimated.log_prob, exact.log_prob, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- models
class GaussianDenoiser(torch.nn.Module):
    """The exact model of Gaussian image data in a model's calling convention and prediction type."""

    def __init__(self, prediction_type: str, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        self.flow = GaussianFlow(torch.tensor([0.5, -0.5, 0.1, 0.9]).view(1, 2, 2), torch.tensor(0.3))
        self.config = FrozenDict(
            prediction_type=prediction_type,
            num_train_timesteps=num_train_timesteps,
            num_classes=10,
            in_channels=1,
        )

    def forward(self, hidden_states, timestep, class_labels=None, return_dict=True):
        sigma = timestep / self.config["num_train_timesteps"]
        return (self.flow.prediction(hidden_states, sigma, self.config["prediction_type"]),)


@pytest.mark.parametrize("prediction_type", ["velocity", "sample", "epsilon"])
def test_model_outputs_of_every_prediction_type_give_the_closed_form(prediction_type):
    model = GaussianDenoiser(prediction_type, num_train_timesteps=500)
    x = model.flow.sample_marginal((40, 1, 2, 2), 0.0, generator=torch.Generator().manual_seed(6))
    sigma_max = 0.9999 if prediction_type == "epsilon" else 1.0
    result = log_likelihood(GuidedVelocity(model), x, num_steps=24, divergence="exact", sigma_max=sigma_max)
    assert (result.log_prob - model.flow.log_prob(x)).abs().max().item() / 4 < 1e-3


@pytest.fixture
def tiny_dit(make_dit) -> DiTModel:
    """A 4x4, one-layer, three-class `make_dit` in float64, its weights perturbed by 0.2."""
    return make_dit(sample_size=4, hidden_size=16, num_layers=1, num_classes=3, scale=0.2, float64=True)


def test_exact_divergence_of_a_dit_matches_finite_differences(tiny_dit):
    labels = torch.tensor([0, 2])
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    sigma = torch.tensor([0.3, 0.7], dtype=torch.float64)
    _, divergence = velocity_divergence(GuidedVelocity(tiny_dit, class_labels=labels), x, sigma)

    # Central differences along each of the 16 axes, all in one batch (the model treats samples independently).
    step = 1e-5
    bumps = (step * torch.eye(16, dtype=torch.float64)).view(16, 1, 1, 1, 4, 4)
    batched = GuidedVelocity(tiny_dit, class_labels=labels.repeat(16))
    with torch.no_grad():
        plus = batched((x + bumps).reshape(32, 1, 4, 4), sigma.repeat(16)).view(16, 2, 16)
        minus = batched((x - bumps).reshape(32, 1, 4, 4), sigma.repeat(16)).view(16, 2, 16)
    expected = ((plus - minus) / (2 * step)).diagonal(dim1=0, dim2=2).sum(dim=1)
    torch.testing.assert_close(divergence, expected, rtol=1e-6, atol=1e-7)

    # Hutchinson agrees in expectation: 512 Rademacher probes per point, one batch, within 4 standard errors.
    probes = (
        torch.randint(0, 2, (1, 1024, 1, 4, 4), generator=torch.Generator().manual_seed(8)).double() * 2 - 1
    )
    repeated = GuidedVelocity(tiny_dit, class_labels=labels.repeat(512))
    _, singles = velocity_divergence(repeated, x.repeat(512, 1, 1, 1), sigma.repeat(512), probes)
    singles = singles.view(512, 2)
    assert ((singles.mean(0) - divergence).abs() < 4 * singles.std(0) / math.sqrt(512)).all()
    assert (singles.std(0) > 0).all()


def test_likelihood_of_a_dit_is_finite_and_reproducible(tiny_dit):
    velocity = GuidedVelocity(tiny_dit, class_labels=1)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    first = log_likelihood(
        velocity, x, num_steps=4, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    second = log_likelihood(
        velocity, x, num_steps=4, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(first.log_prob).all()
    torch.testing.assert_close(first.log_prob, second.log_prob)


class GaussianPathModel(torch.nn.Module):
    """The exact model of Gaussian data ``N(mean, std^2)`` trained on a path, in closed form on that path.

    At path time ``s`` the input is ``x_s = a x0 + b noise``; with ``k = a^2 std^2 + b^2`` the posterior means
    are ``E[x0 | x_s] = mean + a std^2 (x_s - a mean) / k`` and ``E[noise | x_s] = b (x_s - a mean) / k``.
    """

    def __init__(self, path_name: str, prediction_type: str, num_train_timesteps: int = 500) -> None:
        super().__init__()
        self.mean = torch.tensor([0.5, -0.5, 0.1, 0.9], dtype=torch.float64).view(1, 1, 2, 2)
        self.std = 0.3
        self.path = get_path(path_name)
        self.config = FrozenDict(
            prediction_type=prediction_type,
            num_train_timesteps=num_train_timesteps,
            num_classes=10,
            in_channels=1,
            path=path_name,
        )

    def forward(self, hidden_states, timestep, class_labels=None, return_dict=True):
        time = timestep.double() / self.config["num_train_timesteps"]
        a, b = (value.view(-1, 1, 1, 1) for value in self.path.coefficients(time))
        da, db = (value.view(-1, 1, 1, 1) for value in self.path.derivatives(time))
        centred = hidden_states - a * self.mean
        variance = a**2 * self.std**2 + b**2
        x0 = self.mean + a * self.std**2 * centred / variance
        noise = b * centred / variance
        kind = self.config["prediction_type"]
        output = x0 if kind == "sample" else noise if kind == "epsilon" else da * x0 + db * noise
        return (output,)


@pytest.mark.parametrize("prediction_type", ["velocity", "sample", "epsilon"])
def test_likelihood_of_the_exact_gaussian_model_is_the_same_on_the_cosine_and_linear_paths(prediction_type):
    flow = GaussianFlow(torch.tensor([0.5, -0.5, 0.1, 0.9]).view(1, 2, 2), torch.tensor(0.3))
    x = flow.sample_marginal((40, 1, 2, 2), 0.0, generator=torch.Generator().manual_seed(6))
    sigma_max = 0.9999 if prediction_type == "epsilon" else 1.0
    options = {"num_steps": 24, "divergence": "exact", "sigma_max": sigma_max}
    cosine = log_likelihood(GuidedVelocity(GaussianPathModel("cosine", prediction_type)), x, **options)
    linear = log_likelihood(GuidedVelocity(GaussianPathModel("linear", prediction_type)), x, **options)
    dims = x[0].numel()
    assert (cosine.log_prob - linear.log_prob).abs().max().item() / dims < 1e-3
    assert (cosine.log_prob - flow.log_prob(x)).abs().max().item() / dims < 1e-3
    # Pointwise, the model's output becomes our velocity at our noise level only through the mapping.
    sigma = torch.linspace(0.05, 0.95, len(x), dtype=torch.float64)
    points = flow.sample_marginal((len(x), 1, 2, 2), 0.5, generator=torch.Generator().manual_seed(7))
    model = GaussianPathModel("cosine", prediction_type)
    mapped = GuidedVelocity(model)(points, sigma)
    assert torch.allclose(mapped, flow.velocity(points, sigma), atol=1e-6)
    model.config = FrozenDict({**model.config, "path": "linear"})
    assert (GuidedVelocity(model)(points, sigma) - flow.velocity(points, sigma)).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------- bits per dim
def test_bits_per_dim_of_the_uniform_8_bit_model_is_8():
    # A density uniform over [-1 - 1/255, 1 + 1/255]^D (every level equally likely) is 8 bits per dimension.
    dims = 12
    log_prob = torch.tensor([-dims * math.log(2 * 256 / 255)])
    assert bits_per_dim(log_prob, dims).item() == pytest.approx(8.0, abs=1e-12)


def test_image_bits_per_dim_matches_the_closed_form_on_the_same_dequantised_points():
    flow = GaussianFlow(torch.tensor([0.2, -0.3, 0.0, 0.5]).view(1, 2, 2), torch.tensor(0.4))
    points = flow.sample_marginal((20, 1, 2, 2), 0.0, generator=torch.Generator().manual_seed(10))
    pixels = ((points.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    result = image_bits_per_dim(
        flow.velocity,
        pixels,
        batch_size=8,
        generator=torch.Generator().manual_seed(11),
        show_progress=False,
        num_steps=24,
        divergence="exact",
    )
    # The same dequantisation noise, drawn batch by batch from the same seed.
    generator = torch.Generator().manual_seed(11)
    noisy = torch.cat(
        [dequantize(pixels_to_model_range(b, torch.float64), generator) for b in pixels.split(8)]
    )
    expected = bits_per_dim(flow.log_prob(noisy), 4)
    torch.testing.assert_close(result.per_image, expected, rtol=0, atol=1e-3 / math.log(2))
    assert result.bits_per_dim == pytest.approx(float(expected.mean()), abs=1e-3)
    assert result.standard_error == pytest.approx(float(expected.std() / math.sqrt(20)), rel=1e-2)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_options_are_refused():
    flow = GaussianFlow()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="allowed: rk4, heun, adaptive"):
        log_likelihood(flow.velocity, x, method="euler")
    with pytest.raises(ValueError, match="allowed: auto, exact, hutchinson"):
        log_likelihood(flow.velocity, x, divergence="trace")
    with pytest.raises(ValueError, match="allowed: rademacher, gaussian"):
        log_likelihood(flow.velocity, x, divergence="hutchinson", probe="sphere")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        log_likelihood(flow.velocity, x, sigma_min=0.5, sigma_max=0.4)
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(flow.velocity, x, num_probes=0)
    with pytest.raises(ValueError, match="sigma_max < 1"):
        log_likelihood(GuidedVelocity(GaussianDenoiser("epsilon")), torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="sigma_min > 0"):
        log_likelihood(GuidedVelocity(GaussianDenoiser("sample")), torch.zeros(2, 1, 2, 2), sigma_min=0.0)
    with pytest.raises(ValueError, match="needs class_labels"):
        GuidedVelocity(GaussianDenoiser("velocity"), guidance_scale=2.0)
    with pytest.raises(ValueError, match="uint8"):
        image_bits_per_dim(flow.velocity, torch.zeros(2, 1, 2, 2))
