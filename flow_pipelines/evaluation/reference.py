"""Reference image sets for the evaluation: where they come from, which images are used, and decoding them.

A reference is scikit-learn's digits (``sklearn_digits``), a ``datasets`` name or ``save_to_disk`` folder, a
folder of image files, or an ADM reference batch ``.npz`` (:func:`open_reference`). A subset is chosen with a
fixed seed, so reference statistics do not depend on the sampling seed (:func:`reference_indices`), and images
are decoded to uint8 in batches, as stored or through the training transform (:func:`iter_reference`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..file_utils import file_fingerprint
from ..images import ImageTransform, convert_channels, decode_image, image_channels

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
"""File types read from a reference folder."""

# A fixed seed for choosing a reference subset: reference statistics must not depend on --seed.
_REFERENCE_SUBSET_SEED = 0


@dataclass
class ReferenceSource:
    """A reference image set: how to read it and how to name it in cache keys.

    Args:
        spec: What was given on the command line.
        kind: ``"npz"``, ``"folder"`` or ``"dataset"``.
        identity: A string that changes when the set's contents may have (path and file fingerprint, or name).
        num_images: Images available.
        items: The images: an NHWC array (npz), file paths (folder) or a ``datasets.Dataset``.
        labels: Class ids per image, or None.
        image_column: The dataset's image column.
    """

    spec: str
    kind: str
    identity: str
    num_images: int
    items: Any = None
    labels: Any = None
    image_column: str | None = None


def open_reference(spec: str, split: str = "train") -> ReferenceSource:
    """Open a reference set without decoding it.

    Args:
        spec: ``sklearn_digits``, a ``datasets`` name or ``save_to_disk`` folder, a folder of images, or an
            ADM-style ``.npz`` (``arr_0`` uint8 NHWC, optional ``arr_1`` labels).
        split: Dataset split.

    Returns:
        The source.

    Raises:
        ValueError: For an ``.npz`` without uint8 ``arr_0``, an empty folder, or a dataset without an image column.
    """
    # Only dataset references need the training data loaders (and through them `datasets`).
    from ..data_sources import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, load_image_dataset

    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data:
                raise ValueError(
                    f"{spec} holds {sorted(data.files)}; a reference batch needs 'arr_0' (uint8 NHWC)."
                )
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data else None
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{spec}: arr_0 is {images.dtype} {images.shape}; expected uint8 (N, H, W, C).")
        identity = f"npz:{path.resolve()}@{file_fingerprint(path)}"
        return ReferenceSource(spec, "npz", identity, len(images), images, labels)
    saved_dataset = (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    if path.is_dir() and not saved_dataset:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(
                f"The reference folder {spec} holds no image files ({', '.join(IMAGE_SUFFIXES)})."
            )
        identity = f"folder:{path.resolve()}@{file_fingerprint(path)}"
        return ReferenceSource(spec, "folder", identity, len(files), files)

    import datasets

    dataset = load_image_dataset(dataset_name=spec, split=split)
    columns = list(dataset.features)
    image_column = next((c for c in IMAGE_COLUMN_CANDIDATES if c in columns), None)
    if image_column is None:
        raise ValueError(
            f"The reference dataset {spec!r} has no image column (looked for {IMAGE_COLUMN_CANDIDATES})."
        )
    if isinstance(dataset.features[image_column], datasets.Image):
        # Read the encoded bytes and decode here, so a corrupt file is reported by name.
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    label_column = next((c for c in LABEL_COLUMN_CANDIDATES if c in columns), None)
    labels = np.asarray(dataset[label_column]) if label_column is not None else None
    identity = f"dataset:{Path(spec).resolve() if path.exists() else spec}:{split}"
    if path.exists():
        identity += f"@{file_fingerprint(path)}"
    source = ReferenceSource(spec, "dataset", identity, len(dataset), dataset, labels, image_column)
    return source


def reference_indices(num_available: int, num_images: int | None) -> np.ndarray:
    """Which reference images to use: all, or a fixed-seed random subset (independent of ``--seed``).

    Args:
        num_available: Images in the set.
        num_images: How many to use (None: all).

    Returns:
        Indices, sorted.

    Raises:
        ValueError: If more are requested than available.
    """
    if num_images is None or num_images == num_available:
        return np.arange(num_available)
    if num_images > num_available:
        raise ValueError(
            f"--num-reference {num_images} exceeds the {num_available} reference images available."
        )
    rng = np.random.default_rng(_REFERENCE_SUBSET_SEED)
    return np.sort(rng.choice(num_available, size=num_images, replace=False))


def iter_reference(
    source: ReferenceSource,
    indices: np.ndarray,
    batch_size: int,
    resize_to: tuple[int, int] | None = None,
    interpolation: str = "bilinear",
) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
    """Decode reference images in batches as uint8 ``(B, C, H, W)``.

    Without ``resize_to`` images keep their size and become grey (1 channel) or RGB (3; alpha composited on
    white); with it they take the training transform (shorter side resized, centre crop, channel conversion).

    Args:
        source: The reference.
        indices: Which images.
        batch_size: Images per batch.
        resize_to: ``(resolution, channels)`` to bring images to, or None.
        interpolation: Resize filter name (``bilinear``, ``bicubic``, ...).

    Yields:
        ``(pixels, labels)``; labels are None when the set has none.

    Raises:
        ValueError: For images of different sizes without ``resize_to``, or an unreadable image.
    """
    transform = ImageTransform(resize_to[0], resize_to[1], True, interpolation) if resize_to else None
    first_shape: tuple[int, ...] | None = None

    def to_pixels(image: Image.Image, where: str) -> torch.Tensor:
        nonlocal first_shape
        if transform is not None:
            return transform(image)
        channels = 1 if image_channels(image) == 1 else 3
        array = np.asarray(convert_channels(image, channels), dtype=np.uint8)
        pixels = torch.from_numpy(array.reshape(*array.shape[:2], channels).copy()).permute(2, 0, 1)
        if first_shape is None:
            first_shape = tuple(pixels.shape)
        elif tuple(pixels.shape) != first_shape:
            raise ValueError(
                f"Reference image {where} is {tuple(pixels.shape)} (C, H, W) but the first one is {first_shape}; "
                "pass --resize-reference to bring all to the model's resolution."
            )
        return pixels

    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        labels = np.asarray(source.labels)[chunk] if source.labels is not None else None
        if source.kind == "npz" and transform is None:
            array = source.items[chunk]
            if array.shape[-1] not in (1, 3):
                raise ValueError(f"{source.spec}: images have {array.shape[-1]} channels; allowed: 1 or 3.")
            yield torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2), labels
            continue
        batch = []
        for index in chunk.tolist():
            if source.kind == "npz":
                array = source.items[index]
                image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
                where = f"{index} of {source.spec}"
            elif source.kind == "folder":
                where = str(source.items[index])
                image = decode_image({"path": where, "bytes": None}, where)
            else:
                where = f"row {index} of {source.spec}"
                image = decode_image(source.items[index][source.image_column], where)
            batch.append(to_pixels(image, where))
        yield torch.stack(batch), labels
