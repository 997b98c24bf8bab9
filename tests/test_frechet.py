"""Fréchet distances: the formula against scipy, the torchmetrics pipeline against a direct computation on the
same features, the feature extractors (the Inception port, DINOv2, what every extractor shares), and the errors.

The quantisation of samples before the extractor is in test_images.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow_pipelines.evaluation.dinov2 import DinoV2FeatureExtractor
from flow_pipelines.evaluation.features import FeatureExtractor, WeightsUnavailableError, ieee_float32
from flow_pipelines.evaluation.frechet import (
    FeatureStatistics,
    FrechetDistance,
    check_enough_samples,
    check_same_geometry,
    frechet_distance,
)
from flow_pipelines.evaluation.inception import FIDInceptionV3, InceptionFeatureExtractor, resize_bilinear_tf1
from flow_pipelines.images import to_rgb

from .oracles import scipy_frechet


def random_images(count: int, seed: int, low: int = 0, high: int = 256, size: int = 16, channels: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (count, channels, size, size), generator=generator, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------- the formula
def test_frechet_distance_matches_scipy_sqrtm_on_random_features():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8))
    features_a = rng.normal(size=(300, 8)) @ mixing
    features_b = rng.normal(size=(250, 8)) @ (mixing + 0.3 * rng.normal(size=(8, 8))) + 0.5
    a, b = FeatureStatistics.from_features(features_a), FeatureStatistics.from_features(features_b)
    ours = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert ours == pytest.approx(scipy_frechet(features_a, features_b), rel=1e-9)
    assert ours > 1.0
    assert frechet_distance(a.mu, a.sigma, a.mu, a.sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    # For commuting (diagonal) covariances the distance is |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_statistics_round_trip_through_npz(tmp_path):
    features = np.random.default_rng(1).normal(size=(40, 5))
    statistics = FeatureStatistics.from_features(features, extractor="x", image_shape=[3, 8, 8])
    path = statistics.save(tmp_path / "stats" / "ref.npz")
    loaded = FeatureStatistics.load(path)
    np.testing.assert_array_equal(loaded.mu, statistics.mu)
    np.testing.assert_array_equal(loaded.sigma, statistics.sigma)
    assert loaded.num_samples == 40
    assert loaded.metadata == {"extractor": "x", "image_shape": [3, 8, 8]}
    assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- the pipeline
def test_fd_dinov2_through_torchmetrics_equals_scipy_on_the_same_features(make_dinov2):
    extractor = DinoV2FeatureExtractor(make_dinov2(), resolution=28, source="tiny")
    reference = random_images(40, seed=0)
    generated = random_images(36, seed=1, low=60)
    distance = FrechetDistance(extractor, batch_size=16, show_progress=False)
    distance.update(reference, real=True)
    distance.update(generated, real=False)
    value = distance.compute()

    with torch.no_grad():
        features_ref = extractor(reference).double().numpy()
        features_gen = extractor(generated).double().numpy()
    assert features_ref.shape == (40, 16)
    assert value == pytest.approx(scipy_frechet(features_ref, features_gen), rel=1e-4)
    assert value > 0


def test_fid_pipeline_with_a_custom_module_equals_scipy():
    class TinyConvFeatures(torch.nn.Module):
        """A small random conv net on uint8 images: what torchmetrics' `feature=` module accepts."""

        num_features = 12

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.conv = torch.nn.Conv2d(3, 12, 3, stride=2)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.conv(images.float() / 127.5 - 1)).mean(dim=(2, 3))

    module = TinyConvFeatures()
    module.name, module.identifier, module.protocol = "tiny", "tiny", "tiny"
    reference, generated = random_images(30, seed=4), random_images(30, seed=5, high=200)
    distance = FrechetDistance(module, batch_size=7, show_progress=False)
    distance.update(reference, real=True)
    distance.update(generated, real=False)
    with torch.no_grad():
        expected = scipy_frechet(module(reference).double().numpy(), module(generated).double().numpy())
    assert distance.compute() == pytest.approx(expected, rel=1e-4)


