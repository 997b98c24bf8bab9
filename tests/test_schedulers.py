"""Flow schedulers against an exactly solvable flow and against diffusers' own FlowMatch schedulers."""

import inspect
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

from flow_pipelines import FlowEulerScheduler, FlowHeunScheduler, FlowMultistepScheduler, FlowSDEScheduler
from flow_pipelines.analytic import sample_with_scheduler
from flow_pipelines.paths import STRAIGHT_PATH
from flow_pipelines.schedulers import DIFFUSION_FORMS

from .oracles import GAUSSIAN, exact_model, noise

OURS = [FlowEulerScheduler, FlowHeunScheduler, FlowSDEScheduler]
DIFFUSERS_FLOW = [FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler]


def endpoint_error(scheduler, steps=None, sigmas=None, prediction_type="velocity", start=None, z=None):
    z = noise() if z is None else z
    start = 1.0 if start is None else start
    x = GAUSSIAN.transport(z, 1.0, start) if start < 1.0 else z
    out, nfe = sample_with_scheduler(
        scheduler, exact_model(prediction_type=prediction_type), x, steps, sigmas
    )
    return (out.double() - GAUSSIAN.transport(z, 1.0)).abs().max().item(), nfe


def slope(cls, steps_list, **config):
    errors, nfes = zip(*(endpoint_error(cls(**config), steps) for steps in steps_list), strict=True)
    return np.polyfit(np.log(nfes), np.log(errors), 1)[0]


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_reproduces_diffusers_trajectory_on_the_same_sigmas(shift):
    sigmas = np.linspace(1.0, 0.05, 12)
    ours = FlowEulerScheduler(shift=shift)
    theirs = FlowMatchEulerDiscreteScheduler(shift=shift)
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    assert torch.allclose(ours.timesteps, theirs.timesteps, atol=1e-4)
    x_ours = x_theirs = noise(256).float()
    model = exact_model()
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps, strict=True):
        x_ours = ours.step(model(x_ours, t_ours), t_ours, x_ours).prev_sample
        x_theirs = theirs.step(model(x_theirs, t_theirs), t_theirs, x_theirs).prev_sample
        assert (x_ours - x_theirs).abs().max() <= 1e-5


def test_euler_is_first_order_and_heun_second_order():
    assert -1.15 < slope(FlowEulerScheduler, [16, 32, 64, 128]) < -0.85
    assert -2.3 < slope(FlowHeunScheduler, [16, 32, 64, 128]) < -1.7


def test_heun_matches_diffusers_heun_layout_and_accuracy():
    ours, theirs = FlowHeunScheduler(), FlowMatchHeunDiscreteScheduler()
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    assert len(ours.timesteps) == 2 * 8 - 1
    assert torch.allclose(ours.timesteps, theirs.timesteps, atol=1e-3)
    err_ours, nfe_ours = endpoint_error(ours, 8)
    err_theirs, nfe_theirs = endpoint_error(theirs, 8)
    assert nfe_ours == nfe_theirs == 15
    assert err_ours <= err_theirs * 1.001


def test_heun_accepts_explicit_sigmas_and_ends_with_euler():
    scheduler = FlowHeunScheduler()
    scheduler.set_timesteps(sigmas=[1.0, 0.6, 0.3])
    # Heun 1 -> 0.6, Heun 0.6 -> 0.3, Euler 0.3 -> 0: 2 + 2 + 1 model calls.
    assert scheduler.timesteps.tolist() == pytest.approx([1000, 600, 600, 300, 300], abs=1e-3)
    # One Heun step on a linear velocity field is exact to second order; compare with the trapezoid by hand.
    z = noise(8)
    x1 = z
    v1 = GAUSSIAN.velocity(x1, 1.0)
    predicted = x1 - 0.4 * v1
    expected = x1 - 0.4 * 0.5 * (v1 + GAUSSIAN.velocity(predicted, 0.6))
    scheduler.step(v1.float(), scheduler.timesteps[0], x1.float())
    out = scheduler.step(
        GAUSSIAN.velocity(predicted.float().double(), 0.6).float(), scheduler.timesteps[1], x1.float()
    )
    assert torch.allclose(out.prev_sample.double(), expected, atol=1e-5)


