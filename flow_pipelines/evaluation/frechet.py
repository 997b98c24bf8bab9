"""Fréchet distances between image sets: FID (Inception-v3) and FD-DINOv2, with a pluggable feature extractor.

Protocol (what a number produced here means):

- **Quantisation.** Generated images are quantised to uint8 exactly once, as saving a PNG would do
  (diffusers' ``numpy_to_pil``: ``round(x * 255)`` of the [0, 1] output,
  :func:`flow_pipelines.images.quantize_images`);
  reference images are decoded to uint8 as stored. Both sets then take the same path: uint8 RGB
  (grey replicated to three channels) into the extractor, which does its own resizing on those bytes.
- **FID** follows the ADM / torch-fidelity protocol, not clean-fid: the TensorFlow Inception-v3 graph of
  2015-12-05 (torch-fidelity's converted ``pt_inception-2015-12-05`` weights), images resized to 299×299
  by TensorFlow 1.x's bilinear kernel (no antialiasing, ``align_corners=False``: torch-fidelity's and
  torchmetrics' ``antialias=False`` path), scaled by ``(x - 128) / 128``, 2048-d pool3 features. This is
  how the published class-conditional numbers (ADM, DiT, SiT, the reference evaluator of
  openai/guided-diffusion) are computed, so figures are comparable with them; clean-fid's antialiased
  PIL resize gives systematically different values at low resolution. The statistics are accumulated and
  the distance computed by torchmetrics' ``FrechetInceptionDistance`` with this package's Inception module
  as its ``feature`` network: torchmetrics' own Inception comes from torch-fidelity, which requires
  torchvision, which this package does not use.
- **FD-DINOv2** follows dgm-eval (Stein et al., 2023): PIL bicubic resize of the uint8 image to
  224×224, ImageNet mean/std normalisation, DINOv2 ViT-L/14 and the **CLS token** after the final
  LayerNorm (``Dinov2Model(...).pooler_output``, what the torch.hub model returns). The model is the
  transformers port (``facebook/dinov2-large``); its position-embedding interpolation at 224 px is
  transformers', which may differ from the torch.hub model's in low-order digits. Mean pooling of the
  patch tokens is available (``pooling="mean"``) but is not the standard.

Any ``nn.Module`` subclassing :class:`FeatureExtractor` (``extract(uint8 (N, 3, H, W)) -> (N, D)``) can
replace either network, e.g. a tiny randomly initialised ``Dinov2Model`` for offline tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..file_utils import atomic_file
from ..images import to_rgb

INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
"""torch-fidelity's conversion of TensorFlow's 2015-12-05 Inception-v3 FID graph (torchmetrics' default)."""

INCEPTION_FEATURE_DIMS: tuple[int, ...] = (64, 192, 768, 2048)
INCEPTION_INPUT_SIZE = 299
DINOV2_DEFAULT_MODEL = "facebook/dinov2-large"
DINOV2_POOLINGS: tuple[str, ...] = ("cls", "mean")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

FID_PROTOCOL = (
    "ADM/torch-fidelity: uint8 RGB, TF1 bilinear resize to 299 (no antialias), Inception-v3 2015-12-05 "
    "pool features, Frechet distance by torchmetrics"
)
DINOV2_PROTOCOL = (
    "dgm-eval: uint8 RGB, PIL bicubic resize to {size}x{size}, ImageNet normalisation, DINOv2 {pooling} "
    "features, Frechet distance by torchmetrics"
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained feature-extractor weights could not be loaded (offline, or not in the local cache)."""


def check_same_geometry(samples_shape: Iterable[int], reference_shape: Iterable[int]) -> None:
    """Require generated and reference images to have the same channels and resolution.

    Args:
        samples_shape: ``(C, H, W)`` of the generated images.
        reference_shape: ``(C, H, W)`` of the reference images.

    Raises:
        ValueError: If they differ, naming both.
    """
    samples_shape, reference_shape = tuple(samples_shape), tuple(reference_shape)
    if samples_shape != reference_shape:
        raise ValueError(
            f"The generated images are {_describe_shape(samples_shape)} but the reference images are "
            f"{_describe_shape(reference_shape)}; Fréchet distances compare like with like. Resize the reference "
            "to the model's resolution and channels (the evaluate command's --resize-reference) or pick a "
            "reference at that resolution."
        )


def _describe_shape(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    return f"{channels}-channel {height}x{width}"


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize exactly as TensorFlow 1.x ``resize_bilinear(align_corners=False)`` computes it.

    Output pixel ``i`` samples input position ``i * in_size / out_size`` (no half-pixel offset, no
    antialiasing); positions are computed in float32 as TensorFlow does. This is the resize inside the
    Inception graph the FID was defined with.

    Args:
        images: Float images ``(N, C, H, W)``.
        size: Output side.

    Returns:
        ``(N, C, size, size)`` images.
    """

    def axis(in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / size, dtype=torch.float32)
        position = torch.arange(size, dtype=torch.float32) * scale
        low = position.floor().long()
        high = (low + 1).clamp(max=in_size - 1)
        return low.to(images.device), high.to(images.device), (position - low).to(images.device, images.dtype)

    y_low, y_high, y_frac = axis(images.shape[-2])
    x_low, x_high, x_frac = axis(images.shape[-1])
    # Horizontal then vertical, TensorFlow's order: the float32 rounding matches too.
    left, right = images.index_select(-1, x_low), images.index_select(-1, x_high)
    columns = left + (right - left) * x_frac
    top, bottom = columns.index_select(-2, y_low), columns.index_select(-2, y_high)
    return top + (bottom - top) * y_frac[:, None]


# ---------------------------------------------------------------------------------------------- extractors
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
        """Same as :meth:`extract` (after checking the input), in full float32 precision (TF32 off)."""
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


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's epsilon 1e-3), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 'SAME' average pooling divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches."""

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = _ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_channels, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_tf_avg_pool(x)),
            ],
            dim=1,
        )


