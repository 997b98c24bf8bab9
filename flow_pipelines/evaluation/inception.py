"""The Inception-v3 of the FID: TensorFlow's 2015-12-05 graph ported to torch, its weights, and its extractor.

FID here follows the ADM / torch-fidelity protocol, not clean-fid: the TensorFlow Inception-v3 graph of
2015-12-05 (torch-fidelity's converted ``pt_inception-2015-12-05`` weights), images resized to 299×299 by
TensorFlow 1.x's bilinear kernel (no antialiasing, ``align_corners=False``: torch-fidelity's and torchmetrics'
``antialias=False`` path, :func:`resize_bilinear_tf1`), scaled by ``(x - 128) / 128``, 2048-d pool3 features.
This is how the published class-conditional numbers (ADM, DiT, SiT, the reference evaluator of
openai/guided-diffusion) are computed, so figures are comparable with them; clean-fid's antialiased PIL
resize gives systematically different values at low resolution. The network is ported here rather than
taken from torchmetrics, whose Inception comes from torch-fidelity, which requires torchvision, which this
package does not use.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..file_utils import file_fingerprint
from .features import FeatureExtractor, WeightsUnavailableError, hub_offline

INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
"""torch-fidelity's conversion of TensorFlow's 2015-12-05 Inception-v3 FID graph (torchmetrics' default)."""

INCEPTION_FEATURE_DIMS: tuple[int, ...] = (64, 192, 768, 2048)
INCEPTION_INPUT_SIZE = 299

FID_PROTOCOL = (
    "ADM/torch-fidelity: uint8 RGB, TF1 bilinear resize to 299 (no antialias), Inception-v3 2015-12-05 "
    "pool features, Frechet distance by torchmetrics"
)


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


# ---------------------------------------------------------------------------------------------- network
class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's epsilon 1e-3), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
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


# ---------------------------------------------------------------------------------------------- weights
def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read with the restricted (tensors-only) unpickler."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _download_inception_weights() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception weights from torch.hub's cache, downloading them if allowed."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[-1]
    advice = (
        f"Download {INCEPTION_WEIGHTS_URL} on a machine with internet access and place it at {cache}, "
        "or pass a local copy (--inception-weights)."
    )
    if cache.is_file():
        return torch.load(str(cache), map_location="cpu", weights_only=True)
    if hub_offline():
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


# ---------------------------------------------------------------------------------------------- extractor
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
