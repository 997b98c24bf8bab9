"""The independent digit classifier, and the digits report: accuracy and distribution of generated digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from flow_pipelines import FlowEulerScheduler, FlowHeunScheduler
from flow_pipelines.evaluation.digits import (
    DigitClassifier,
    DigitDistribution,
    digit_report,
    evaluate_digit_pipeline,
    format_digit_report,
    to_digit_features,
)


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return DigitClassifier.fit()


def test_area_downsampling_inverts_nearest_upsampling_exactly() -> None:
    digits = load_digits()
    images = torch.from_numpy(digits.images[:20] / 16.0).float()
    upsampled = images.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # 32x32, blocks of 4x4
    features = to_digit_features(upsampled[:, None])
    np.testing.assert_allclose(features, digits.images[:20].reshape(20, -1) / 16.0, atol=1e-6)
    # Colour is averaged to grey; channels-last arrays are accepted.
    rgb = upsampled[..., None].repeat(1, 1, 1, 3).numpy()
    np.testing.assert_allclose(to_digit_features(rgb), features, atol=1e-6)
    with pytest.raises(ValueError, match="at least 8x8"):
        to_digit_features(torch.zeros(2, 1, 4, 4))


def test_classifier_reads_real_digits_and_not_noise(classifier: DigitClassifier) -> None:
    assert classifier.heldout_accuracy > 0.97
    # Held-out digits made into 16x16 training images and read back like samples.
    assert classifier.roundtrip_accuracy(16) > 0.95
    # The figure can fail: noise, or real digits with the wrong labels, score near chance.
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert classifier.accuracy(noise, np.arange(500) % 10) < 0.25
    wrong = (classifier.heldout_labels + 1) % 10
    assert classifier.accuracy(classifier.heldout_images, wrong) < 0.05


class _ReplayPipeline:
    """Stands in for a trained generator by returning real held-out digits of the requested classes."""

    def __init__(self, classifier: DigitClassifier, shuffle_labels: bool) -> None:
        self.transformer = type("T", (), {"config": type("C", (), {"num_classes": 10, "sample_size": 8})()})()
        self.scheduler = FlowEulerScheduler()
        self.by_class = {d: classifier.heldout_images[classifier.heldout_labels == d] for d in range(10)}
        self.shuffle_labels = shuffle_labels

    def __call__(self, class_labels, num_inference_steps, guidance_scale, generator, output_type):
        assert output_type == "np"
        self.scheduler.set_timesteps(num_inference_steps)
        picks = [(d + 3) % 10 if self.shuffle_labels else d for d in class_labels]
        images = np.stack([self.by_class[d][i % len(self.by_class[d])] for i, d in enumerate(picks)])
        return type("Out", (), {"images": images[..., None]})()


def test_pipeline_evaluation_counts_correct_classes_and_measures_the_distribution(
    classifier: DigitClassifier,
) -> None:
    distribution = DigitDistribution(resolution=8)
    good = evaluate_digit_pipeline(
        _ReplayPipeline(classifier, False), classifier, distribution, samples_per_class=20, batch_size=64
    )
    assert good["digit_accuracy"] > 0.95 and good["num_samples"] == 200
    assert good["num_inference_steps"] == good["num_model_evaluations"] == 20
    # Real digits: near the real-vs-real floor on every distribution figure.
    assert good["fd_ratio"] < 1.5 and good["fd_ratio"] == pytest.approx(good["fd"] / good["fd_floor"])
    assert good["precision"] > 0.8 and good["recall"] > 0.8
    bad = evaluate_digit_pipeline(
        _ReplayPipeline(classifier, True), classifier, distribution, samples_per_class=20
    )
    assert bad["digit_accuracy"] < 0.05
    assert good["classifier_heldout_accuracy"] == classifier.heldout_accuracy
    with pytest.raises(ValueError, match=r"samples_per_class=88 must lie in \[1, 87\]"):
        evaluate_digit_pipeline(
            _ReplayPipeline(classifier, False), classifier, distribution, samples_per_class=88
        )


def test_a_report_counts_model_evaluations_not_steps(make_flow_pipeline) -> None:
    pipeline = make_flow_pipeline(scheduler=FlowHeunScheduler())
    pipeline.set_progress_bar_config(disable=True)
    rows = digit_report(
        pipeline, guidance_scales=(2.0, 1.0, 2.0), model_evaluations=(4, 8), samples_per_class=3
    )
    settings = [
        (row["guidance_scale"], row["num_inference_steps"], row["num_model_evaluations"]) for row in rows
    ]
    # Heun calls the model twice a step but the last: 2 steps fit in 4 evaluations (3 calls), 4 in 8 (7 calls).
    assert settings == [(2.0, 2, 3), (2.0, 4, 7), (1.0, 2, 3), (1.0, 4, 7)]
    table = format_digit_report(rows).splitlines()
    assert len(table) == 6 and table[2].startswith("| 2 | 3 | ")
