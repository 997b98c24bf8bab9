"""Latent training's cache: keyed by the VAE's weights and the images themselves, and saying whether it was used."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from PIL import Image

from flow_pipelines.training.data import DataConfig, prepare_training_data
from flow_pipelines.training.latents import cached_latent_dataset


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
    ).eval()


def image_folder(root: Path, shade: int) -> Path:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(2):
            Image.new("L", (8, 8), color=shade + 40 * index).save(root / name / f"{index}.png")
    return root


def encode(vae: AutoencoderKL, folder: Path, output_dir: Path) -> tuple[Path, bool]:
    data = prepare_training_data(DataConfig(train_data_dir=str(folder), resolution=8, center_crop=True))
    _, cache, reused = cached_latent_dataset(vae, "same/path", data, output_dir, 8, False, {}, 4, 0, True)
    return cache, reused


def test_the_cache_follows_the_vae_weights_and_the_images_not_their_names(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "images", shade=10)
    first, reused = encode(tiny_vae(0), folder, tmp_path)
    assert not reused and first.is_file()
    assert encode(tiny_vae(0), folder, tmp_path) == (first, True)
    # Retrained weights under the same name: new latents.
    retrained, reused = encode(tiny_vae(1), folder, tmp_path)
    assert retrained != first and not reused
    # Changed images at the same path: new latents.
    image_folder(folder, shade=50)
    changed, reused = encode(tiny_vae(0), folder, tmp_path)
    assert changed not in (first, retrained) and not reused
