"""Where training and reference images come from: ``datasets`` sources, image folders, or scikit-learn's digits.

Sources (:func:`load_image_dataset`):

- the embedded default, :data:`DIGITS_DATASET`: scikit-learn's 1,797 8×8 digits as a ``datasets.Dataset``
  with an ``image`` column and a ``label`` ``ClassLabel`` named ``"0"`` … ``"9"``;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- any ``datasets.load_dataset`` name or local path (``--dataset_name``, ``--dataset_config_name``);
- an image folder, class = sub-folder (``--train_data_dir``, the ``imagefolder`` builder);
- any of the last two streamed (``streaming=True``): an ``IterableDataset`` sharded over processes.

Their image and label columns are detected (:func:`resolve_columns`) and labels become class ids with names
(:func:`prepare_label_column`). Training (:mod:`flow_pipelines.training.data`) and evaluation
(:mod:`flow_pipelines.evaluation.reference`) both read images through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DIGITS_DATASET = "sklearn_digits"
"""Name of the embedded default dataset: scikit-learn's bundled 8×8 digits (``load_digits``)."""

DIGITS_DESCRIPTION = "scikit-learn digits (sklearn.datasets.load_digits: 1,797 8x8 images, 10 classes)"

IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img", "images", "picture", "png", "jpg", "jpeg")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label", "class", "class_label", "target")


