"""The evaluate command end to end on a tiny saved pipeline, offline, and every input it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import flow_pipelines.evaluate
from flow_pipelines import FlowPipeline
from flow_pipelines.evaluate import FRECHET_METRICS, build_parser, check_metrics, cli, main
from flow_pipelines.evaluation.digits import DigitClassifier
from flow_pipelines.evaluation.dinov2 import DinoV2FeatureExtractor
from flow_pipelines.evaluation.features import WeightsUnavailableError
from flow_pipelines.evaluation.frechet import minimum_samples
from flow_pipelines.evaluation.likelihood import image_bits_per_dim
from flow_pipelines.evaluation.reference import reference_indices
from flow_pipelines.guidance import GuidedVelocity
from flow_pipelines.images import quantize_images
from flow_pipelines.training.batches import DIGITS_SIDE
from flow_pipelines.training.publish import PIPELINE_FOLDER

from .cli_support import assert_one_line_error, example_commands, run_command, truncate
from .conftest import file_modes
from .oracles import scipy_frechet


@pytest.fixture
def saved_pipeline(tmp_path, make_flow_pipeline):
    def save(name: str = "pipeline", **overrides) -> Path:
        folder = tmp_path / name
        make_flow_pipeline(**overrides).save_pretrained(folder)
        return folder

    return save


@pytest.fixture
def dinov2_folder(tmp_path, make_dinov2) -> Path:
    folder = tmp_path / "tiny-dinov2"
    make_dinov2().save_pretrained(folder)
    return folder


def test_evaluate_end_to_end_matches_direct_computations(
    tmp_path, saved_pipeline, dinov2_folder, capsys, digits_pixels
):
    model = saved_pipeline()
    out, cache = tmp_path / "eval", tmp_path / "stats"
    argv = [
        "--model", str(model),
        "--reference", "sklearn_digits",
        "--num-reference", "40",
        "--metrics", "fd_dinov2", "digit_accuracy", "bpd",
        "--num-samples", "30",
        "--batch-size", "16",
        "--scheduler", "euler",
        "--steps", "3",
        "--guidance", "1.5",
        "--seed", "5",
        "--dinov2-model", str(dinov2_folder),
        "--extractor-batch-size", "32",
        "--bpd-num-images", "6",
        "--bpd-steps", "3",
        "--output-dir", str(out),
        "--stats-cache", str(cache),
        "--device", "cpu",
    ]  # fmt: skip
    records = main(argv)

    assert [r["metric"] for r in records] == ["fd_dinov2", "digit_accuracy", "bpd"]
    assert json.loads((out / "metrics.json").read_text()) == records
    for record in records:
        assert {
            "metric",
            "value",
            "num_samples",
            "scheduler",
            "steps",
            "guidance",
            "protocol",
            "extractor",
        } <= set(record)
    fd, digits, bpd = records
    assert (fd["num_samples"], fd["scheduler"], fd["steps"], fd["guidance"]) == (30, "euler", 3, 1.5)
    assert "CLS-token" in fd["protocol"] and fd["extractor"].startswith("dinov2:")

    # Samples: ADM layout, balanced classes, each reproducible alone from seed + i.
    with np.load(out / "samples.npz") as data:
        samples, labels = data["arr_0"], data["arr_1"]
    assert samples.dtype == np.uint8 and samples.shape == (30, 8, 8, 1)
    np.testing.assert_array_equal(labels, np.arange(30) % 10)
    pipeline = FlowPipeline.from_pretrained(model)
    pipeline.set_progress_bar_config(disable=True)
    for index in (0, 17):
        alone = pipeline(
            [index % 10],
            num_inference_steps=3,
            guidance_scale=1.5,
            generator=torch.Generator().manual_seed(5 + index),
            output_type="np",
        ).images
        np.testing.assert_array_equal(quantize_images(alone).permute(0, 2, 3, 1).numpy()[0], samples[index])

    # FD-DINOv2 against scipy on features of the same images, computed here from sklearn's digits directly.
    extractor = DinoV2FeatureExtractor.from_pretrained(dinov2_folder)
    reference = digits_pixels[reference_indices(1797, 40)]
    generated = torch.from_numpy(samples).permute(0, 3, 1, 2)
    with torch.no_grad():
        features_ref = extractor(reference.expand(-1, 3, -1, -1)).double().numpy()
        features_gen = extractor(generated.expand(-1, 3, -1, -1)).double().numpy()
    assert fd["value"] == pytest.approx(scipy_frechet(features_ref, features_gen), rel=1e-4)
    assert fd["num_reference"] == 40

    # Digit accuracy: the classifier's reading of the saved samples.
    classifier = DigitClassifier.fit()
    assert digits["value"] == pytest.approx(classifier.accuracy(samples[..., 0] / 255.0, labels))
    assert digits["classifier_heldout_accuracy"] > 0.9

    # Bits per dimension: the same computation called directly on the first reference images.
    direct = image_bits_per_dim(
        GuidedVelocity(pipeline.transformer),
        digits_pixels[reference_indices(1797, 6)],  # a fixed random subset of the whole reference
        generator=torch.Generator().manual_seed(5),
        show_progress=False,
        num_steps=3,
        divergence="hutchinson",
    )
    assert bpd["value"] == pytest.approx(direct.bits_per_dim, rel=1e-9)
    assert (bpd["num_samples"], bpd["steps"], bpd["guidance"]) == (6, 3, None)
    assert np.isfinite(bpd["standard_error"])

    # A second run reads the cached reference statistics and reproduces the figures.
    assert len(list(cache.glob("fd_dinov2-*.npz"))) == 1
    capsys.readouterr()
    only_fd = argv[: argv.index("--metrics") + 1] + ["fd_dinov2"] + argv[argv.index("--num-samples") :]
    again = main([*only_fd, "--overwrite"])  # the first run's results are replaced only when asked
    printed = capsys.readouterr().out
    assert "reference statistics read from" in printed
    assert (
        f"replaced {out / 'samples.npz'} (30 samples)" in printed
        and f"replaced {out / 'metrics.json'}" in printed
    )
    assert again[0]["value"] == pytest.approx(fd["value"], rel=1e-6)


def test_conditional_guided_bpd_uses_the_reference_labels(tmp_path, saved_pipeline, digits_pixels):
    from sklearn.datasets import load_digits

    model = saved_pipeline()
    argv = ["--model", str(model), "--metrics", "bpd", "--bpd-conditional", "--guidance", "2.0"]
    argv += [
        "--bpd-num-images",
        "4",
        "--bpd-steps",
        "2",
        "--seed",
        "3",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    (record,) = main(argv)
    assert record["conditional"] is True and record["guidance"] == 2.0
    assert not (tmp_path / "out" / "samples.npz").exists()  # likelihood alone draws no samples

    chosen = reference_indices(1797, 4)
    velocity = GuidedVelocity(
        FlowPipeline.from_pretrained(model).transformer,
        class_labels=torch.from_numpy(load_digits().target[chosen]),
        guidance_scale=2.0,
    )
    direct = image_bits_per_dim(
        velocity,
        digits_pixels[chosen],
        generator=torch.Generator().manual_seed(3),
        show_progress=False,
        num_steps=2,
        divergence="hutchinson",
    )
    assert record["value"] == pytest.approx(direct.bits_per_dim, rel=1e-9)
    unconditional = image_bits_per_dim(
        GuidedVelocity(velocity.transformer),
        digits_pixels[chosen],
        generator=torch.Generator().manual_seed(3),
        show_progress=False,
        num_steps=2,
        divergence="hutchinson",
    )
    assert record["value"] != pytest.approx(unconditional.bits_per_dim, rel=1e-6)


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(
        ValueError,
        match=r"'inception_score'.*known metrics: fid, fd_dinov2, digit_accuracy, digit_fd, digit_precision, digit_recall, bpd, or the group digits",
    ):
        main(["--model", "unused", "--metrics", "fid", "inception_score"])


def test_the_former_digit_metric_name_is_accepted_with_a_deprecation_warning():
    with pytest.warns(FutureWarning, match="'digits_accuracy' is deprecated; use 'digit_accuracy'"):
        assert check_metrics(["digits_accuracy", "fid", "digit_accuracy"]) == ["digit_accuracy", "fid"]


def test_too_few_samples_for_the_feature_dimension(tmp_path, saved_pipeline, dinov2_folder):
    common = [
        "--model",
        str(saved_pipeline()),
        "--metrics",
        "fd_dinov2",
        "--dinov2-model",
        str(dinov2_folder),
    ]
    with pytest.raises(ValueError, match=r"10 samples.*16-dimensional.*singular.*At least 17"):
        main([*common, "--num-samples", "10", "--output-dir", str(tmp_path / "o"), "--no-stats-cache"])
    with pytest.raises(ValueError, match=r"12 reference images.*At least 17"):
        main([*common, "--num-samples", "20", "--num-reference", "12", "--output-dir", str(tmp_path / "o")])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sample_size": 16},
            "generated images are 1-channel 16x16 but the reference images are 1-channel 8x8",
        ),
        ({"in_channels": 3}, "generated images are 3-channel 8x8 but the reference images are 1-channel 8x8"),
    ],
)
def test_reference_of_another_resolution_or_channel_count_is_refused(
    tmp_path, saved_pipeline, dinov2_folder, overrides, message
):
    argv = [
        "--model", str(saved_pipeline(**overrides)),
        "--metrics", "fd_dinov2",
        "--dinov2-model", str(dinov2_folder),
        "--num-samples", "20",
        "--num-reference", "20",
        "--output-dir", str(tmp_path / "out"),
        "--no-stats-cache",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=message):
        main(argv)
    assert not (tmp_path / "out" / "samples.npz").exists()  # refused before sampling


def test_metrics_that_do_not_apply_to_the_model_are_refused(tmp_path, saved_pipeline):
    with pytest.raises(ValueError, match="digit_accuracy needs a 10-class digit model; this one has 5"):
        main(["--model", str(saved_pipeline(num_classes=5)), "--metrics", "digit_accuracy"])
    with pytest.warns(FutureWarning, match="use 'digit_accuracy'"):
        with pytest.raises(ValueError, match="digit_accuracy needs a 10-class digit model; this one has 5"):
            main(["--model", str(saved_pipeline(num_classes=5)), "--metrics", "digits_accuracy"])
    with pytest.raises(ValueError, match="bpd is defined for pixel-space models"):
        main(["--model", str(saved_pipeline("latent", vae=True, in_channels=4)), "--metrics", "bpd"])
    with pytest.raises(ValueError, match="--num-samples 0 must be >= 1"):
        main(["--model", "unused", "--metrics", "fid", "--num-samples", "0"])
    with pytest.raises(ValueError, match="--bpd-rho 0.5 must be >= 1"):
        main(["--model", "unused", "--metrics", "bpd", "--bpd-rho", "0.5"])


def test_unfetchable_extractor_weights_name_what_could_not_be_fetched(
    tmp_path, monkeypatch, offline_hub, saved_pipeline, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = str(saved_pipeline())
    with pytest.raises(WeightsUnavailableError, match="facebook/dinov2-large"):
        main(["--model", model, "--metrics", "fd_dinov2", "--output-dir", str(tmp_path / "o")])

    # As a command: a one-line error naming the Inception weights, their URL and where to put them.
    capsys.readouterr()
    assert cli(["--model", model, "--metrics", "fid", "--output-dir", str(tmp_path / "o")]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading progress bars
    assert message.startswith("error: The FID Inception-v3 weights are not cached")
    assert "weights-inception-2015-12-05-6726825d.pth" in message and str(tmp_path / "torch") in message


def test_existing_results_are_refused_before_any_work_unless_overwrite(
    tmp_path, saved_pipeline, capsys, umask
):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("[] (an earlier evaluation)")
    argv = ["--model", str(saved_pipeline()), "--metrics", "digit_accuracy", "--num-samples", "10"]
    argv += ["--steps", "1", "--output-dir", str(out)]
    assert cli(argv) == 2
    assert_one_line_error(
        capsys.readouterr().err, "metrics.json' (from --output-dir) exists; pass --overwrite"
    )
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # refused before sampling
    (out / "metrics.json").unlink()
    (out / "samples.npz").write_bytes(b"earlier samples")
    assert cli(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "samples.npz' (from --output-dir) exists")

    (tmp_path / "a file").write_text("not a folder")
    assert cli([*argv[:-1], str(tmp_path / "a file")]) == 2
    assert_one_line_error(capsys.readouterr().err, "a file' (from --output-dir) is a file; allowed: a folder")

    assert cli([*argv, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert (
        f"replaced {out / 'samples.npz'} (10 samples)" in printed
        and f"wrote {out / 'metrics.json'}" in printed
    )
    assert file_modes(out) == {"metrics.json": "0o644", "samples.npz": "0o644"}


@pytest.mark.parametrize("breakage", ["missing", "truncated", "json"])
def test_unusable_models_end_in_one_line(tmp_path, saved_pipeline, capsys, breakage):
    model = tmp_path / "missing" if breakage == "missing" else saved_pipeline()
    if breakage == "truncated":
        truncate(model / "transformer" / "diffusion_pytorch_model.safetensors")
    elif breakage == "json":
        (model / "model_index.json").write_text("{")
    capsys.readouterr()
    assert cli(["--model", str(model), "--metrics", "bpd", "--output-dir", str(tmp_path / "o")]) == 2
    fragment = {
        "missing": "is no folder here, and loading it as a Hub repo id failed",
        "truncated": "diffusion_pytorch_model.safetensors is not a readable safetensors file",
        "json": "model_index.json (the pipeline's component list) is not valid JSON",
    }[breakage]
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_the_command_reports_a_model_it_cannot_find_in_one_line(tmp_path):
    result = run_command(
        ["-m", "flow_pipelines.evaluate", "--model", "someone/not-cached", "--metrics", "bpd"], cwd=tmp_path
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "'someone/not-cached' is no folder here", "HF_HUB_OFFLINE is set")
    assert list(tmp_path.iterdir()) == []


def test_the_docstring_example_fits_the_default_run_and_the_digits(digits_pixels):
    """The example's flags parse, name the trained pipeline, and meet every check evaluate makes before sampling."""
    example, sweep = example_commands(flow_pipelines.evaluate.__doc__, "python -m flow_pipelines.evaluate")
    sweep_args = build_parser().parse_args(sweep)
    assert str(sweep_args.model) == f"outputs/digits/{PIPELINE_FOLDER}"
    assert sweep_args.guidance_sweep == [1, 1.25, 1.5, 2, 3]
    args = build_parser().parse_args(example)
    assert str(args.model) == f"outputs/digits/{PIPELINE_FOLDER}" and args.reference == "sklearn_digits"
    # The default run trains at the digits' own 8x8, so the reference needs no resizing.
    assert not args.resize_reference and digits_pixels.shape[-1] == DIGITS_SIDE
    feature_dims = {"fid": args.fid_features, "fd_dinov2": 1024}  # DINOv2 ViT-L/14's width
    for metric in set(check_metrics(args.metrics)) & set(FRECHET_METRICS):
        needed = minimum_samples(feature_dims[metric])
        assert args.num_samples >= needed and len(digits_pixels) >= needed, metric


