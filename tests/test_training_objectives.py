"""The flow-matching objective: noise-level densities (KS tests against closed-form CDFs), targets, losses, on the
straight path and on the cosine and VP paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from flow_pipelines.paths import PREDICTION_TYPES, STRAIGHT_PATH, get_path
from flow_pipelines.training.objectives import (
    FlowMatchingObjective,
    drop_labels,
    loss_weights,
    sample_sigmas,
)

NUM_DRAWS = 20_000


def _unshift(sigma: np.ndarray, shift: float) -> np.ndarray:
    """Inverse of ``shift * s / (1 + (shift - 1) s)``."""
    return sigma / (shift - (shift - 1.0) * sigma)


def uniform_cdf(sigma: np.ndarray, shift: float = 1.0) -> np.ndarray:
    return np.clip(_unshift(sigma, shift), 0.0, 1.0)


def logit_normal_cdf(sigma: np.ndarray, mean: float, std: float, shift: float = 1.0) -> np.ndarray:
    base = np.clip(_unshift(sigma, shift), 1e-12, 1 - 1e-12)
    return stats.norm.cdf((np.log(base) - np.log1p(-base) - mean) / std)


def mode_cdf(sigma: np.ndarray, scale: float, shift: float = 1.0) -> np.ndarray:
    """sigma = f(u) = 1 - u - scale (cos^2(pi u / 2) - 1 + u) decreases from 1 to 0, so P(sigma <= s) = 1 - f^-1(s).

    f is inverted on a fine grid (its derivative is bounded, so linear interpolation is accurate to ~1e-11)
    and the grid inverse is checked against a root finder at a few points.
    """
    u = np.linspace(0.0, 1.0, 400_001)
    values = 1.0 - u - scale * (np.cos(np.pi * u / 2.0) ** 2 - 1.0 + u)
    base = np.clip(_unshift(np.asarray(sigma, dtype=np.float64), shift), 0.0, 1.0)
    inverse = np.interp(base, values[::-1], u[::-1])
    for s in (0.1, 0.5, 0.9):
        root = optimize.brentq(
            lambda x, s=s: 1.0 - x - scale * (math.cos(math.pi * x / 2) ** 2 - 1.0 + x) - s, 0, 1
        )
        assert abs(np.interp(s, values[::-1], u[::-1]) - root) < 1e-9
    return 1.0 - inverse


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize(
    ("scheme", "params"),
    [
        ("uniform", {}),
        ("logit_normal", {"logit_mean": 0.0, "logit_std": 1.0}),
        ("logit_normal", {"logit_mean": -0.5, "logit_std": 0.7}),
        ("mode", {"mode_scale": 1.29}),
        ("mode", {"mode_scale": -0.5}),
    ],
)
def test_time_samplers_follow_their_closed_form_cdf(scheme: str, params: dict, shift: float) -> None:
    generator = torch.Generator().manual_seed(1234)
    draws = sample_sigmas(NUM_DRAWS, scheme, shift=shift, generator=generator, **params).double().numpy()
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    if scheme == "uniform":
        cdf = lambda s: uniform_cdf(s, shift)  # noqa: E731
    elif scheme == "logit_normal":
        cdf = lambda s: logit_normal_cdf(s, params["logit_mean"], params["logit_std"], shift)  # noqa: E731
    else:
        cdf = lambda s: mode_cdf(s, params["mode_scale"], shift)  # noqa: E731
    result = stats.kstest(draws, cdf)
    assert result.pvalue > 1e-3, f"{scheme} {params} shift={shift}: KS p={result.pvalue:.2e}"


def test_ks_check_has_power_against_the_wrong_density() -> None:
    # The same check rejects logit-normal draws when compared with the uniform CDF, and a shift it did not apply.
    generator = torch.Generator().manual_seed(0)
    draws = sample_sigmas(NUM_DRAWS, "logit_normal", generator=generator).double().numpy()
    assert stats.kstest(draws, uniform_cdf).pvalue < 1e-6
    assert stats.kstest(draws, lambda s: logit_normal_cdf(s, 0.0, 1.0, shift=3.0)).pvalue < 1e-6


def test_time_sampling_is_reproducible_with_a_generator() -> None:
    first = sample_sigmas(64, "mode", generator=torch.Generator().manual_seed(7))
    second = sample_sigmas(64, "mode", generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "beta"},
        {"scheme": "logit_normal", "logit_std": 0.0},
        {"scheme": "mode", "mode_scale": 2.0},
        {"scheme": "uniform", "shift": 0.0},
    ],
)
def test_time_sampling_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sample_sigmas(4, **kwargs)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 2, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(6, 2, 4, 4, generator=generator, dtype=torch.float64)
    sigmas = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
    return x0, noise, sigmas


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("loss_target", PREDICTION_TYPES)
def test_a_perfect_prediction_of_any_type_has_zero_loss_for_any_target(
    prediction_type: str, loss_target: str
) -> None:
    x0, noise, sigmas = _batch(1)
    objective = FlowMatchingObjective(prediction_type=prediction_type, loss_target=loss_target)
    perfect = STRAIGHT_PATH.target(x0, noise, sigmas, prediction_type)
    loss = objective.loss(perfect, x0, noise, sigmas)
    assert float(loss) < 1e-10
    # ... and an imperfect one does not.
    assert float(objective.loss(perfect + 0.1, x0, noise, sigmas)) > 1e-4


def test_loss_values_match_hand_computed_formulas() -> None:
    x0, noise, sigmas = _batch(2)
    generator = torch.Generator().manual_seed(3)
    output = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    sig = sigmas[:, None, None, None]

    velocity = FlowMatchingObjective("velocity", "velocity").loss(output, x0, noise, sigmas)
    torch.testing.assert_close(velocity.double(), ((output - (noise - x0)) ** 2).mean(), rtol=1e-6, atol=0)

    # A sample (x0) prediction scored on velocity: v_hat - v = (x0 - x0_hat) / sigma.
    sample_as_velocity = FlowMatchingObjective("sample", "velocity").loss(output, x0, noise, sigmas)
    expected = (((x0 - output) / sig) ** 2).flatten(1).mean(1).mean()
    torch.testing.assert_close(sample_as_velocity.double(), expected, rtol=1e-5, atol=0)

    # A velocity prediction scored on epsilon: eps_hat - eps = (1 - sigma) (v_hat - v).
    velocity_as_epsilon = FlowMatchingObjective("velocity", "epsilon").loss(output, x0, noise, sigmas)
    expected = (((1 - sig) * (output - (noise - x0))) ** 2).flatten(1).mean(1).mean()
    torch.testing.assert_close(velocity_as_epsilon.double(), expected, rtol=1e-5, atol=0)

    weighted = FlowMatchingObjective("velocity", "velocity", loss_weighting="cosmap").loss(
        output, x0, noise, sigmas
    )
    per_sample = ((output - (noise - x0)) ** 2).flatten(1).mean(1)
    cosmap = 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    torch.testing.assert_close(weighted.double(), (cosmap * per_sample).mean(), rtol=1e-5, atol=0)


def test_loss_weights() -> None:
    sigmas = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(loss_weights(sigmas, "none"), torch.ones(4))
    torch.testing.assert_close(loss_weights(sigmas, "sigma_sqrt"), torch.tensor([1e6, 16.0, 4.0, 1.0]))
    torch.testing.assert_close(loss_weights(sigmas, "cosmap")[2], torch.tensor(4 / math.pi))
    with pytest.raises(ValueError, match="allowed"):
        loss_weights(sigmas, "snr")


def test_training_inputs_lie_on_the_path_at_the_model_timestep() -> None:
    objective = FlowMatchingObjective(time_sampling="uniform", shift=2.0)
    x0 = torch.randn(16, 1, 4, 4)
    noisy, timesteps, noise, sigmas = objective.training_inputs(x0, torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        noisy, (1 - sigmas[:, None, None, None]) * x0 + sigmas[:, None, None, None] * noise
    )
    torch.testing.assert_close(timesteps, sigmas * 1000)
    assert noise.shape == x0.shape and sigmas.shape == (16,)


def test_label_dropout() -> None:
    labels = torch.arange(10).repeat(1000)
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)
    assert torch.all(drop_labels(labels, 1.0, 10) == 10)
    dropped = drop_labels(labels, 0.1, 10, torch.Generator().manual_seed(0))
    is_null = dropped == 10
    # Binomial(10000, 0.1): mean 1000, std 30.
    assert 880 < int(is_null.sum()) < 1120
    assert torch.equal(dropped[~is_null], labels[~is_null])
    with pytest.raises(ValueError, match="probability"):
        drop_labels(labels, 1.5, 10)


def test_objective_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="prediction_type"):
        FlowMatchingObjective(prediction_type="v")
    with pytest.raises(ValueError, match="loss_target"):
        FlowMatchingObjective(loss_target="x0")
    with pytest.raises(ValueError, match="weighting"):
        FlowMatchingObjective(loss_weighting="snr")


# ----------------------------------------------------------------------------- other paths
def test_linear_path_objective_is_the_straight_path_bit_for_bit() -> None:
    x0 = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = FlowMatchingObjective(prediction_type="sample", loss_target="velocity")
    linear = FlowMatchingObjective(prediction_type="sample", loss_target="velocity", path=get_path("linear"))
    first = plain.training_inputs(x0, torch.Generator().manual_seed(1))
    second = linear.training_inputs(x0, torch.Generator().manual_seed(1))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    output = torch.randn_like(x0)
    noisy, _, noise, sigmas = first
    assert torch.equal(
        plain.loss(output, x0, noise, sigmas, noisy), linear.loss(output, x0, noise, sigmas, noisy)
    )


@pytest.mark.parametrize("path_name", ["cosine", "vp"])
@pytest.mark.parametrize("prediction_type", ["velocity", "sample", "epsilon"])
def test_exact_path_targets_have_zero_loss_and_the_path_time_has_our_noise_level(path_name, prediction_type):
    path = get_path(path_name)
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Uniform draws reach the data end, where the VP velocity target would be infinite without the floor.
    objective = FlowMatchingObjective(
        prediction_type=prediction_type, loss_target="velocity", time_sampling="uniform", path=path
    )
    noisy, timesteps, noise, sigmas = objective.training_inputs(x0, torch.Generator().manual_seed(1))
    times = objective.path_times(sigmas)
    floor = path.training_time_range[0]
    assert float(times.min()) >= floor and torch.allclose(timesteps, times * 1000)
    # The model input is the path point, i.e. our x_sigma scaled by a + b wherever sigma lies in the path's range.
    a, b = path.coefficients(times.double())
    assert torch.allclose(noisy, a.view(-1, 1, 1, 1) * x0 + b.view(-1, 1, 1, 1) * noise)
    inside = (sigmas < path.sigma_range[1]) & (times > floor)
    assert torch.allclose(path.sigma_from_time(times)[inside], sigmas[inside].double(), atol=1e-6)
    exact = path.target(x0, noise, times, prediction_type)
    assert torch.isfinite(exact).all()
    assert float(objective.loss(exact, x0, noise, sigmas, noisy)) < 1e-8
    assert float(objective.loss(exact + 0.1, x0, noise, sigmas, noisy)) > 1e-3
