"""Publishing to the Hub, through huggingface_hub's real client and a local stand-in: the upload, the card naming the
repository it is pushed to, and the card's usage snippets run as a user would run them."""

from __future__ import annotations

import re

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image

from flow_pipelines import FlowEulerScheduler, FlowPipeline
from flow_pipelines.hub import check_push_access, push_pipeline_to_hub, write_model_card

from .hub_stand_in import HubStandIn
from .test_remote_code import run_python

SECRET = "hf_" + "x" * 34
TRAINING_CONFIG = {"learning_rate": 1e-4, "train_batch_size": 64, "hub_token": SECRET, "resolution": 8}


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


@pytest.fixture
def hub(tmp_path, monkeypatch):
    # The tests run offline; these talk to a server on 127.0.0.1 only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubStandIn(tmp_path / "hub") as stand_in:
        yield stand_in


def test_push_uploads_the_pipeline_which_then_loads(pipeline_dir, hub):
    write_model_card(
        pipeline_dir, training_config=TRAINING_CONFIG, dataset_name="digits", repo_id="someone/tiny-flow"
    )
    url = push_pipeline_to_hub(
        pipeline_dir, "someone/tiny-flow", token=SECRET, private=True, api=HfApi(endpoint=hub.endpoint)
    )
    assert url.startswith(hub.endpoint)
    assert len(hub.validated_cards) == 1 and "library_name: diffusers" in hub.validated_cards[0]
    assert hub.created == [
        {"name": "tiny-flow", "organization": "someone", "visibility": "private", "type": "model"}
    ]
    assert all(header == f"Bearer {SECRET}" for header in hub.authorization_headers)

    uploaded = hub.repo_folder("someone/tiny-flow")
    names = {p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file()}
    assert {
        "model_index.json",
        "README.md",
        "samples.png",
        "pipeline_flow.py",
        "transformer/pipeline_flow.py",
    } <= names
    assert "transformer/diffusion_pytorch_model.safetensors" in names
    assert not any(name.startswith(("checkpoint-", ".")) for name in names)  # nor the card's state file
    assert not any(SECRET.encode() in (uploaded / name).read_bytes() for name in names)

    original = FlowPipeline.from_pretrained(pipeline_dir)
    loaded = FlowPipeline.from_pretrained(uploaded)
    for pipe in (original, loaded):
        pipe.set_progress_bar_config(disable=True)
    kwargs = {"class_labels": ["two", "zero"], "num_inference_steps": 3, "output_type": "pt"}
    expected = original(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(loaded(generator=torch.Generator().manual_seed(0), **kwargs).images, expected)
    assert loaded.id2label == original.id2label
    assert isinstance(loaded.scheduler, FlowEulerScheduler)


def test_the_card_names_the_repo_it_is_pushed_to_and_its_snippets_work(pipeline_dir, hub, tmp_path):
    """Rendered without a repo (as training does without --hub_model_id), pushed as "someone/cards": the uploaded
    card loads that repo, and its Python snippets, run as written in a fresh process, load and sample."""
    write_model_card(pipeline_dir, training_config=TRAINING_CONFIG, dataset_name="digits", guidance_scale=2.0)
    assert "<namespace>/<model-name>" in (pipeline_dir / "README.md").read_text()
    push_pipeline_to_hub(pipeline_dir, "someone/cards", token=SECRET, api=HfApi(endpoint=hub.endpoint))
    card = (hub.repo_folder("someone/cards") / "README.md").read_text()
    assert card == (pipeline_dir / "README.md").read_text()  # the local card names the repo too
    assert "<namespace>" not in card and "\n# cards\n" in card  # titled after the repository

    blocks = re.findall(r"```(\w+)\n(.*?)```", card, flags=re.DOTALL)
    install = [code for language, code in blocks if language == "bash"]
    python = [code for language, code in blocks if language == "python"]
    assert install == ["pip install flow_pipelines\n"]
    assert card.index(install[0]) < card.index(python[0])
    assert 'from_pretrained("someone/cards", trust_remote_code=True)' in python[0]
    # The diffusers snippet in a process without flow_pipelines imported; then the package's own, then the swap.
    script = "import sys\nassert 'flow_pipelines' not in sys.modules\n" + python[0] + "\n".join(python[1:])
    environment = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "home")}
    result = run_python(script, [], environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert Image.open(tmp_path / "sample.png").size == (8, 8)


def test_push_refuses_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        push_pipeline_to_hub(tmp_path, "someone/x", api=HfApi(endpoint="http://127.0.0.1:9"))


def test_check_push_access_names_the_repo_with_its_namespace_or_says_why_not(hub):
    url = check_push_access("someone/ok", token=SECRET, api=HfApi(endpoint=hub.endpoint))
    assert url.repo_id == "someone/ok"
    with pytest.raises(
        ValueError, match="--push_to_hub: cannot create or reach the Hub repository 'someone/x'"
    ):
        check_push_access("someone/x", api=HfApi(endpoint="http://127.0.0.1:9"))
