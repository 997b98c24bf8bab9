"""Evaluation of trained pipelines: digit accuracy (scikit-learn's 8×8 digits), Fréchet distances, likelihood."""

from ..images import quantize_images
from .digits import DigitClassifier, evaluate_digit_pipeline, to_digit_features
from .dinov2 import DinoV2FeatureExtractor
from .features import FeatureExtractor, WeightsUnavailableError
from .frechet import FeatureStatistics, FrechetDistance, frechet_distance
from .inception import InceptionFeatureExtractor
from .likelihood import bits_per_dim, image_bits_per_dim, log_likelihood

__all__ = [
    "DigitClassifier",
    "evaluate_digit_pipeline",
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
