"""Pixels and images shared by training, evaluation and the command-line tools.

This module owns the conversions every image goes through, whatever reads it:

- decoding a dataset cell, file or array to a PIL image (:func:`decode_image`), naming the file when it is
  corrupt;
- channel handling: how many channels an image naturally has (:func:`image_channels`) and converting to
  grey, RGB or RGBA (:func:`convert_channels`);
- the training transform, resize + square crop + channels to uint8 ``(C, res, res)`` (:class:`ImageTransform`),
  which the evaluation also applies to reference images;
- pixel values: uint8 to the model's [-1, 1] (:func:`pixels_to_model_range`), uniform dequantisation
  (:func:`dequantize`), generated [0, 1] floats back to uint8 exactly as a saved PNG (:func:`quantize_images`),
  and grey to RGB for feature networks (:func:`to_rgb`).

Datasets, augmentation and data loading live in :mod:`flow_pipelines.training.data`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

INTERPOLATION_MODES: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
"""Resize filters by name (the ``--interpolation`` / ``--image_interpolation_mode`` choices)."""


# ------------------------------------------------------------------------------------------ decoding
def _describe(value: Any, where: str) -> str:
    """Name an image for an error message: its file path if known, else its position."""
    if isinstance(value, dict) and value.get("path"):
        return f"{value['path']!r} ({where})"
    return where


def decode_image(value: Any, where: str = "an image") -> Image.Image:
    """Decode one image cell of a dataset: encoded bytes / path (``Image(decode=False)``), PIL image or array.

    Args:
        value: ``{"bytes": ..., "path": ...}``, a ``PIL.Image``, or an array ``(H, W)`` / ``(H, W, C)``.
        where: How to name the image in an error (e.g. ``"row 12"``).

    Returns:
        The fully loaded PIL image.

    Raises:
        ValueError: If the image cannot be read; the message names its file (or ``where``).
    """
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            data = value.get("bytes")
            if data is not None:
                image = Image.open(io.BytesIO(data))
            elif value.get("path"):
                image = Image.open(value["path"])
            else:
                raise ValueError("it has neither bytes nor a path")
        else:
            array = np.asarray(value)
            if array.dtype.kind == "f":
                array = np.clip(array * (255.0 if array.max(initial=0.0) <= 1.0 else 1.0), 0, 255)
            image = Image.fromarray(np.rint(array).astype(np.uint8) if array.dtype != np.uint8 else array)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError) as error:
        raise ValueError(f"Cannot read image {_describe(value, where)}: {error}") from error


def image_channels(image: Image.Image) -> int:
    """Channels an image naturally has: 1 for grey (with or without alpha), 3 for colour, 4 for colour + alpha.

    Args:
        image: A PIL image.

    Returns:
        1, 3 or 4.
    """
    if image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return 1
    if image.mode == "LA":
        return 1
    if image.mode in ("RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return 4
    return 3


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """Bring 16-bit, 32-bit integer and float images to 8-bit grey."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
    else:
        scale = 1.0 / 257.0 if image.mode.startswith("I;16") or array.max(initial=0.0) > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), mode="L")


def convert_channels(image: Image.Image, num_channels: int) -> Image.Image:
    """Convert an image to 1 (grey), 3 (RGB) or 4 (RGBA) channels.

    Transparency is composited onto white when it is dropped.

    Args:
        image: A PIL image of any mode.
        num_channels: 1, 3 or 4.

    Returns:
        An image of mode ``"L"``, ``"RGB"`` or ``"RGBA"``.

    Raises:
        ValueError: For another channel count.
    """
    if num_channels not in (1, 3, 4):
        raise ValueError(f"num_channels={num_channels} is not supported; allowed: 1, 3, 4.")
    image = _to_eight_bit(image)
    if num_channels == 4:
        return image.convert("RGBA")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L" if num_channels == 1 else "RGB")


