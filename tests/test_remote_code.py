"""Loading a saved FlowPipeline the way a diffusers user does, in a fresh Python process that never imported
flow_pipelines: ``DiffusionPipeline.from_pretrained(id, trust_remote_code=True)`` and ``AutoModel.from_pretrained(id,
subfolder=..., trust_remote_code=True)``, from a folder and from a Hub repo (a local Hub stand-in serving what was
pushed, through huggingface_hub's real download code and cache), then ``FlowPipeline.from_pretrained`` and the import
route; the samples are identical on every route. Also: the module files themselves, and the error without the
package."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import HfApi

from flow_pipelines import DiffusionPipeline, FlowPipeline
from flow_pipelines.hub import push_pipeline_to_hub
from flow_pipelines.pipelines.remote_code import (
    MODULE_FILE,
    MODULE_TEXT,
    add_module_files,
    resolve_module_entries,
)

from .cli_support import REPO_ROOT
from .hub_stand_in import HubStandIn

CALL = {"class_labels": ["digit 3", 7], "num_inference_steps": 3, "guidance_scale": 3.0, "output_type": "pt"}

# Run in a fresh interpreter: every route a user has, in the order that keeps the first ones free of the package.
LOADING_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from diffusers import AutoModel, DiffusionPipeline

    torch.set_num_threads(1)  # as the tests run: the same reduction order, the same bits
    source, work = sys.argv[1], sys.argv[2]
    noise = torch.load(f"{work}/noise.pt", weights_only=True)
    call = dict(class_labels=["digit 3", 7], num_inference_steps=3, guidance_scale=3.0, output_type="pt")
    results = {}

    def sample(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe(latents=noise["latents"], **call).images

    assert "flow_pipelines" not in sys.modules
    pipe = DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
    results["remote"] = sample(pipe)
    results["remote_class"] = type(pipe).__name__
    transformer = AutoModel.from_pretrained(source, subfolder="transformer", trust_remote_code=True)
    with torch.no_grad():
        results["auto_model"] = transformer(noise["latents"], 500.0, [1, 2]).sample
    vae = AutoModel.from_pretrained(source, subfolder="vae", trust_remote_code=True)
    results["vae_class"] = type(vae).__name__

    from flow_pipelines import FlowPipeline  # the package's own routes

    results["flow_pipeline"] = sample(FlowPipeline.from_pretrained(source))
    results["import_route"] = sample(DiffusionPipeline.from_pretrained(source, trust_remote_code=True))
    torch.save({k: v for k, v in results.items() if isinstance(v, torch.Tensor)}, f"{work}/samples.pt")
    print(results["remote_class"], results["vae_class"])
    """
)