def load_digits_dataset() -> Any:
    """scikit-learn's bundled 8×8 digits as a ``datasets.Dataset``.

    Pixel values 0..16 become 8-bit grey levels ``round(v * 255 / 16)``.

    Returns:
        A ``datasets.Dataset`` with columns ``image`` (``Image``, 8×8 mode ``"L"``) and ``label``
        (``ClassLabel`` with names ``"0"`` … ``"9"``), 1,797 rows.
    """
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    images = [Image.fromarray(array, mode="L") for array in grey]
    return datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def check_class_folders(folder: str | Path) -> list[str]:
    """Check that an image folder holds one sub-folder of images per class, at least two classes.

    ``datasets``' ``imagefolder`` names no label column for a flat folder or a single class, which would surface
    later as a missing label column; this says what is wrong with the folder instead.

    Args:
        folder: ``--train_data_dir``.

    Returns:
        The class names (sub-folders holding files, in ``train/`` for imagefolder's split layout), sorted.

    Raises:
        ValueError: If the folder does not exist, has no class sub-folders, or only one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"train_data_dir={str(folder)!r} is not a folder.")
    if (folder / "train").is_dir() and any(child.is_dir() for child in (folder / "train").iterdir()):
        folder = folder / "train"  # imagefolder's split layout: train/<class>/...
    classes = sorted(
        child.name
        for child in folder.iterdir()
        if child.is_dir() and any(p.is_file() for p in child.rglob("*"))
    )
    loose = sum(1 for child in folder.iterdir() if child.is_file())
    if len(classes) < 2:
        found = f"one class sub-folder ({classes[0]!r})" if classes else "no class sub-folders"
        raise ValueError(
            f"train_data_dir={str(folder)!r} has {found} and {loose} image file(s) directly in it; class-conditional "
            "training needs one sub-folder per class, at least two (e.g. cats/, dogs/)."
        )
    return classes


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
) -> Any:
    """Load the training split of an image dataset.

    Args:
        dataset_name: A ``datasets.load_dataset`` name or local path, a ``save_to_disk`` folder, or
            :data:`DIGITS_DATASET`. ``None`` with no ``train_data_dir`` means the digits.
        dataset_config_name: The dataset configuration, if it has several.
        train_data_dir: An image folder (class = sub-folder), read with the ``imagefolder`` builder.
        split: The split to train on.
        streaming: Return an ``IterableDataset`` that reads as it goes (not for the digits or a
            ``save_to_disk`` folder, which are already local; those are converted).
        cache_dir: Where ``datasets`` caches downloads.

    Returns:
        A ``datasets.Dataset`` or, with ``streaming``, a ``datasets.IterableDataset``.

    Raises:
        ValueError: If both a name and a folder are given, the folder does not exist, or the split is missing.
    """
    import datasets

    if dataset_name is not None and train_data_dir is not None:
        raise ValueError(
            f"Give either dataset_name ({dataset_name!r}) or train_data_dir ({train_data_dir!r}), not both."
        )
    if train_data_dir is not None:
        check_class_folders(train_data_dir)
        return datasets.load_dataset(
            "imagefolder", data_dir=train_data_dir, split=split, streaming=streaming, cache_dir=cache_dir
        )
    if dataset_name is None or dataset_name == DIGITS_DATASET:
        dataset = load_digits_dataset()
        return dataset.to_iterable_dataset() if streaming else dataset
    if _is_saved_dataset(Path(dataset_name)):
        dataset = datasets.load_from_disk(dataset_name)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(
                    f"The saved dataset {dataset_name!r} has no split {split!r}; it has: {', '.join(dataset)}."
                )
            dataset = dataset[split]
        return dataset.to_iterable_dataset(num_shards=max(1, min(64, len(dataset)))) if streaming else dataset
    return datasets.load_dataset(
        dataset_name, dataset_config_name, split=split, streaming=streaming, cache_dir=cache_dir
    )


def dataset_column_names(dataset: Any) -> list[str]:
    """Column names of a ``Dataset`` or ``IterableDataset`` (from its features when they are known).

    Args:
        dataset: The dataset.

    Returns:
        Its column names; a streamed dataset without known features is asked for its first row.
    """
    if getattr(dataset, "features", None) is not None:
        return list(dataset.features)
    names = getattr(dataset, "column_names", None)
    if names:
        return list(names)
    return list(next(iter(dataset)).keys())


def resolve_columns(
    column_names: Sequence[str], image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Pick the image and label columns, detecting common names when not given.

    Args:
        column_names: The dataset's columns.
        image_column: The image column, or None to detect one of :data:`IMAGE_COLUMN_CANDIDATES`.
        label_column: The label column, or None to detect one of :data:`LABEL_COLUMN_CANDIDATES`.

    Returns:
        ``(image_column, label_column)``.

    Raises:
        ValueError: If a named column is missing or none can be detected; the message lists the columns.
    """
    columns = list(column_names)
    listed = ", ".join(repr(c) for c in columns) or "none"

    def pick(given: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
        if given is not None:
            if given not in columns:
                raise ValueError(f"The dataset has no {what} column {given!r}; its columns are: {listed}.")
            return given
        for candidate in candidates:
            if candidate in columns:
                return candidate
        raise ValueError(
            f"Could not find a {what} column (looked for {', '.join(candidates)}); the dataset's columns are: "
            f"{listed}. Name it with {flag}."
        )

    image = pick(image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
    label = pick(label_column, LABEL_COLUMN_CANDIDATES, "label", "--label_column")
    if image == label:
        raise ValueError(f"The image and label columns must differ; both are {image!r}.")
    return image, label


def prepare_label_column(dataset: Any, label_column: str) -> tuple[Any, dict[int, str]]:
    """Make the label column integer class ids and return the class names.

    A ``ClassLabel`` column gives its names. A map-style dataset with string labels is encoded with
    ``class_encode_column`` (names sorted); integer labels must be ``0 .. K-1`` and are named ``"0"`` …

    Args:
        dataset: A ``Dataset`` or ``IterableDataset``.
        label_column: The label column.

    Returns:
        ``(dataset, id2label)`` with ``id2label`` as ``{class id: name}``.

    Raises:
        ValueError: For a streamed dataset without ``ClassLabel`` features, non-integer labels, or
            integer labels that are not ``0 .. K-1``.
    """
    import datasets

    features = getattr(dataset, "features", None)
    feature = features.get(label_column) if features is not None else None
    if isinstance(feature, datasets.ClassLabel):
        return dataset, dict(enumerate(feature.names))
    if isinstance(dataset, datasets.IterableDataset):
        raise ValueError(
            f"The streamed dataset's label column {label_column!r} is not a ClassLabel feature ({feature!r}), so "
            "its class names cannot be known without reading it all; load it without --streaming, or cast the "
            "column to ClassLabel."
        )
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        dataset = dataset.class_encode_column(label_column)
        return dataset, dict(enumerate(dataset.features[label_column].names))
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        values = sorted(set(dataset.unique(label_column)))
        if values != list(range(len(values))):
            shown = values[:10] + (["..."] if len(values) > 10 else [])
            raise ValueError(
                f"Integer labels in {label_column!r} must be 0..K-1 with every class present; found {shown}."
            )
        return dataset, {i: str(i) for i in values}
    raise ValueError(
        f"The label column {label_column!r} has feature {feature!r}; allowed: ClassLabel, integers 0..K-1 or strings."
    )
