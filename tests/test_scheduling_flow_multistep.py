"""The multistep flow solver against exactly solvable flows, diffusers' multistep solvers and the scheduler API."""

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

from flow_pipelines import (
    FlowEulerScheduler,
    FlowHeunScheduler,
    FlowMultistepScheduler,
    FlowPipeline,
    FlowSDEScheduler,
)
from flow_pipelines.analytic import GaussianFlow, sample_with_scheduler
from flow_pipelines.paths import STRAIGHT_PATH
from flow_pipelines.schedulers.scheduling_flow_common import LOGSNR_STRETCH
from flow_pipelines.schedulers.scheduling_flow_multistep import multistep_weights

from .oracles import GAUSSIAN, exact_model, noise

DIFFUSERS_FLOW_MODE = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}


def endpoint_error(scheduler, target, steps=None, sigmas=None, z=None):
    """Largest endpoint error against the exact flow map, starting from pure noise."""
    z = noise(2048, target.mean.numel()) if z is None else z
    out, nfe = sample_with_scheduler(scheduler, exact_model(target), z.float(), steps, sigmas)
    return (out.double() - target.transport(z, 1.0)).abs().max().item(), nfe


# ----------------------------------------------------------------------------- the quadrature
def test_weights_integrate_polynomials_times_sine_exactly():
    # With nodes at phi_j, sum_j w_j p(phi_j) = integral p(phi) sin(phi) for polynomials of degree < #nodes.
    nodes = [1.1, 1.3, 1.45]
    weights = multistep_weights(1.1, 0.8, nodes)
    for coefficients in ([2.0], [0.5, -1.0], [0.3, 0.2, -0.7]):
        poly = np.polynomial.Polynomial(coefficients)
        # integral_{1.1}^{0.8} p(phi) sin(phi) dphi by the trapezoid rule on a fine grid.
        grid = np.linspace(1.1, 0.8, 20001)
        values = poly(grid) * np.sin(grid)
        expected = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)))
        assert sum(w * poly(p) for w, p in zip(weights, nodes, strict=True)) == pytest.approx(
            expected, abs=1e-9
        )


def test_first_order_step_is_exact_for_gaussian_data_of_std_sigma_data():
    # The reference Gaussian's flow is integrated exactly, whatever its mean: one step from noise to data.
    for sigma_data in (0.5, 1.0, 2.0):
        target = GaussianFlow(mean=torch.tensor([3.0, -1.0]), std=torch.tensor([sigma_data, sigma_data]))
        scheduler = FlowMultistepScheduler(solver_order=1, sigma_data=sigma_data, use_corrector=False)
        error, nfe = endpoint_error(scheduler, target, steps=1)
        assert nfe == 1
        assert error < 1e-5, sigma_data


# ----------------------------------------------------------------------------- accuracy
def test_benchmark_gaussian_within_1e_2_at_8_evaluations():
    z = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    error, nfe = endpoint_error(FlowMultistepScheduler(), GAUSSIAN, steps=8, z=z)
    assert nfe == 8
    assert error <= 1e-2


@pytest.mark.parametrize(
    "target",
    [
        GaussianFlow(mean=torch.tensor([0.5]), std=torch.tensor([0.05])),
        GaussianFlow(mean=torch.tensor([-1.0]), std=torch.tensor([2.0])),
        GaussianFlow(mean=torch.tensor([3.0, -1.0, 0.0, 2.0]), std=torch.tensor([0.1, 0.3, 0.7, 1.5])),
    ],
    ids=["std0.05", "std2", "4d"],
)
def test_beats_diffusers_multistep_solvers_at_equal_evaluations(target):
    z = noise(4096, target.mean.numel(), seed=1)
    ours, nfe = endpoint_error(FlowMultistepScheduler(), target, steps=8, z=z)
    dpm, dpm_nfe = endpoint_error(DPMSolverMultistepScheduler(**DIFFUSERS_FLOW_MODE), target, steps=8, z=z)
    unipc, unipc_nfe = endpoint_error(UniPCMultistepScheduler(**DIFFUSERS_FLOW_MODE), target, steps=8, z=z)
    assert nfe == dpm_nfe == unipc_nfe == 8
    assert ours < 0.2 * dpm
    assert ours < 0.5 * unipc


def slope(steps_list, target, **config):
    z = noise(512, target.mean.numel())
    errors = [endpoint_error(FlowMultistepScheduler(**config), target, steps, z=z)[0] for steps in steps_list]
    return np.polyfit(np.log(steps_list), np.log(errors), 1)[0]


