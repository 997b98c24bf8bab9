"""Training data as torch datasets: decoded, transformed, cached in memory when they fit, or streamed.

Every source (:mod:`flow_pipelines.data_sources`) ends as batches ``{"pixels": uint8 (batch, channels, res,
res), "class_labels": int64 (batch,)}``; the training step turns pixels into [-1, 1] floats
(:func:`flow_pipelines.images.pixels_to_model_range`). Keeping uint8 until then makes batches small and lets a
small dataset be decoded once and held in memory (:class:`CachedImageDataset`), so that data loading never
throttles a fast model. Images are decoded by this package (:func:`flow_pipelines.images.decode_image`), not by
``datasets``, so that a corrupt file is reported by name.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from ..data_sources import (
    DIGITS_DATASET,
    DIGITS_DESCRIPTION,
    dataset_column_names,
    load_image_dataset,
    prepare_label_column,
    resolve_columns,
)
from ..images import ImageTransform, decode_image, image_channels

CACHE_MODES: tuple[str, ...] = ("auto", "yes", "no")

# Images looked at to decide the channel count of a dataset.
CHANNEL_PROBES = 64
logger = logging.getLogger("train_flow")

# Decoded uint8 images up to this size are held in memory when caching is "auto".
DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3


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


@dataclass(frozen=True)
class ImageRows:
    """A ``datasets`` dataset's image and label columns, its images decoded here and transformed.

    Build it with :meth:`of`, which keeps the images encoded (``datasets.Image(decode=False)``), so that
    :meth:`example` decodes each one and names the file of a corrupt one.

    Args:
        dataset: The ``datasets.Dataset`` or ``IterableDataset``, reduced to the two columns.
        image_column: Its image column.
        label_column: Its label column (integer class ids).
        transform: The :class:`~flow_pipelines.images.ImageTransform`.
    """

    dataset: Any
    image_column: str
    label_column: str
    transform: ImageTransform

    @classmethod
    def of(cls, dataset: Any, image_column: str, label_column: str, transform: ImageTransform) -> ImageRows:
        """The rows of ``dataset``'s two columns, images left encoded.

        Args:
            dataset: A ``datasets.Dataset`` or ``IterableDataset``.
            image_column: Its image column.
            label_column: Its label column.
            transform: The transform of every image.

        Returns:
            The rows.
        """
        import datasets

        features = getattr(dataset, "features", None)
        if features is not None and isinstance(features.get(image_column), datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        return cls(
            dataset.select_columns([image_column, label_column]), image_column, label_column, transform
        )

    def example(self, row: dict[str, Any], where: str) -> tuple[dict[str, Any], Image.Image]:
        """A training example ``{"pixels", "class_labels"}`` of one row, and its decoded image.

        Args:
            row: The row.
            where: How to name the image in an error (e.g. ``"row 12"``).

        Returns:
            ``(example, image)``.

        Raises:
            ValueError: If the image cannot be read (naming its file).
        """
        image = decode_image(row[self.image_column], where)
        return {"pixels": self.transform(image), "class_labels": int(row[self.label_column])}, image


class TransformedImageDataset(torch.utils.data.Dataset):
    """A map-style dataset decoded and transformed per item (for datasets too big to cache).

    Args:
        rows: The dataset's :class:`ImageRows`.
        report_crop_freedom: Add ``crop_free`` to each example: whether its image left the crop a choice.
    """

    def __init__(self, rows: ImageRows, report_crop_freedom: bool = False) -> None:
        self.rows = rows
        self.report_crop_freedom = report_crop_freedom

    def __len__(self) -> int:
        return len(self.rows.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example, image = self.rows.example(self.rows.dataset[int(index)], f"row {index}")
        if self.report_crop_freedom:
            example["crop_free"] = self.rows.transform.crop_is_free(*image.size)
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
    """A streamed dataset, shuffled per epoch, decoded and transformed as it goes.

    Args:
        rows: The :class:`ImageRows` of a ``datasets.IterableDataset`` (already split for this process).
        seed: Shuffle seed; the epoch is added to it.
        shuffle_buffer_size: Size of the shuffle buffer (0 disables shuffling).
    """

    def __init__(self, rows: ImageRows, seed: int = 0, shuffle_buffer_size: int = 1000) -> None:
        if shuffle_buffer_size > 0:
            rows = replace(rows, dataset=rows.dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size))
        self.rows = rows
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for this epoch (called by the data loader).

        Args:
            epoch: The epoch; it is added to the shuffle seed.
        """
        self.epoch = epoch
        self.rows.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for position, row in enumerate(self.rows.dataset):
            yield self.rows.example(row, f"streamed example {position} of epoch {self.epoch}")[0]


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
        check_images: Decode every image of a map-style set once before training (a cache does anyway).
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
    check_images: bool = True


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


