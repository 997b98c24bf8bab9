"""Distribution metrics: the Fréchet distance against direct computations, improved precision and recall on
point sets whose answer is known, and the digits' feature space against real and collapsed sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow_pipelines.evaluation.digits import MAX_SAMPLES_PER_DIGIT, DigitDistribution
from flow_pipelines.evaluation.distribution import (
    feature_frechet_distance,
    neighbourhood_radii,
    precision_recall,
)

from .oracles import scipy_frechet


def test_fd_is_the_closed_form_in_one_dimension() -> None:
    # Two points x +- a have mean x and unbiased variance 2 a^2: N(1, 2^2) and N(-2, 1^2) exactly.
    first = np.array([[1.0 - np.sqrt(2.0)], [1.0 + np.sqrt(2.0)]])
    second = np.array([[-2.0 - np.sqrt(0.5)], [-2.0 + np.sqrt(0.5)]])
    # W2^2 between N(1, 2^2) and N(-2, 1^2) = (1 + 2)^2 + (2 - 1)^2.
    assert feature_frechet_distance(first, second) == pytest.approx(10.0, rel=1e-12)


def test_fd_matches_the_textbook_formula_with_a_general_square_root() -> None:
    generator = np.random.default_rng(0)
    first = generator.normal(size=(300, 6)) @ generator.normal(size=(6, 6))
    second = generator.normal(size=(200, 6)) * 2.0 + 0.5
    assert feature_frechet_distance(first, second) == pytest.approx(scipy_frechet(first, second), rel=1e-8)
    assert feature_frechet_distance(first, first) == pytest.approx(0.0, abs=1e-9)


def test_radii_are_distances_to_the_kth_neighbour() -> None:
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(neighbourhood_radii(points, 1), [1.0, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(neighbourhood_radii(points, 2), [3.0, 2.0, 3.0, 6.0])
    with pytest.raises(ValueError, match=r"k=4 neighbours need k in \[1, N - 1\] = \[1, 3\]"):
        neighbourhood_radii(points, 4)


def test_a_collapsed_set_keeps_its_precision_and_loses_its_recall() -> None:
    real = np.arange(10.0)[:, None]  # k = 1: every real ball has radius 1
    collapsed = np.array([[0.0], [0.1], [0.2], [0.3], [0.4]])  # balls of radius 0.1 around 0
    assert precision_recall(real, collapsed, k=1) == (1.0, 0.1)
    # Two of four generated points are off the real manifold; the generated balls (radius 2, 2, 97.5, 97.5)
    # still cover every real point.
    scattered = np.array([[0.5], [2.5], [100.0], [195.0]])
    assert precision_recall(real, scattered, k=1) == (0.5, 1.0)
    # The same set on both sides: everything is covered.
    assert precision_recall(real, real, k=3) == (1.0, 1.0)


def test_precision_recall_refuse_unusable_features() -> None:
    with pytest.raises(ValueError, match="real features are 2-d but generated ones 3-d"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="generated contains NaN or infinite values"):
        precision_recall(np.zeros((5, 2)), np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="must be a 2-d"):
        precision_recall(np.zeros(5), np.zeros((5, 2)))


@pytest.fixture(scope="module")
def distribution() -> DigitDistribution:
    return DigitDistribution(resolution=16)


def test_the_floor_set_scores_exactly_the_floor(distribution: DigitDistribution) -> None:
    labels = np.repeat(np.arange(10), 30)
    order = distribution._floor_order
    chosen = np.concatenate([order[distribution.floor_labels[order] == d][:30] for d in range(10)])
    report = distribution.compare(torch.from_numpy(distribution.floor_images[chosen]), labels)
    assert report.fd == pytest.approx(report.fd_floor, rel=1e-12) and report.fd_ratio == pytest.approx(1.0)
    assert (report.precision, report.recall) == (report.precision_floor, report.recall_floor)
    assert report.num_samples == 300 and report.num_reference == len(distribution.reference_labels)
    # Real digits score high on both; the floor is a distance above zero at this size.
    assert report.precision_floor > 0.8 and report.recall_floor > 0.8 and report.fd_floor > 0


def test_one_prototype_per_class_is_far_from_the_floor(distribution: DigitDistribution) -> None:
    labels = np.repeat(np.arange(10), 50)
    # The class means of the reference: every digit readable, no variety.
    means = {d: distribution.reference_images[distribution.reference_labels == d].mean(0) for d in range(10)}
    prototypes = torch.from_numpy(np.stack([means[d] for d in labels]))
    report = distribution.compare(prototypes, labels)
    assert report.fd_ratio > 5.0
    assert report.recall < 0.2 < report.recall_floor
    # Noise is far on every count.
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    noisy = distribution.compare(noise, labels)
    assert noisy.fd_ratio > 20.0 and noisy.precision < 0.05


def test_comparisons_larger_than_the_floor_set_are_refused(distribution: DigitDistribution) -> None:
    most = distribution.max_balanced_samples
    assert most == 10 * MAX_SAMPLES_PER_DIGIT  # the flags that choose sample counts are checked against it
    labels = np.repeat(np.arange(10), most // 10 + 1)
    with pytest.raises(ValueError, match=f"compare at most {most} images"):
        distribution.compare(torch.zeros(len(labels), 1, 16, 16), labels)
    with pytest.raises(ValueError, match="resolution=4 must be >= 8"):
        DigitDistribution(resolution=4)
