"""Images: the resize and crop transform, channel conversion, pixel ranges and dequantisation, grey to RGB, and
quantising samples exactly once, as a saved PNG does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flow_pipelines.evaluation.dinov2 import DinoV2FeatureExtractor
from flow_pipelines.images import (
    ImageTransform,
    convert_channels,
    dequantize,
    pixels_to_model_range,
    quantize_images,
    to_rgb,
)


def test_transform_resizes_the_shorter_side_and_crops_the_centre() -> None:
    # 20x10: left half black, right half white; no resize needed, the centre crop takes columns 5..14.
    array = np.zeros((10, 20), dtype=np.uint8)
    array[:, 10:] = 255
    out = ImageTransform(10, 1, center_crop=True)(Image.fromarray(array))
    assert out.shape == (1, 10, 10)
    assert torch.all(out[0, :, :5] == 0) and torch.all(out[0, :, 5:] == 255)
    # A random crop stays inside the image and keeps its size.
    torch.manual_seed(0)
    crops = {
        tuple(ImageTransform(10, 1, center_crop=False)(Image.fromarray(array))[0, 0].tolist())
        for _ in range(20)
    }
    assert len(crops) > 1


def test_channel_conversion() -> None:
    transparent = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert convert_channels(transparent, 3).getpixel((0, 0)) == (255, 255, 255)  # onto white
    assert convert_channels(Image.new("RGB", (2, 2), (30, 60, 90)), 1).mode == "L"
    assert convert_channels(Image.new("L", (2, 2), 7), 3).getpixel((1, 1)) == (7, 7, 7)
    sixteen_bit = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert convert_channels(sixteen_bit, 1).getpixel((0, 0)) == 255
    with pytest.raises(ValueError, match="allowed: 1, 3, 4"):
        convert_channels(transparent, 2)


def test_pixel_range_and_dequantization() -> None:
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8)
    torch.testing.assert_close(pixels_to_model_range(pixels), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]))
    images = pixels_to_model_range(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8))
    noisy = dequantize(images, torch.Generator().manual_seed(0))
    difference = noisy - images
    assert difference.abs().max() <= 1 / 255 + 1e-6 and difference.abs().max() > 0.9 / 255
    # Centred: the mean of 4096 uniform draws on [-1/255, 1/255] is within ~5 standard errors of 0.
    assert abs(float(difference.mean())) < 5 * (1 / 255) / np.sqrt(3 * difference.numel())


def test_grey_images_are_replicated_to_rgb():
    grey = torch.randint(
        0, 256, (2, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    rgb = to_rgb(grey)
    assert rgb.shape == (2, 3, 16, 16)
    assert torch.equal(rgb[:, 0], grey[:, 0]) and torch.equal(rgb[:, 2], grey[:, 0])


def test_samples_are_quantised_once_like_a_saved_png(tmp_path, make_flow_pipeline, make_dinov2):
    pipeline = make_flow_pipeline(in_channels=3, sample_size=8)
    labels = [0, 3, 7, 9]

    def run(output_type: str):
        generator = torch.Generator().manual_seed(11)
        return pipeline(
            labels, num_inference_steps=3, guidance_scale=1.0, generator=generator, output_type=output_type
        )

    quantised = quantize_images(run("np").images)
    assert quantised.dtype == torch.uint8 and quantised.shape == (4, 3, 8, 8)
    for index, image in enumerate(run("pil").images):
        image.save(tmp_path / f"{index}.png")
    from_png = torch.stack(
        [torch.from_numpy(np.array(Image.open(tmp_path / f"{i}.png"))).permute(2, 0, 1) for i in range(4)]
    )
    assert torch.equal(quantised, from_png)
    assert torch.equal(quantize_images(run("pt").images), quantised)

    extractor = DinoV2FeatureExtractor(make_dinov2(), resolution=28, source="tiny")
    with torch.no_grad():
        assert torch.equal(extractor(quantised), extractor(from_png))
