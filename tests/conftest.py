"""Shared test setup: offline Hub and wandb, an offline Hugging Face cache that serves repo ids, one factory per
tiny model (`make_dit`, `make_flow_pipeline` on top of it, `make_dinov2`), scikit-learn's digits as pixels, a set
umask and the file modes below a folder."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub or wandb: both read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def single_intra_op_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead, and stall when other jobs share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Run a test under umask 022 (ordinary permissions: files 0644, folders 0755); ``umask(mask)`` sets another.

    Returns:
        ``os.umask``; the previous mask is restored afterwards.
    """
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def file_modes(root: Path) -> dict[str, str]:
    """The permission bits of everything below ``root`` (``{"sub/file": "0o644"}``), for checks under a umask."""
    import stat

    return {
        p.relative_to(root).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(root.rglob("*"))
    }


def _git_blob_id(path: Path) -> str:
    """The git object id of a file, as the Hub reports it in tree listings."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_hub_cache(folder: str | os.PathLike, cache_dir: str | os.PathLike, repo_id: str) -> Path:
    """Lay out ``folder`` in a Hugging Face cache as repo ``repo_id`` at a fake commit, as a download would.

    Writes ``models--ORG--NAME/snapshots/REV/`` (the files), ``refs/main`` (``REV``) and
    ``trees/REV.json`` (the repo's file listing, huggingface_hub's tree cache format 1), so that with
    ``HF_HUB_OFFLINE=1`` ``from_pretrained(repo_id, cache_dir=cache_dir)`` runs the real Hub code path,
    including diffusers' component checks that read the listing.

    Args:
        folder: The saved model or pipeline folder to serve.
        cache_dir: The hub cache root (what ``HF_HUB_CACHE`` or ``cache_dir=`` points to).
        repo_id: ``"org/name"``.

    Returns:
        The snapshot folder.
    """
    folder, cache_dir = Path(folder), Path(cache_dir)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    revision = hashlib.sha1(
        "".join(f"{p.relative_to(folder)}:{_git_blob_id(p)}" for p in files).encode()
    ).hexdigest()
    storage = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / revision
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(revision)
    listing = {
        "format_version": 1,
        "files": {
            p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "blob_id": _git_blob_id(p)}
            for p in files
        },
    }
    (storage / "trees").mkdir(parents=True, exist_ok=True)
    (storage / "trees" / f"{revision}.json").write_text(json.dumps(listing, indent=1))
    return snapshot


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str | os.PathLike, str], Path]:
    """Serve saved folders as Hub repo ids from a fresh cache, offline.

    The cache becomes the default one for the test (``HF_HUB_CACHE``, ``HF_HOME``, and the
    ``huggingface_hub.constants`` values read at import), so repo ids load with or without ``cache_dir=``.

    Returns:
        ``serve(folder, repo_id) -> snapshot``; the cache root is ``serve.cache_dir``.
    """
    import huggingface_hub.constants as hub_constants

    cache_dir = tmp_path / "hf_home" / "hub"
    cache_dir.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache_dir.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(cache_dir.parent))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    def serve(folder: str | os.PathLike, repo_id: str) -> Path:
        return populate_hub_cache(folder, cache_dir, repo_id)

    serve.cache_dir = cache_dir
    return serve


TINY_DIT = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 1,
    "hidden_size": 32,
    "num_layers": 2,
    "num_attention_heads": 2,
    "mlp_ratio": 2.0,
    "num_classes": 10,
}


@pytest.fixture
def make_dit() -> Callable[..., object]:
    """Build a tiny `DiTModel` with perturbed weights, in eval mode, for every test that needs a working one.

    A fresh DiTModel outputs exactly zero (adaLN-Zero and a zero output layer); every weight gets
    ``scale * N(0, 1)`` added, drawn from the global generator seeded with ``seed`` before the model is
    built, so the output depends on the input, the time and the label, and the same arguments give the
    same weights.

    Returns:
        ``build(seed=0, scale=0.05, float64=False, **config) -> DiTModel``; ``config`` overrides `TINY_DIT`
        (1 channel, 8x8, patch 2, width 32, 2 layers, 2 heads, MLP ratio 2, 10 classes), and ``float64``
        casts the perturbed model to double precision.
    """
    from flow_pipelines import DiTModel

    def build(seed: int = 0, scale: float = 0.05, float64: bool = False, **config) -> DiTModel:
        torch.manual_seed(seed)
        model = DiTModel(**{**TINY_DIT, **config})
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(scale * torch.randn_like(parameter))
        return (model.double() if float64 else model).eval()

    return build


@pytest.fixture
def make_flow_pipeline(make_dit) -> Callable[..., object]:
    """Build a tiny `FlowPipeline` (the `make_dit` model, optional tiny VAE), offline.

    Returns:
        ``build(in_channels=1, sample_size=8, num_classes=10, vae=False, scheduler=None, id2label=None,
        seed=0, **model_overrides) -> FlowPipeline``; the transformer is ``make_dit(seed=seed, ...)``;
        ``vae=True`` adds a 2-level ``AutoencoderKL`` (latent channels = ``in_channels``, RGB output, scaling
        0.5, shift 0.1), built right after it from the same generator; ``id2label="digits"`` names the classes
        ``"digit 0"``, ``"digit 1"``, ...
    """
    from diffusers import AutoencoderKL

    from flow_pipelines import FlowEulerScheduler, FlowPipeline

    def build(
        in_channels: int = 1,
        sample_size: int = 8,
        num_classes: int = 10,
        vae: bool = False,
        scheduler=None,
        id2label=None,
        seed: int = 0,
        **model_overrides,
    ) -> FlowPipeline:
        transformer = make_dit(
            seed=seed,
            in_channels=in_channels,
            sample_size=sample_size,
            num_classes=num_classes,
            **model_overrides,
        )
        autoencoder = None
        if vae:
            autoencoder = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=in_channels,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                block_out_channels=(8, 16),
                layers_per_block=1,
                norm_num_groups=4,
                sample_size=2 * sample_size,
                scaling_factor=0.5,
                shift_factor=0.1,
            )
        if id2label == "digits":
            id2label = {i: f"digit {i}" for i in range(num_classes)}
        pipeline = FlowPipeline(
            transformer=transformer,
            scheduler=scheduler if scheduler is not None else FlowEulerScheduler(),
            vae=autoencoder.eval() if autoencoder is not None else None,
            id2label=id2label,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    return build


@pytest.fixture
def make_dinov2() -> Callable[..., object]:
    """Build a tiny randomly initialised transformers ``Dinov2Model`` in eval mode: DINOv2 features offline.

    Returns:
        ``build(seed=0, **config) -> Dinov2Model``; one layer, two heads, width 16, MLP width 32, 14-pixel
        patches of 28-pixel images unless ``config`` overrides these ``Dinov2Config`` fields; the weights are
        drawn from the global generator seeded with ``seed``.
    """
    from transformers import Dinov2Config, Dinov2Model

    def build(seed: int = 0, **config) -> Dinov2Model:
        torch.manual_seed(seed)
        tiny = {
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "patch_size": 14,
            "image_size": 28,
        }
        return Dinov2Model(Dinov2Config(**{**tiny, **config})).eval()

    return build


@pytest.fixture
def digits_pixels() -> torch.Tensor:
    """scikit-learn's digits as uint8 (N, 1, 8, 8), straight from sklearn (levels 0..16 -> 0..255)."""
    import numpy as np
    from sklearn.datasets import load_digits

    grey = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    return torch.from_numpy(grey)[:, None]
