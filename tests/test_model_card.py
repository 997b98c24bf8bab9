"""Model cards: the Hub's metadata, results as model-index entries, nothing local published, updates, safe writes."""

from __future__ import annotations

import stat

import huggingface_hub
import numpy as np
import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard
from PIL import Image

from flow_pipelines import FlowEulerScheduler, FlowPipeline
from flow_pipelines.data_sources import DIGITS_DESCRIPTION
from flow_pipelines.model_card import (
    CARD_STATE_FILE,
    TASK_TYPE,
    CardResult,
    card_config,
    hub_dataset_id,
    public_config,
    public_text,
    results_from_evaluation,
    results_from_rows,
    update_model_card,
    write_model_card,
)

SECRET = "hf_" + "x" * 34
ID2LABEL = {0: "zero", 1: "one", 2: "two"}


@pytest.fixture
def pipeline_dir(tmp_path, make_dit):
    pipe = FlowPipeline(
        transformer=make_dit(num_layers=1, num_classes=3), scheduler=FlowEulerScheduler(), id2label=ID2LABEL
    )
    folder = tmp_path / "pipeline"
    pipe.save_pretrained(folder)
    Image.fromarray(np.zeros((8, 24), dtype=np.uint8)).save(folder / "samples.png")
    return folder


def read_card(path):
    text = path.read_text()
    _, header, body = text.split("---", 2)
    return yaml.safe_load(header), body


FID = CardResult(
    "fid",
    12.5,
    "uoft-cs/cifar10",
    sampler="heun",
    num_inference_steps=30,
    nfe=59,
    guidance_scale=1.5,
    num_samples=10000,
    dataset_split="train",
    details={"real_vs_real_floor": 1.2},
)


def test_metadata_is_the_hubs_and_results_are_machine_readable(pipeline_dir, tmp_path):
    local_data = tmp_path / "my_images"
    local_data.mkdir()
    config = {
        "learning_rate": 1e-4,
        "hub_token": SECRET,
        "output_dir": str(tmp_path / "out"),
        "train_data_dir": str(local_data),
        "vae": "stabilityai/sd-vae-ft-mse",
    }
    path = write_model_card(
        pipeline_dir,
        training_config=config,
        dataset_name="uoft-cs/cifar10",
        id2label=ID2LABEL,
        sample_grid="samples.png",
        results=[
            FID,
            {"metric": "precision", "value": 0.7, "dataset": "uoft-cs/cifar10", "guidance_scale": 1.5},
        ],
        evaluation={
            "digit_accuracy": 0.97,
            "num_samples": 500,
            "num_inference_steps": 20,
            "guidance_scale": 3.0,
        },
        repo_id="someone/tiny-flow",
        license="cc-by-nc-4.0",
    )
    metadata, body = read_card(path)
    assert metadata["library_name"] == "diffusers" and "flow_pipelines" in metadata["tags"]
    assert "class-conditional-image-generation" in metadata["tags"] and "pipeline_tag" not in metadata
    assert metadata["license"] == "cc-by-nc-4.0" and metadata["datasets"] == ["uoft-cs/cifar10"]

    results = ModelCard.load(path).data.eval_results
    by_metric = {result.metric_type: result for result in results}
    assert set(by_metric) == {"fid", "precision", "digit_accuracy"}
    fid = by_metric["fid"]
    assert (fid.task_type, fid.dataset_type, fid.dataset_split, fid.metric_value) == (
        TASK_TYPE,
        "uoft-cs/cifar10",
        "train",
        12.5,
    )
    assert fid.metric_args == {
        "sampler": "heun",
        "num_inference_steps": 30,
        "nfe": 59,
        "guidance_scale": 1.5,
        "num_samples": 10000,
        "real_vs_real_floor": 1.2,
    }
    assert by_metric["digit_accuracy"].metric_args == {
        "num_inference_steps": 20,
        "guidance_scale": 3.0,
        "num_samples": 500,
    }
    assert CardResult.from_eval_result(fid) == FID
    assert "| FID | 12.5 | uoft-cs/cifar10 (train) | heun | 30 | 59 | 1.5 | 10000 |" in body

    # Install line before the snippets, which name the repository; nothing local or secret is published.
    assert body.index("pip install flow_pipelines") < body.index("DiffusionPipeline.from_pretrained")
    assert 'DiffusionPipeline.from_pretrained("someone/tiny-flow", trust_remote_code=True)' in body
    assert 'FlowPipeline.from_pretrained("someone/tiny-flow")' in body
    assert "| `train_data_dir` | my_images |" in body and "| `learning_rate` | 0.0001 |" in body
    assert "stabilityai/sd-vae-ft-mse" in body
    text = path.read_text()
    assert str(tmp_path) not in text and "output_dir" not in text and SECRET not in text
    assert "0: zero, 1: one, 2: two" in body and "![Samples, one row per class](samples.png)" in body


