"""The guided velocity: classifier-free guidance (uncond + s (cond - uncond), one batched call, its noise-level
interval), a model's own path mapped onto the straight one, and learned-variance channels dropped.

Checked on `GuidedVelocity` itself and through `FlowPipeline`, which samples with it, against Euler and the path
mapping written out by hand (the path coefficients in `tests/oracles.py`)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from flow_pipelines import DiTModel, FlowEulerScheduler, FlowPipeline
from flow_pipelines.guidance import GuidedVelocity
from flow_pipelines.schedulers import SCHEDULERS, make_scheduler

from .oracles import REFERENCES, reference_time
from .pipeline_support import euler_reference, noise_for, record_calls


# ----------------------------------------------------------------------------- classifier-free guidance
def test_guided_velocity_is_uncond_plus_scale_times_difference(make_dit):
    model = make_dit(sample_size=4, hidden_size=16, num_layers=1, num_classes=3, scale=0.2, float64=True)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    sigma = torch.tensor([0.5, 0.5], dtype=torch.float64)
    cond = GuidedVelocity(model, class_labels=[1, 2])(x, sigma)
    uncond = GuidedVelocity(model)(x, sigma)
    guided = GuidedVelocity(model, class_labels=[1, 2], guidance_scale=3.0)(x, sigma)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    assert not torch.allclose(cond, uncond)


def test_guidance_matches_hand_written_euler(make_flow_pipeline):
    pipe = make_flow_pipeline()
    noise = noise_for(pipe, 3)
    for scale in (1.0, 3.5, 0.0):
        got = pipe(
            [1, 4, 9], num_inference_steps=5, guidance_scale=scale, latents=noise, output_type="latent"
        ).images
        expected = euler_reference(pipe.transformer, noise, [1, 4, 9], steps=5, scale=scale)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_guidance_one_is_exactly_the_unguided_path(make_flow_pipeline):
    pipe = make_flow_pipeline()
    noise = noise_for(pipe, 2)
    with record_calls(pipe.transformer) as calls:
        scale_one = pipe(
            [2, 3], num_inference_steps=4, guidance_scale=1.0, latents=noise, output_type="latent"
        ).images
    assert [batch for batch, _, _ in calls] == [2] * 4  # no doubled batch at scale 1
    # A guidance interval that contains no noise level turns guidance off: the same computation.
    outside = pipe(
        [2, 3],
        num_inference_steps=4,
        guidance_scale=5.0,
        guidance_interval=(1.5, 2.0),
        latents=noise,
        output_type="latent",
    ).images
    assert torch.equal(scale_one, outside)


def test_cfg_is_one_batched_call_per_evaluation(make_flow_pipeline):
    pipe = make_flow_pipeline(num_classes=10)
    for scheduler_name in ("euler", "heun"):
        pipe.scheduler = make_scheduler(scheduler_name, pipe.scheduler.config)
        with record_calls(pipe.transformer) as calls:
            pipe([4, 6], num_inference_steps=3, guidance_scale=2.0, output_type="latent")
        assert len(calls) == len(pipe.scheduler.timesteps) == pipe.num_timesteps
        for batch, timestep, labels in calls:
            assert batch == 4
            assert labels.tolist() == [4, 6, 10, 10]  # conditional half, then the null class num_classes
            assert timestep.shape == (4,) and timestep.dtype == torch.float32
        torch.testing.assert_close(torch.stack([t[0] for _, t, _ in calls]), pipe.scheduler.timesteps)


def test_per_sample_noise_levels_are_guided_only_inside_the_interval(make_dit):
    """One noise level per sample (as the likelihood passes them): each sample is guided where its own level is."""
    model = make_dit(float64=True)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    labels, sigma = torch.tensor([1, 2, 3]), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    together = GuidedVelocity(model, labels, guidance_scale=3.0, guidance_interval=(0.4, 0.6))(x, sigma)
    for i, level in enumerate(sigma.tolist()):
        scale = 3.0 if 0.4 <= level <= 0.6 else 1.0
        alone = GuidedVelocity(model, labels[i : i + 1], guidance_scale=scale)(x[i : i + 1], level)
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-10, atol=1e-10)
    unguided = GuidedVelocity(model, labels)(x, sigma)
    assert torch.allclose(together[0], unguided[0]) and not torch.allclose(together[1], unguided[1])


def test_guidance_interval_uses_batch_b_outside(make_flow_pipeline):
    pipe = make_flow_pipeline()
    noise = noise_for(pipe, 2)
    interval = (0.3, 0.7)
    with record_calls(pipe.transformer) as calls:
        got = pipe(
            [1, 2],
            num_inference_steps=10,
            guidance_scale=4.0,
            guidance_interval=interval,
            latents=noise,
            output_type="latent",
        ).images
    sigmas = [float(t[0]) / 1000 for _, t, _ in calls]
    assert len(calls) == 10
    assert [batch for batch, _, _ in calls] == [4 if interval[0] <= s <= interval[1] else 2 for s in sigmas]
    assert {batch for batch, _, _ in calls} == {2, 4}
    expected = euler_reference(pipe.transformer, noise, [1, 2], steps=10, scale=4.0, interval=interval)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the path mapping
def hand_written_velocity(model, name, prediction_type, labels, scale, **path_kwargs):
    """Our guided velocity at ``(x, sigma)`` with the mapping spelled out: root-found s, c * x in, 2 x 2 solve out."""
    coefficients = functools.partial(REFERENCES[name], **path_kwargs)
    cond = torch.tensor(labels)
    null = torch.full_like(cond, model.config.num_classes)

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = reference_time(name, sigma, **path_kwargs)
        a, b, da, db = coefficients(s)
        x_path = (a + b) * x
        t = torch.full((len(labels),), s * 1000, dtype=torch.float32)
        with torch.no_grad():
            out = model(x_path, t, cond).sample
            if scale != 1.0:
                uncond = model(x_path, t, null).sample
                out = uncond + scale * (out - uncond)
        if prediction_type == "velocity":
            determinant = a * db - b * da
            x0, eps = (db * x_path - b * out) / determinant, (a * out - da * x_path) / determinant
        elif prediction_type == "epsilon":
            x0, eps = (x_path - b * out) / a, out
        else:
            x0, eps = out, (x_path - a * out) / b
        return eps - x0

    return velocity


def hand_written_sampler(
    velocity, latents: torch.Tensor, sigmas: list[float], heun: bool = False
) -> torch.Tensor:
    """Euler, or Heun with a final Euler step to sigma = 0, over the noise levels ``sigmas`` (ending at 0)."""
    x = latents.clone()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        slope = velocity(x, sigma)
        if heun and sigma_next > 0:
            predicted = x + (sigma_next - sigma) * slope
            slope = 0.5 * (slope + velocity(predicted, sigma_next))
        x = x + (sigma_next - sigma) * slope
    return x


@pytest.mark.parametrize(
    ("name", "prediction_type", "path_kwargs"),
    [
        ("cosine", "velocity", {}),
        ("cosine", "sample", {}),
        ("vp", "epsilon", {"beta_min": 0.2, "beta_max": 15.0}),
    ],
)
def test_pipeline_samples_a_path_model_as_the_hand_written_mapping(
    make_dit, name, prediction_type, path_kwargs
):
    model = make_dit(path=name, prediction_type=prediction_type, path_kwargs=path_kwargs or None)
    pipe = FlowPipeline(transformer=model, scheduler=FlowEulerScheduler())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.path.name == name and pipe.path.kwargs == path_kwargs
    latents = noise_for(pipe, 2)
    got = pipe(
        [3, 8], num_inference_steps=8, guidance_scale=2.0, latents=latents, output_type="latent"
    ).images
    velocity = hand_written_velocity(model, name, prediction_type, [3, 8], 2.0, **path_kwargs)
    expected = hand_written_sampler(velocity, latents, torch.linspace(1.0, 0.0, 9).tolist())
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_every_flow_scheduler_samples_a_cosine_model(make_dit, tmp_path):
    """Each scheduler, ours and diffusers', drives the saved-and-reloaded cosine model through the mapping."""
    model = make_dit(path="cosine", seed=1)
    pipe = FlowPipeline(transformer=model, scheduler=FlowEulerScheduler())
    pipe.save_pretrained(tmp_path / "cosine")
    pipe = FlowPipeline.from_pretrained(tmp_path / "cosine")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.path == "cosine" and pipe.path.name == "cosine"
    latents = noise_for(pipe, 2, seed=1)
    velocity = hand_written_velocity(model, "cosine", "velocity", [3, 8], 2.0)
    # Euler and Heun written out on the scheduler's own noise levels; a fine solution for the multistep solvers.
    same_method = {"euler": False, "flowmatch-euler": False, "heun": True, "flowmatch-heun": True}
    fine = hand_written_sampler(velocity, latents, torch.linspace(1.0, 0.0, 65).tolist(), heun=True)
    for name in SCHEDULERS:
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        with record_calls(pipe.transformer) as calls:
            got = pipe(
                [3, 8],
                num_inference_steps=16,
                guidance_scale=2.0,
                latents=latents,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            ).images
        # The transformer sees its own time s(sigma) * 1000 at each of the scheduler's noise levels.
        sigmas = (pipe.scheduler.timesteps.double() / 1000).tolist()
        expected_times = [reference_time("cosine", sigma) * 1000 for sigma in sigmas]
        np.testing.assert_allclose([float(t[0]) for _, t, _ in calls], expected_times, rtol=1e-5, atol=1e-3)
        if name in same_method:
            grid = [*dict.fromkeys(sigmas), 0.0]  # a Heun step's two calls share a timestep
            expected = hand_written_sampler(velocity, latents, grid, heun=same_method[name])
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=name)
        elif name == "sde":
            # Stochastic: a different sample of the same distribution; it still ends at finite data.
            assert torch.isfinite(got).all() and (got - fine).abs().max() > 0.05
        else:
            error = (got - fine).abs().max().item()
            assert error < 0.05, f"{name}: max deviation {error:.4f} from the fine hand-written Heun solution"