def test_cached_reference_statistics_reproduce_the_distance(tmp_path, make_dinov2):
    extractor = DinoV2FeatureExtractor(make_dinov2(), resolution=28, source="tiny")
    reference, generated = random_images(30, seed=2), random_images(30, seed=3, low=40)
    first = FrechetDistance(extractor, batch_size=32, show_progress=False)
    first.update(reference, real=True)
    first.update(generated, real=False)
    path = first.reference_statistics(key="k").save(tmp_path / "ref.npz")

    second = FrechetDistance(extractor, batch_size=32, show_progress=False)
    second.set_reference_statistics(FeatureStatistics.load(path))
    second.update(generated, real=False)
    assert second.num_reference == 30
    assert second.compute() == pytest.approx(first.compute(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- Inception
def test_tf1_bilinear_resize_samples_without_half_pixel_offset():
    image = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # Output pixel i reads input position i * 2 / 4 = 0, 0.5, 1, 1.5 (the last clamps to the edge).
    expected_row0 = torch.tensor([0.0, 5.0, 10.0, 10.0])
    resized = resize_bilinear_tf1(image, 4)
    assert torch.equal(resized[0, 0, 0], expected_row0)
    assert torch.equal(resized[0, 0, :, 0], torch.tensor([0.0, 10.0, 20.0, 20.0]))
    assert torch.equal(resize_bilinear_tf1(image, 2), image)


def test_inception_loads_a_weights_file_strictly_and_extracts_pool_features(tmp_path):
    from safetensors.torch import save_file

    # Random weights without the cost of initialising 24M parameters: allocate, then fill.
    with torch.device("meta"):
        network = FIDInceptionV3(2048)
    network = network.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    for name, tensor in network.state_dict().items():
        if name.endswith("running_var"):
            tensor.uniform_(0.5, 1.5, generator=generator)
        elif tensor.is_floating_point():
            tensor.normal_(0.0, 0.05, generator=generator)
        else:
            tensor.zero_()
    state = network.state_dict()
    save_file(state, tmp_path / "inception.safetensors")
    # The 64-d pool features keep the 299 px forward cheap; loading checks every parameter of the network.
    extractor = InceptionFeatureExtractor.from_pretrained(tmp_path / "inception.safetensors", feature_dim=64)
    assert extractor.num_features == 64
    assert "tf1-bilinear-299" in extractor.identifier
    loaded = extractor.network.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())
    with torch.no_grad():
        features = extractor(random_images(1, seed=0, size=32))
    assert features.shape == (1, 64) and torch.isfinite(features).all()

    # Every pool depth of the same network, on a small input the strided stem still accepts (for speed).
    images = torch.rand(1, 3, 80, 80) * 2 - 1
    with torch.no_grad():
        for dim in (64, 192, 768, 2048):
            network.feature_dim = dim
            assert network(images).shape == (1, dim)

    del state["Mixed_7c.branch_pool.conv.weight"]
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight"):
        InceptionFeatureExtractor.from_pretrained(tmp_path / "broken.safetensors")


def test_unfetchable_weights_fail_with_what_could_not_be_fetched(tmp_path, monkeypatch, offline_hub):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailableError, match="weights-inception-2015-12-05-6726825d.pth"):
        InceptionFeatureExtractor.from_pretrained()
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        InceptionFeatureExtractor.from_pretrained(tmp_path / "missing.pth")
    with pytest.raises(WeightsUnavailableError, match="facebook/dinov2-large"):
        DinoV2FeatureExtractor.from_pretrained("facebook/dinov2-large")


# ---------------------------------------------------------------------------------------------- bad input
def test_too_few_samples_for_the_feature_dimension_is_refused(make_dinov2):
    with pytest.raises(ValueError, match=r"singular.*At least 2049"):
        check_enough_samples(2048, 2048)
    check_enough_samples(2049, 2048)

    extractor = DinoV2FeatureExtractor(make_dinov2(), resolution=28, source="tiny")
    distance = FrechetDistance(extractor, show_progress=False)
    distance.update(random_images(16, seed=0), real=True)
    distance.update(random_images(20, seed=1), real=False)
    with pytest.raises(ValueError, match=r"16 reference images for 16-dimensional features.*At least 17"):
        distance.compute()


def test_reference_and_samples_of_different_geometry_are_refused():
    with pytest.raises(ValueError, match="1-channel 8x8.*3-channel 8x8"):
        check_same_geometry((1, 8, 8), (3, 8, 8))
    with pytest.raises(ValueError, match="3-channel 16x16.*3-channel 32x32"):
        check_same_geometry((3, 16, 16), (3, 32, 32))


def test_extractors_take_quantised_rgb_only(make_dinov2):
    extractor = DinoV2FeatureExtractor(make_dinov2(), resolution=28, source="tiny")
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        extractor(random_images(2, seed=0, channels=1))
    with pytest.raises(ValueError, match="allowed: 1 \\(grey\\) or 3"):
        to_rgb(random_images(2, seed=0, channels=4))
    with pytest.raises(ValueError, match="pooling"):
        DinoV2FeatureExtractor(make_dinov2(), pooling="max")
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        DinoV2FeatureExtractor(make_dinov2(), resolution=30)
    with pytest.raises(ValueError, match="allowed: 64, 192, 768, 2048"):
        FIDInceptionV3(1000)


def test_extraction_runs_without_tf32_and_restores_the_flags():
    seen = []

    class Probe(FeatureExtractor):
        num_features = 1

        def extract(self, images: torch.Tensor) -> torch.Tensor:
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return images.float().mean(dim=(1, 2, 3))[:, None]

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        Probe()(random_images(1, seed=0))
        assert seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with ieee_float32():
            with pytest.raises(ValueError):
                Probe()(torch.zeros(1, 3, 4, 4))  # float input is refused
        assert torch.backends.cudnn.allow_tf32  # restored after an error too
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
