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
from .data import TrainingData, collate_examples

LATENT_CACHE_FOLDER = "latent_cache"


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
    """A short hash of everything the cached latents depend on.

    Args:
        vae_name: Path or repo id of the VAE.
        vae: The VAE (its config is hashed too).
        data: The training data (source description, size, channels).
        resolution: Image resolution.
        flip: Whether mirror images are encoded too.
        extra: Further settings (crop, interpolation, ...).

    Returns:
        16 hex digits.
    """
    description = {
        "vae": vae_name,
        "vae_config": {k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
        "data": data.description,
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
