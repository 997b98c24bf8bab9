"""Flow schedulers by name: each of ours and diffusers' built from a pipeline's scheduler config, sampling the
same flow, and the shift carried over whatever the config calls it."""

from __future__ import annotations

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from flow_pipelines import FlowEulerScheduler, FlowHeunScheduler, FlowMultistepScheduler, FlowSDEScheduler
from flow_pipelines.schedulers import SCHEDULERS, make_scheduler

from .pipeline_support import euler_reference, noise_for, record_calls


def test_every_flow_scheduler_samples_the_same_flow(make_flow_pipeline):
    """Each scheduler swapped in through from_config receives its own timesteps and lands near a fine Euler solution."""
    pipe = make_flow_pipeline()
    noise = noise_for(pipe, 2)
    reference = euler_reference(pipe.transformer, noise, [3, 8], steps=200, scale=2.0)
    expected_classes = {
        "euler": FlowEulerScheduler,
        "heun": FlowHeunScheduler,
        "sde": FlowSDEScheduler,
        "multistep": FlowMultistepScheduler,
        "flowmatch-euler": FlowMatchEulerDiscreteScheduler,
        "flowmatch-heun": FlowMatchHeunDiscreteScheduler,
        "dpm": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
    }
    assert set(expected_classes) == set(SCHEDULERS)
    for name, scheduler_class in expected_classes.items():
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        assert (
            type(pipe.scheduler) is scheduler_class and pipe.config.scheduler[1] == scheduler_class.__name__
        )
        with record_calls(pipe.transformer) as calls:
            got = pipe(
                [3, 8],
                num_inference_steps=16,
                guidance_scale=2.0,
                latents=noise,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            ).images
        timesteps = pipe.scheduler.timesteps
        assert len(calls) == len(timesteps)
        torch.testing.assert_close(torch.stack([t[0] for _, t, _ in calls]), timesteps.float())
        error = (got - reference).abs().max().item()
        if name == "sde":
            # Stochastic: a different sample of the same distribution; it still ends at finite data.
            assert torch.isfinite(got).all() and error > 0.05
        else:
            # The random tiny model's output is rough in sigma, which third-order extrapolation amplifies;
            # the multistep solver still lands on the same flow, only less closely than one-step methods.
            tolerance = 0.1 if name == "multistep" else 0.02
            assert error < tolerance, f"{name}: max deviation {error:.4f} from the fine Euler solution"


def test_scheduler_swaps_back_and_forth_through_from_config(make_flow_pipeline):
    pipe = make_flow_pipeline(scheduler=FlowEulerScheduler(shift=2.0))
    pipe.scheduler = FlowHeunScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.shift == 2.0
    assert pipe([1], num_inference_steps=2, output_type="pt").images.shape == (1, 1, 8, 8)
    for name in SCHEDULERS:  # the shift survives every swap, whatever the config key is called
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        assert pipe.scheduler.config.get("shift", pipe.scheduler.config.get("flow_shift")) == 2.0


def test_a_scheduler_by_name_takes_the_flow_not_the_other_samplers_settings(make_flow_pipeline):
    # A saved multistep solver's order and final-step setting mean something else to diffusers' UniPC
    # (lower_order_final=False made its few-step solve singular); its grid is not Euler's default.
    saved = FlowMultistepScheduler(
        shift=2.0, solver_order=3, lower_order_final=False, num_train_timesteps=500
    )
    pipe = make_flow_pipeline(scheduler=saved)
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, saved.config)
        default = type(scheduler)()
        # Its own settings are its defaults; the flow's (time scale, shift) and the registry's mode keys aside.
        flow = {"num_train_timesteps", "shift", "flow_shift", "use_flow_sigmas", "prediction_type"}
        own = {k: v for k, v in default.config.items() if not k.startswith("_") and k not in flow}
        assert {key: scheduler.config[key] for key in own} == own, name
        assert scheduler.config.num_train_timesteps == 500, name
        pipe.scheduler = scheduler
        images = pipe([1, 2], num_inference_steps=4, output_type="pt").images
        assert torch.isfinite(images).all(), name
