"""Latent training: encode the training images once with an ``AutoencoderKL`` and train on the latents.

The encoder's posterior ``N(mean, std**2)`` of every image (and of its mirror image when training with
random flips) is computed once and cached **on disk** as safetensors in the output folder
(``latent_cache/<key>.safetensors``, keyed by the VAE and data settings, written atomically), then held in
memory for training; a resumed or repeated run with the same settings reuses it. Each training step draws
``z = mean + std * eps`` and feeds the transformer ``(z - shift_factor) * scaling_factor``, the inverse of
what ``FlowPipeline`` decodes (``vae.decode(latents / scaling_factor + shift_factor)``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..images import pixels_to_model_range
from .data import TrainingData, collate_examples, data_fingerprint
from .runtime import weights_digest

LATENT_CACHE_FOLDER = "latent_cache"


def load_vae(name: str, subfolder: str | None = None) -> Any:
    """Load a frozen ``AutoencoderKL`` (eval mode, no gradients) from a folder or repo id.

    Args:
        name: ``--vae``.
        subfolder: ``--vae_subfolder`` (e.g. ``"vae"`` of a pipeline folder).

    Returns:
        The VAE.

    Raises:
        ValueError: If no ``AutoencoderKL`` can be loaded from it.
    """
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(name, subfolder=subfolder, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"--vae {name!r}: cannot load an AutoencoderKL from it ({error}).") from error
    vae.requires_grad_(False)
    return vae.eval()


def check_vae_fits(vae: Any, resolution: int, patch_size: int, num_channels: int | None) -> int:
    """Check that the VAE fits the run's images and model, before any encoding.

    Args:
        vae: The VAE.
        resolution: ``--resolution`` (pixels).
        patch_size: The transformer's patch size.
        num_channels: ``--num_channels`` (None: the VAE's).

    Returns:
        The image channels to load.

    Raises:
        ValueError: If the resolution is not divisible by the VAE's downsampling times the patch size, or the
            channels differ from the VAE's.
    """
    factor = vae_scale_factor(vae)
    if resolution % (factor * patch_size):
        raise ValueError(
            f"--resolution={resolution} must be divisible by the VAE's downsampling ({factor}) times the patch size "
            f"({patch_size}) = {factor * patch_size}."
        )
    in_channels = vae.config.in_channels
    if (num_channels or in_channels) != in_channels:
        raise ValueError(f"--num_channels={num_channels} differs from the VAE's in_channels={in_channels}.")
    return in_channels


def vae_scale_factor(vae: Any) -> int:
    """Spatial downsampling of an ``AutoencoderKL``: ``2 ** (len(block_out_channels) - 1)``."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_normalization(vae: Any) -> tuple[float, float]:
    """The VAE's ``(scaling_factor, shift_factor)`` (shift 0 when the config has none)."""
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


def normalize_latents(latents: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    """VAE latents to the transformer's space: ``(z - shift_factor) * scaling_factor``.

    Args:
        latents: Raw VAE latents ``z``.
        scaling_factor: The VAE's scaling factor.
        shift_factor: The VAE's shift factor.

    Returns:
        The normalised latents.
    """
    return (latents - shift_factor) * scaling_factor


def cache_key(vae_name: str, vae: Any, data: TrainingData, resolution: int, flip: bool, extra: dict) -> str:
    """A short hash of everything the cached latents depend on, contents included.

    The VAE's weights and the images themselves are hashed, not only their names: retrained weights or changed
    images at the same path get new latents.

    Args:
        vae_name: Path or repo id of the VAE.
        vae: The VAE (its config and weights are hashed).
        data: The training data (its content fingerprint, size, channels).
        resolution: Image resolution.
        flip: Whether mirror images are encoded too.
        extra: Further settings (crop, interpolation, ...).

    Returns:
        16 hex digits.
    """
    description = {
        "vae": vae_name,
        "vae_config": {k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
        "vae_weights": weights_digest(vae),
        "data": data.description,
        "data_content": data_fingerprint(data),
        "num_examples": data.num_examples,
        "num_channels": data.num_channels,
        "resolution": resolution,
        "flip": flip,
        **extra,
    }
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class LatentDataset(torch.utils.data.Dataset):
    """Cached posterior means / standard deviations and labels; a batch is gathered with one indexing op.

    Args:
        means: ``(N, V, C, h, w)``, ``V`` = 1, or 2 with the mirror image's posterior at index 1.
        stds: Same shape.
        class_labels: ``(N,)`` integer labels.
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, class_labels: torch.Tensor) -> None:
        if means.shape != stds.shape or means.shape[0] != class_labels.shape[0]:
            raise ValueError(
                f"Inconsistent latent cache: means {tuple(means.shape)}, stds {tuple(stds.shape)}, "
                f"labels {tuple(class_labels.shape)}."
            )
        self.means = means
        self.stds = stds
        self.class_labels = class_labels.long()

    @property
    def num_variants(self) -> int:
        """1, or 2 when mirror images were encoded."""
        return self.means.shape[1]

    def __len__(self) -> int:
        return self.means.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "latent_mean": self.means[index],
            "latent_std": self.stds[index],
            "class_labels": self.class_labels[index],
        }

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {
            "latent_mean": self.means[index],
            "latent_std": self.stds[index],
            "class_labels": self.class_labels[index],
        }


@torch.no_grad()
def encode_pixels(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of uint8 images under the VAE.

    Args:
        vae: The ``AutoencoderKL``.
        pixels: uint8 ``(B, C, H, W)``.

    Returns:
        ``(mean, std)``, each ``(B, latent_channels, H / f, W / f)`` in float32.
    """
    images = pixels_to_model_range(pixels.to(vae.device), dtype=vae.dtype)
    posterior = vae.encode(images).latent_dist
    return posterior.mean.float(), posterior.std.float()


@torch.no_grad()
def build_latent_dataset(
    vae: Any,
    data: TrainingData,
    cache_path: str | os.PathLike,
    flip: bool,
    batch_size: int = 64,
    num_workers: int = 0,
    disable_progress: bool = False,
) -> LatentDataset:
    """Encode every training image (and its mirror, with ``flip``) once, or load the cache if it exists.

    Args:
        vae: The ``AutoencoderKL`` (on the device to encode with).
        data: Map-style training data.
        cache_path: The safetensors cache file.
        flip: Also encode mirror images (for random flips).
        batch_size: Images per encoder call.
        num_workers: Data-loading workers.
        disable_progress: Hide the progress bar.

    Returns:
        The :class:`LatentDataset`.

    Raises:
        ValueError: If the data is streamed (no fixed set to cache).
    """
    from tqdm.auto import tqdm

    if data.num_examples is None:
        raise ValueError("Latents can be cached only for a map-style dataset, not a streamed one.")
    cache_path = Path(cache_path)
    if cache_path.is_file():
        tensors = load_file(str(cache_path))
        return LatentDataset(tensors["means"], tensors["stds"], tensors["class_labels"])
    loader = torch.utils.data.DataLoader(
        data.dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_examples,
    )
    means, stds, labels = [], [], []
    for batch in tqdm(loader, desc="Encoding latents", unit="batch", disable=disable_progress):
        pixels = batch["pixels"]
        views = [pixels, pixels.flip(-1)] if flip else [pixels]
        encoded = [encode_pixels(vae, view) for view in views]
        means.append(torch.stack([mean for mean, _ in encoded], dim=1).cpu())
        stds.append(torch.stack([std for _, std in encoded], dim=1).cpu())
        labels.append(batch["class_labels"].long())
    tensors = {
        "means": torch.cat(means).contiguous(),
        "stds": torch.cat(stds).contiguous(),
        "class_labels": torch.cat(labels).contiguous(),
    }
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_path.with_name(f".{cache_path.name}.partial-{os.getpid()}")
    save_file(tensors, str(partial))
    os.replace(partial, cache_path)
    return LatentDataset(tensors["means"], tensors["stds"], tensors["class_labels"])


def sample_latents(
    batch: dict[str, torch.Tensor],
    scaling_factor: float,
    shift_factor: float,
    generator: torch.Generator | None = None,
    flip: bool = False,
) -> torch.Tensor:
    """Draw normalised training latents from a batch of cached posteriors.

    Args:
        batch: ``latent_mean`` / ``latent_std`` of shape ``(B, V, C, h, w)``.
        scaling_factor: The VAE's scaling factor.
        shift_factor: The VAE's shift factor.
        generator: Random source on the batch's device.
        flip: Pick the mirror-image posterior for a random half of the batch (needs ``V = 2``).

    Returns:
        ``(B, C, h, w)`` latents ``(mean + std * eps - shift) * scale``.

    Raises:
        ValueError: If ``flip`` is asked for but mirror images were not encoded.
    """
    means, stds = batch["latent_mean"], batch["latent_std"]
    if flip:
        if means.shape[1] < 2:
            raise ValueError(
                "Random flips need the mirror images' latents; rebuild the cache with flip=True."
            )
        choice = (torch.rand(means.shape[0], generator=generator, device=means.device) < 0.5).long()
        rows = torch.arange(means.shape[0], device=means.device)
        mean, std = means[rows, choice], stds[rows, choice]
    else:
        mean, std = means[:, 0], stds[:, 0]
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return normalize_latents(mean + std * eps, scaling_factor, shift_factor)


def cached_latent_dataset(
    vae: Any,
    vae_name: str,
    data: TrainingData,
    output_dir: str | os.PathLike,
    resolution: int,
    flip: bool,
    settings: dict[str, Any],
    batch_size: int,
    num_workers: int,
    disable_progress: bool,
) -> tuple[LatentDataset, Path, bool]:
    """The latents of the training data, from the cache in ``output_dir/latent_cache`` or encoded once into it.

    Args:
        vae: The VAE (on the device to encode with).
        vae_name: Its folder or repo id (with subfolder), part of the cache key.
        data: Map-style training data.
        output_dir: The run's folder.
        resolution: The image resolution encoded.
        flip: Also encode mirror images.
        settings: Further settings the latents depend on (interpolation, sample limit, ...).
        batch_size: Images per encoder call.
        num_workers: Data-loading workers.
        disable_progress: Hide the progress bar.

    Returns:
        ``(dataset, cache file, whether it was read from the cache rather than encoded now)``.
    """
    key = cache_key(vae_name, vae, data, resolution, flip, settings)
    cache_path = Path(output_dir) / LATENT_CACHE_FOLDER / f"{key}.safetensors"
    reused = cache_path.is_file()
    dataset = build_latent_dataset(vae, data, cache_path, flip, batch_size, num_workers, disable_progress)
    return dataset, cache_path, reused
