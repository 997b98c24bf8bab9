"""Affine paths (linear, cosine, VP, user-given) and their mapping onto the straight path.

The reference for every path is independent of `flow_pipelines.paths`: the coefficients are written out
in `tests/oracles.py`, and the exact model of Gaussian data on a path is Gaussian conditioning of
``a x0 + b noise``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from flow_pipelines import DiTModel, FlowEulerScheduler, FlowHeunScheduler
from flow_pipelines.analytic import sample_with_scheduler
from flow_pipelines.paths import (
    PATH_NAMES,
    STRAIGHT_PATH,
    AffinePath,
    CosinePath,
    CustomPath,
    LinearPath,
    ReversedPath,
    VPPath,
    get_path,
    path_from_config,
)

from .oracles import GAUSSIAN, REFERENCES, noise, reference_time, vp_reference

PREDICTION_TYPES = ("velocity", "sample", "epsilon")


def exact_path_model(name: str, prediction_type: str):
    """The exact model of the Gaussian data on a named path, called like a transformer.

    With ``x_s = a x0 + b noise``, ``x_s ~ N(a m, a^2 std^2 + b^2)``; conditioning gives
    ``E[x0 | x_s] = m + a std^2 / V (x_s - a m)`` and ``E[noise | x_s] = b / V (x_s - a m)``.
    """

    def predict(sample: torch.Tensor, timestep) -> torch.Tensor:
        a, b, da, db = REFERENCES[name](float(timestep) / 1000)
        mean, std = GAUSSIAN.mean, GAUSSIAN.std
        variance = a * a * std**2 + b * b
        residual = sample.double() - a * mean
        x0 = mean + a * std**2 / variance * residual
        noise = b / variance * residual
        return {"velocity": da * x0 + db * noise, "sample": x0, "epsilon": noise}[prediction_type]

    return predict


def through_mapping(path: AffinePath, model, model_prediction: str, target: str = "velocity"):
    """A path model as our model: the sampler's ``(x, sigma * 1000)`` mapped with `path.at_sigma`."""

    def predict(sample: torch.Tensor, timestep) -> torch.Tensor:
        point = path.at_sigma(float(timestep) / 1000)
        output = model(point.model_input(sample), point.timestep)
        return point.to_straight(output, sample, model_prediction, target)

    return predict


def linear_model(sample: torch.Tensor, timestep) -> torch.Tensor:
    return GAUSSIAN.velocity(sample.double(), float(timestep) / 1000)


# ----------------------------------------------------------------------------- the paths themselves
@pytest.mark.parametrize("name", ["cosine", "vp"])
def test_coefficients_and_time_maps_match_the_written_out_paths(name):
    path = get_path(name)
    times = torch.linspace(0.01, 1.0, 23, dtype=torch.float64)
    a, b = path.coefficients(times)
    da, db = path.derivatives(times)
    expected = torch.tensor([REFERENCES[name](float(s)) for s in times], dtype=torch.float64)
    torch.testing.assert_close(torch.stack([a, b, da, db], dim=1), expected, rtol=1e-12, atol=1e-12)

    low, high = path.sigma_range
    assert low == 0.0
    sigmas = torch.linspace(0.0, high, 41, dtype=torch.float64)
    inverse = path.time_from_sigma(sigmas)
    expected_times = torch.tensor([reference_time(name, float(s)) for s in sigmas], dtype=torch.float64)
    torch.testing.assert_close(inverse, expected_times, rtol=0, atol=1e-10)
    # The closed form agrees with the generic bisection and inverts sigma(s).
    torch.testing.assert_close(inverse, AffinePath.time_from_sigma(path, sigmas), rtol=0, atol=1e-12)
    torch.testing.assert_close(path.sigma_from_time(inverse), sigmas, rtol=0, atol=1e-12)


