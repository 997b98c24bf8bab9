"""FlowPipeline save/load: folder layout, every loader, Hub repo ids from an offline cache, variants, ``.bin`` weights,
atomicity, and saving into a folder that holds other files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from functools import partial
from pathlib import Path
from unittest import mock

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.pipelines import pipeline_loading_utils
from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple

from flow_pipelines import FlowEulerScheduler, FlowPipeline

from .cli_support import truncate
from .conftest import file_modes

# Both loaders a user has: ours, and diffusers' generic one, which runs the folder's module files only when trusted.
LOADERS = {
    "FlowPipeline": FlowPipeline.from_pretrained,
    "DiffusionPipeline": partial(DiffusionPipeline.from_pretrained, trust_remote_code=True),
}


def sample(pipe: FlowPipeline, labels=(1, 2), steps: int = 3) -> torch.Tensor:
    config = pipe.transformer.config
    noise = torch.randn(
        len(labels),
        config.in_channels,
        config.sample_size,
        config.sample_size,
        generator=torch.Generator().manual_seed(0),
    )
    return pipe(
        list(labels), num_inference_steps=steps, guidance_scale=3.0, latents=noise, output_type="pt"
    ).images


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_saved_folder_names_its_module_files_and_loads_with_every_loader(make_flow_pipeline, tmp_path):
    pipe = make_flow_pipeline(id2label="digits")
    expected = sample(pipe)
    pipe.save_pretrained(tmp_path / "pipe")

    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_flow", "FlowPipeline"] and "_diffusers_version" in index
    assert index["transformer"] == ["pipeline_flow", "DiTModel"]
    assert index["scheduler"] == ["pipeline_flow", "FlowEulerScheduler"]
    assert index["vae"] == [None, None]
    assert index["auto_map"] == {"AutoModel": "pipeline_flow.FlowAutoModel"}
    assert index["id2label"] == {str(i): f"digit {i}" for i in range(10)}
    files = tree_digest(tmp_path / "pipe")
    assert set(files) == {
        "model_index.json",
        "pipeline_flow.py",
        "scheduler/pipeline_flow.py",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "transformer/pipeline_flow.py",
    }
    # One text for every module file: diffusers copies them into one flat cache folder.
    assert len({files[name] for name in files if name.endswith("pipeline_flow.py")}) == 1

    for name, loader in LOADERS.items():
        loaded = loader(tmp_path / "pipe")
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is FlowPipeline and loaded.vae is None, name
        assert type(loaded.scheduler) is FlowEulerScheduler
        assert loaded.id2label == {i: f"digit {i}" for i in range(10)}
        assert loaded.label_ids(["digit 7", 3]) == [7, 3]
        assert torch.equal(sample(loaded), expected)
        # Saved again, the folder keeps its module files (the configs gain diffusers' `_name_or_path`).
        loaded.save_pretrained(tmp_path / "again")
        again = tree_digest(tmp_path / "again")
        assert again.keys() == files.keys()
        assert all(again[name] == files[name] for name in files if not name.endswith(".json"))
    # diffusers runs module files only when told to trust them; ours needs no such flag for its own files.
    with pytest.raises(ValueError, match="Pass `trust_remote_code=True`"):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")


@pytest.mark.parametrize("pass_cache_dir", [True, False], ids=["cache_dir", "default_cache"])
def test_hub_repo_id_loads_from_an_offline_cache(make_flow_pipeline, offline_hub, tmp_path, pass_cache_dir):
    """FlowPipeline's route to a Hub repo works offline from the cache. (diffusers' remote-code route asks the Hub
    for the repo's commit even when everything is cached: it is tested against a local Hub in test_remote_code.)"""
    pipe = make_flow_pipeline(id2label="digits")
    expected = sample(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    snapshot = offline_hub(tmp_path / "pipe", "flow-org/tiny-digits")
    kwargs = {"cache_dir": offline_hub.cache_dir} if pass_cache_dir else {}

    for loader in (FlowPipeline.from_pretrained, FlowPipeline.download):
        loaded = loader("flow-org/tiny-digits", **kwargs)
        if loader == FlowPipeline.download:
            assert Path(loaded) == snapshot
            continue
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is FlowPipeline and loaded.name_or_path == "flow-org/tiny-digits"
        assert Path(loaded.transformer.config._name_or_path) == snapshot / "transformer"
        assert loaded.id2label[4] == "digit 4"
        assert torch.equal(sample(loaded), expected)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_folder_saved_before_the_model_config_decided_still_loads_and_samples_the_same(
    make_flow_pipeline, tmp_path, loader
):
    """Folders saved before: the model config named a `time_convention`, the scheduler the model's prediction type."""
    pipe = make_flow_pipeline(prediction_type="sample")
    pipe.save_pretrained(tmp_path / "old")
    model_config = tmp_path / "old" / "transformer" / "config.json"
    model_config.write_text(json.dumps({**json.loads(model_config.read_text()), "time_convention": "flow"}))
    scheduler_config = tmp_path / "old" / "scheduler" / "scheduler_config.json"
    scheduler_config.write_text(
        json.dumps({**json.loads(scheduler_config.read_text()), "prediction_type": "sample"})
    )
    loaded = LOADERS[loader](tmp_path / "old")
    loaded.set_progress_bar_config(disable=True)
    assert (
        loaded.scheduler.config.prediction_type == "sample"
        and "time_convention" not in loaded.transformer.config
    )
    call = {"num_inference_steps": 4, "guidance_scale": 2.0, "output_type": "pt"}
    expected = pipe([1, 2], generator=torch.Generator().manual_seed(0), **call).images
    got = loaded([1, 2], generator=torch.Generator().manual_seed(0), **call).images
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_registration_is_idempotent_and_publishes_the_pipeline():
    import diffusers
    from diffusers.pipelines import pipeline_utils

    from flow_pipelines import diffusers_integration

    entry = dict(pipeline_loading_utils.LOADABLE_CLASSES["flow_pipelines"])
    diffusers_integration.register({"FlowPipeline": FlowPipeline})
    diffusers_integration.register({"FlowPipeline": FlowPipeline})
    assert pipeline_loading_utils.LOADABLE_CLASSES["flow_pipelines"] == entry
    assert set(entry) == {"ModelMixin", "SchedulerMixin", "DiffusionPipeline"}
    assert pipeline_utils.LIBRARIES.count("flow_pipelines") == 1
    assert diffusers.FlowPipeline is FlowPipeline
    # A class diffusers defines itself is never shadowed.
    diffusers_integration.register({"DDPMPipeline": FlowPipeline})
    assert diffusers.DDPMPipeline is not FlowPipeline


def test_flow_pipelines_hub_route_relies_on_the_registration(
    make_flow_pipeline, offline_hub, tmp_path, monkeypatch
):
    """FlowPipeline reads its module-file entries as ``["flow_pipelines", class]``; diffusers' download accepts that
    library only because the package registers itself (the cached listing makes it check, as on the real Hub)."""
    pipe = make_flow_pipeline()
    assert _fetch_class_library_tuple(pipe.transformer) == ("flow_pipelines", "DiTModel")
    pipe.save_pretrained(tmp_path / "pipe")
    offline_hub(tmp_path / "pipe", "flow-org/tiny")

    monkeypatch.delitem(pipeline_loading_utils.LOADABLE_CLASSES, "flow_pipelines")
    # Unregistered, a component is recorded under its module path; a save still names the module files.
    assert _fetch_class_library_tuple(pipe.transformer) == (
        "flow_pipelines.models.transformer_dit",
        "DiTModel",
    )
    pipe.save_pretrained(tmp_path / "unregistered")
    index = json.loads((tmp_path / "unregistered" / "model_index.json").read_text())
    assert index["transformer"] == ["pipeline_flow", "DiTModel"]
    with pytest.raises(
        ValueError, match=r"/flow_pipelines\.py as defined in `model_index.json` does not exist"
    ):
        FlowPipeline.from_pretrained("flow-org/tiny")


@pytest.mark.parametrize(
    "scheduler",
    [
        FlowMatchEulerDiscreteScheduler(shift=3.0),
        DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
    ],
    ids=["flowmatch-euler", "dpm"],
)
def test_folder_with_a_diffusers_scheduler_loads(make_flow_pipeline, tmp_path, scheduler):
    pipe = make_flow_pipeline(scheduler=scheduler)
    expected = sample(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", type(scheduler).__name__]
    assert not (tmp_path / "pipe" / "scheduler" / "pipeline_flow.py").exists()
    for loader in LOADERS.values():
        loaded = loader(tmp_path / "pipe")
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded.scheduler) is type(scheduler)
        public = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        assert {k: loaded.scheduler.config[k] for k in public} == public
        assert torch.equal(sample(loaded), expected)


def test_vae_pipeline_round_trip(make_flow_pipeline, tmp_path):
    pipe = make_flow_pipeline(in_channels=4, vae=True, id2label="digits")
    expected = sample(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    loaded = LOADERS["DiffusionPipeline"](tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.vae, AutoencoderKL)
    assert (loaded.vae.config.scaling_factor, loaded.vae.config.shift_factor) == (0.5, 0.1)
    assert expected.shape == (2, 3, 16, 16) and torch.equal(sample(loaded), expected)


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
def test_fp16_variant_and_torch_dtype(make_flow_pipeline, tmp_path):
    pipe = make_flow_pipeline(in_channels=4, vae=True)
    pipe.save_pretrained(tmp_path / "full")
    pipe.to(torch.float16).save_pretrained(tmp_path / "half", variant="fp16")
    assert (tmp_path / "half" / "transformer" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (tmp_path / "half" / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()

    for loader in LOADERS.values():
        loaded = loader(tmp_path / "half", variant="fp16", dtype=torch.float16)
        loaded.set_progress_bar_config(disable=True)
        assert loaded.transformer.dtype == torch.float16 and loaded.vae.dtype == torch.float16
        for name, value in pipe.transformer.state_dict().items():
            assert torch.equal(loaded.transformer.state_dict()[name], value)

    loaded = FlowPipeline.from_pretrained(tmp_path / "full", torch_dtype=torch.bfloat16)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.dtype == torch.bfloat16
    images = loaded([1], num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_missing_files_are_named(make_flow_pipeline, tmp_path):
    pipe = make_flow_pipeline(in_channels=4, vae=True)
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)

    (folder / "vae" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "vae.safetensors")
    with pytest.raises(
        ValueError, match=r"lacks the vae weights: vae/diffusion_pytorch_model\.safetensors is missing"
    ):
        FlowPipeline.from_pretrained(folder)
    # A component passed in is not read from the folder, so its files are not required.
    loaded = FlowPipeline.from_pretrained(folder, vae=pipe.vae)
    assert loaded.vae is pipe.vae
    (tmp_path / "vae.safetensors").rename(folder / "vae" / "diffusion_pytorch_model.safetensors")

    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    scheduler_config.rename(tmp_path / "scheduler_config.json")
    with pytest.raises(ValueError, match=r"lacks scheduler/scheduler_config\.json"):
        FlowPipeline.from_pretrained(folder)
    (tmp_path / "scheduler_config.json").rename(scheduler_config)
    (folder / "transformer" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"lacks transformer/config\.json"):
        FlowPipeline.from_pretrained(folder)
    (folder / "model_index.json").unlink()
    with pytest.raises(ValueError, match=r"is not a saved pipeline: .*model_index\.json is missing"):
        FlowPipeline.from_pretrained(folder)


def test_truncated_weights_and_broken_json_are_named(make_flow_pipeline, tmp_path):
    folder = tmp_path / "pipe"
    make_flow_pipeline().save_pretrained(folder)
    pristine = tree_digest(folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    truncate(weights)
    with pytest.raises(
        ValueError, match=r"diffusion_pytorch_model\.safetensors is not a readable safetensors file"
    ):
        FlowPipeline.from_pretrained(folder)

    for relative, role in [
        ("model_index.json", "the pipeline's component list"),
        ("transformer/config.json", "the transformer configuration"),
        ("scheduler/scheduler_config.json", "the scheduler configuration"),
    ]:
        make_flow_pipeline().save_pretrained(folder)
        assert tree_digest(folder) == pristine
        (folder / relative).write_text('{"_class_name": "FlowPipeline",')  # cut off mid-write
        message = (
            rf"{relative} \({role}\) is not valid JSON: Expecting property name enclosed in double quotes"
        )
        with pytest.raises(ValueError, match=message):
            FlowPipeline.from_pretrained(folder)

    sharded = tmp_path / "sharded"
    make_flow_pipeline().save_pretrained(sharded, max_shard_size="20KB")
    second_shard = sorted((sharded / "transformer").glob("*-00002-of-*.safetensors"))[0]
    truncate(second_shard)
    with pytest.raises(ValueError, match=rf"{second_shard.name} is not a readable safetensors file"):
        FlowPipeline.from_pretrained(sharded)


class Payload:
    """Unpickling this runs code: it writes a file. ``torch.load(weights_only=True)`` refuses it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_bin_weights_are_written_on_request_and_read_without_running_pickle_code(
    make_flow_pipeline, tmp_path, variant
):
    pipe = make_flow_pipeline(in_channels=4, vae=True)
    expected = sample(pipe)
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder, safe_serialization=False, variant=variant)
    suffix = f".{variant}.bin" if variant else ".bin"
    for component in ("transformer", "vae"):
        assert sorted(p.name for p in (folder / component).iterdir() if "diffusion" in p.name) == [
            f"diffusion_pytorch_model{suffix}"
        ]
    for name, loader in LOADERS.items():
        for use_safetensors in (None, False):
            loaded = loader(folder, variant=variant, use_safetensors=use_safetensors)
            loaded.set_progress_bar_config(disable=True)
            assert torch.equal(sample(loaded), expected), name
    with pytest.raises(
        ValueError, match=r"lacks the transformer weights: .*looked for diffusion_pytorch_model"
    ):
        FlowPipeline.from_pretrained(folder, variant=variant, use_safetensors=True)

    # Saved again as safetensors, the .bin of the same variant goes: it would otherwise shadow nothing but lie.
    pipe.save_pretrained(folder, variant=variant)
    assert not list(folder.rglob("*.bin"))
    pipe.save_pretrained(folder, safe_serialization=False, variant=variant)
    assert not list(
        folder.rglob("*.safetensors")
    )  # and the reverse: a stale safetensors file would be loaded

    # A .bin whose pickle would run code is refused, and the code does not run.
    marker = tmp_path / "ran.txt"
    torch.save(
        {"patch_embed.weight": Payload(marker)}, folder / "transformer" / f"diffusion_pytorch_model{suffix}"
    )
    with pytest.raises(
        ValueError, match=r"holds more than tensors, so torch.load\(weights_only=True\) refuses"
    ):
        FlowPipeline.from_pretrained(folder, variant=variant)
    with pytest.raises(OSError, match="Unable to load weights"):  # diffusers' own loader refuses it as well
        LOADERS["DiffusionPipeline"](folder, variant=variant)
    assert not marker.exists()
    truncate(folder / "transformer" / f"diffusion_pytorch_model{suffix}")
    with pytest.raises(
        ValueError, match=rf"diffusion_pytorch_model{suffix} is not a readable PyTorch weights file"
    ):
        FlowPipeline.from_pretrained(folder, variant=variant)


def test_save_is_atomic(make_flow_pipeline, tmp_path, monkeypatch):
    folder = tmp_path / "pipe"
    first = make_flow_pipeline(seed=0, id2label="digits")
    first.save_pretrained(folder)
    (folder / "notes.txt").write_text("written beside the first save")
    before = tree_digest(folder)

    second = make_flow_pipeline(seed=1)

    def fail(self, *args, **kwargs):
        raise RuntimeError("disk full")

    # The transformer is written first; the scheduler then fails part-way through the save.
    monkeypatch.setattr(FlowEulerScheduler, "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        second.save_pretrained(folder)
    assert tree_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no staging folder left behind

    monkeypatch.undo()
    second.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "written beside the first save"  # the user's file is kept
    loaded = FlowPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.id2label == {}
    assert torch.equal(sample(loaded), sample(second))

    # Saving over the folder a pipeline was loaded from works too.
    loaded.id2label = {0: "zero"}
    loaded.save_pretrained(folder)
    assert FlowPipeline.from_pretrained(folder).id2label == {0: "zero"}


def assert_every_file_is_readable(folder: Path) -> None:
    """Every JSON file parses and every safetensors file opens whole: nothing half-written is in the folder."""
    from safetensors import safe_open

    for path in folder.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                assert list(handle.keys())
    assert not [p.name for p in folder.rglob(".*")], "no staging or set-aside entry is left behind"


def test_save_keeps_the_users_files_beside_and_inside_the_components(make_flow_pipeline, tmp_path):
    folder = tmp_path / "pipe"
    make_flow_pipeline(seed=0).save_pretrained(folder)
    (folder / "my_notes.md").write_text("mine")
    (folder / "runs" / "0").mkdir(parents=True)
    (folder / "runs" / "0" / "log.txt").write_text("log")
    (folder / "transformer" / "how_trained.txt").write_text("mine too")
    (folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"another variant")

    second = make_flow_pipeline(seed=1)
    second.save_pretrained(folder)
    assert (folder / "my_notes.md").read_text() == "mine"
    assert (folder / "runs" / "0" / "log.txt").read_text() == "log"
    assert (folder / "transformer" / "how_trained.txt").read_text() == "mine too"
    assert (
        folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors"
    ).read_bytes() == b"another variant"
    assert not [p.name for p in folder.rglob(".*")]
    loaded = FlowPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(sample(loaded), sample(second))


def test_a_single_file_save_drops_the_shards_of_an_earlier_sharded_one(make_flow_pipeline, tmp_path):
    folder = tmp_path / "pipe"
    make_flow_pipeline(seed=0).save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(p.name for p in (folder / "transformer").iterdir() if "-of-" in p.name)
    assert (
        len(shards) > 1
        and (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    )

    second = make_flow_pipeline(seed=1)
    second.save_pretrained(folder)
    # A stale index would make loaders read the old shards instead of the new single file.
    assert sorted(p.name for p in (folder / "transformer").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "pipeline_flow.py",
    ]
    loaded = FlowPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(sample(loaded), sample(second))


def test_a_crash_while_writing_weights_leaves_the_previous_save(make_flow_pipeline, tmp_path, monkeypatch):
    import safetensors.torch

    folder = tmp_path / "pipe"
    make_flow_pipeline(seed=0).save_pretrained(folder)
    (folder / "my_notes.md").write_text("mine")
    before = tree_digest(folder)
    real_save_file = safetensors.torch.save_file

    def half_written(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(KeyboardInterrupt):
        make_flow_pipeline(seed=1).save_pretrained(folder)
    assert tree_digest(folder) == before
    assert_every_file_is_readable(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_failure_between_components_leaves_complete_components(make_flow_pipeline, tmp_path, monkeypatch):
    folder = tmp_path / "pipe"
    first = make_flow_pipeline(seed=0)
    first.save_pretrained(folder)
    (folder / "my_notes.md").write_text("mine")
    real_replace = os.replace

    def replace(source, destination):
        # The scheduler folder is published, then moving the new transformer folder into place fails.
        if Path(destination).name == "transformer" and ".tmp-" in str(source):
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        make_flow_pipeline(seed=1, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(folder)
    monkeypatch.undo()
    assert_every_file_is_readable(folder)
    assert (folder / "my_notes.md").read_text() == "mine"
    # The new scheduler folder is in place, complete; the previous transformer and index are untouched.
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    loaded = FlowPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(sample(loaded), sample(first))


def test_save_into_the_current_folder(make_flow_pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_notes.md").write_text("mine")
    make_flow_pipeline().save_pretrained(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model_index.json",
        "my_notes.md",
        "pipeline_flow.py",
        "scheduler",
        "transformer",
    ]
    assert FlowPipeline.from_pretrained(".").transformer.config.num_classes == 10


def test_saved_files_get_ordinary_permissions(make_flow_pipeline, tmp_path, umask):
    make_flow_pipeline(in_channels=4, vae=True).save_pretrained(
        tmp_path / "pipe"
    )  # safetensors stages 0600 files
    modes = file_modes(tmp_path / "pipe")
    assert {mode for name, mode in modes.items() if "." in name} == {"0o644"}
    assert {modes[name] for name in ("scheduler", "transformer", "vae")} == {"0o755"}
    assert oct(stat.S_IMODE((tmp_path / "pipe").stat().st_mode)) == "0o755"


def test_save_refuses_a_file_where_it_writes_a_folder(make_flow_pipeline, tmp_path):
    pipe = make_flow_pipeline()
    (tmp_path / "pipe.png").write_bytes(b"an image")
    with pytest.raises(ValueError, match=r"pipe\.png' is a file; a folder is needed"):
        pipe.save_pretrained(tmp_path / "pipe.png")
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "transformer").write_text("a file of the user's, named like a component")
    with pytest.raises(ValueError, match=r"transformer is a file, but this save writes a folder"):
        pipe.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["transformer"]
    assert (folder / "transformer").read_text() == "a file of the user's, named like a component"
    assert (tmp_path / "pipe.png").read_bytes() == b"an image"


def test_save_with_push_to_hub_uploads_the_saved_folder(make_flow_pipeline, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from .hub_stand_in import HubStandIn

    pipe = make_flow_pipeline(id2label="digits")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a server on 127.0.0.1 only
    with HubStandIn(tmp_path / "hub") as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        pipe.save_pretrained(
            tmp_path / "tiny-flow", push_to_hub=True, repo_id="someone/tiny-flow", token="hf_x"
        )
    assert [(c["organization"], c["name"]) for c in hub.created] == [("someone", "tiny-flow")]
    assert set(hub.authorization_headers) == {"Bearer hf_x"}
    assert tree_digest(hub.repo_folder("someone/tiny-flow")) == tree_digest(tmp_path / "tiny-flow")
    loaded = FlowPipeline.from_pretrained(hub.repo_folder("someone/tiny-flow"))
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(sample(loaded), sample(pipe))


def test_variants_dtypes_and_load_messages_as_diffusers_tests_them(make_flow_pipeline, tmp_path):
    """A variant no component has is refused (diffusers' message); ``dtype`` per component with a default; every
    component loaded from the folder is reported, as diffusers' save/load test reads the log."""

    pipe = make_flow_pipeline(in_channels=4, vae=True)
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=False)
    for loader in LOADERS.values():
        with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
            loader(tmp_path / "pipe", variant="fp16")

    dtypes = {"transformer": torch.bfloat16, "default": torch.float16}
    for name, loader in LOADERS.items():
        loaded = loader(tmp_path / "pipe", dtype=dtypes)
        assert (loaded.transformer.dtype, loaded.vae.dtype) == (torch.bfloat16, torch.float16), name

    # diffusers' own load messages name our classes. Read from its logger's calls: the records themselves can be
    # dropped by logging state that other tests leave (verbosity, diffusers' rank filter, propagation).
    from diffusers.pipelines import pipeline_utils

    with mock.patch.object(pipeline_utils.logger, "info") as info:
        FlowPipeline.from_pretrained(tmp_path / "pipe")
    messages = "\n".join(str(call.args[0]) for call in info.call_args_list)
    for name, class_name in [("transformer", "DiTModel"), ("scheduler", "FlowEulerScheduler")]:
        assert f"Loaded {name} as {class_name} from `{name}` subfolder" in messages