# ------------------------------------------------------------------------------------------ transform
@dataclass
class ImageTransform:
    """Resize (shorter side), crop to a square and convert channels; returns uint8 ``(C, res, res)``.

    Args:
        resolution: Output side.
        num_channels: 1, 3 or 4.
        center_crop: Crop the centre; otherwise a random position (``torch``'s global generator).
        interpolation: A key of :data:`INTERPOLATION_MODES`.

    Raises:
        ValueError: For a non-positive resolution or an unknown interpolation.
    """

    resolution: int
    num_channels: int
    center_crop: bool = True
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution <= 0:
            raise ValueError(f"resolution={self.resolution!r} must be a positive integer.")
        if self.interpolation not in INTERPOLATION_MODES:
            raise ValueError(
                f"interpolation={self.interpolation!r} is not supported; allowed: {', '.join(INTERPOLATION_MODES)}."
            )
        convert_channels(Image.new("L", (1, 1)), self.num_channels)

    def crop_is_free(self, width: int, height: int) -> bool:
        """Whether an image of this size leaves the crop position a choice (it is not square).

        Args:
            width: Image width.
            height: Image height.

        Returns:
            True for a non-square image.
        """
        return width != height

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Transform one image.

        Args:
            image: A decoded PIL image.

        Returns:
            A uint8 tensor ``(num_channels, resolution, resolution)``.
        """
        image = convert_channels(image, self.num_channels)
        width, height = image.size
        scale = self.resolution / min(width, height)
        new_size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        if new_size != image.size:
            image = image.resize(new_size, INTERPOLATION_MODES[self.interpolation])
        width, height = image.size
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            left = int(torch.randint(0, width - self.resolution + 1, ()).item())
            top = int(torch.randint(0, height - self.resolution + 1, ()).item())
        if (width, height) != (self.resolution, self.resolution):
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------------ pixel values
def pixels_to_model_range(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map uint8 pixels 0..255 to the model's range [-1, 1].

    Args:
        pixels: A uint8 (or integer-valued) tensor.
        dtype: The floating dtype of the result.

    Returns:
        ``pixels / 127.5 - 1`` in ``dtype``.
    """
    return pixels.to(dtype) / 127.5 - 1.0


def dequantize(
    images: torch.Tensor, generator: torch.Generator | None = None, levels: int = 256
) -> torch.Tensor:
    """Uniform dequantization: spread each 8-bit level over its bin (noise one level wide, centred).

    Args:
        images: Model-range images made from 8-bit pixels (``k / 127.5 - 1``).
        generator: Random source on the images' device.
        levels: Quantization levels of the source pixels.

    Returns:
        ``images + (u - 0.5) * 2 / (levels - 1)``, ``u ~ U[0, 1)`` per element.
    """
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + (noise - 0.5) * (2.0 / (levels - 1))


def quantize_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Quantise images in [0, 1] to uint8 exactly as saving them as PNG would (``round(x * 255)``).

    This is diffusers' ``numpy_to_pil`` rounding, so the result equals the pixels of the PIL images a
    pipeline returns with ``output_type="pil"`` for the same ``output_type="np"`` array.

    Args:
        images: ``(N, H, W, C)`` numpy array (a pipeline's ``output_type="np"``) or ``(N, C, H, W)`` tensor
            (``output_type="pt"``), float in [0, 1].

    Returns:
        A uint8 tensor ``(N, C, H, W)``.

    Raises:
        ValueError: If the input is not 4-d floating point.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float (N, C, H, W) tensor; got {images.dtype} {tuple(images.shape)}."
            )
        array = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    else:
        array = np.asarray(images)
        if array.ndim != 4 or array.dtype.kind != "f":
            raise ValueError(f"images must be a float (N, H, W, C) array; got {array.dtype} {array.shape}.")
    # The same expression as diffusers' numpy_to_pil, on the same float32 values: identical bytes.
    pixels = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Bring uint8 images ``(N, 1 | 3, H, W)`` to three channels (grey is replicated, as PIL's RGB conversion).

    Args:
        images: uint8 images.

    Returns:
        uint8 images ``(N, 3, H, W)``.

    Raises:
        ValueError: For a dtype other than uint8, a wrong rank or a channel count other than 1 or 3.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        dtype = images.dtype if isinstance(images, torch.Tensor) else None
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W); got {dtype} {shape}.")
    if images.shape[1] == 3:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    raise ValueError(f"images have {images.shape[1]} channels; allowed: 1 (grey) or 3 (RGB).")
