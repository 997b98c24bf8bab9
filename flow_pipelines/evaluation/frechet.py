"""Fréchet distances between image sets through a feature extractor: statistics, the distance, the metric.

Protocol (what a number produced here means):

- **Quantisation.** Generated images are quantised to uint8 exactly once, as saving a PNG would do
  (diffusers' ``numpy_to_pil``: ``round(x * 255)`` of the [0, 1] output,
  :func:`flow_pipelines.images.quantize_images`); reference images are decoded to uint8 as stored. Both
  sets then take the same path: uint8 RGB (grey replicated to three channels) into the extractor, which
  does its own resizing on those bytes.
- **Features.** FID uses the FID's Inception-v3 (:mod:`flow_pipelines.evaluation.inception`, the ADM /
  torch-fidelity protocol); FD-DINOv2 uses DINOv2's CLS token (:mod:`flow_pipelines.evaluation.dinov2`, the
  dgm-eval protocol). Any :class:`~flow_pipelines.evaluation.features.FeatureExtractor` can replace either.
- **Statistics and distance.** :class:`FrechetDistance` accumulates the statistics and computes the distance
  with torchmetrics' ``FrechetInceptionDistance``, the extractor as its ``feature`` network; reference
  statistics are saved and restored as :class:`FeatureStatistics`. :func:`frechet_distance` is the formula
  on two Gaussians, in float64.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..file_utils import atomic_file
from ..images import to_rgb
from .features import FeatureExtractor


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
        covariance = np.atleast_2d(np.cov(array, rowvar=False))  # (1, 1), not a scalar, for one feature
        return cls(array.mean(axis=0), covariance, int(array.shape[0]), dict(metadata))

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

    def reset_generated(self) -> None:
        """Forget the generated images accumulated so far (the reference stays), to score another set."""
        self.metric.reset()

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
