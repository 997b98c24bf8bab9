"""Training data: image-classification datasets from ``datasets``, image folders, or scikit-learn's digits.

Every source ends as batches ``{"pixels": uint8 (batch, channels, res, res), "class_labels": int64 (batch,)}``;
the training step turns pixels into [-1, 1] floats (:func:`flow_pipelines.images.pixels_to_model_range`).
Keeping uint8 until then makes batches small and lets a small dataset be decoded once and held in memory
(:class:`CachedImageDataset`), so that data loading never throttles a fast model.

Sources (:func:`load_image_dataset`):

- the embedded default, :data:`DIGITS_DATASET`: scikit-learn's 1,797 8×8 digits as a ``datasets.Dataset``
  with an ``image`` column and a ``label`` ``ClassLabel`` named ``"0"`` … ``"9"``;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- any ``datasets.load_dataset`` name or local path (``--dataset_name``, ``--dataset_config_name``);
- an image folder, class = sub-folder (``--train_data_dir``, the ``imagefolder`` builder);
- any of the last two streamed (``streaming=True``): an ``IterableDataset`` sharded over processes.

Images are decoded by this package (:func:`flow_pipelines.images.decode_image`), not by ``datasets``, so that
a corrupt file is reported by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..images import ImageTransform, decode_image, image_channels

DIGITS_DATASET = "sklearn_digits"
"""Name of the embedded default dataset: scikit-learn's bundled 8×8 digits (``load_digits``)."""

DIGITS_DESCRIPTION = "scikit-learn digits (sklearn.datasets.load_digits: 1,797 8x8 images, 10 classes)"

IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img", "images", "picture", "png", "jpg", "jpeg")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label", "class", "class_label", "target")

CACHE_MODES: tuple[str, ...] = ("auto", "yes", "no")

# Decoded uint8 images up to this size are held in memory when caching is "auto".
DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3


# ------------------------------------------------------------------------------------------ sources
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
        if not Path(train_data_dir).is_dir():
            raise ValueError(f"train_data_dir={train_data_dir!r} is not a folder.")
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


# ------------------------------------------------------------------------------------------ augmentation
def random_flip(
    images: torch.Tensor, generator: torch.Generator | None = None, probability: float = 0.5
) -> torch.Tensor:
    """Mirror each image left-right with the given probability.

    Args:
        images: A batch ``(batch, channels, height, width)``.
        generator: Random source on the images' device.
        probability: Chance of mirroring each image.

    Returns:
        The batch with a random subset mirrored.
    """
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < probability
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