def data_fingerprint(data: TrainingData) -> str:
    """A fingerprint of the images themselves: a hash of the decoded pixels when they are held in memory, else the
    ``datasets`` fingerprint of the source (which follows its files and transforms).

    Args:
        data: The prepared training data.

    Returns:
        A hex digest or the source's fingerprint.
    """
    if isinstance(data.dataset, CachedImageDataset):
        digest = hashlib.sha256(data.dataset.pixels.numpy().tobytes())
        digest.update(data.dataset.class_labels.numpy().tobytes())
        return digest.hexdigest()
    return str(getattr(data.source, "_fingerprint", None) or data.description)


def data_channels(dataset: Any, image_column: str, probes: int = CHANNEL_PROBES) -> int:
    """The channel count of a dataset's images, from images spread over the whole set (the first of a stream).

    A colour set whose first image happens to be grey must still train in colour: the largest count seen wins,
    and a mixed set is reported.

    Args:
        dataset: A ``datasets`` dataset whose image column is still encoded.
        image_column: Its image column.
        probes: How many images to look at.

    Returns:
        1, 3 or 4.

    Raises:
        ValueError: If the dataset is empty, or none of the images looked at can be read.
    """
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        rows = [(f"streamed example {i}", row) for i, row in enumerate(itertools.islice(dataset, probes))]
    else:
        positions = sorted({round(i * (len(dataset) - 1) / max(1, probes - 1)) for i in range(probes)})
        rows = [(f"row {i}", dataset[i]) for i in positions if len(dataset)]
    if not rows:
        raise ValueError("The training dataset is empty.")
    counts: Counter[int] = Counter()
    problem = None
    for where, row in rows:
        try:
            counts[image_channels(decode_image(row[image_column], where))] += 1
        except ValueError as error:  # reported with the others by the image check, or when reached
            problem = error
    if not counts:
        raise problem
    if len(counts) > 1:
        logger.warning(
            "The images have different channel counts (%s among %d looked at); training with %d channels. Pass "
            "--num_channels to choose.",
            ", ".join(f"{count} with {channels}" for channels, count in sorted(counts.items())),
            sum(counts.values()),
            max(counts),
        )
    return max(counts)


def check_images(
    dataset: TransformedImageDataset, num_workers: int = 0, disable_progress: bool = False
) -> None:
    """Decode every image once before training, so that a corrupt or truncated file stops the run at the start.

    Args:
        dataset: The per-item dataset.
        num_workers: Decoding workers.
        disable_progress: Hide the progress bar.

    Raises:
        ValueError: Naming the unreadable files (up to five) and how many there are.
    """
    from tqdm.auto import tqdm

    def decode(index: int) -> str | None:
        try:
            dataset[index]
        except ValueError as error:
            return str(error)
        return None

    loader = torch.utils.data.DataLoader(
        range(len(dataset)),
        batch_size=64,
        num_workers=num_workers,
        collate_fn=lambda batch: [decode(i) for i in batch],
    )
    problems = [
        problem
        for batch in tqdm(loader, desc="Checking images", unit="batch", disable=disable_progress)
        for problem in batch
        if problem is not None
    ]
    if problems:
        raise ValueError(
            f"{len(problems)} training image(s) cannot be read; remove or repair them, or pass --no-check_images to "
            f"find them only when reached: {'; '.join(problems[:5])}"
        )


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

    transform = dataset.rows.transform
    random_crop = not transform.center_crop
    # Decode with a centred crop and note whether any image left the crop a choice: a random crop of
    # a non-square image differs per epoch, which a fixed cache would freeze.
    centred = replace(transform, center_crop=True)
    fixed = TransformedImageDataset(replace(dataset.rows, transform=centred), report_crop_freedom=True)
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
        num_channels = data_channels(raw, image_column)
    transform = ImageTransform(config.resolution, num_channels, config.center_crop, config.interpolation)
    description = describe_source(config)

    if config.streaming:
        if num_processes > 1:
            source = split_dataset_by_node(source, rank=process_index, world_size=num_processes)
        rows = ImageRows.of(source, image_column, label_column, transform)
        dataset = StreamingImageDataset(
            rows, seed=config.seed, shuffle_buffer_size=config.shuffle_buffer_size
        )
        return TrainingData(
            dataset, id2label, num_channels, None, description, False, source, image_column, label_column
        )

    per_item = TransformedImageDataset(ImageRows.of(source, image_column, label_column, transform))
    cache_bytes = len(per_item) * num_channels * config.resolution**2
    use_cache = config.cache_images == "yes" or (
        config.cache_images == "auto" and cache_bytes <= config.max_cache_bytes
    )
    dataset: torch.utils.data.Dataset = per_item
    if config.check_images and not use_cache:  # a cache decodes every image anyway
        check_images(per_item, config.dataloader_num_workers, disable_progress)
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