@pytest.mark.parametrize("form", DIFFUSION_FORMS)
def test_sde_samples_match_the_target_mean_and_std(form):
    scheduler = FlowSDEScheduler(diffusion_form=form)
    z = noise(20000, seed=3)
    generator = torch.Generator().manual_seed(0)
    out, nfe = sample_with_scheduler(scheduler, exact_model(), z.float(), 100, generator=generator)
    assert nfe == 100
    assert torch.allclose(out.mean(0).double(), GAUSSIAN.mean, atol=0.03)
    assert torch.allclose(out.std(0).double() / GAUSSIAN.std, torch.ones(4, dtype=torch.float64), atol=0.04)
    # Stochastic: the endpoint is not the deterministic flow map of the starting noise.
    assert (out.double() - GAUSSIAN.transport(z, 1.0)).abs().mean() > 0.05


def test_sde_with_zero_diffusion_is_euler_and_is_reproducible():
    z = noise(64).float()
    euler, _ = sample_with_scheduler(FlowEulerScheduler(), exact_model(), z, 10)
    ode, _ = sample_with_scheduler(FlowSDEScheduler(diffusion_norm=0.0), exact_model(), z, 10)
    assert torch.allclose(euler, ode, atol=1e-6)
    runs = [
        sample_with_scheduler(
            FlowSDEScheduler(), exact_model(), z, 10, generator=torch.Generator().manual_seed(s)
        )[0]
        for s in (0, 0, 1)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("cls", OURS)
def test_prediction_types_give_the_same_endpoint(cls):
    # Start below sigma = 1: an epsilon prediction carries no information about x0 at pure noise.
    sigmas = np.linspace(0.99, 0.02, 20)
    z = noise(512)
    endpoints = []
    for prediction_type in ("velocity", "sample", "epsilon"):
        scheduler = cls(prediction_type=prediction_type)
        x = GAUSSIAN.transport(z, 1.0, 0.99).float()
        generator = torch.Generator().manual_seed(0)
        out, _ = sample_with_scheduler(
            scheduler, exact_model(prediction_type=prediction_type), x, sigmas=sigmas, generator=generator
        )
        endpoints.append(out)
    assert torch.allclose(endpoints[0], endpoints[1], atol=1e-4)
    assert torch.allclose(endpoints[0], endpoints[2], atol=1e-4)


def test_shift_is_applied_once_and_mu_sets_it_dynamically():
    scheduler = FlowEulerScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    base = torch.linspace(1, 0, 5, dtype=torch.float64)
    assert torch.allclose(scheduler.sigmas.double(), 3 * base / (1 + 2 * base), atol=1e-6)
    dynamic = FlowEulerScheduler(use_dynamic_shifting=True)
    dynamic.set_timesteps(4, mu=math.log(3.0))
    assert torch.allclose(dynamic.sigmas, scheduler.sigmas)
    with pytest.raises(ValueError, match="mu"):
        dynamic.set_timesteps(4)


# ----------------------------------------------------------------------------- the diffusers surface
@pytest.mark.parametrize("cls", OURS)
def test_scheduler_mixin_surface(cls):
    scheduler = cls()
    assert scheduler.init_noise_sigma == 1.0
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert scheduler.scale_model_input(x0, 500.0) is x0
    timesteps = torch.tensor([100.0, 500.0, 900.0])
    expected = STRAIGHT_PATH.interpolate(x0, eps, timesteps / 1000)
    assert torch.allclose(scheduler.add_noise(x0, eps, timesteps), expected)
    assert torch.allclose(scheduler.scale_noise(x0, timesteps, eps), expected)
    assert torch.allclose(scheduler.scale_noise(x0, 250.0, eps), 0.75 * x0 + 0.25 * eps)
    assert len(scheduler) == 1000
    assert FlowMatchEulerDiscreteScheduler in scheduler.compatibles
    assert cls in scheduler.compatibles

    scheduler.set_timesteps(5)
    assert torch.allclose(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)
    twin = cls()
    twin.set_timesteps(5)
    x_dict = x_tuple = eps
    for index, t in enumerate(scheduler.timesteps):
        dict_out = scheduler.step(x0, t, x_dict, generator=torch.Generator().manual_seed(index))
        tuple_out = twin.step(
            x0, t, x_tuple, generator=torch.Generator().manual_seed(index), return_dict=False
        )
        assert torch.equal(dict_out.prev_sample, tuple_out[0])
        assert torch.equal(dict_out.pred_original_sample, tuple_out[1])
        x_dict, x_tuple = dict_out.prev_sample, tuple_out[0]


@pytest.mark.parametrize("cls", OURS)
def test_low_precision_samples_keep_their_dtype(cls):
    scheduler = cls()
    scheduler.set_timesteps(3)
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    out = scheduler.step(torch.randn(2, 4, dtype=torch.bfloat16), scheduler.timesteps[0], x)
    assert out.prev_sample.dtype == torch.bfloat16


@pytest.mark.parametrize("cls", OURS)
def test_runs_in_a_diffusers_pipeline_helper(cls):
    # SD3/FLUX pipelines lay out the schedule through retrieve_timesteps, passing sigmas.
    scheduler = cls()
    timesteps, steps = retrieve_timesteps(scheduler, sigmas=list(np.linspace(1.0, 0.25, 4)))
    assert timesteps is scheduler.timesteps
    assert steps == len(timesteps) == (4 if scheduler.order == 1 else 7)
    assert float(timesteps[0]) == pytest.approx(1000.0)


SWAPPABLE = OURS + DIFFUSERS_FLOW


SWAP_PAIRS = [(a, b) for a in SWAPPABLE for b in SWAPPABLE if a in OURS or b in OURS]


@pytest.mark.parametrize(("source", "target"), SWAP_PAIRS)
def test_from_config_swaps_among_ours_and_diffusers(source, target):
    original = source(shift=2.0, num_train_timesteps=500)
    swapped = target.from_config(original.config)
    assert isinstance(swapped, target)
    assert swapped.config.shift == 2.0
    assert swapped.config.num_train_timesteps == 500
    swapped.set_timesteps(4)
    x = torch.randn(2, 3)
    for t in swapped.timesteps:
        x = swapped.step(torch.zeros_like(x), t, x).prev_sample
    assert torch.isfinite(x).all()


def test_non_default_settings_survive_a_round_trip_through_diffusers():
    sde = FlowSDEScheduler(diffusion_form="constant", prediction_type="sample", shift=3.0)
    back = FlowSDEScheduler.from_config(FlowMatchEulerDiscreteScheduler.from_config(sde.config).config)
    assert back.config.diffusion_form == "constant"
    assert back.config.prediction_type == "sample"
    assert back.config.shift == 3.0


@pytest.mark.parametrize("cls", OURS)
def test_save_and_load_round_trip(cls, tmp_path):
    original = cls(shift=2.5, prediction_type="sample", sigma_schedule="karras", rho=3.0)
    original.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    drop = "_use_default_values"
    assert {k: v for k, v in loaded.config.items() if k != drop} == {
        k: v for k, v in original.config.items() if k != drop
    }
    original.set_timesteps(6)
    loaded.set_timesteps(6)
    assert torch.equal(original.timesteps, loaded.timesteps)
    assert torch.equal(original.sigmas, loaded.sigmas)


def test_karras_schedule_is_dense_near_the_data():
    scheduler = FlowEulerScheduler(sigma_schedule="karras", rho=3.0)
    scheduler.set_timesteps(4)
    expected = torch.tensor([1.0, 0.75**3, 0.5**3, 0.25**3, 0.0])
    assert torch.allclose(scheduler.sigmas, expected)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", OURS)
def test_bad_input_raises_clear_errors(cls):
    with pytest.raises(ValueError, match="prediction_type='noise'.*velocity, sample, epsilon"):
        cls(prediction_type="noise")
    with pytest.raises(ValueError, match="sigma_schedule='linear'"):
        cls(sigma_schedule="linear")
    with pytest.raises(ValueError, match="shift=0"):
        cls(shift=0)
    scheduler = cls()
    with pytest.raises(ValueError, match="before set_timesteps"):
        scheduler.step(torch.zeros(1), 1000.0, torch.zeros(1))
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps()
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(sigmas=[0.5, 0.8, 0.2])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        scheduler.set_timesteps(sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match="disagrees"):
        scheduler.set_timesteps(3, sigmas=[1.0, 0.5])
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="integer"):
        scheduler.step(torch.zeros(1), 1000, torch.zeros(1))
    with pytest.raises(ValueError, match="not in this scheduler's timesteps"):
        scheduler.step(torch.zeros(1), 123.0, torch.zeros(1))
    x = torch.zeros(1)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros(1), t, x).prev_sample
    with pytest.raises(ValueError, match="have been taken"):
        scheduler.step(torch.zeros(1), scheduler.timesteps[-1], x)