class _ReductionA(nn.Module):
    """35×35 → 17×17: strided 3×3, strided double 3×3, max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class _MixedB(nn.Module):
    """17×17 block with factorised 7×7 convolutions."""

    def __init__(self, in_channels: int, mid: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = _ConvBN(in_channels, mid, 1)
        self.branch7x7_2 = _ConvBN(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(mid, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_channels, mid, 1)
        self.branch7x7dbl_2 = _ConvBN(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(mid, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            double = layer(double)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                double,
                self.branch_pool(_tf_avg_pool(x)),
            ],
            dim=1,
        )


class _ReductionB(nn.Module):
    """17×17 → 8×8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat(
            [self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1
        )


class _MixedC(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs; the last one of the TF graph max-pools its pool branch."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = _ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            dim=1,
        )


class FIDInceptionV3(nn.Module):
    """The Inception-v3 of the FID (TensorFlow graph 2015-12-05), with torch-fidelity's parameter names.

    Differs from torchvision's Inception-v3 where the TF graph does: TF 'SAME' average pooling that ignores
    padding, a max-pooled branch in the last block, 1008 logits. ``forward`` returns pool features of one
    of the depths torchmetrics offers (64, 192, 768 or 2048); the standard FID uses 2048.

    Args:
        feature_dim: Which pool features to return: 64, 192, 768 or 2048.

    Raises:
        ValueError: For another ``feature_dim``.
    """

    def __init__(self, feature_dim: int = 2048) -> None:
        super().__init__()
        if feature_dim not in INCEPTION_FEATURE_DIMS:
            raise ValueError(
                f"feature_dim={feature_dim} is not an Inception pool layer; allowed: "
                f"{', '.join(map(str, INCEPTION_FEATURE_DIMS))}."
            )
        self.feature_dim = feature_dim
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReductionA(288)
        self.Mixed_6b = _MixedB(768, 128)
        self.Mixed_6c = _MixedB(768, 160)
        self.Mixed_6d = _MixedB(768, 160)
        self.Mixed_6e = _MixedB(768, 192)
        self.Mixed_7a = _ReductionB(768)
        self.Mixed_7b = _MixedC(1280, max_pool=False)
        self.Mixed_7c = _MixedC(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features of images already resized to 299×299 and scaled to [-1, 1].

        Args:
            x: ``(N, 3, 299, 299)`` float images.

        Returns:
            ``(N, feature_dim)`` features.
        """
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        if self.feature_dim == 64:
            return x.mean(dim=(2, 3))
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        if self.feature_dim == 192:
            return x.mean(dim=(2, 3))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        if self.feature_dim == 768:
            return x.mean(dim=(2, 3))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x.mean(dim=(2, 3))


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read with the restricted (tensors-only) unpickler."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


class InceptionFeatureExtractor(FeatureExtractor):
    """FID features: TF1 bilinear resize of uint8 images to 299, ``(x - 128) / 128``, Inception pool features.

    Args:
        network: The Inception network (weights loaded).
        weights_identifier: Names the weights (for cache keys).
    """

    name = "inception-v3"

    def __init__(self, network: FIDInceptionV3, weights_identifier: str = "pt_inception-2015-12-05") -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.num_features = network.feature_dim
        self.protocol = FID_PROTOCOL + f" ({network.feature_dim}-d)"
        self.identifier = f"inception-v3:{weights_identifier}:pool{network.feature_dim}:tf1-bilinear-299"

    @classmethod
    def from_pretrained(
        cls, weights_path: str | os.PathLike | None = None, feature_dim: int = 2048
    ) -> InceptionFeatureExtractor:
        """Load the FID Inception weights: a local file, or torch-fidelity's release (cached by torch.hub).

        The download goes to torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where
        torch-fidelity and torchmetrics keep the same file, and is read tensors-only; every parameter of the
        network must be in it. With ``HF_HUB_OFFLINE=1`` nothing is downloaded: the file must already be cached.

        Args:
            weights_path: A local copy (``.pth`` as released, read tensors-only, or ``.safetensors``).
            feature_dim: Pool features to use: 2048 (the FID) or 64, 192, 768.

        Returns:
            The extractor.

        Raises:
            WeightsUnavailableError: If the weights cannot be found or fetched, naming the URL and the cache path.
            ValueError: If the file does not hold the FID Inception's parameters.
        """
        # Built without initialising (the weights replace every parameter), then filled by assignment.
        with torch.device("meta"):
            network = FIDInceptionV3(feature_dim)
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise WeightsUnavailableError(f"Inception weights file {str(path)!r} does not exist.")
            state_dict = _load_state_dict_file(path)
            identifier = f"{path.name}:{file_fingerprint(path)}"
        else:
            state_dict = _download_inception_weights()
            identifier = "pt_inception-2015-12-05-6726825d"
        missing, unexpected = network.load_state_dict(state_dict, strict=False, assign=True)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(
                f"The Inception weights do not match the FID Inception-v3: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}."
            )
        for module in network.modules():
            # A batch-norm counter absent from the file (it only matters in training) stays a meta tensor.
            if isinstance(module, nn.BatchNorm2d) and module.num_batches_tracked.is_meta:
                module.num_batches_tracked = torch.zeros((), dtype=torch.long)
        return cls(network.float(), identifier)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features of uint8 images.

        Args:
            images: uint8 ``(N, 3, H, W)``, any size.

        Returns:
            ``(N, num_features)`` float32 features.
        """
        parameter = next(self.network.parameters())
        x = images.to(parameter.device, torch.float32)
        x = resize_bilinear_tf1(x, INCEPTION_INPUT_SIZE)
        x = (x - 128.0) / 128.0
        return self.network(x.to(parameter.dtype)).float()


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download_inception_weights() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception weights from torch.hub's cache, downloading them if allowed."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[-1]
    advice = (
        f"Download {INCEPTION_WEIGHTS_URL} on a machine with internet access and place it at {cache}, "
        "or pass a local copy (--inception-weights)."
    )
    if cache.is_file():
        return torch.load(str(cache), map_location="cpu", weights_only=True)
    if _hub_offline():
        raise WeightsUnavailableError(
            f"The FID Inception-v3 weights are not cached and HF_HUB_OFFLINE=1 forbids downloading them. {advice}"
        )
    try:
        return torch.hub.load_state_dict_from_url(
            INCEPTION_WEIGHTS_URL, map_location="cpu", progress=True, weights_only=True
        )
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a truncated file a RuntimeError
        raise WeightsUnavailableError(
            f"Could not fetch the FID Inception-v3 weights ({type(error).__name__}: {error}). {advice}"
        ) from error


def file_fingerprint(path: Path) -> str:
    """Size and modification time of a file, or of every file below a folder: cheap change detection.

    Args:
        path: A file or folder.

    Returns:
        A short string that changes when a file is added, removed, resized or rewritten.
    """
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"
    digest = hashlib.sha1()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


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
            offline = " (HF_HUB_OFFLINE=1 is set)" if _hub_offline() else ""
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


# ---------------------------------------------------------------------------------------------- statistics
def minimum_samples(num_features: int) -> int:
    """Fewest samples whose covariance can be full rank in ``num_features`` dimensions: ``num_features + 1``.

    Args:
        num_features: Feature dimension.

    Returns:
        ``num_features + 1``.
    """
    return num_features + 1


def check_enough_samples(num_samples: int, num_features: int, what: str = "samples") -> None:
    """Refuse sets too small for a non-singular covariance.

    Args:
        num_samples: Number of images.
        num_features: Feature dimension.
        what: How to name the set in the message.

    Raises:
        ValueError: If ``num_samples < num_features + 1``.
    """
    needed = minimum_samples(num_features)
    if num_samples < needed:
        raise ValueError(
            f"{num_samples} {what} for {num_features}-dimensional features: the covariance of N samples has rank at "
            f"most N - 1, so it is singular and the Fréchet distance is not meaningful. At least {needed} are needed "
            f"(FID is reported with 50,000 samples; fewer bias it upwards)."
        )


@dataclass
class FeatureStatistics:
    """Mean and covariance (unbiased, ``N - 1``) of a feature set, in float64.

    Args:
        mu: ``(D,)`` mean.
        sigma: ``(D, D)`` covariance.
        num_samples: ``N``.
        metadata: What produced them (extractor, protocol, source); stored with them.
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor, **metadata: Any) -> FeatureStatistics:
        """Statistics of a feature matrix.

        Args:
            features: ``(N, D)``.
            **metadata: Stored alongside.

        Returns:
            The statistics.

        Raises:
            ValueError: For a matrix that is not 2-d or has fewer than 2 rows.
        """
        array = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else features
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] < 2:
            raise ValueError(f"features must be (N >= 2, D); got shape {array.shape}.")
        return cls(array.mean(axis=0), np.cov(array, rowvar=False), int(array.shape[0]), dict(metadata))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``mu``, ``sigma``, ``num_samples`` and the metadata (JSON) to an ``.npz``, atomically.

        Args:
            path: Target file.

        Returns:
            The path written.
        """
        path = Path(path)
        meta = np.array(json.dumps(self.metadata, sort_keys=True))
        with atomic_file(path) as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma, num_samples=self.num_samples, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        """Read statistics written by :meth:`save` (or any ``.npz`` with ``mu`` and ``sigma``).

        Args:
            path: The ``.npz``.

        Returns:
            The statistics (``num_samples`` is 0 when the file does not record it).

        Raises:
            ValueError: If ``mu`` or ``sigma`` is missing or their shapes disagree.
        """
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"{path} holds {sorted(data.files)}; statistics need 'mu' and 'sigma'.")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            num_samples = int(data["num_samples"]) if "num_samples" in data else 0
            metadata = json.loads(str(data["metadata"])) if "metadata" in data else {}
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not describe one Gaussian.")
        return cls(mu, sigma, num_samples, metadata)


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative rounding noise clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, with the last trace computed
    as ``tr((s1 sigma2 s1)^(1/2))``, ``s1 = sigma1^(1/2)``: a symmetric PSD matrix, so its square root comes
    from an eigendecomposition, in float64, without the complex round-off of a general ``sqrtm``.

    Args:
        mu1: ``(D,)`` mean of the first set.
        sigma1: ``(D, D)`` covariance of the first set.
        mu2: ``(D,)`` mean of the second set.
        sigma2: ``(D, D)`` covariance of the second set.

    Returns:
        The distance (squared-feature units, as FID is reported).

    Raises:
        ValueError: If the shapes do not match.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"Statistics do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}."
        )
    root1 = _sqrtm_psd(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sqrt(np.clip(cross, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


# ---------------------------------------------------------------------------------------------- the metric
class FrechetDistance:
    """Fréchet distance between generated and reference images through one extractor (torchmetrics inside).

    Images go in as uint8 ``(N, 1 | 3, H, W)`` (grey is replicated to RGB) in batches; reference statistics
    can be exported to and restored from :class:`FeatureStatistics` (the cache), so a reference set is read
    once per extractor.

    Args:
        extractor: The feature network.
        batch_size: Images per extractor call.
        device: Where the extractor runs (default: where it is).
        show_progress: Show a progress bar while extracting.

    Raises:
        ValueError: For a batch size below 1.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        show_progress: bool = True,
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        self.extractor = extractor
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False, normalize=False)
        if device is not None:
            self.metric = self.metric.to(device)
        tensors = [*extractor.parameters(), *extractor.buffers()]
        self.device = tensors[0].device if tensors else torch.device("cpu")

    @property
    def num_features(self) -> int:
        """Feature dimension."""
        return int(self.extractor.num_features)

    @property
    def num_reference(self) -> int:
        """Reference images accumulated (or restored) so far."""
        return int(self.metric.real_features_num_samples)

    @property
    def num_generated(self) -> int:
        """Generated images accumulated so far."""
        return int(self.metric.fake_features_num_samples)

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool, description: str | None = None) -> None:
        """Add images to the reference (``real=True``) or generated set.

        Args:
            images: uint8 ``(N, 1 | 3, H, W)``.
            real: Whether they are reference images.
            description: Progress-bar label.

        Raises:
            ValueError: For images that are not uint8 with 1 or 3 channels.
        """
        images = to_rgb(images)
        label = description or ("reference" if real else "generated")
        starts = range(0, images.shape[0], self.batch_size)
        for start in tqdm(
            starts, desc=f"{self.extractor.name} features ({label})", disable=not self.show_progress
        ):
            batch = images[start : start + self.batch_size].to(self.device)
            self.metric.update(batch, real=real)

    def reference_statistics(self, **metadata: Any) -> FeatureStatistics:
        """Mean and covariance of the reference features accumulated so far.

        Args:
            **metadata: Stored with the statistics.

        Returns:
            The statistics.

        Raises:
            ValueError: With fewer than 2 reference images.
        """
        count = self.num_reference
        if count < 2:
            raise ValueError(f"{count} reference images accumulated; statistics need at least 2.")
        total = self.metric.real_features_sum.double().cpu()
        outer = self.metric.real_features_cov_sum.double().cpu()
        mean = total / count
        covariance = (outer - count * torch.outer(mean, mean)) / (count - 1)
        info = {"extractor": self.extractor.identifier, "protocol": self.extractor.protocol, **metadata}
        return FeatureStatistics(mean.numpy(), covariance.numpy(), count, info)

    def set_reference_statistics(self, statistics: FeatureStatistics) -> None:
        """Restore reference statistics (e.g. from the cache) in place of reference images.

        Args:
            statistics: Statistics with a recorded ``num_samples`` >= 2 and this extractor's dimension.

        Raises:
            ValueError: If the dimension differs or ``num_samples`` is unknown.
        """
        dim = statistics.mu.shape[0]
        if dim != self.num_features:
            raise ValueError(
                f"The statistics are {dim}-dimensional; this extractor gives {self.num_features}."
            )
        count = int(statistics.num_samples)
        if count < 2:
            raise ValueError("The statistics do not record how many samples they came from (num_samples).")
        mean = torch.from_numpy(statistics.mu).double()
        covariance = torch.from_numpy(statistics.sigma).double()
        state = self.metric.real_features_sum
        self.metric.real_features_sum = (mean * count).to(state.device, state.dtype)
        self.metric.real_features_cov_sum = (covariance * (count - 1) + count * torch.outer(mean, mean)).to(
            state.device, state.dtype
        )
        self.metric.real_features_num_samples = torch.tensor(count, device=state.device)

    def compute(self) -> float:
        """The Fréchet distance between the accumulated generated and reference sets.

        Returns:
            The distance.

        Raises:
            ValueError: If either set has fewer than ``num_features + 1`` images (singular covariance).
        """
        check_enough_samples(self.num_reference, self.num_features, "reference images")
        check_enough_samples(self.num_generated, self.num_features, "generated images")
        value = float(self.metric.compute())
        if not math.isfinite(value):
            raise ValueError(f"The Fréchet distance is {value}; the features contain non-finite values.")
        return value