def test_update_card_adds_the_results_to_the_models_card(tmp_path, saved_pipeline):
    from huggingface_hub import ModelCard

    from flow_pipelines.hub import write_model_card

    model = saved_pipeline(sample_size=16)
    arguments = ["--model", str(model), "--metrics", "digit_accuracy", "--num-samples", "20", "--steps", "2"]
    with pytest.raises(ValueError, match="--update-card: .*README.md does not exist"):
        main([*arguments, "--update-card", "--output-dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()  # refused before any work

    write_model_card(model, training_config={}, dataset_name="sklearn_digits", repo_id="someone/digits")
    records = main([*arguments, "--guidance", "2", "--update-card", "--output-dir", str(tmp_path / "eval")])
    (result,) = ModelCard.load(model / "README.md").data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == (
        "digit_accuracy",
        records[0]["value"],
        "sklearn_digits",
    )
    assert {
        k: result.metric_args[k] for k in ("sampler", "num_inference_steps", "guidance_scale", "num_samples")
    } == {
        "sampler": "euler",
        "num_inference_steps": 2,
        "guidance_scale": 2.0,
        "num_samples": 20,
    }
    assert "| Digit accuracy |" in (model / "README.md").read_text()


def test_a_guidance_sweep_measures_each_scale_and_draws_the_trade_off(tmp_path, saved_pipeline, capsys):
    from PIL import Image

    from flow_pipelines.evaluation.digits import DigitDistribution

    model, out = saved_pipeline(), tmp_path / "sweep"
    argv = [
        "--model",
        str(model),
        "--metrics",
        "digits",
        "--num-samples",
        "60",
        "--steps",
        "2",
        "--seed",
        "3",
    ]
    records = main([*argv, "--guidance-sweep", "2", "1", "2", "--output-dir", str(out)])

    # One record per digit metric and scale, the scales sorted and each measured once.
    assert [(r["metric"], r["guidance"]) for r in records] == [
        (metric, guidance)
        for guidance in (1.0, 2.0)
        for metric in ("digit_accuracy", "digit_fd", "digit_precision", "digit_recall")
    ]
    assert json.loads((out / "metrics.json").read_text()) == records
    # Each scale's samples are saved, and its figures are those of the saved samples.
    distribution, classifier = DigitDistribution(resolution=8), DigitClassifier.fit()
    for guidance in (1.0, 2.0):
        with np.load(out / f"samples-guidance-{guidance:g}.npz") as data:
            samples, labels = data["arr_0"], data["arr_1"]
        report = distribution.compare(samples[..., 0] / 255.0, labels)
        by_metric = {r["metric"]: r for r in records if r["guidance"] == guidance}
        assert by_metric["digit_accuracy"]["value"] == classifier.accuracy(samples[..., 0] / 255.0, labels)
        assert by_metric["digit_fd"]["value"] == pytest.approx(report.fd, rel=1e-12)
        assert by_metric["digit_fd"]["fd_ratio"] == pytest.approx(report.fd_ratio, rel=1e-12)
        assert by_metric["digit_precision"]["value"] == report.precision
        assert by_metric["digit_recall"]["floor"] == report.recall_floor
    # The table and the picture of the trade-off.
    table = json.loads((out / "guidance_sweep.json").read_text())
    assert [row["guidance"] for row in table["rows"]] == [1.0, 2.0]
    assert set(table["rows"][0]) == {
        "guidance",
        "digit_accuracy",
        "digit_fd_ratio",
        "digit_precision",
        "digit_recall",
    }
    assert table["floors"]["digit_fd_ratio"] == 1.0 and (table["steps"], table["num_samples"]) == (2, 60)
    with Image.open(out / "guidance_sweep.png") as plot:
        assert plot.format == "PNG" and plot.width > 4 * plot.height / 2
    printed = capsys.readouterr().out
    assert "| guidance | digit_accuracy | digit_fd_ratio | digit_precision | digit_recall |" in printed
    assert f"wrote {out / 'guidance_sweep.png'}" in printed

    # A sweep whose plot would replace one is refused before any work; the earlier files stay.
    (out / "metrics.json").unlink()
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(ValueError, match="guidance_sweep.json' \\(from --output-dir\\) exists"):
        main([*argv, "--guidance-sweep", "4", "5", "--output-dir", str(out)])
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_sweep_needs_two_scales_and_a_sample_metric(tmp_path, saved_pipeline):
    model = str(saved_pipeline())
    with pytest.raises(ValueError, match="--guidance-sweep 2 is one scale; a sweep takes two or more"):
        main(["--model", model, "--metrics", "digits", "--guidance-sweep", "2"])
    with pytest.raises(ValueError, match="--guidance-sweep repeats the sample metrics"):
        main(["--model", model, "--metrics", "bpd", "--guidance-sweep", "1", "2"])
    with pytest.raises(ValueError, match="guidance_scale=-1.0 must be a finite number >= 0"):
        main(["--model", model, "--metrics", "digits", "--guidance-sweep", "1", "-1"])
    assert check_metrics(["digits", "digit_fd"]) == [
        "digit_accuracy",
        "digit_fd",
        "digit_precision",
        "digit_recall",
    ]
