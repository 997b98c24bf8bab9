"""FlowPipeline sampling: outputs, reproducibility, schedulers, VAE, callbacks, dtype, bad input.

Guidance and the path mapping are in test_guidance.py, class names in test_class_labels.py, each scheduler by
name in test_scheduler_registry.py."""

from __future__ import annotations

import inspect
import io

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchHeunDiscreteScheduler,
    ImagePipelineOutput,
)

from flow_pipelines import (
    DiTModel,
    FlowEulerScheduler,
    FlowHeunScheduler,
    FlowPipeline,
)
from flow_pipelines.schedulers import make_scheduler

from .pipeline_support import noise_for, record_calls


# ----------------------------------------------------------------------------- outputs
def test_output_types_shapes_and_ranges(make_flow_pipeline):
    pipe = make_flow_pipeline(in_channels=1)
    kwargs = {"num_inference_steps": 3, "guidance_scale": 2.0}
    latent = pipe(
        [1, 2, 3], generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs
    ).images
    pt = pipe([1, 2, 3], generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    np_images = pipe([1, 2, 3], generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    output = pipe([1, 2, 3], generator=torch.Generator().manual_seed(0), **kwargs)

    assert isinstance(output, ImagePipelineOutput)
    assert latent.shape == (3, 1, 8, 8) and latent.dtype == torch.float32
    assert pt.shape == (3, 1, 8, 8) and 0 <= pt.min() and pt.max() <= 1
    torch.testing.assert_close(pt, (latent / 2 + 0.5).clamp(0, 1))
    assert isinstance(np_images, np.ndarray) and np_images.shape == (3, 8, 8, 1)
    np.testing.assert_allclose(np_images, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    images = output.images
    assert len(images) == 3 and all(isinstance(image, PIL.Image.Image) for image in images)
    assert all(image.mode == "L" and image.size == (8, 8) for image in images)
    np.testing.assert_array_equal(
        np.asarray(images[0]), (np_images[0, ..., 0] * 255).round().astype(np.uint8)
    )

    (single,) = pipe(4, num_inference_steps=2, output_type="np", return_dict=False)
    assert single.shape == (1, 8, 8, 1)


def test_rgb_pixel_space_gives_rgb_images(make_flow_pipeline):
    pipe = make_flow_pipeline(in_channels=3)
    images = pipe([0, 1], num_inference_steps=2).images
    assert [image.mode for image in images] == ["RGB", "RGB"] and images[0].size == (8, 8)


# ----------------------------------------------------------------------------- reproducibility
def test_same_generator_same_images(make_flow_pipeline):
    pipe = make_flow_pipeline()
    first = pipe(
        [1, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="pt"
    ).images
    second = pipe(
        [1, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="pt"
    ).images
    other = pipe(
        [1, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(8), output_type="pt"
    ).images
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("scheduler_name", ["euler", "sde"])
def test_image_is_the_same_alone_or_in_a_batch(make_flow_pipeline, scheduler_name):
    pipe = make_flow_pipeline()
    pipe.scheduler = make_scheduler(scheduler_name, pipe.scheduler.config)
    seeds, labels = [11, 12, 13], [3, 5, 7]
    batch = pipe(
        labels,
        num_inference_steps=4,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
    ).images
    alone = pipe(
        [5],
        num_inference_steps=4,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(12)],
        output_type="latent",
    ).images
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- diffusers' common pipeline checks
def diffusers_inputs(seed: int = 0) -> dict:
    """What diffusers' class-conditional pipeline tests pass (DiTPipeline's ``get_dummy_inputs``)."""
    return {
        "class_labels": [1],
        "generator": torch.Generator().manual_seed(seed),
        "num_inference_steps": 2,
        "output_type": "np",
    }


def test_call_signature_has_what_diffusers_pipelines_take():
    parameters = inspect.signature(FlowPipeline.__call__).parameters
    optional = {name for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert "class_labels" in parameters
    assert {
        "num_inference_steps",
        "num_images_per_prompt",
        "generator",
        "latents",
        "output_type",
        "return_dict",
        "guidance_scale",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
    } <= optional
    assert FlowPipeline._callback_tensor_inputs == ["latents"]


@pytest.mark.parametrize("batch_size", [2, 3])
def test_nested_labels_batch_as_diffusers_builds_them_and_each_image_is_the_same_alone(
    make_flow_pipeline, batch_size
):
    """diffusers' batch tests wrap each sample's value in a list: ``class_labels=[[1], [1], [1]]``."""
    pipe = make_flow_pipeline()
    alone = pipe(**diffusers_inputs())[0]
    batched = {
        **diffusers_inputs(),
        "class_labels": batch_size * [[1]],
        "generator": [torch.Generator().manual_seed(i) for i in range(batch_size)],
    }
    output = pipe(**batched)[0]
    assert len(output) == batch_size
    assert np.abs(output[0] - alone[0]).max() < 1e-4
    # Tensors and arrays of ids, 0-d or 1-d, as diffusers' users pass them.
    for labels in (torch.tensor(1), torch.tensor([1, 1]), np.array([1, 1]), np.int64(1), [np.int64(1)]):
        images = pipe(**{**diffusers_inputs(), "class_labels": labels, "generator": None})[0]
        assert len(images) == max(np.asarray(labels).size, 1)


def test_num_images_per_prompt_repeats_each_label(make_flow_pipeline):
    pipe = make_flow_pipeline()
    for batch_size in (1, 2):
        for per_label in (1, 2):
            inputs = {**diffusers_inputs(), "class_labels": batch_size * [[1]]}
            assert pipe(**inputs, num_images_per_prompt=per_label)[0].shape[0] == batch_size * per_label
    seeds = [torch.Generator().manual_seed(i) for i in range(4)]
    grouped = pipe([3, 7], num_images_per_prompt=2, generator=seeds, num_inference_steps=2, output_type="pt")
    one_by_one = [
        pipe([label], generator=[torch.Generator().manual_seed(i)], num_inference_steps=2, output_type="pt")
        for i, label in enumerate([3, 3, 7, 7])
    ]
    torch.testing.assert_close(grouped.images, torch.cat([o.images for o in one_by_one]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="num_images_per_prompt=0 must be an integer >= 1"):
        pipe([1], num_images_per_prompt=0)


def test_dict_and_tuple_outputs_components_cfg_and_dtype(make_flow_pipeline):
    pipe = make_flow_pipeline(in_channels=4, vae=True)
    as_dict = pipe(**diffusers_inputs())[0]
    as_tuple = pipe(**diffusers_inputs(), return_dict=False)[0]
    assert np.abs(as_dict - as_tuple).max() < 1e-4
    assert set(pipe.components) == {"transformer", "scheduler", "vae"}
    no_cfg = pipe(**{**diffusers_inputs(), "guidance_scale": 1.0})[0]
    assert pipe(**{**diffusers_inputs(), "guidance_scale": 7.5})[0].shape == no_cfg.shape
    assert all(component.dtype == torch.float32 for component in (pipe.transformer, pipe.vae))
    pipe.to(dtype=torch.float16)
    assert all(component.dtype == torch.float16 for component in (pipe.transformer, pipe.vae))


def test_callback_inputs_and_callback_guidance_as_diffusers_tests_them(make_flow_pipeline):
    pipe = make_flow_pipeline()

    def only_allowed(pipeline, step, timestep, callback_kwargs):
        assert set(callback_kwargs) <= set(pipeline._callback_tensor_inputs)
        return callback_kwargs

    def zero_the_last(pipeline, step, timestep, callback_kwargs):
        if step == pipeline.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    inputs = {
        **diffusers_inputs(),
        "output_type": "latent",
        "callback_on_step_end_tensor_inputs": ["latents"],
    }
    pipe(**inputs, callback_on_step_end=only_allowed)
    assert pipe(**inputs, callback_on_step_end=zero_the_last)[0].abs().sum() == 0

    def more_guidance(pipeline, step, timestep, callback_kwargs):
        pipeline._guidance_scale += 1.0
        return callback_kwargs

    pipe(**{**diffusers_inputs(), "guidance_scale": 2.0}, callback_on_step_end=more_guidance)
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps


# ----------------------------------------------------------------------------- schedulers
def test_dynamic_shifting_scheduler_gets_mu(make_flow_pipeline):
    pipe = make_flow_pipeline(scheduler=FlowEulerScheduler(use_dynamic_shifting=True))
    pipe([1], num_inference_steps=3, output_type="latent")
    # 16 tokens: mu from the FLUX line through (256, 0.5) and (4096, 1.15), i.e. a shift below 1.
    mu = 0.5 + (16 - 256) * (1.15 - 0.5) / (4096 - 256)
    shifted_first_step = np.exp(mu) * (2 / 3) / (1 + (np.exp(mu) - 1) * (2 / 3))
    assert pipe.scheduler.sigmas[1].item() == pytest.approx(shifted_first_step, rel=1e-5)
    pipe([1], num_inference_steps=3, mu=0.0, output_type="latent")
    assert pipe.scheduler.sigmas[1].item() == pytest.approx(2 / 3, rel=1e-6)


def test_explicit_sigmas_are_passed_only_when_accepted(make_flow_pipeline):
    pipe = make_flow_pipeline()
    with record_calls(pipe.transformer) as calls:
        pipe([1], sigmas=[1.0, 0.6, 0.2], output_type="latent")
    assert [round(float(t[0]), 3) for _, t, _ in calls] == [1000.0, 600.0, 200.0]
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(
        ValueError, match="FlowMatchHeunDiscreteScheduler.set_timesteps does not accept sigmas"
    ):
        pipe([1], sigmas=[1.0, 0.5])
    assert pipe([1], num_inference_steps=2, output_type="latent").images.shape == (1, 1, 8, 8)


def test_progress_bar_counts_every_model_evaluation(make_flow_pipeline):
    pipe = make_flow_pipeline(scheduler=FlowHeunScheduler())
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, ascii=True)
    pipe([1], num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    assert len(pipe.scheduler.timesteps) == 5 and "5/5" in stream.getvalue()
    pipe.set_progress_bar_config(disable=True)


# ----------------------------------------------------------------------------- VAE
def test_vae_latents_are_rescaled_and_decoded(make_flow_pipeline):
    pipe = make_flow_pipeline(in_channels=4, vae=True)
    assert pipe.vae_scale_factor == 2
    noise = noise_for(pipe, 2)
    latents = pipe([1, 2], num_inference_steps=3, latents=noise, output_type="latent").images
    images = pipe([1, 2], num_inference_steps=3, latents=noise, output_type="pt").images
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / 0.5 + 0.1).sample
    assert latents.shape == (2, 4, 8, 8) and images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))
    pil = pipe([1], num_inference_steps=2).images[0]
    assert pil.mode == "RGB" and pil.size == (16, 16)

    pipe.vae.register_to_config(shift_factor=None)  # no shift factor: decode latents / scaling_factor
    images = pipe([1, 2], num_inference_steps=3, latents=noise, output_type="pt").images
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / 0.5).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))


# ----------------------------------------------------------------------------- callbacks
def test_callback_edits_latents(make_flow_pipeline):
    pipe = make_flow_pipeline()
    noise = noise_for(pipe, 2)
    plain = pipe([1, 2], num_inference_steps=4, latents=noise, output_type="latent").images
    seen: list[tuple[int, float, int, float]] = []

    def shift_last(pipeline, step, timestep, callback_kwargs):
        seen.append((step, float(timestep), pipeline.num_timesteps, pipeline.guidance_scale))
        if step == pipeline.num_timesteps - 1:
            return {"latents": callback_kwargs["latents"] + 1.0}
        return {}

    edited = pipe(
        [1, 2], num_inference_steps=4, latents=noise, output_type="latent", callback_on_step_end=shift_last
    ).images
    torch.testing.assert_close(edited, plain + 1.0, rtol=0, atol=0)
    assert seen == [(i, 1000.0 - 250.0 * i, 4, 4.0) for i in range(4)]


def test_callback_changes_guidance_and_interrupts(make_flow_pipeline):
    pipe = make_flow_pipeline()

    def stop_guiding(pipeline, step, timestep, callback_kwargs):
        if step == 1:
            pipeline.guidance_scale = 1.0  # the public setter
        if step == 3:
            pipeline._guidance_scale = 2.0  # what diffusers' own callbacks assign
        return callback_kwargs

    with record_calls(pipe.transformer) as calls:
        pipe(
            [1, 2],
            num_inference_steps=6,
            guidance_scale=4.0,
            callback_on_step_end=stop_guiding,
            output_type="latent",
        )
    assert [batch for batch, _, _ in calls] == [4, 4, 2, 2, 4, 4]

    def interrupt(pipeline, step, timestep, callback_kwargs):
        pipeline._interrupt = step == 1
        return callback_kwargs

    with record_calls(pipe.transformer) as calls:
        pipe(
            [1],
            num_inference_steps=6,
            guidance_scale=1.0,
            callback_on_step_end=interrupt,
            output_type="latent",
        )
    assert len(calls) == 2 and pipe.interrupt


# ----------------------------------------------------------------------------- dtype
def test_to_dtype_runs_the_transformer_in_that_dtype(make_flow_pipeline):
    pipe = make_flow_pipeline().to(torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.dtype == torch.bfloat16
    with record_calls(pipe.transformer) as calls:
        images = pipe([1], num_inference_steps=2, output_type="pt").images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert len(calls) == 2


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": "goldfish"}, r"unknown class name 'goldfish'; known names: 'digit 0', 'digit 1'"),
        ({"class_labels": [1, 10]}, r"class label 10 is out of range; allowed class ids are 0\.\.9"),
        ({"class_labels": -1}, r"class label -1 is out of range"),
        ({"class_labels": []}, r"class_labels is empty"),
        ({"class_labels": [1.5]}, r"class label 1\.5 must be an integer class id or a class name"),
        ({"guidance_scale": -0.5}, r"guidance_scale=-0\.5 must be a finite number >= 0"),
        ({"guidance_scale": float("nan")}, r"guidance_scale=nan must be a finite number >= 0"),
        (
            {"guidance_scale": 1e30},
            r"guidance_scale=1e\+30 is too large; allowed: a finite number in \[0, 1000\]",
        ),
        ({"latents": torch.full((1, 1, 8, 8), float("nan"))}, r"latents has 64 NaN or infinite value\(s\)"),
        (
            {"latents": torch.ones(1, 1, 8, 8).index_fill_(2, torch.tensor([3]), float("inf"))},
            r"latents has 8 NaN",
        ),
        (
            {"latents": torch.ones(1, 1, 8, 8, dtype=torch.long)},
            r"latents has dtype torch.int64; allowed: a floating",
        ),
        (
            {"sigmas": [1.0, float("nan"), 0.0]},
            r"sigmas=\[1\.0, nan, 0\.0\] is not allowed; allowed: finite numbers in \[0, 1\]",
        ),
        ({"sigmas": [2.0, 0.5]}, r"sigmas=\[2\.0, 0\.5\] is not allowed"),
        ({"num_inference_steps": 0}, r"num_inference_steps=0 must be an integer >= 1"),
        ({"latents": torch.zeros(2, 1, 4, 4)}, r"latents has shape \(2, 1, 4, 4\); expected \(1, 1, 8, 8\)"),
        ({"output_type": "jpg"}, r"output_type='jpg' is not supported; allowed: pil, np, pt, latent"),
        (
            {"guidance_interval": (0.8, 0.2)},
            r"guidance_interval=\(0\.8, 0\.2\) must satisfy 0 <= low <= high",
        ),
        (
            {"generator": [torch.Generator(), torch.Generator()]},
            r"got a list of 2 generators for 1 images",
        ),
        (
            {"callback_on_step_end_tensor_inputs": ["noise"]},
            r"callback_on_step_end_tensor_inputs has \['noise'\]",
        ),
    ],
)
def test_bad_call_arguments_fail_before_any_work(make_flow_pipeline, kwargs, message):
    pipe = make_flow_pipeline(id2label="digits")
    arguments = {"class_labels": 1, "num_inference_steps": 2, **kwargs}
    with record_calls(pipe.transformer) as calls, pytest.raises(ValueError, match=message):
        pipe(**arguments)
    assert calls == []