def test_order_of_convergence():
    target = GaussianFlow(mean=torch.tensor([1.0, -0.5]), std=torch.tensor([0.5, 1.5]))
    uniform = {"sigma_schedule": "uniform"}
    # Predictor alone: order k, except that the first step (no history yet) caps the third order at 2.
    assert -1.1 < slope([8, 16, 32, 64], target, solver_order=1, use_corrector=False, **uniform) < -0.9
    assert -2.2 < slope([8, 16, 32, 64], target, solver_order=2, use_corrector=False, **uniform) < -1.8
    # The corrector adds one order.
    assert -2.2 < slope([8, 16, 32, 64], target, solver_order=1, **uniform) < -1.8
    assert -3.2 < slope([8, 16, 32, 64], target, solver_order=2, **uniform) < -2.8
    # The default (third order with the corrector, log-SNR schedule) converges at least as fast.
    assert slope([8, 16, 32, 64], target) < -2.6


def test_prediction_types_give_the_same_endpoint():
    # Start below sigma = 1: an epsilon prediction carries no information about x0 at pure noise.
    sigmas = np.linspace(0.99, 0.02, 12)
    z = noise(512, 4)
    x = GAUSSIAN.transport(z, 1.0, 0.99).float()
    endpoints = []
    for prediction_type in ("velocity", "sample", "epsilon"):
        scheduler = FlowMultistepScheduler(prediction_type=prediction_type)
        model = exact_model(GAUSSIAN, prediction_type)
        endpoints.append(sample_with_scheduler(scheduler, model, x, sigmas=sigmas)[0])
    assert torch.allclose(endpoints[0], endpoints[1], atol=1e-4)
    assert torch.allclose(endpoints[0], endpoints[2], atol=1e-4)
    assert (endpoints[0].double() - GAUSSIAN.transport(z, 1.0)).abs().max() < 5e-3


# ----------------------------------------------------------------------------- the grid and the state
def test_logsnr_schedule_stretches_the_log_snr_of_the_uniform_grid():
    scheduler = FlowMultistepScheduler()
    scheduler.set_timesteps(8)
    sigmas = scheduler.sigmas.double()
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    uniform = torch.linspace(1.0, 0.0, 9, dtype=torch.float64)[1:-1]
    log_snr = torch.log((1 - sigmas[1:-1]) / sigmas[1:-1])
    expected = LOGSNR_STRETCH * torch.log((1 - uniform) / uniform)
    assert torch.allclose(log_snr, expected, atol=1e-5)
    assert torch.allclose(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)
    # The same spacing is open to every flow scheduler.
    euler = FlowEulerScheduler(sigma_schedule="logsnr")
    euler.set_timesteps(8)
    assert torch.equal(euler.sigmas, scheduler.sigmas)


def test_explicit_sigmas_shift_and_mu():
    scheduler = FlowMultistepScheduler(shift=3.0)
    timesteps, steps = retrieve_timesteps(scheduler, sigmas=[1.0, 0.75, 0.5, 0.25])
    assert steps == len(timesteps) == 4
    base = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    assert torch.allclose(scheduler.sigmas.double(), 3 * base / (1 + 2 * base), atol=1e-6)
    assert torch.allclose(timesteps, scheduler.sigmas[:-1] * 1000)
    dynamic = FlowMultistepScheduler(use_dynamic_shifting=True)
    dynamic.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=math.log(3.0))
    assert torch.allclose(dynamic.sigmas, scheduler.sigmas)
    error, nfe = endpoint_error(FlowMultistepScheduler(), GAUSSIAN, sigmas=np.linspace(1, 0.05, 10))
    assert nfe == 10 and error < 0.05


def test_set_timesteps_resets_the_history():
    z = noise(64, 4).float()
    model = exact_model(GAUSSIAN)
    fresh, _ = sample_with_scheduler(FlowMultistepScheduler(), model, z, 6)
    used = FlowMultistepScheduler()
    used.set_timesteps(9)
    x = torch.randn(64, 4)
    for t in used.timesteps[:5]:  # an abandoned run leaves history and a corrector target behind
        x = used.step(model(x, t), t, x).prev_sample
    again, _ = sample_with_scheduler(used, model, z, 6)
    assert torch.equal(fresh, again)


def test_starting_in_the_middle_of_the_schedule():
    # Image-to-image: the run begins at timesteps[begin_index] with no history.
    scheduler = FlowMultistepScheduler()
    scheduler.set_timesteps(10)
    scheduler.set_begin_index(3)
    z = noise(256, 4)
    sigma = float(scheduler.sigmas[3])
    x = GAUSSIAN.transport(z, 1.0, sigma).float()
    model = exact_model(GAUSSIAN)
    for t in scheduler.timesteps[3:]:
        x = scheduler.step(model(x, t), t, x).prev_sample
    assert (x.double() - GAUSSIAN.transport(z, 1.0)).abs().max() < 0.02