def test_unknown_diffusion_form_is_rejected():
    with pytest.raises(ValueError, match="diffusion_form='sbdm'.*constant, sigma"):
        FlowSDEScheduler(diffusion_form="sbdm")
    with pytest.raises(ValueError, match="diffusion_norm=-1"):
        FlowSDEScheduler(diffusion_norm=-1)


def test_multistep_diffusers_schedulers_run_on_the_same_analytic_flow():
    # The benchmark compares against these in flow mode; make sure that mode samples the same flow.
    for cls in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        scheduler = cls(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
        error, nfe = endpoint_error(scheduler, 32)
        assert nfe == 32 and error < 0.05


# ----------------------------------------------------------------------------- diffusers' common scheduler checks
ALL_OURS = [*OURS, FlowMultistepScheduler]


def _step(scheduler, residual, timestep, sample, **kwargs):
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = torch.manual_seed(0)
    return scheduler.step(residual, timestep, sample, **kwargs)


@pytest.mark.parametrize("cls", ALL_OURS)
def test_what_diffusers_common_scheduler_tests_check(cls, tmp_path):
    """SchedulerCommonTest's checks, on its dummy sample (4x3x8x8 in [0, 1], residual 0.1 x sample) and at the
    first timesteps of a fresh 50-step grid. Its `trained_betas` check does not apply: flow schedulers have no betas."""
    torch.manual_seed(0)
    sample = torch.rand(4, 3, 8, 8)
    residual = 0.1 * sample
    scheduler = cls(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(50)
    timestep, timestep_2 = scheduler.timesteps[0], scheduler.timesteps[1]

    # save_config / from_pretrained: same config, same step.
    scheduler.save_config(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert {k: v for k, v in scheduler.config.items() if k != "_use_default_values"} == dict(loaded.config)
    loaded.set_timesteps(50)
    fresh = cls(num_train_timesteps=1000, shift=1.0)
    fresh.set_timesteps(50)
    expected = _step(fresh, residual, timestep, sample).prev_sample
    assert torch.sum(torch.abs(expected - _step(loaded, residual, timestep, sample).prev_sample)) < 1e-5

    # Step shapes, and the tuple output equals the dict output.
    shaped = cls()
    shaped.set_timesteps(50)
    assert _step(shaped, residual, timestep, sample).prev_sample.shape == sample.shape
    assert _step(shaped, residual, timestep_2, sample).prev_sample.shape == sample.shape
    as_tuple = cls()
    as_tuple.set_timesteps(50)
    output = _step(as_tuple, residual, timestep, sample, return_dict=False)
    assert isinstance(output, tuple) and torch.allclose(output[0], expected, atol=1e-5)

    # Public API: init_noise_sigma, scale_model_input keeps the shape, add_noise with a one-element timestep.
    assert scheduler.init_noise_sigma is not None
    assert scheduler.scale_model_input(sample, 0.0).shape == sample.shape
    noised = scheduler.add_noise(sample, torch.randn(sample.shape), scheduler.timesteps[5][None])
    assert noised.shape == sample.shape

    # Compatibles round trip to an identical config; **kwargs only with declared deprecated kwargs.
    assert all(compatible is not None for compatible in scheduler.compatibles)
    for compatible in scheduler.compatibles:
        other = compatible.from_config(scheduler.config)
        back = cls.from_config(other.config)
        assert {k: v for k, v in back.config.items() if k in scheduler.config} == dict(scheduler.config)
        extra = {k for k in back.config if k not in scheduler.config}
        assert not extra & set(inspect.signature(cls.__init__).parameters)
    takes_kwargs = "kwargs" in inspect.signature(cls.__init__).parameters
    assert takes_kwargs == bool(cls._deprecated_kwargs)

    # Attribute access: own attributes quietly, config values through .config (direct access warns).
    scheduler.dummy_attribute = 5
    scheduler.register_to_config(test_attribute=5)
    assert scheduler.dummy_attribute == 5
    with pytest.warns(FutureWarning):
        assert scheduler.test_attribute == 5
    with pytest.raises(AttributeError, match=f"'{cls.__name__}' object has no attribute 'does_not_exist'"):
        scheduler.does_not_exist  # noqa: B018