def test_defaults_name_no_license_no_repo_and_local_data_stays_local(pipeline_dir, tmp_path):
    path = write_model_card(
        pipeline_dir, training_config={}, dataset_name=f"image folder {tmp_path / 'cats'}", id2label=ID2LABEL
    )
    metadata, body = read_card(path)
    assert "license" not in metadata and "datasets" not in metadata and "model-index" not in metadata
    assert "**image folder cats**" in body and str(tmp_path) not in path.read_text()
    assert 'from_pretrained("<namespace>/<model-name>", trust_remote_code=True)' in body
    # The embedded digits are described, not listed as a Hub dataset.
    path = write_model_card(
        pipeline_dir, training_config={}, dataset_name=DIGITS_DESCRIPTION, evaluation={"digit_accuracy": 1.0}
    )
    metadata, _ = read_card(path)
    assert "datasets" not in metadata
    assert ModelCard.load(path).data.eval_results[0].dataset_type == "sklearn_digits"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_grid": "nope.png"}, "sample_grid='nope.png'"),
        ({"license": "Apache 2.0"}, "license='Apache 2.0' is not allowed; allowed: a Hub license identifier"),
        ({"repo_id": "a/b/c"}, "repo_id='a/b/c' is not allowed"),
        (
            {"results": [{"metric": "fid", "value": float("nan"), "dataset": "cifar10"}]},
            "value=nan is not allowed",
        ),
        ({"results": [{"metric": "fid", "value": 1.0}]}, r"lacks \['dataset'\]"),
        ({"results": [{"digit_accuracy": 0.9, "guidance_scale": 2.0}]}, "results_from_rows"),
        ({"results": {"metric": "fid", "value": 1.0, "dataset": "x"}}, "wrap a single one in a list"),
        (
            {"prediction_type": "noise"},
            "prediction_type='noise' is not allowed; allowed: velocity, sample, epsilon",
        ),
        ({"guidance_scale": float("inf")}, "guidance_scale=inf is not allowed"),
        ({"base_model": "a b"}, "base_model='a b' is not allowed"),
        ({"pipeline_tag": "Image Generation"}, "pipeline_tag='Image Generation' is not allowed"),
        ({"dataset_name": " "}, "dataset_name=' ' is not allowed"),
        ({"evaluation": [0.9]}, r"evaluation=\[0.9\] is not allowed"),
    ],
    ids=[
        "grid",
        "license",
        "repo",
        "nan-result",
        "result-without-data",
        "row-as-result",
        "single-result",
        "prediction-type",
        "guidance",
        "base-model",
        "pipeline-tag",
        "dataset-name",
        "evaluation-list",
    ],
)
def test_bad_arguments_are_refused(pipeline_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_model_card(pipeline_dir, **{"training_config": {}, "dataset_name": "digits", **kwargs})
    assert not (pipeline_dir / "README.md").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps=0 is not allowed; allowed: a positive integer"),
        ({"nfe": 2.5}, "nfe=2.5 is not allowed"),
        ({"num_samples": True}, "num_samples=True is not allowed"),
        ({"guidance_scale": float("nan")}, "guidance_scale=nan is not allowed; allowed: a finite number"),
        ({"sampler": ""}, "sampler='' is not allowed"),
        ({"details": ["x"]}, r"details=\['x'\] is not allowed"),
        ({"metric": ""}, "metric='' is not allowed"),
        ({"value": "0.9"}, "value='0.9' is not allowed"),
    ],
)
def test_card_result_refuses_malformed_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        CardResult(**{"metric": "fid", "value": 1.0, "dataset": "cifar10", **settings})