# ----------------------------------------------------------------------------- the diffusers surface
def test_step_outputs_and_dtype():
    scheduler, twin = FlowMultistepScheduler(), FlowMultistepScheduler()
    scheduler.set_timesteps(5)
    twin.set_timesteps(5)
    model = exact_model(GAUSSIAN)
    x_dict = x_tuple = noise(8, 4).float()
    for t in scheduler.timesteps:
        output = model(x_dict, t)
        dict_out = scheduler.step(output, t, x_dict)
        tuple_out = twin.step(model(x_tuple, t), t, x_tuple, return_dict=False)
        assert torch.equal(dict_out.prev_sample, tuple_out[0])
        sigma = float(t) / 1000
        expected_x0 = STRAIGHT_PATH.convert(output, x_dict, sigma, "velocity", "sample")
        assert torch.allclose(dict_out.pred_original_sample, expected_x0, atol=1e-6)
        x_dict, x_tuple = dict_out.prev_sample, tuple_out[0]
    low = FlowMultistepScheduler()
    low.set_timesteps(3)
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    assert low.step(torch.randn_like(x), low.timesteps[0], x).prev_sample.dtype == torch.bfloat16


SWAPPABLE = [
    FlowEulerScheduler,
    FlowHeunScheduler,
    FlowSDEScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
]


@pytest.mark.parametrize("other", SWAPPABLE)
def test_from_config_swaps_both_ways(other):
    ours = FlowMultistepScheduler.from_config(other(shift=2.0, num_train_timesteps=500).config)
    assert ours.config.shift == 2.0 and ours.config.num_train_timesteps == 500
    theirs = other.from_config(FlowMultistepScheduler(shift=2.0, num_train_timesteps=500).config)
    assert isinstance(theirs, other) and theirs.config.shift == 2.0
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(4)
        x = torch.randn(2, 3)
        for t in scheduler.timesteps:
            x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
        assert torch.isfinite(x).all()
    assert FlowMultistepScheduler in FlowEulerScheduler().compatibles


def test_save_and_load_round_trip(tmp_path):
    original = FlowMultistepScheduler(
        shift=2.5, prediction_type="sample", solver_order=2, sigma_data=0.5, use_corrector=False
    )
    original.save_pretrained(tmp_path)
    loaded = FlowMultistepScheduler.from_pretrained(tmp_path)
    drop = "_use_default_values"
    assert {k: v for k, v in loaded.config.items() if k != drop} == {
        k: v for k, v in original.config.items() if k != drop
    }
    original.set_timesteps(6)
    loaded.set_timesteps(6)
    assert torch.equal(original.sigmas, loaded.sigmas)


def test_samples_in_the_flow_pipeline_and_survives_its_save(make_flow_pipeline, tmp_path):
    pipeline = make_flow_pipeline()
    pipeline.scheduler = FlowMultistepScheduler.from_config(pipeline.scheduler.config, solver_order=2)
    pipeline.save_pretrained(tmp_path)
    reloaded = FlowPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.scheduler, FlowMultistepScheduler)
    assert reloaded.scheduler.config.solver_order == 2
    generator = torch.Generator().manual_seed(0)
    images = pipeline(
        [1, 2], num_inference_steps=5, guidance_scale=2.0, generator=generator, output_type="np"
    )
    assert images.images.shape == (2, 8, 8, 1)
    assert np.isfinite(images.images).all()


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"solver_order=4 .*allowed: 1, 2, 3"):
        FlowMultistepScheduler(solver_order=4)
    with pytest.raises(ValueError, match=r"solver_order=0"):
        FlowMultistepScheduler(solver_order=0)
    with pytest.raises(ValueError, match=r"sigma_schedule='linear'.*uniform, karras, logsnr"):
        FlowMultistepScheduler(sigma_schedule="linear")
    with pytest.raises(ValueError, match="sigma_data=0"):
        FlowMultistepScheduler(sigma_data=0)
    with pytest.raises(ValueError, match="prediction_type='noise'"):
        FlowMultistepScheduler(prediction_type="noise")
    scheduler = FlowMultistepScheduler()
    with pytest.raises(ValueError, match="before set_timesteps"):
        scheduler.step(torch.zeros(1), 1000.0, torch.zeros(1))
