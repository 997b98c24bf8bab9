"""Distribution metrics: Fréchet distance against its real-vs-real floor, and improved precision and recall.

Class accuracy saturates: at strong guidance a model that draws one prototype per class reads 100 %. The
figures here can still move. Both compare a generated set with a reference set of real images in a feature
space that does not depend on the model:

- **Fréchet distance (FD)** between Gaussians fitted to the two feature sets. It is biased upwards at small
  ``N``, so it is reported beside the *floor*: the FD of a second, disjoint set of real images of the same
  size (and the same classes) against the same reference. ``ratio = FD / floor``; 1 is as good as real data.
- **Improved precision and recall** (Kynkäänniemi et al., 2019). Each set's manifold is the union of balls
  around its points, each ball reaching the point's ``k``-th nearest neighbour in its own set. Precision is
  the share of generated points inside the real manifold (fidelity); recall is the share of real points
  inside the generated manifold (diversity). A collapsed model keeps its precision and loses its recall.

For scikit-learn's 8×8 digits, :class:`flow_pipelines.evaluation.digits.DigitDistribution` fixes the feature
space and the reference, so that the figures of two runs are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .frechet import FeatureStatistics, frechet_distance

DEFAULT_NEIGHBOURS = 3
"""``k`` of improved precision and recall, as in Kynkäänniemi et al. (2019)."""


def _as_features(features: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else features
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (N, D) feature matrix; got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array


def pairwise_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of two matrices, in float64.

    Args:
        first: ``(N, D)``.
        second: ``(M, D)``.

    Returns:
        ``(N, M)`` distances.
    """
    squared = (first**2).sum(1)[:, None] + (second**2).sum(1)[None, :] - 2.0 * first @ second.T
    return np.sqrt(np.clip(squared, 0.0, None))


def neighbourhood_radii(features: np.ndarray, k: int = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """Distance from each point to its ``k``-th nearest neighbour in the same set (itself excluded).

    Args:
        features: ``(N, D)``.
        k: Which neighbour.

    Returns:
        ``(N,)`` radii.

    Raises:
        ValueError: If ``k`` is not in ``[1, N - 1]``.
    """
    count = features.shape[0]
    if not 1 <= k <= count - 1:
        raise ValueError(f"k={k} neighbours need k in [1, N - 1] = [1, {count - 1}].")
    distances = pairwise_distances(features, features)
    # Column 0 of the sorted rows is the point itself (distance 0).
    return np.sort(distances, axis=1)[:, k]


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` inside at least one ball ``(centre, radius)``."""
    inside = pairwise_distances(points, centres) <= radii[None, :]
    return float(inside.any(axis=1).mean())


def precision_recall(
    real: np.ndarray | torch.Tensor, generated: np.ndarray | torch.Tensor, k: int = DEFAULT_NEIGHBOURS
) -> tuple[float, float]:
    """Improved precision and recall of a generated set against a real one (Kynkäänniemi et al., 2019).

    Args:
        real: ``(N, D)`` real features.
        generated: ``(M, D)`` generated features.
        k: Neighbour that sets each ball's radius (3 in the paper).

    Returns:
        ``(precision, recall)``, each in [0, 1]: the share of generated points within the real manifold, and
        of real points within the generated manifold.

    Raises:
        ValueError: For feature matrices that are not 2-d, of different widths, non-finite, or with no more
            than ``k`` rows.
    """
    real = _as_features(real, "real")
    generated = _as_features(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real features are {real.shape[1]}-d but generated ones {generated.shape[1]}-d.")
    precision = _coverage(generated, real, neighbourhood_radii(real, k))
    recall = _coverage(real, generated, neighbourhood_radii(generated, k))
    return precision, recall


def feature_frechet_distance(first: np.ndarray | torch.Tensor, second: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted (unbiased covariance) to two feature sets.

    Args:
        first: ``(N, D)``.
        second: ``(M, D)``.

    Returns:
        The distance.

    Raises:
        ValueError: For matrices that are not 2-d, of different widths, non-finite, or with fewer than 2 rows.
    """
    first = FeatureStatistics.from_features(_as_features(first, "first"))
    second = FeatureStatistics.from_features(_as_features(second, "second"))
    return frechet_distance(first.mu, first.sigma, second.mu, second.sigma)


@dataclass
class DistributionReport:
    """FD, precision and recall of a generated set, and of a real set of the same size (the floor), side by side.

    Args:
        fd: FD of the generated set against the reference.
        fd_floor: FD of a disjoint real set of the same size and classes against the same reference.
        precision: Improved precision of the generated set.
        recall: Improved recall of the generated set.
        precision_floor: The real set's precision.
        recall_floor: The real set's recall.
        num_samples: Generated images compared.
        num_reference: Reference images.
    """

    fd: float
    fd_floor: float
    precision: float
    recall: float
    precision_floor: float
    recall_floor: float
    num_samples: int
    num_reference: int

    @property
    def fd_ratio(self) -> float:
        """``fd / fd_floor``: 1 is as close to the reference as real data of the same size."""
        return self.fd / self.fd_floor

    def as_dict(self) -> dict[str, float | int]:
        """The figures as a flat dictionary (``fd_ratio`` included).

        Returns:
            ``{"fd", "fd_floor", "fd_ratio", "precision", "recall", "precision_floor", "recall_floor",
            "num_samples", "num_reference"}``.
        """
        return {
            "fd": self.fd,
            "fd_floor": self.fd_floor,
            "fd_ratio": self.fd_ratio,
            "precision": self.precision,
            "recall": self.recall,
            "precision_floor": self.precision_floor,
            "recall_floor": self.recall_floor,
            "num_samples": self.num_samples,
            "num_reference": self.num_reference,
        }
