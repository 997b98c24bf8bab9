"""FD-DINOv2 features, as dgm-eval (Stein et al., 2023) defines them.

PIL bicubic resize of the uint8 image to 224×224, ImageNet mean/std normalisation, DINOv2 ViT-L/14 and the
**CLS token** after the final LayerNorm (``Dinov2Model(...).pooler_output``, what the torch.hub model
returns). The model is the transformers port (``facebook/dinov2-large``); its position-embedding
interpolation at 224 px is transformers', which may differ from the torch.hub model's in low-order digits.
Mean pooling of the patch tokens is available (``pooling="mean"``) but is not the standard.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..file_utils import file_fingerprint
from .features import FeatureExtractor, WeightsUnavailableError, hub_offline

DINOV2_DEFAULT_MODEL = "facebook/dinov2-large"
DINOV2_POOLINGS: tuple[str, ...] = ("cls", "mean")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DINOV2_PROTOCOL = (
    "dgm-eval: uint8 RGB, PIL bicubic resize to {size}x{size}, ImageNet normalisation, DINOv2 {pooling} "
    "features, Frechet distance by torchmetrics"
)


class DinoV2FeatureExtractor(FeatureExtractor):
    """FD-DINOv2 features (dgm-eval protocol): PIL bicubic resize, ImageNet normalisation, CLS token.

    Args:
        model: A transformers ``Dinov2Model``.
        pooling: ``"cls"`` (the final-LayerNorm CLS token, ``pooler_output``: dgm-eval's choice) or ``"mean"``
            (mean of the final-LayerNorm patch tokens).
        resolution: Side the images are resized to (224 in dgm-eval); a multiple of the patch size.
        source: Names the weights (a Hub id or a folder), for cache keys and reports.

    Raises:
        ValueError: For an unknown pooling or a resolution that is not a multiple of the patch size.
    """

    name = "dinov2"

    def __init__(
        self, model: Any, pooling: str = "cls", resolution: int = 224, source: str = "custom"
    ) -> None:
        super().__init__()
        if pooling not in DINOV2_POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not supported; allowed: {', '.join(DINOV2_POOLINGS)}.")
        patch = int(model.config.patch_size)
        if resolution < patch or resolution % patch:
            raise ValueError(
                f"resolution={resolution} must be a positive multiple of the patch size {patch}."
            )
        self.model = model.eval().requires_grad_(False)
        self.pooling = pooling
        self.resolution = resolution
        self.num_features = int(model.config.hidden_size)
        self.protocol = DINOV2_PROTOCOL.format(
            size=resolution, pooling="CLS-token" if pooling == "cls" else "mean"
        )
        self.identifier = f"dinov2:{source}:{pooling}:pil-bicubic-{resolution}"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DINOV2_DEFAULT_MODEL,
        pooling: str = "cls",
        resolution: int = 224,
    ) -> DinoV2FeatureExtractor:
        """Load a ``Dinov2Model`` from the Hub (or its cache) or a local folder.

        Args:
            name_or_path: Hub id (``facebook/dinov2-large`` is ViT-L/14, dgm-eval's default) or a saved folder.
            pooling: ``"cls"`` or ``"mean"``.
            resolution: Resize side.

        Returns:
            The extractor.

        Raises:
            WeightsUnavailableError: If the model cannot be loaded (offline and not cached, or no such folder).
        """
        from transformers import Dinov2Model

        source = str(name_or_path)
        try:
            model = Dinov2Model.from_pretrained(source)
        except (OSError, ValueError) as error:
            offline = " (HF_HUB_OFFLINE=1 is set)" if hub_offline() else ""
            raise WeightsUnavailableError(
                f"Could not load the DINOv2 model {source!r}{offline}: {error}. Fetch it once with internet access "
                f"(huggingface-cli download {DINOV2_DEFAULT_MODEL}) or pass a local folder (--dinov2-model)."
            ) from error
        path = Path(source)
        if path.is_dir():
            source = f"{path.resolve()}@{file_fingerprint(path)}"
        else:
            source = f"{source}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
        return cls(model, pooling=pooling, resolution=resolution, source=source)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        """PIL bicubic resize of each uint8 image (what torchvision's Resize does to a PIL image)."""
        from PIL import Image

        if images.shape[-2:] == (self.resolution, self.resolution):
            return images
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        size = (self.resolution, self.resolution)
        resized = [np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BICUBIC)) for a in arrays]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """DINOv2 features of uint8 images.

        Args:
            images: uint8 ``(N, 3, H, W)``.

        Returns:
            ``(N, hidden_size)`` float32 features.
        """
        parameter = next(self.model.parameters())
        x = self._resize(images).to(parameter.device, torch.float32)
        x = ((x - self.mean) / self.std).to(parameter.dtype)
        output = self.model(pixel_values=x)
        if self.pooling == "cls":
            return output.pooler_output.float()
        return output.last_hidden_state[:, 1:].mean(dim=1).float()