def test_rows_of_figures_become_results_with_their_settings_in_the_metadata(pipeline_dir):
    rows = [
        {
            "guidance_scale": 2.0,
            "num_model_evaluations": 8,
            "scheduler": "euler",
            "digit_accuracy": 0.99,
            "fd_ratio": 1.2,
            "precision": 0.8,
            "recall": 0.8,
            "num_samples": 500,
            "precision_floor": np.float64(0.79),
            "num_reference": np.int64(870),
        },
        {"guidance_scale": 1.0, "steps": 20, "scheduler": "heun", "digit_accuracy": 0.9, "num_samples": 500},
    ]
    results = results_from_rows(rows, "sklearn_digits")
    assert [(r.metric, r.nfe, r.num_inference_steps) for r in results] == [
        ("digit_accuracy", 8, None),
        ("fd_ratio", 8, None),
        ("precision", 8, None),
        ("recall", 8, None),
        ("digit_accuracy", None, 20),
    ]
    path = write_model_card(
        pipeline_dir,
        training_config={},
        dataset_name=DIGITS_DESCRIPTION,
        results=results,
        base_model="someone/base-flow",
        pipeline_tag="unconditional-image-generation",
    )
    metadata, body = read_card(path)
    assert metadata["base_model"] == "someone/base-flow" and metadata["base_model_relation"] == "finetune"
    assert metadata["pipeline_tag"] == "unconditional-image-generation"
    assert "Fine-tuned from [someone/base-flow]" in body
    loaded = ModelCard.load(path).data.eval_results
    assert [(r.metric_type, r.metric_value) for r in loaded] == [
        ("digit_accuracy", 0.99),
        ("fd_ratio", 1.2),
        ("precision", 0.8),
        ("recall", 0.8),
        ("digit_accuracy", 0.9),
    ]
    assert loaded[2].metric_args == {
        "sampler": "euler",
        "nfe": 8,
        "guidance_scale": 2.0,
        "num_samples": 500,
        "num_reference": 870,
        "real_vs_real_floor": 0.79,
    }
    assert loaded[4].metric_args == {
        "sampler": "heun",
        "num_inference_steps": 20,
        "guidance_scale": 1.0,
        "num_samples": 500,
    }
    assert [CardResult.from_eval_result(r) for r in loaded] == results
    assert "| Digit accuracy | 0.99 | sklearn_digits | euler |  | 8 | 2 | 500 |" in body
    assert "| Digit accuracy | 0.9 | sklearn_digits | heun | 20 |  | 1 | 500 |" in body
    with pytest.raises(ValueError, match="steps=10 contradicts num_inference_steps=20"):
        results_from_rows([{"num_inference_steps": 20, "steps": 10, "fid": 3.0}], "cifar10")
    with pytest.raises(ValueError, match="row 0.5 is not allowed"):
        results_from_rows([0.5], "cifar10")


def test_the_older_evaluation_dict_still_renders(pipeline_dir):
    """Numbers become results measured on the digits; text is shown as notes, outside the metadata."""
    path = write_model_card(
        pipeline_dir,
        training_config={},
        dataset_name=DIGITS_DESCRIPTION,
        evaluation={"setting": "guidance 2, 8 steps | 500 samples", "digit accuracy": "0.990", "fd": 3.5},
    )
    metadata, body = read_card(path)
    assert "base_model" not in metadata and "Trained from scratch" in body
    (result,) = ModelCard.load(path).data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("fd", 3.5, "sklearn_digits")
    assert "| setting | guidance 2, 8 steps \\| 500 samples |" in body
    assert "| digit accuracy | 0.990 |" in body
    # Text only: no model-index, the notes still under an Evaluation heading.
    path = write_model_card(
        pipeline_dir, training_config={}, dataset_name="digits", evaluation={"digit accuracy": "0.990"}
    )
    metadata, body = read_card(path)
    assert "model-index" not in metadata
    assert "## Evaluation" in body and "| digit accuracy | 0.990 |" in body