def test_a_guidance_scale_set_by_a_callback_is_checked_and_non_finite_results_are_reported(
    make_flow_pipeline,
):
    pipe = make_flow_pipeline()

    def too_strong(pipeline, step, timestep, tensors):
        pipeline.guidance_scale = float("inf")
        return tensors

    with pytest.raises(ValueError, match="guidance_scale=inf must be a finite number"):
        pipe([1], num_inference_steps=2, callback_on_step_end=too_strong)

    def poison(pipeline, step, timestep, tensors):
        latents = tensors["latents"].clone()
        latents[1] = float("nan")
        return {"latents": latents}

    with pytest.warns(
        RuntimeWarning, match=r"1 of 3 samples are not finite \(NaN / inf\) after sampling: index 1\."
    ):
        images = pipe([1, 2, 3], num_inference_steps=2, callback_on_step_end=poison, output_type="pt").images
    assert torch.isfinite(images[0]).all() and torch.isfinite(images[2]).all()  # the good ones are returned


def test_incompatible_schedulers_are_rejected(make_flow_pipeline):
    pipe = make_flow_pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler()  # diffusion mode, not flow
    with pytest.raises(
        ValueError,
        match="DPMSolverMultistepScheduler is not in flow mode; create it with use_flow_sigmas=True",
    ):
        pipe(1)