def run_python(
    code: str, arguments: list[str], environment: dict[str, str] | None = None, cwd: Path | None = None
):
    """Run ``code`` in a fresh interpreter with this checkout importable (not imported), in ``cwd``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        **(environment or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", code, *arguments],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def saved_pipeline(make_flow_pipeline, tmp_path):
    """A latent pipeline (transformer, our scheduler, diffusers VAE) saved to ``tmp_path / "pipe"``, its noise
    in ``tmp_path / "noise.pt"`` and its samples / transformer output computed here."""
    pipe = make_flow_pipeline(in_channels=4, vae=True, id2label="digits")
    pipe.save_pretrained(tmp_path / "pipe")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save({"latents": latents}, tmp_path / "noise.pt")
    with torch.no_grad():
        model_output = pipe.transformer(latents, 500.0, [1, 2]).sample
    return tmp_path / "pipe", pipe(latents=latents, **CALL).images, model_output


def check_routes(work: Path, expected: torch.Tensor, model_output: torch.Tensor, result) -> None:
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split()[-2:] == ["FlowPipeline", "AutoencoderKL"]
    samples = torch.load(work / "samples.pt", weights_only=True)
    for route in ("remote", "flow_pipeline", "import_route"):
        assert torch.equal(samples[route], expected), route
    assert torch.equal(samples["auto_model"], model_output)


def test_a_saved_folder_loads_in_a_fresh_process_on_every_route(saved_pipeline, tmp_path):
    folder, expected, model_output = saved_pipeline
    result = run_python(LOADING_SCRIPT, [str(folder), str(tmp_path)], {"HF_HOME": str(tmp_path / "home")})
    check_routes(tmp_path, expected, model_output, result)


def test_a_pushed_repo_loads_from_the_hub_in_a_fresh_process_on_every_route(
    saved_pipeline, tmp_path, monkeypatch
):
    folder, expected, model_output = saved_pipeline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a server on 127.0.0.1 only
    with HubStandIn(tmp_path / "hub") as hub:
        push_pipeline_to_hub(folder, "someone/tiny-flow", token="hf_x", api=HfApi(endpoint=hub.endpoint))
        hub.requests.clear()
        environment = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "home")}
        result = run_python(LOADING_SCRIPT, ["someone/tiny-flow", str(tmp_path)], environment)
    check_routes(tmp_path, expected, model_output, result)
    # The files came through the Hub's download path, into a cache laid out as the Hub lays it.
    assert any(request.startswith("GET /someone/tiny-flow/resolve/") for request in hub.requests)
    snapshots = tmp_path / "home" / "hub" / "models--someone--tiny-flow" / "snapshots"
    assert (next(snapshots.iterdir()) / "transformer" / MODULE_FILE).is_file()


def test_without_the_package_the_error_says_how_to_install_it(saved_pipeline, tmp_path):
    folder, _, _ = saved_pipeline
    code = textwrap.dedent(
        """
        import sys
        sys.modules["flow_pipelines"] = None  # as if it were not installed
        from diffusers import DiffusionPipeline
        DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
        """
    )
    result = run_python(code, [str(folder)], {"HF_HOME": str(tmp_path / "home")})
    assert result.returncode != 0
    assert "ImportError: This model is a flow_pipelines FlowPipeline: install the package" in result.stderr
    assert "pip install flow_pipelines" in result.stderr


def test_the_module_file_only_imports_the_installed_package():
    tree = ast.parse(MODULE_TEXT)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda)):
            pytest.fail("the module file defines code of its own")
    assert imported == {"flow_pipelines"}
    namespace: dict = {}
    exec(compile(MODULE_TEXT, MODULE_FILE, "exec"), namespace)
    assert namespace["FlowPipeline"] is FlowPipeline and namespace["__all__"]


def test_module_entries_are_written_for_our_classes_only_and_read_back(make_flow_pipeline, tmp_path):
    """A diffusers scheduler keeps its entry; someone else's module entry is never read as ours."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = make_flow_pipeline(scheduler=FlowMatchEulerDiscreteScheduler())
    DiffusionPipeline.save_pretrained(pipe, tmp_path / "plain")  # diffusers' own save: no module files
    plain = json.loads((tmp_path / "plain" / "model_index.json").read_text())
    assert plain["transformer"] == ["flow_pipelines", "DiTModel"] and plain["_class_name"] == "FlowPipeline"

    index = add_module_files(tmp_path / "plain")
    assert index["_class_name"] == ["pipeline_flow", "FlowPipeline"]
    assert index["transformer"] == ["pipeline_flow", "DiTModel"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert (tmp_path / "plain" / "transformer" / MODULE_FILE).read_text() == MODULE_TEXT
    assert not (tmp_path / "plain" / "scheduler" / MODULE_FILE).exists()
    assert resolve_module_entries(index) == {**plain, "_diffusers_version": index["_diffusers_version"]}

    theirs = {"_class_name": ["my_pipeline", "MyPipeline"], "unet": ["pipeline_flow", "MyUNet"]}
    assert resolve_module_entries(theirs) == theirs


def test_a_folder_saved_before_the_module_files_loads_through_the_import_route(make_flow_pipeline, tmp_path):
    """Folders written before this layout name ``flow_pipelines`` itself; with the package imported, diffusers'
    loader reads them without ``trust_remote_code`` (the package registers itself with diffusers)."""
    pipe = make_flow_pipeline(id2label="digits")
    DiffusionPipeline.save_pretrained(pipe, tmp_path / "old")
    assert not list((tmp_path / "old").rglob(MODULE_FILE))
    for loader in (DiffusionPipeline.from_pretrained, FlowPipeline.from_pretrained):
        loaded = loader(tmp_path / "old")
        loaded.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        images = loaded(generator=generator, **CALL).images
        assert torch.equal(images, pipe(generator=torch.Generator().manual_seed(0), **CALL).images)
