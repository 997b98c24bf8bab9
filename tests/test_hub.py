"""Model cards and publishing to the Hub, through huggingface_hub's real client and a local stand-in."""

import stat

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from PIL import Image

from flow_pipelines import FlowEulerScheduler, FlowPipeline
from flow_pipelines.hub import public_config, push_pipeline_to_hub, write_model_card

from .hub_stand_in import HubStandIn

SECRET = "hf_" + "x" * 34


@pytest.fixture
def pipeline_dir(tmp_path, make_dit):
    # A three-class, one-layer model with DiTModel's MLP ratio and an explicit out_channels.
    transformer = make_dit(out_channels=1, num_layers=1, num_classes=3, mlp_ratio=4.0)
    pipe = FlowPipeline(
        transformer=transformer, scheduler=FlowEulerScheduler(), id2label={0: "zero", 1: "one", 2: "two"}
    )
    folder = tmp_path / "pipeline"
    pipe.save_pretrained(folder)
    Image.fromarray(np.zeros((8, 24), dtype=np.uint8)).save(folder / "samples.png")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "state.bin").write_bytes(b"not for the hub")
    return folder


TRAINING_CONFIG = {"learning_rate": 1e-4, "train_batch_size": 64, "hub_token": SECRET, "resolution": 8}


def read_card(path):
    text = path.read_text()
    _, header, body = text.split("---", 2)
    return yaml.safe_load(header), body


def test_model_card_has_metadata_usage_details_and_no_token(pipeline_dir):
    path = write_model_card(
        pipeline_dir,
        training_config=TRAINING_CONFIG,
        dataset_name="mnist",
        id2label={0: "zero", 1: "one", 2: "two"},
        sample_grid="samples.png",
        evaluation={"digit accuracy": 0.97},
        repo_id="someone/tiny-flow",
    )
    metadata, body = read_card(path)
    assert metadata["library_name"] == "flow_pipelines"
    assert metadata["license"] == "apache-2.0"
    assert metadata["datasets"] == ["mnist"]
    assert "flow-matching" in metadata["tags"]
    assert "import flow_pipelines" in body
    assert 'DiffusionPipeline.from_pretrained("someone/tiny-flow")' in body
    assert "![Samples, one row per class](samples.png)" in body
    assert "| `learning_rate` | 0.0001 |" in body
    assert "| digit accuracy | 0.97 |" in body
    assert "0: zero, 1: one, 2: two" in body
    assert SECRET not in path.read_text() and "hub_token" not in body


def test_model_card_rejects_a_missing_grid(pipeline_dir):
    with pytest.raises(ValueError, match="sample_grid='nope.png'"):
        write_model_card(pipeline_dir, training_config={}, dataset_name="digits", sample_grid="nope.png")


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


def test_public_config_drops_credentials():
    assert public_config({"hub_token": "t", "api_secret": "s", "lr": 1}) == {"lr": 1}


def test_push_uploads_the_pipeline_which_then_loads(pipeline_dir, tmp_path, monkeypatch):
    # The tests run offline; this one talks to a server on 127.0.0.1 only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    write_model_card(
        pipeline_dir, training_config=TRAINING_CONFIG, dataset_name="digits", repo_id="someone/tiny-flow"
    )
    with HubStandIn(tmp_path / "hub") as hub:
        url = push_pipeline_to_hub(
            pipeline_dir, "someone/tiny-flow", token=SECRET, private=True, api=HfApi(endpoint=hub.endpoint)
        )
    assert url.startswith(hub.endpoint)
    assert len(hub.validated_cards) == 1 and "library_name: flow_pipelines" in hub.validated_cards[0]
    assert hub.created == [
        {"name": "tiny-flow", "organization": "someone", "visibility": "private", "type": "model"}
    ]
    assert all(header == f"Bearer {SECRET}" for header in hub.authorization_headers)

    uploaded = hub.repo_folder("someone/tiny-flow")
    names = {p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file()}
    assert "model_index.json" in names and "README.md" in names and "samples.png" in names
    assert "transformer/diffusion_pytorch_model.safetensors" in names
    assert not any(name.startswith("checkpoint-") for name in names)
    assert not any(SECRET.encode() in (uploaded / name).read_bytes() for name in names)

    original = FlowPipeline.from_pretrained(pipeline_dir)
    loaded = FlowPipeline.from_pretrained(uploaded)
    for pipe in (original, loaded):
        pipe.set_progress_bar_config(disable=True)
    kwargs = {"class_labels": ["two", "zero"], "num_inference_steps": 3, "output_type": "pt"}
    expected = original(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = loaded(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(expected, got)
    assert loaded.id2label == original.id2label


def test_push_refuses_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        push_pipeline_to_hub(tmp_path, "someone/x", api=HfApi(endpoint="http://127.0.0.1:9"))


def test_scheduler_in_the_uploaded_folder_is_ours(pipeline_dir):
    # The saved scheduler config names our class, so the Hub copy samples with the same method.
    loaded = FlowPipeline.from_pretrained(pipeline_dir)
    assert isinstance(loaded.scheduler, FlowEulerScheduler)