def test_a_learned_variance_half_is_dropped_and_other_layouts_are_rejected(make_dit):
    """A model with twice the channels out (the original DiT's epsilon + variance) samples as its first half."""
    small = {"sample_size": 8, "in_channels": 2, "hidden_size": 32, "num_layers": 1, "num_attention_heads": 2}
    # DiTModel's own defaults for the rest (MLP ratio 4, 1000 classes), as in the plain models below.
    defaults = {"mlp_ratio": 4.0, "num_classes": 1000}
    doubled = make_dit(**small, **defaults, out_channels=4, path="vp", prediction_type="epsilon")
    halved = DiTModel(**small, out_channels=2, path="vp", prediction_type="epsilon")
    state = doubled.state_dict()
    # Output rows are (row_in_patch * patch + column_in_patch) * out_channels + channel: keep channels 0 and 1.
    keep = torch.arange(state["final_layer.linear.weight"].shape[0]) % 4 < 2
    state["final_layer.linear.weight"] = state["final_layer.linear.weight"][keep]
    state["final_layer.linear.bias"] = state["final_layer.linear.bias"][keep]
    halved.load_state_dict(state)
    images = []
    for model in (doubled, halved):
        pipe = FlowPipeline(transformer=model.eval(), scheduler=FlowEulerScheduler())
        pipe.set_progress_bar_config(disable=True)
        images.append(
            pipe(
                [1, 2],
                num_inference_steps=3,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
            ).images
        )
    # Equal up to the matmul's rounding for another output width, amplified by the epsilon-to-velocity map.
    torch.testing.assert_close(images[0], images[1], rtol=1e-4, atol=1e-4)
    odd = DiTModel(**small, out_channels=3)
    with pytest.raises(ValueError, match="in_channels=2 but out_channels=3; .* must be 2 \\(or 4"):
        FlowPipeline(transformer=odd, scheduler=FlowEulerScheduler())


def test_a_prediction_that_says_nothing_where_the_grid_starts_is_refused_before_any_call(make_dit) -> None:
    pipe = FlowPipeline(transformer=make_dit(prediction_type="epsilon"), scheduler=FlowEulerScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(
        ValueError, match="predicts 'epsilon' on LinearPath\\(\\), which says nothing .* sigma=1"
    ):
        pipe([1], num_inference_steps=4)
    # Started below pure noise, the same model samples.
    images = pipe([1], sigmas=[0.99, 0.6, 0.3], output_type="pt").images
    assert torch.isfinite(images).all()
