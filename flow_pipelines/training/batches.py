"""From the flags to the batches of every optimizer step: data settings, epoch order, a resumable position, model inputs.

The loader's order depends only on ``(seed, epoch)`` (:class:`EpochShuffleSampler`), so :class:`BatchStream`
can start anywhere: a resumed run continues with exactly the batches the uninterrupted run would have seen, on
every process. :func:`to_model_space` turns a batch of uint8 pixels (or cached VAE posteriors) into the clean
samples ``x0`` the objective noises.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from typing import Any

import torch

from ..data_sources import DIGITS_DATASET
from ..images import INTERPOLATION_MODES, dequantize, pixels_to_model_range
from .data import CACHE_MODES, DataConfig, TrainingData, collate_examples, prepare_training_data
from .flags import settings_from_args

logger = logging.getLogger("train_flow")

DIGITS_SIDE = 8
"""The digits' own side, their default resolution: upsampling them adds pixels, not information."""
DIGITS_TRAIN_STEPS = 1000
"""Optimizer steps of the embedded default run (about 71 epochs of the digits at batch 128)."""


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The data flags (named as in diffusers' training examples) and those of latent training.

    Args:
        parser: The training script's parser.
    """
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help=f"A datasets.load_dataset name or local path, a save_to_disk folder, or {DIGITS_DATASET!r}. "
        "Default (with no --train_data_dir): scikit-learn's 8x8 digits.",
    )
    data.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name.")
    data.add_argument("--train_data_dir", default=None, help="An image folder; the class is the sub-folder.")
    data.add_argument("--image_column", default=None, help="Image column (detected: image, img, ...).")
    data.add_argument(
        "--label_column", default=None, help="Label column (detected: label, labels, fine_label, ...)."
    )
    data.add_argument("--cache_dir", default=None, help="Where datasets caches downloads.")
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help=f"Training image side, in pixels (default: {DIGITS_SIDE} for the digits, their own; needed for other data).",
    )
    data.add_argument("--center_crop", action="store_true", help="Crop the centre (default: a random crop).")
    data.add_argument("--random_flip", action="store_true", help="Mirror images left-right at random.")
    data.add_argument(
        "--num_channels",
        type=int,
        default=None,
        choices=(1, 3, 4),
        help="Image channels (default: the data's).",
    )
    data.add_argument("--dequantize", action="store_true", help="Add uniform noise one 8-bit level wide.")
    data.add_argument(
        "--max_train_samples", type=int, default=None, help="Train on the first N examples only."
    )
    data.add_argument("--streaming", action="store_true", help="Stream the dataset (sharded by process).")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer when streaming.")
    data.add_argument(
        "--cache_images",
        default="auto",
        choices=CACHE_MODES,
        help="Decode the images once and hold them in memory (auto: when they fit in 2 GiB).",
    )
    data.add_argument(
        "--image_interpolation_mode",
        default="bilinear",
        choices=tuple(INTERPOLATION_MODES),
        help="Resize filter.",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="Data-loading worker processes.")
    data.add_argument(
        "--check_images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Decode every image once before training, so that a corrupt file stops the run at the start.",
    )
    latent = parser.add_argument_group("latent training")
    latent.add_argument(
        "--vae", default=None, help="AutoencoderKL folder or repo id: train in its latent space."
    )
    latent.add_argument(
        "--vae_subfolder", default=None, help="Subfolder of --vae holding the VAE (e.g. 'vae')."
    )
    latent.add_argument(
        "--vae_batch_size", type=int, default=32, help="Images per VAE call when caching latents."
    )


def trains_on_digits(args: argparse.Namespace) -> bool:
    """Whether the flags select the embedded digits.

    Args:
        args: The parsed flags.

    Returns:
        True for the digits.
    """
    return args.train_data_dir is None and args.dataset_name in (None, DIGITS_DATASET)


def check_data_args(args: argparse.Namespace) -> None:
    """Check the data flags on their own, before any work.

    Args:
        args: The parsed flags.

    Raises:
        ValueError: Naming the flag, its value and what is allowed.
    """
    if args.resolution is None:
        if not trains_on_digits(args):
            source = args.dataset_name or args.train_data_dir
            raise ValueError(
                f"--resolution is needed for {source!r}: the side, in pixels, its images are resized to (e.g. 32 "
                "for CIFAR-10; with --vae, the image side before encoding)."
            )
        args.resolution = DIGITS_SIDE
    if args.resolution <= 0:
        raise ValueError(f"--resolution={args.resolution} must be a positive number.")
    if args.max_train_samples is not None and args.max_train_samples <= 0:
        raise ValueError(f"--max_train_samples={args.max_train_samples} must be a positive number.")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("Give either --dataset_name or --train_data_dir, not both.")
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps: a stream's length is not known in advance.")
    if args.vae is not None and args.dequantize:
        raise ValueError("--dequantize applies to pixels; it cannot be combined with --vae.")


def load_training_data(
    args: argparse.Namespace, accelerator: Any, patch_size: int
) -> tuple[TrainingData, torch.utils.data.Dataset, Any | None]:
    """The run's data on every process: decoded images, or their VAE latents encoded once and cached on disk.

    Args:
        args: The parsed flags.
        accelerator: The run's accelerator (the main process prepares and caches first, the others then read).
        patch_size: The transformer's patch size (a VAE's latents must divide into patches).

    Returns:
        ``(data, dataset to train on, vae)``; ``vae`` is None for a pixel run.

    Raises:
        ValueError: For data or a VAE that does not fit the flags.
    """
    from .latents import cached_latent_dataset, check_vae_fits, load_vae

    is_main = accelerator.is_main_process
    vae, num_channels = None, args.num_channels
    if args.vae is not None:
        vae = load_vae(args.vae, args.vae_subfolder).to(accelerator.device)
        num_channels = check_vae_fits(vae, args.resolution, patch_size, num_channels)
    with accelerator.main_process_first():
        data = prepare_training_data(
            data_config(args, num_channels, latent=vae is not None),
            accelerator.process_index,
            accelerator.num_processes,
            disable_progress=not is_main,
        )
    logger.info(
        "Data: %s, %s examples, %d classes, %d channels at %dx%d%s",
        data.description,
        data.num_examples if data.num_examples is not None else "streamed",
        len(data.id2label),
        data.num_channels,
        args.resolution,
        args.resolution,
        ", decoded into memory" if data.cached else "",
    )
    if vae is None or data.num_examples is None:
        return data, data.dataset, vae
    with accelerator.main_process_first():
        dataset, cache, reused = cached_latent_dataset(
            vae,
            args.vae + (f"/{args.vae_subfolder}" if args.vae_subfolder else ""),
            data,
            args.output_dir,
            args.resolution,
            args.random_flip,
            {"interpolation": args.image_interpolation_mode, "max_train_samples": args.max_train_samples},
            args.vae_batch_size,
            args.dataloader_num_workers,
            disable_progress=not is_main,
        )
    action = "read from the cache" if reused else "encoded and cached"
    logger.info("Latents of %d examples %s at %s", len(dataset), action, cache)
    return data, dataset, vae


def total_steps(args: argparse.Namespace, steps_per_epoch: int | None) -> int:
    """Optimizer steps of the run: ``--max_train_steps``, else ``--num_train_epochs`` epochs, else the default.

    Args:
        args: The parsed flags.
        steps_per_epoch: Optimizer steps per epoch (None for a stream, which needs ``--max_train_steps``).

    Returns:
        The number of steps: the digits default, or 10 epochs of other data.
    """
    if args.max_train_steps is not None:
        return args.max_train_steps
    if args.num_train_epochs is not None:
        return args.num_train_epochs * steps_per_epoch
    return DIGITS_TRAIN_STEPS if trains_on_digits(args) else 10 * steps_per_epoch


def data_config(args: argparse.Namespace, num_channels: int | None, latent: bool) -> DataConfig:
    """The :class:`~flow_pipelines.training.data.DataConfig` of the flags.

    Args:
        args: The parsed flags.
        num_channels: Image channels to convert to (None: the data's).
        latent: Whether the images are encoded once into latents (their crop is then fixed: the centre).

    Returns:
        The config.
    """
    return settings_from_args(
        DataConfig,
        args,
        center_crop=args.center_crop or latent,
        num_channels=num_channels,
        interpolation=args.image_interpolation_mode,
    )


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


def make_loader(
    dataset: torch.utils.data.Dataset,
    num_examples: int | None,
    batch_size: int,
    num_processes: int,
    accumulation: int,
    seed: int,
    shuffle: bool = True,
    num_workers: int = 0,
) -> tuple[torch.utils.data.DataLoader, EpochShuffleSampler | None, int | None]:
    """The data loader of a run and the number of batches it uses per epoch.

    Args:
        dataset: A map-style dataset, or a stream (already split by process).
        num_examples: Its length (None for a stream).
        batch_size: Examples per batch and process.
        num_processes: Processes of the run.
        accumulation: Micro-batches per optimizer step.
        seed: Shuffle seed.
        shuffle: False keeps the dataset's order (for ``--overfit_one_batch``).
        num_workers: Loader worker processes.

    Returns:
        ``(loader, sampler, batches_per_epoch)``; the last two are None for a stream.

    Raises:
        ValueError: If the dataset is smaller than one global batch, or one epoch shorter than one step.
    """
    if num_examples is None:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_examples
        )
        return loader, None, None
    global_batch = batch_size * num_processes
    if num_examples < global_batch:
        raise ValueError(
            f"The dataset has {num_examples} examples, fewer than one global batch ({batch_size} x {num_processes} "
            f"processes = {global_batch}); lower --train_batch_size."
        )
    if steps_per_epoch(num_examples, batch_size, num_processes, accumulation) == 0:
        raise ValueError(
            f"One epoch ({num_examples // global_batch} batches per process) is shorter than "
            f"--gradient_accumulation_steps={accumulation}; lower it or the batch size."
        )
    sampler = EpochShuffleSampler(num_examples, seed=seed, shuffle=shuffle)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_examples,
        persistent_workers=num_workers > 0,
    )
    return (
        loader,
        sampler,
        steps_per_epoch(num_examples, batch_size, num_processes, accumulation) * accumulation,
    )


class BatchStream:
    """Yields training batches step after step, epoch after epoch, from any position.

    Map-style data uses an :class:`EpochShuffleSampler`: a resumed run skips the consumed part of an epoch by
    dropping that many indices and continues with exactly the batches the uninterrupted run would have seen (on
    every process). A stream is re-read each epoch (reshuffled by epoch) and consumed batches are skipped by
    reading them. ``epoch`` and ``batch_in_epoch`` say where the stream stands (what a checkpoint stores).

    Args:
        loader: The (accelerate-prepared, for map-style data) data loader.
        sampler: The loader's sampler (None for a stream).
        batches_per_epoch: Batches used per epoch per process (None for a stream).
        global_batch: Examples per batch over all processes.
        device: Where batches go (for an unprepared stream loader).
    """

    def __init__(
        self,
        loader: Any,
        sampler: EpochShuffleSampler | None,
        batches_per_epoch: int | None,
        global_batch: int,
        device: torch.device,
    ) -> None:
        self.loader = loader
        self.sampler = sampler
        self.batches_per_epoch = batches_per_epoch
        self.global_batch = global_batch
        self.device = device
        self.epoch = 0
        self.batch_in_epoch = 0

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        if self.sampler is not None:
            self.loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch, skip_examples=skip * self.global_batch)
            for index, batch in enumerate(self.loader):
                if skip + index < self.batches_per_epoch:
                    yield batch
            return
        self.loader.dataset.set_epoch(epoch)
        for index, batch in enumerate(self.loader):
            if index >= skip:
                yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def iterate(self, epoch: int, batch_in_epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches forever, starting at batch ``batch_in_epoch`` of ``epoch``.

        Args:
            epoch: The epoch to start in.
            batch_in_epoch: Batches of it already consumed.

        Yields:
            Batches of the loader.

        Raises:
            ValueError: If the data yields no batch at all.
        """
        self.epoch, skip = epoch, batch_in_epoch
        while True:
            self.batch_in_epoch = skip
            produced = False
            for batch in self._epoch_batches(self.epoch, skip):
                produced = True
                self.batch_in_epoch += 1
                yield batch
            if not produced and skip == 0:
                raise ValueError(
                    "The training data yielded no batch: it is smaller than one batch per process."
                )
            self.epoch, skip = self.epoch + 1, 0

    def position(self) -> tuple[int, int]:
        """``(epoch, batch_in_epoch)`` of the next batch, a finished epoch counted as the start of the next."""
        if self.batches_per_epoch is not None and self.batch_in_epoch >= self.batches_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.batch_in_epoch


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


def to_model_space(
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    flip: bool = False,
    dequantize_pixels: bool = False,
    vae: Any | None = None,
) -> torch.Tensor:
    """The clean training samples ``x0`` of a batch: pixels in [-1, 1], or normalised VAE latents.

    Args:
        batch: ``pixels`` (uint8) or cached posteriors ``latent_mean`` / ``latent_std``.
        generator: The step's random source (flips, dequantisation noise, latent draws).
        flip: Mirror a random half of the images.
        dequantize_pixels: Add uniform noise one 8-bit level wide.
        vae: The VAE of a latent run (a streamed latent run encodes here, as it goes).

    Returns:
        ``x0`` on the batch's device.
    """
    from .latents import encode_pixels, latent_normalization, normalize_latents, sample_latents

    if "latent_mean" in batch:
        return sample_latents(batch, *latent_normalization(vae), generator, flip=flip)
    images = pixels_to_model_range(batch["pixels"])
    if flip:
        images = random_flip(images, generator)
    if vae is not None:
        mean, std = encode_pixels(vae, ((images + 1.0) * 127.5).round().to(torch.uint8))
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return normalize_latents(mean + std * eps, *latent_normalization(vae))
    return dequantize(images, generator) if dequantize_pixels else images