def test_results_from_evaluation_records_and_the_legacy_dict():
    record = {
        "metric": "fd_dinov2",
        "value": 300.0,
        "num_samples": 2000,
        "scheduler": "heun",
        "steps": 30,
        "guidance": 1.5,
        "seed": 0,
        "model": "/home/me/out/pipeline",
        "reference": "/home/me/data/cats",
        "num_reference": 1797,
        "protocol": "dgm-eval",
    }
    result = CardResult.from_record(record)
    assert result == CardResult(
        "fd_dinov2",
        300.0,
        "cats",
        sampler="heun",
        num_inference_steps=30,
        guidance_scale=1.5,
        num_samples=2000,
        details={"num_reference": 1797, "protocol": "dgm-eval"},
    )
    figures = {
        "digit_accuracy": 0.98,
        "per_class_min_accuracy": 0.9,
        "num_samples": 500,
        "num_inference_steps": 20,
        "guidance_scale": 3.0,
        "classifier_heldout_accuracy": 0.99,
    }
    results = results_from_evaluation(figures, "sklearn_digits")
    assert [r.metric for r in results] == ["digit_accuracy", "per_class_min_accuracy"]
    assert results[0].settings == {
        "num_inference_steps": 20,
        "guidance_scale": 3.0,
        "num_samples": 500,
        "classifier_heldout_accuracy": 0.99,
    }


def test_update_adds_results_replaces_the_same_measurement_and_names_the_repo(pipeline_dir):
    write_model_card(
        pipeline_dir, training_config={"learning_rate": 1e-4}, dataset_name="cifar10", results=[FID]
    )
    newer = CardResult(**{**FID.__dict__, "value": 10.0})
    other_guidance = CardResult(**{**FID.__dict__, "guidance_scale": 1.0, "value": 20.0})
    update_model_card(pipeline_dir, results=[newer, other_guidance], repo_id="someone/tiny-flow")
    metadata, body = read_card(pipeline_dir / "README.md")
    values = sorted(r.metric_value for r in ModelCard.load(pipeline_dir / "README.md").data.eval_results)
    assert values == [10.0, 20.0]
    assert "| `learning_rate` | 0.0001 |" in body and 'from_pretrained("someone/tiny-flow")' in body
    assert "\n# tiny-flow\n" in body

    # A card edited by hand keeps its text; its metadata still gets the results.
    card = pipeline_dir / "README.md"
    card.write_text(card.read_text().replace("## How to use", "## How to use (my notes)"))
    update_model_card(pipeline_dir, results=[CardResult("recall", 0.5, "cifar10")])
    assert "## How to use (my notes)" in card.read_text()
    assert {r.metric_type for r in ModelCard.load(card).data.eval_results} == {"fid", "recall"}
    # Foreign cards too: only our task's entries are merged, others are kept.
    foreign = ModelCard("---\nlicense: mit\n---\n# Theirs\n")
    foreign.data.eval_results = [EvalResult("text-to-image", "coco", "COCO", "clip", 0.3)]
    foreign.data.model_name = "theirs"
    foreign.save(card)
    (pipeline_dir / CARD_STATE_FILE).unlink()
    update_model_card(pipeline_dir, results=[FID])
    assert {r.metric_type for r in ModelCard.load(card).data.eval_results} == {"clip", "fid"}
    with pytest.raises(FileNotFoundError, match="there is no model card to update"):
        update_model_card(pipeline_dir.parent, results=[FID])


def test_a_failed_card_write_keeps_the_previous_card(pipeline_dir, monkeypatch):
    card = pipeline_dir / "README.md"
    card.write_text("the previous card")

    def fail(self):
        raise RuntimeError("template error")

    monkeypatch.setattr(huggingface_hub.ModelCard, "__str__", fail)
    with pytest.raises(RuntimeError, match="template error"):
        write_model_card(pipeline_dir, training_config={}, dataset_name="digits")
    assert card.read_text() == "the previous card"
    assert not [p.name for p in pipeline_dir.iterdir() if p.name.startswith(".")]


def test_the_card_gets_ordinary_permissions(pipeline_dir, umask):
    path = write_model_card(pipeline_dir, training_config={}, dataset_name="digits")
    assert oct(stat.S_IMODE(path.stat().st_mode)) == "0o644"


def test_public_settings_and_text(tmp_path):
    assert public_config({"hub_token": "t", "api_secret": "s", "lr": 1}) == {"lr": 1}
    assert card_config({"output_dir": "out", "logging_dir": "logs", "lr": 1, "hub_token": "t"}) == {"lr": 1}
    assert public_text(f"image folder {tmp_path}/cats") == "image folder cats"
    assert public_text("ylecun/mnist") == "ylecun/mnist"
    assert hub_dataset_id("cifar10 (plain_text)") == "cifar10" and hub_dataset_id(DIGITS_DESCRIPTION) is None
    assert hub_dataset_id(str(tmp_path)) is None