def test_vp_defaults_are_ddpm_linear_betas_and_the_path_stops_short_of_noise():
    path = VPPath()
    assert (
        VPPath.from_ddpm_betas(1e-4, 0.02, 1000).kwargs == path.kwargs == {"beta_min": 0.1, "beta_max": 20.0}
    )
    # DDPM's discrete cumulative products at t against the continuous path at s = t / 1000.
    alphas_cumprod = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double()
    a, b = path.coefficients(torch.arange(1000, dtype=torch.float64) / 1000)
    assert (a - alphas_cumprod.sqrt()).abs().max() < 3e-3
    assert (b - (1 - alphas_cumprod).sqrt()).abs().max() < 1.1e-2
    # Never pure noise: sigma(1) = b(1) / (a(1) + b(1)) < 1, and sigma beyond it maps to s = 1.
    a1, b1, _, _ = vp_reference(1.0)
    assert path.sigma_range[1] == pytest.approx(b1 / (a1 + b1), rel=1e-12) and path.sigma_range[1] < 0.994
    for sigma in (path.sigma_range[1], 0.999, 1.0):
        point = path.at_sigma(sigma)
        assert point.time == 1.0 and point.timestep == 1000.0
        assert point.scale == pytest.approx(a1 + b1, rel=1e-12)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_interpolate_and_targets_are_consistent(name):
    path = get_path(name)
    generator = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(6, 3, generator=generator), torch.randn(6, 3, generator=generator)
    times = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.97], dtype=torch.float64)
    a, b = path.coefficients(times)
    da, db = path.derivatives(times)
    x = path.interpolate(x0, eps, times)
    torch.testing.assert_close(x, a.float()[:, None] * x0 + b.float()[:, None] * eps)
    velocity = path.target(x0, eps, times, "velocity")
    torch.testing.assert_close(velocity, da.float()[:, None] * x0 + db.float()[:, None] * eps)
    # The velocity is the time derivative of the interpolation.
    h = 1e-6
    x0_64, eps_64 = x0.double(), eps.double()
    numeric = (path.interpolate(x0_64, eps_64, times + h) - path.interpolate(x0_64, eps_64, times - h)) / (
        2 * h
    )
    torch.testing.assert_close(path.target(x0_64, eps_64, times, "velocity"), numeric, rtol=1e-6, atol=1e-6)
    assert path.target(x0, eps, 0.3, "sample") is x0 and path.target(x0, eps, 0.3, "epsilon") is eps
    # Each target determines the pair (x0, noise) given x, and the path's own conversions agree.
    for source in PREDICTION_TYPES:
        prediction = path.target(x0_64, eps_64, times, source)
        x_64 = path.interpolate(x0_64, eps_64, times)
        recovered = path.decompose(prediction, x_64, times, source)
        torch.testing.assert_close(recovered[0], x0_64, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(recovered[1], eps_64, rtol=1e-9, atol=1e-9)
        for target in PREDICTION_TYPES:
            converted = path.convert(prediction, x_64, times, source, target)
            torch.testing.assert_close(
                converted, path.target(x0_64, eps_64, times, target), rtol=1e-9, atol=1e-9
            )


def test_the_linear_path_is_the_straight_one_and_its_mapping_the_identity():
    path = get_path("linear")
    generator = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    expected = (1 - sigma[:, None]) * x0 + sigma[:, None] * eps
    assert torch.equal(path.interpolate(x0, eps, sigma), expected)
    assert torch.equal(path.target(x0, eps, sigma, "velocity"), eps - x0)
    assert isinstance(path, LinearPath) and isinstance(STRAIGHT_PATH, LinearPath) and path.kwargs == {}
    point = path.at_sigma(0.37)
    x = path.interpolate(x0, eps, 0.37)
    assert point.time == 0.37 and point.scale == 1.0
    assert point.timestep == pytest.approx(370.0) and torch.equal(point.model_input(x), x)
    v = eps - x0
    assert torch.equal(point.to_straight(v, x, "velocity"), v)
    # Our conversions by hand: x0 = x - sigma v, noise = x + (1 - sigma) v, score = -noise / sigma.
    torch.testing.assert_close(point.to_straight(v, x, "velocity", "sample"), x - 0.37 * v, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        point.to_straight(v, x, "velocity", "epsilon"), x + 0.63 * v, rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        path.score(v, x, 0.37, "velocity"), -(x + 0.63 * v) / 0.37, rtol=1e-6, atol=1e-6
    )


def test_conversions_round_trip_and_match_the_path():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    x = STRAIGHT_PATH.interpolate(x0, eps, sigma)
    v = eps - x0
    assert torch.allclose(STRAIGHT_PATH.convert(v, x, sigma, "velocity", "sample"), x0, atol=1e-6)
    assert torch.allclose(STRAIGHT_PATH.convert(v, x, sigma, "velocity", "epsilon"), eps, atol=1e-6)
    for source, value in (("velocity", v), ("sample", x0), ("epsilon", eps)):
        for target, expected in (("velocity", v), ("sample", x0), ("epsilon", eps)):
            converted = STRAIGHT_PATH.convert(value, x, sigma, source, target)
            assert torch.allclose(converted, expected, atol=1e-5), (source, target)
    # The score of the conditional path N((1 - sigma) x0, sigma^2) at x is -eps / sigma.
    assert torch.allclose(STRAIGHT_PATH.score(v, x, sigma, "velocity"), -eps / sigma[:, None], atol=1e-5)


def test_straight_path_targets_are_the_exact_path_quantities() -> None:
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(6, 2, 4, 4, generator=generator, dtype=torch.float64)
    sigmas = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
    assert torch.equal(STRAIGHT_PATH.target(x0, noise, sigmas, "velocity"), noise - x0)
    assert torch.equal(STRAIGHT_PATH.target(x0, noise, sigmas, "sample"), x0)
    assert torch.equal(STRAIGHT_PATH.target(x0, noise, sigmas, "epsilon"), noise)
    # The velocity is the derivative of the path in sigma.
    step = 1e-6
    derivative = (
        STRAIGHT_PATH.interpolate(x0, noise, sigmas + step)
        - STRAIGHT_PATH.interpolate(x0, noise, sigmas - step)
    ) / (2 * step)
    torch.testing.assert_close(
        derivative, STRAIGHT_PATH.target(x0, noise, sigmas, "velocity"), atol=1e-8, rtol=0
    )


def test_reversed_time_is_sits_linear_path():
    """SiT: x_t = t x0 + (1 - t) noise with noise at t = 0, velocity x0 - noise."""
    sit = get_path("linear", reverse_time=True)
    assert isinstance(sit, ReversedPath) and sit.kwargs == {"reverse_time": True}
    assert path_from_config({"path": "linear", "path_kwargs": {"reverse_time": True}}).kwargs == sit.kwargs
    generator = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    t = torch.tensor([0.1, 0.4, 0.6, 0.95])
    torch.testing.assert_close(sit.interpolate(x0, eps, t), t[:, None] * x0 + (1 - t[:, None]) * eps)
    torch.testing.assert_close(sit.target(x0, eps, t, "velocity"), x0 - eps)
    assert sit.sigma_range == (0.0, 1.0)
    torch.testing.assert_close(
        sit.time_from_sigma(torch.tensor([0.25, 0.8])), torch.tensor([0.75, 0.2]).double()
    )
    # Our point at sigma is SiT's at t = 1 - sigma, unscaled; SiT's velocity is minus ours.
    point = sit.at_sigma(0.3, num_train_timesteps=1)
    assert point.time == pytest.approx(0.7) and point.timestep == pytest.approx(0.7) and point.scale == 1.0
    x = STRAIGHT_PATH.interpolate(x0, eps, 0.3)
    torch.testing.assert_close(point.to_straight(x0 - eps, x, "velocity"), eps - x0, rtol=0, atol=1e-6)
    low, high = VPPath.training_time_range
    assert ReversedPath(VPPath()).training_time_range == (1 - high, 1 - low)


# ----------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize("name", ["linear", "cosine", "vp", "custom", "reversed-cosine"])
def test_every_path_prediction_maps_to_our_prediction(name):
    if name == "custom":
        path = CustomPath(lambda s: (1 - s) ** 2, lambda s: s * (2 - s) ** 0.5)
    elif name == "reversed-cosine":
        path = get_path("cosine", reverse_time=True)
    else:
        path = get_path(name)
    generator = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    x = STRAIGHT_PATH.interpolate(x0, eps, sigma)
    point = path.at_sigma(sigma)
    # c * x is the point of the path with the same x0 and noise.
    torch.testing.assert_close(
        point.model_input(x), path.interpolate(x0, eps, point.time), rtol=1e-12, atol=1e-12
    )
    ours = {"velocity": eps - x0, "sample": x0, "epsilon": eps}
    for path_type in PREDICTION_TYPES:
        on_path = path.target(x0, eps, point.time, path_type)
        for our_type, our_prediction in ours.items():
            mapped = point.to_straight(on_path, x, path_type, our_type)
            torch.testing.assert_close(mapped, our_prediction, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["cosine", "vp"])
def test_exact_path_model_is_the_scaled_linear_one(name):
    # The identity behind the mapping, on the exact Gaussian model: x_s = c x_sigma, same x0 and noise.
    x_path = noise(64)
    for s in (0.1, 0.45, 0.8, 1.0):
        a, b, _, _ = REFERENCES[name](s)
        scale, sigma = a + b, b / (a + b)
        for prediction_type in ("sample", "epsilon"):
            on_path = exact_path_model(name, prediction_type)(x_path, s * 1000)
            linear = GAUSSIAN.prediction(x_path / scale, sigma, prediction_type)
            torch.testing.assert_close(on_path, linear, rtol=1e-12, atol=1e-12)
        # Through the mapping, the exact path velocity becomes the exact linear velocity.
        x = x_path / scale
        point = get_path(name).at_sigma(sigma)
        mapped = point.to_straight(
            exact_path_model(name, "velocity")(point.model_input(x), s * 1000), x, "velocity"
        )
        torch.testing.assert_close(mapped, GAUSSIAN.velocity(x, sigma), rtol=1e-9, atol=1e-9)


def _endpoint_error(scheduler_class, model, steps: int, start: float) -> tuple[float, int, torch.Tensor]:
    """Sample ``steps`` steps from ``start`` (the exact marginal there); max endpoint error, NFE, endpoint."""
    z = noise(512)
    x = GAUSSIAN.transport(z, 1.0, start) if start < 1 else z
    sigmas = np.linspace(start, 0.0, steps + 1)[:-1]
    out, nfe = sample_with_scheduler(scheduler_class(), model, x, sigmas=sigmas)
    return (out - GAUSSIAN.transport(z, 1.0)).abs().max().item(), nfe, out


@pytest.mark.parametrize(
    ("name", "prediction_type", "start"),
    # The VP path ends short of pure noise (sigma(1) = 0.99347): start inside it. An epsilon prediction
    # carries no information about x0 at pure noise: start below it.
    [
        ("cosine", "velocity", 1.0),
        ("cosine", "sample", 1.0),
        ("cosine", "epsilon", 0.99),
        ("vp", "velocity", 0.99),
        ("vp", "sample", 0.99),
        ("vp", "epsilon", 0.99),
    ],
)
def test_path_models_sample_the_linear_flow_at_the_expected_order(name, prediction_type, start):
    path = get_path(name)
    mapped = through_mapping(path, exact_path_model(name, prediction_type), prediction_type)
    steps_list = [16, 32, 64]
    for scheduler_class, (low, high), bound in (
        (FlowEulerScheduler, (-1.15, -0.85), 0.12),
        (FlowHeunScheduler, (-2.3, -1.7), 3e-3),
    ):
        errors, nfes = [], []
        for steps in steps_list:
            error, nfe, out = _endpoint_error(scheduler_class, mapped, steps, start)
            _, _, linear_out = _endpoint_error(scheduler_class, linear_model, steps, start)
            # The mapped path model is the linear model's velocity field: the same trajectory.
            # (The schedulers round to float32 in places.)
            torch.testing.assert_close(out, linear_out, rtol=1e-6, atol=1e-6)
            errors.append(error)
            nfes.append(nfe)
        slope = np.polyfit(np.log(nfes), np.log(errors), 1)[0]
        assert low < slope < high, f"{scheduler_class.__name__}: slope {slope:.2f}"
        assert errors[-1] < bound


def test_vp_model_from_pure_noise_lands_close_to_the_exact_endpoint():
    # From sigma = 1 the first evaluation is clamped to s = 1 (the noisiest input the model knows). The
    # error that adds is of order h * (1 - sigma(1)): small against Euler's, and Heun stays second order
    # over these step counts.
    mapped = through_mapping(get_path("vp"), exact_path_model("vp", "velocity"), "velocity")
    for scheduler_class, tolerance in ((FlowEulerScheduler, 0.02), (FlowHeunScheduler, 0.1)):
        errors = [_endpoint_error(scheduler_class, mapped, steps, 1.0)[0] for steps in (32, 128)]
        linear = [_endpoint_error(scheduler_class, linear_model, steps, 1.0)[0] for steps in (32, 128)]
        np.testing.assert_allclose(errors, linear, rtol=tolerance)
    assert errors[1] < errors[0] / 12


def test_generic_affine_path_matches_the_named_one():
    user = CustomPath(lambda s: torch.cos(math.pi * s / 2), lambda s: torch.sin(math.pi * s / 2))
    cosine = CosinePath()
    sigmas = torch.linspace(0.0, 1.0, 17, dtype=torch.float64)
    torch.testing.assert_close(
        user.time_from_sigma(sigmas), cosine.time_from_sigma(sigmas), rtol=0, atol=1e-12
    )
    times = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    for got, expected in zip(user.derivatives(times), cosine.derivatives(times), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)  # autograd
    mapped = through_mapping(user, exact_path_model("cosine", "velocity"), "velocity")
    error, _, out = _endpoint_error(FlowHeunScheduler, mapped, 16, 1.0)
    _, _, linear_out = _endpoint_error(FlowHeunScheduler, linear_model, 16, 1.0)
    torch.testing.assert_close(out, linear_out, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_bad_paths_and_prediction_types_are_rejected():
    with pytest.raises(ValueError, match="Unknown path 'edm'; known paths: linear, cosine, vp"):
        get_path("edm")
    with pytest.raises(
        ValueError, match=r"path 'cosine' does not take \['beta_min'\]; allowed parameters: reverse_time"
    ):
        get_path("cosine", beta_min=0.1)
    with pytest.raises(
        ValueError,
        match=r"path 'vp' does not take \['beta'\]; allowed parameters: beta_min, beta_max, reverse_time",
    ):
        get_path("vp", beta=1.0)
    with pytest.raises(ValueError, match="beta_min >= 0 and beta_max > 0; got beta_min=-1"):
        VPPath(beta_min=-1.0)
    small = {"sample_size": 8, "hidden_size": 32, "num_layers": 1, "num_attention_heads": 2}
    with pytest.raises(ValueError, match="Unknown path 'gvp'; known paths"):
        DiTModel(**small, path="gvp")
    with pytest.raises(ValueError, match=r"path 'vp' does not take \['sigma_max'\]"):
        DiTModel(**small, path="vp", path_kwargs={"sigma_max": 80.0})
    with pytest.raises(
        ValueError, match="prediction_type='v_prediction' is not supported; allowed: velocity"
    ):
        CosinePath().target(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, "v_prediction")
    point = VPPath().at_sigma(0.5)
    with pytest.raises(ValueError, match="prediction_type='score' is not supported"):
        point.to_straight(torch.zeros(1, 2), torch.zeros(1, 2), "score")
    with pytest.raises(ValueError, match="prediction_type='flow' is not supported"):
        point.to_straight(torch.zeros(1, 2), torch.zeros(1, 2), "epsilon", "flow")
    with pytest.raises(ValueError, match="reverse_time='yes' must be True or False"):
        get_path("linear", reverse_time="yes")


def test_a_path_whose_scale_vanishes_on_the_sampling_grid_is_rejected():
    # a + b -> 0 at s = 1 while sigma(s) = s / (1 + s) only reaches 0.5: every grid's first noise levels map
    # to s = 1, where x / (a + b) is undefined.
    shrinking = CustomPath(lambda s: 1 - s, lambda s: s * (1 - s))
    assert shrinking.sigma_range[0] == 0.0
    shrinking.at_sigma(0.3)  # inside the range: fine
    with pytest.raises(ValueError, match=r"a\(t\) \+ b\(t\) = 0 vanishes at t=1, .*sigma=1"):
        sample_with_scheduler(
            FlowEulerScheduler(), through_mapping(shrinking, lambda x, t: x, "epsilon"), noise(4), 4
        )
    with pytest.raises(ValueError, match=r"sigma\(t\) = b / \(a \+ b\) decreases"):
        CustomPath(lambda s: s, lambda s: 1 - s)
    with pytest.raises(ValueError, match="b=0.5 must be a callable"):
        CustomPath(lambda s: 1 - s, 0.5)
