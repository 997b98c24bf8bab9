"""Evaluation of trained pipelines: digit accuracy and distribution (scikit-learn's 8×8 digits), Fréchet
distances, improved precision and recall, likelihood."""

from ..images import quantize_images
from .digits import (
    DigitClassifier,
    DigitDistribution,
    digit_report,
    evaluate_digit_pipeline,
    to_digit_features,
)
from .dinov2 import DinoV2FeatureExtractor
from .distribution import DistributionReport, feature_frechet_distance, precision_recall
from .features import FeatureExtractor, WeightsUnavailableError
from .frechet import FeatureStatistics, FrechetDistance, frechet_distance
from .inception import InceptionFeatureExtractor
from .likelihood import bits_per_dim, image_bits_per_dim, log_likelihood

__all__ = [
    "DigitClassifier",
    "DigitDistribution",
    "DistributionReport",
    "digit_report",
    "evaluate_digit_pipeline",
    "feature_frechet_distance",
    "precision_recall",
    "to_digit_features",
    "DinoV2FeatureExtractor",
    "FeatureExtractor",
    "FeatureStatistics",
    "FrechetDistance",
    "InceptionFeatureExtractor",
    "WeightsUnavailableError",
    "bits_per_dim",
    "frechet_distance",
    "image_bits_per_dim",
    "log_likelihood",
    "quantize_images",
]
