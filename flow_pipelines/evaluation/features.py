"""The feature-extractor interface of the Fréchet distances, and what every extractor shares.

An extractor is an ``nn.Module`` subclassing :class:`FeatureExtractor`: ``extract(uint8 (N, 3, H, W)) ->
float (N, D)``, with the preprocessing of its protocol inside. The package's two are
:class:`~flow_pipelines.evaluation.inception.InceptionFeatureExtractor` (FID) and
:class:`~flow_pipelines.evaluation.dinov2.DinoV2FeatureExtractor` (FD-DINOv2); any other, e.g. a tiny randomly
initialised ``Dinov2Model`` for offline tests, can replace them. This module also owns what they share: the
float32 guard (:func:`ieee_float32`) and the error raised when pretrained weights cannot be had
(:class:`WeightsUnavailableError`, :func:`hub_offline`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn


class WeightsUnavailableError(RuntimeError):
    """Pretrained feature-extractor weights could not be loaded (offline, or not in the local cache)."""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (read now, not at import, so tests can set it).

    Returns:
        True when the variable is ``1``, ``true``, ``yes`` or ``on``.
    """
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Turn TF32 off for CUDA convolutions and matmuls inside the block (restored after).

    cuDNN convolutions default to TF32 on Ampere and later GPUs, which moves Inception features by ~1e-3
    relative and the FID with them; the published protocols ran in float32.

    Yields:
        Nothing.
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cuda.matmul.allow_tf32 = matmul


class FeatureExtractor(nn.Module):
    """A feature network for Fréchet distances: ``extract(uint8 (N, 3, H, W)) -> float (N, num_features)``.

    Subclasses implement :meth:`extract` and set ``num_features``, ``name`` (short, e.g. ``"inception-v3"``),
    ``protocol`` (what the preprocessing is) and ``identifier`` (changes whenever the features would, so that
    cached reference statistics are keyed by it). ``forward`` is ``extract``, so an extractor is also a valid
    ``feature`` module for torchmetrics' ``FrechetInceptionDistance``.
    """

    num_features: int
    name: str = "custom"
    protocol: str = "custom"
    identifier: str = "custom"

    def extract(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Features of a batch.

        Args:
            images: uint8 ``(N, 3, H, W)``.

        Returns:
            ``(N, num_features)`` float features.
        """
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`extract` (after checking the input), in full float32 precision (TF32 off).

        Args:
            images: uint8 ``(N, 3, H, W)``.

        Returns:
            ``(N, num_features)`` float features.

        Raises:
            ValueError: For images that are not uint8 ``(N, 3, H, W)``.
        """
        with ieee_float32():
            return self.extract(self.check_input(images))

    @staticmethod
    def check_input(images: torch.Tensor) -> torch.Tensor:
        """Require uint8 ``(N, 3, H, W)`` images.

        Args:
            images: The batch.

        Returns:
            The same batch.

        Raises:
            ValueError: Otherwise.
        """
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise ValueError(
                "feature extractors take uint8 images (quantised once, as a saved PNG); got "
                f"{getattr(images, 'dtype', type(images).__name__)}."
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"feature extractors take (N, 3, H, W) images; got shape {tuple(images.shape)}.")
        return images
