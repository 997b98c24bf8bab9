"""Reference image sets: a folder of images, an ADM ``.npz`` batch and scikit-learn's digits give the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flow_pipelines.evaluation.reference import iter_reference, open_reference


def test_reference_sources_give_the_same_pixels(tmp_path, digits_pixels):
    pixels = digits_pixels[:12]
    folder = tmp_path / "folder"
    folder.mkdir()
    for index, image in enumerate(pixels):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{index:03d}.png")
    np.savez(tmp_path / "batch.npz", arr_0=pixels.permute(0, 2, 3, 1).numpy(), arr_1=np.arange(12))

    def read(spec: str, resize_to=None) -> torch.Tensor:
        source = open_reference(spec)
        return torch.cat([b for b, _ in iter_reference(source, np.arange(12), 5, resize_to)])

    assert torch.equal(read(str(folder)), pixels)
    assert torch.equal(read(str(tmp_path / "batch.npz")), pixels)
    assert torch.equal(read("sklearn_digits"), pixels)
    assert read("sklearn_digits", resize_to=(16, 3)).shape == (12, 3, 16, 16)

    Image.new("L", (10, 10)).save(folder / "zzz-odd-size.png")
    with pytest.raises(ValueError, match="zzz-odd-size.png.*--resize-reference"):
        source = open_reference(str(folder))
        list(iter_reference(source, np.arange(13), 20))