def test_the_model_config_decides_and_a_sample_scheduler_agrees(make_flow_pipeline):
    """The scheduler's prediction type only says what it is handed: the samples stay the model's."""
    pipe = make_flow_pipeline()
    reference = pipe(
        [1, 2], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    pipe.scheduler = FlowEulerScheduler(prediction_type="sample")
    other = pipe([1, 2], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.testing.assert_close(other.images, reference.images, atol=1e-5, rtol=0)
    # An epsilon prediction cannot carry the velocity at sigma = 1, where every grid starts.
    pipe.scheduler = FlowEulerScheduler(prediction_type="epsilon")
    with pytest.raises(
        ValueError, match="expects prediction_type='epsilon', which carries no information at"
    ):
        pipe(1)


def test_bad_components_are_rejected_at_construction(make_flow_pipeline):
    pipe = make_flow_pipeline(in_channels=4, vae=True)
    other = make_flow_pipeline(in_channels=3)
    with pytest.raises(ValueError, match="VAE has latent_channels=4 but the transformer has in_channels=3"):
        FlowPipeline(transformer=other.transformer, scheduler=other.scheduler, vae=pipe.vae)
    with pytest.raises(ValueError, match="id2label has class id 12; allowed ids are 0..9"):
        FlowPipeline(transformer=other.transformer, scheduler=other.scheduler, id2label={12: "twelve"})
    odd_output = DiTModel(**{**other.transformer.config, "in_channels": 2, "out_channels": 3})
    with pytest.raises(ValueError, match="in_channels=2 but out_channels=3"):
        FlowPipeline(transformer=odd_output, scheduler=FlowEulerScheduler())