# ------------------------------------------------------------------------------------------ torch datasets
def collate_examples(examples: Any) -> dict[str, torch.Tensor]:
    """Collate examples ``{"pixels", "class_labels"}`` into a batch; an already-built batch passes through.

    Args:
        examples: A list of example dicts, or a batch dict from a ``__getitems__``.

    Returns:
        A dict of stacked tensors.
    """
    if isinstance(examples, dict):
        return examples
    batch: dict[str, torch.Tensor] = {}
    for key in examples[0]:
        values = [example[key] for example in examples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


class TransformedImageDataset(torch.utils.data.Dataset):
    """A map-style ``datasets.Dataset`` decoded and transformed per item (for datasets too big to cache).

    Args:
        dataset: The ``datasets.Dataset``.
        image_column: Its image column.
        label_column: Its label column (integer class ids).
        transform: The :class:`ImageTransform`.
    """

    def __init__(
        self,
        dataset: Any,
        image_column: str,
        label_column: str,
        transform: ImageTransform,
        report_crop_freedom: bool = False,
    ) -> None:
        import datasets

        if isinstance(dataset.features.get(image_column), datasets.Image):
            # Decode ourselves, so that a corrupt file is reported by name.
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset.select_columns([image_column, label_column])
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.report_crop_freedom = report_crop_freedom

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[int(index)]
        image = decode_image(row[self.image_column], f"row {index}")
        example = {"pixels": self.transform(image), "class_labels": int(row[self.label_column])}
        if self.report_crop_freedom:
            example["crop_free"] = self.transform.crop_is_free(*image.size)
        return example


class CachedImageDataset(torch.utils.data.Dataset):
    """Transformed uint8 images and labels held in memory; a batch is gathered with one indexing op.

    Args:
        pixels: uint8 ``(N, C, H, W)``.
        class_labels: int64 ``(N,)``.
    """

    def __init__(self, pixels: torch.Tensor, class_labels: torch.Tensor) -> None:
        if pixels.shape[0] != class_labels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {class_labels.shape[0]} labels.")
        self.pixels = pixels
        self.class_labels = class_labels.long()

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.pixels[index], "class_labels": self.class_labels[index]}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"pixels": self.pixels[index], "class_labels": self.class_labels[index]}


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """A streamed ``datasets.IterableDataset``, shuffled per epoch, decoded and transformed as it goes.

    Args:
        dataset: The ``datasets.IterableDataset`` (already split for this process).
        image_column: Its image column.
        label_column: Its label column (``ClassLabel``).
        transform: The :class:`ImageTransform`.
        seed: Shuffle seed; the epoch is added to it.
        shuffle_buffer_size: Size of the shuffle buffer (0 disables shuffling).
    """

    def __init__(
        self,
        dataset: Any,
        image_column: str,
        label_column: str,
        transform: ImageTransform,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
    ) -> None:
        import datasets

        features = getattr(dataset, "features", None)
        if features is not None and isinstance(features.get(image_column), datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        dataset = dataset.select_columns([image_column, label_column])
        if shuffle_buffer_size > 0:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.dataset = dataset
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for this epoch (called by the data loader).

        Args:
            epoch: The epoch; it is added to the shuffle seed.
        """
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for position, row in enumerate(self.dataset):
            image = decode_image(row[self.image_column], f"streamed example {position} of epoch {self.epoch}")
            yield {"pixels": self.transform(image), "class_labels": int(row[self.label_column])}


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random order that depends only on ``(seed, epoch)``: identical on every process and after a resume.

    A resumed run skips the part of an epoch already consumed with ``set_epoch(epoch, skip_examples=n)``:
    the next pass yields the epoch's order without its first ``n`` indices. Skipping a multiple of the
    global batch (per-process batch x processes) keeps accelerate's round-robin assignment of batches to
    processes aligned, so every process continues with the batches it would have had.

    Args:
        num_examples: Dataset length.
        seed: Base seed.
        shuffle: False gives the identity order (for debugging).
    """

    def __init__(self, num_examples: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip_examples = 0

    def set_epoch(self, epoch: int, skip_examples: int | None = None) -> None:
        """Select the epoch (and how many of its first indices the next pass skips).

        Args:
            epoch: The epoch.
            skip_examples: Indices to skip in the next pass; None keeps a pending skip for the same epoch
                (accelerate's data loader calls ``set_epoch(epoch)`` again when iteration starts).
        """
        if skip_examples is not None:
            if not 0 <= skip_examples <= self.num_examples:
                raise ValueError(f"skip_examples={skip_examples} must lie in [0, {self.num_examples}].")
            self.skip_examples = skip_examples
        elif epoch != self.epoch:
            self.skip_examples = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples - self.skip_examples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        else:
            order = list(range(self.num_examples))
        skip, self.skip_examples = self.skip_examples, 0
        return iter(order[skip:])


# ------------------------------------------------------------------------------------------ assembly
@dataclass
class DataConfig:
    """What :func:`prepare_training_data` needs (the training script's data flags).

    Args:
        dataset_name: See :func:`load_image_dataset`.
        dataset_config_name: See :func:`load_image_dataset`.
        train_data_dir: See :func:`load_image_dataset`.
        image_column: Image column (detected if None).
        label_column: Label column (detected if None).
        resolution: Training image side.
        center_crop: Centre crop (else random).
        num_channels: 1, 3 or 4; None takes the first image's.
        max_train_samples: Keep only the first N examples.
        streaming: Stream the dataset.
        cache_images: ``"auto"``, ``"yes"`` or ``"no"``: decode once and hold the uint8 images in memory.
        interpolation: Resize filter, a key of :data:`flow_pipelines.images.INTERPOLATION_MODES`.
        seed: Shuffle seed.
        cache_dir: ``datasets`` cache folder.
        dataloader_num_workers: Workers for decoding.
        max_cache_bytes: Largest in-memory cache for ``"auto"``.
        shuffle_buffer_size: Shuffle buffer of a streamed dataset.
    """

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    resolution: int = 16
    center_crop: bool = False
    num_channels: int | None = None
    max_train_samples: int | None = None
    streaming: bool = False
    cache_images: str = "auto"
    interpolation: str = "bilinear"
    seed: int = 0
    cache_dir: str | None = None
    dataloader_num_workers: int = 0
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES
    shuffle_buffer_size: int = 1000


@dataclass
class TrainingData:
    """The prepared training data and what the model needs to know about it.

    Args:
        dataset: A torch ``Dataset`` (map-style) or ``IterableDataset`` (streamed) yielding ``pixels`` / ``class_labels``.
        id2label: Class names by id.
        num_channels: Image channels.
        num_examples: Number of examples, None when streamed.
        description: Human-readable source (for logs and the model card).
        cached: Whether the images are held in memory.
        source: The underlying ``datasets`` object (for latent encoding).
        image_column: Its image column.
        label_column: Its label column.
    """

    dataset: torch.utils.data.Dataset
    id2label: dict[int, str]
    num_channels: int
    num_examples: int | None
    description: str
    cached: bool
    source: Any
    image_column: str
    label_column: str


def describe_source(config: DataConfig) -> str:
    """A short description of where the data comes from (dataset name, folder or the digits).

    Args:
        config: The data settings.

    Returns:
        The description, for logs and the model card.
    """
    if config.train_data_dir is not None:
        return f"image folder {config.train_data_dir}"
    if config.dataset_name is None or config.dataset_name == DIGITS_DATASET:
        return DIGITS_DESCRIPTION
    if config.dataset_config_name:
        return f"{config.dataset_name} ({config.dataset_config_name})"
    return config.dataset_name


def _first_image(dataset: Any, image_column: str) -> Image.Image:
    """Decode the dataset's first image (to learn its channel count)."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        row = next(iter(dataset))
    else:
        if len(dataset) == 0:
            raise ValueError("The training dataset is empty.")
        row = dataset[0]
    return decode_image(row[image_column], "row 0")


def build_image_cache(
    dataset: TransformedImageDataset, num_workers: int = 0, disable_progress: bool = False
) -> CachedImageDataset | None:
    """Decode and transform a whole map-style dataset once into memory.

    Args:
        dataset: The per-item dataset.
        num_workers: Decoding workers.
        disable_progress: Hide the progress bar (non-main processes).

    Returns:
        The cache, or None if a random crop would have had a choice of position (non-square images),
        which a fixed cache would freeze.

    Raises:
        ValueError: Naming the file of an image that cannot be read.
    """
    from tqdm.auto import tqdm

    random_crop = not dataset.transform.center_crop
    # Decode with a centred crop and note whether any image left the crop a choice: a random crop of
    # a non-square image differs per epoch, which a fixed cache would freeze.
    fixed = TransformedImageDataset.__new__(TransformedImageDataset)
    fixed.__dict__.update(dataset.__dict__)
    fixed.transform = ImageTransform(
        dataset.transform.resolution, dataset.transform.num_channels, True, dataset.transform.interpolation
    )
    fixed.report_crop_freedom = True
    loader = torch.utils.data.DataLoader(
        fixed, batch_size=256, shuffle=False, num_workers=num_workers, collate_fn=collate_examples
    )
    pixels, labels = [], []
    for batch in tqdm(loader, desc="Decoding images", unit="batch", disable=disable_progress):
        if random_crop and bool(batch["crop_free"].any()):
            return None
        pixels.append(batch["pixels"])
        labels.append(batch["class_labels"])
    return CachedImageDataset(torch.cat(pixels), torch.cat(labels))


def prepare_training_data(
    config: DataConfig, process_index: int = 0, num_processes: int = 1, disable_progress: bool = False
) -> TrainingData:
    """Load, check and wrap the training data as the script's data loader needs it.

    Args:
        config: The data settings.
        process_index: This process's rank (a streamed dataset is split by it).
        num_processes: Number of processes.
        disable_progress: Hide progress bars.

    Returns:
        The :class:`TrainingData`.

    Raises:
        ValueError: For a missing column (naming the columns there are), bad labels, an unreadable
            image (named), an unsupported channel count or cache setting.
    """
    import datasets
    from datasets.distributed import split_dataset_by_node

    if config.cache_images not in CACHE_MODES:
        raise ValueError(
            f"cache_images={config.cache_images!r} is not supported; allowed: {', '.join(CACHE_MODES)}."
        )
    if config.streaming and config.cache_images == "yes":
        raise ValueError("cache_images='yes' cannot be combined with streaming: a stream is read as it goes.")
    if config.max_train_samples is not None and config.max_train_samples <= 0:
        raise ValueError(f"max_train_samples={config.max_train_samples} must be a positive integer.")
    source = load_image_dataset(
        config.dataset_name,
        config.dataset_config_name,
        config.train_data_dir,
        streaming=config.streaming,
        cache_dir=config.cache_dir,
    )
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"Expected one split of {describe_source(config)}, got splits {', '.join(source)}.")
    image_column, label_column = resolve_columns(
        dataset_column_names(source), config.image_column, config.label_column
    )
    source, id2label = prepare_label_column(source, label_column)
    if config.max_train_samples is not None:
        if config.streaming:
            source = source.take(config.max_train_samples)
        else:
            source = source.select(range(min(config.max_train_samples, len(source))))
    num_channels = config.num_channels
    if num_channels is None:
        raw = source
        if not config.streaming and isinstance(source.features.get(image_column), datasets.Image):
            raw = source.cast_column(image_column, datasets.Image(decode=False))
        num_channels = image_channels(_first_image(raw, image_column))
    transform = ImageTransform(config.resolution, num_channels, config.center_crop, config.interpolation)
    description = describe_source(config)

    if config.streaming:
        if num_processes > 1:
            source = split_dataset_by_node(source, rank=process_index, world_size=num_processes)
        dataset = StreamingImageDataset(
            source,
            image_column,
            label_column,
            transform,
            seed=config.seed,
            shuffle_buffer_size=config.shuffle_buffer_size,
        )
        return TrainingData(
            dataset, id2label, num_channels, None, description, False, source, image_column, label_column
        )

    per_item = TransformedImageDataset(source, image_column, label_column, transform)
    cache_bytes = len(per_item) * num_channels * config.resolution**2
    use_cache = config.cache_images == "yes" or (
        config.cache_images == "auto" and cache_bytes <= config.max_cache_bytes
    )
    dataset: torch.utils.data.Dataset = per_item
    cached = False
    if use_cache:
        cache = build_image_cache(per_item, config.dataloader_num_workers, disable_progress)
        if cache is None and config.cache_images == "yes":
            raise ValueError(
                "cache_images='yes' needs a fixed crop: pass --center_crop, or use square images, or "
                "--cache_images auto/no to crop at random per epoch."
            )
        if cache is not None:
            dataset, cached = cache, True
    return TrainingData(
        dataset,
        id2label,
        num_channels,
        len(per_item),
        description,
        cached,
        source,
        image_column,
        label_column,
    )


def steps_per_epoch(num_examples: int, batch_size: int, num_processes: int, accumulation: int = 1) -> int:
    """Optimizer steps in one epoch when every process takes full batches (the last partial one dropped).

    Args:
        num_examples: Dataset length.
        batch_size: Per-process batch size.
        num_processes: Number of processes.
        accumulation: Gradient-accumulation steps.

    Returns:
        The number of optimizer steps (0 when the dataset is smaller than one global batch).
    """
    return (num_examples // (batch_size * num_processes)) // accumulation
