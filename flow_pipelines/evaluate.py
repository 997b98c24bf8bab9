"""Evaluate a saved `FlowPipeline`: FID, FD-DINOv2, the digits' accuracy and distribution, bits per dimension.

Example (the pipeline that ``accelerate launch train_scripts/train_flow.py`` leaves, 8x8 like scikit-learn's
digits it is compared with)::

    python -m flow_pipelines.evaluate --model outputs/digits/pipeline --reference sklearn_digits \\
        --num-samples 2000 --scheduler heun --steps 30 --guidance 1.5 \\
        --metrics fd_dinov2 digit_accuracy bpd --output-dir outputs/digits/eval

(FID's standard 2048 Inception features need at least 2049 reference images, more than the digits' 1,797;
``--fid-features 768`` fits them.)

A model trained on the digits is best judged by ``--metrics digits``: digit accuracy, and FD, precision and
recall in a fixed feature space of real digits against their real-vs-real floor
(:mod:`flow_pipelines.evaluation.digits`). ``--guidance-sweep 1 1.25 1.5 2 3`` measures every sample metric at each
guidance scale and draws the trade-off (``guidance_sweep.png``, with the table in ``guidance_sweep.json``)::

    python -m flow_pipelines.evaluate --model outputs/digits/pipeline --metrics digits --num-samples 500 \
        --steps 8 --guidance-sweep 1 1.25 1.5 2 3 --output-dir outputs/digits/sweep

Samples are drawn balanced over the classes (sample ``i`` has class ``i mod K``), each from its own
generator seeded ``seed + i`` (so a sample does not depend on the batch size), quantised to uint8 once
as a PNG would be, and written to ``samples.npz`` in the ADM layout (``arr_0`` uint8 NHWC, ``arr_1`` labels)
that openai/guided-diffusion's reference evaluator reads (``samples-guidance-<g>.npz`` for each scale of a
sweep). The figures go to ``metrics.json``, one record per metric and guidance scale (metric, value,
num_samples, scheduler, steps, guidance, protocol, extractor, ...). Reference
statistics are cached as ``.npz`` (mu, sigma) under ``--stats-cache``, keyed by the reference, its
preprocessing and the extractor, so repeated evaluations read the reference once.

Results are never replaced silently: if ``metrics.json`` (or a samples or sweep file the command would write)
exists in ``--output-dir``, the command stops before any work unless ``--overwrite`` is given, and it says
which files it wrote or replaced. All are written atomically. Bad input ends with one ``error: ...`` line and exit
status 2 (see :mod:`flow_pipelines.cli_utils`).

``--reference`` is scikit-learn's digits (``sklearn_digits``), a ``datasets`` name or ``save_to_disk``
folder, a folder of image files, or an ADM reference batch ``.npz``. Reference images must have the
model's resolution and channels unless ``--resize-reference`` brings them there (the training data's
transform: resize the shorter side, centre crop, convert channels).

The metrics and their protocols are described in :mod:`flow_pipelines.evaluation.frechet` (with
:mod:`~flow_pipelines.evaluation.inception` and :mod:`~flow_pipelines.evaluation.dinov2`) and
:mod:`flow_pipelines.evaluation.likelihood`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .cli_utils import (
    INPUT_ERRORS,
    check_output_file,
    check_positive,
    default_device,
    exit_status,
    load_sampling_pipeline,
    sampling_parser,
)
from .evaluation.digits import DIGIT_PCA_COMPONENTS, DigitClassifier, DigitDistribution
from .evaluation.dinov2 import DINOV2_DEFAULT_MODEL, DINOV2_POOLINGS, DinoV2FeatureExtractor
from .evaluation.features import FeatureExtractor, WeightsUnavailableError
from .evaluation.frechet import FeatureStatistics, FrechetDistance, check_enough_samples, check_same_geometry
from .evaluation.inception import INCEPTION_FEATURE_DIMS, InceptionFeatureExtractor
from .evaluation.likelihood import DIVERGENCES, METHODS, image_bits_per_dim
from .evaluation.reference import ReferenceSource, iter_reference, open_reference, reference_indices
from .file_utils import atomic_file
from .guidance import GuidedVelocity, check_guidance_scale
from .hub import update_model_card
from .images import quantize_images
from .visualization import plot_guidance_sweep

FRECHET_METRICS: tuple[str, ...] = ("fid", "fd_dinov2")
DIGIT_METRICS: tuple[str, ...] = ("digit_accuracy", "digit_fd", "digit_precision", "digit_recall")
SAMPLE_METRICS: tuple[str, ...] = (*FRECHET_METRICS, *DIGIT_METRICS)
"""Metrics measured on generated samples (the ones a guidance sweep repeats)."""
METRICS: tuple[str, ...] = (*SAMPLE_METRICS, "bpd")
METRIC_GROUPS: dict[str, tuple[str, ...]] = {"digits": DIGIT_METRICS}
"""Names that stand for several metrics."""
DEPRECATED_METRICS: dict[str, str] = {"digits_accuracy": "digit_accuracy"}
"""Former metric names, still accepted with a FutureWarning: old name -> current name."""
SWEEP_TABLE = "guidance_sweep.json"
SWEEP_PLOT = "guidance_sweep.png"
DEFAULT_STATS_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flow_pipelines" / "reference_stats"
)


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """Validate metric names (order kept, duplicates dropped, groups expanded, former names replaced).

    Args:
        metrics: Requested names.

    Returns:
        The current names, deduplicated.

    Raises:
        ValueError: For an unknown name, listing the known ones and the groups (``digits``).

    Warns:
        FutureWarning: For a former name (see :data:`DEPRECATED_METRICS`), naming its replacement.
    """
    for former in (m for m in metrics if m in DEPRECATED_METRICS):
        warnings.warn(
            f"The metric name {former!r} is deprecated; use {DEPRECATED_METRICS[former]!r}.",
            FutureWarning,
            stacklevel=2,
        )
    metrics = [DEPRECATED_METRICS.get(m, m) for m in metrics]
    metrics = [member for m in metrics for member in METRIC_GROUPS.get(m, (m,))]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(
            f"Unknown metric(s) {', '.join(map(repr, unknown))}; known metrics: {', '.join(METRICS)}, or the group "
            f"{', '.join(METRIC_GROUPS)}."
        )
    if not metrics:
        raise ValueError(f"No metric requested; known metrics: {', '.join(METRICS)}.")
    return list(dict.fromkeys(metrics))


def balanced_labels(num_samples: int, num_classes: int) -> list[int]:
    """Class of each sample, balanced: sample ``i`` gets class ``i mod num_classes``.

    Args:
        num_samples: Number of samples.
        num_classes: Number of classes.

    Returns:
        ``num_samples`` class ids; every class appears ``floor`` or ``ceil`` of ``num_samples / num_classes`` times.
    """
    return [i % num_classes for i in range(num_samples)]


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface.

    Returns:
        The argument parser.
    """
    parser = sampling_parser(
        "python -m flow_pipelines.evaluate",
        "Evaluate a saved FlowPipeline: FID, FD-DINOv2, digit accuracy, bits per dimension.",
        guidance=1.0,
        seed_help="Sample i starts from the noise of seed + i.",
    )
    parser.add_argument(
        "--reference",
        default="sklearn_digits",
        help="Reference images: sklearn_digits, a datasets name or save_to_disk folder, an image folder, or an "
        "ADM .npz batch.",
    )
    parser.add_argument("--reference-split", default="train", help="Split of a reference dataset.")
    parser.add_argument(
        "--num-reference",
        type=int,
        default=None,
        help="Reference images to use (a fixed random subset; default all).",
    )
    parser.add_argument(
        "--resize-reference",
        action="store_true",
        help="Bring reference images to the model's resolution and channels with the training transform.",
    )
    parser.add_argument("--interpolation", default="bilinear", help="Resize filter for --resize-reference.")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["fid"],
        help=f"Any of: {', '.join(METRICS)}; 'digits' is all four digit metrics.",
    )
    parser.add_argument(
        "--guidance-sweep",
        type=float,
        nargs="+",
        default=None,
        metavar="SCALE",
        help="Measure the sample metrics at each of these guidance scales (instead of --guidance) and plot them.",
    )
    parser.add_argument("--num-samples", type=int, default=10_000, help="Images to generate.")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per pipeline call.")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("evaluation"), help="Where metrics.json and samples.npz go."
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace metrics.json and samples.npz in --output-dir."
    )
    parser.add_argument(
        "--update-card", action="store_true", help="Add the results to the model card (README.md) of --model."
    )
    parser.add_argument(
        "--stats-cache", type=Path, default=DEFAULT_STATS_CACHE, help="Reference statistics cache."
    )
    parser.add_argument(
        "--no-stats-cache", action="store_true", help="Neither read nor write cached statistics."
    )
    parser.add_argument(
        "--extractor-batch-size", type=int, default=64, help="Images per feature-extractor call."
    )
    parser.add_argument(
        "--inception-weights",
        default=None,
        help="Local copy of the FID Inception weights (.pth or .safetensors).",
    )
    parser.add_argument(
        "--fid-features",
        type=int,
        choices=INCEPTION_FEATURE_DIMS,
        default=2048,
        help="Inception pool layer for FID (2048 is the standard; the others need fewer samples).",
    )
    parser.add_argument(
        "--dinov2-model", default=DINOV2_DEFAULT_MODEL, help="DINOv2 Hub id or local folder for fd_dinov2."
    )
    parser.add_argument(
        "--dinov2-pooling", choices=DINOV2_POOLINGS, default="cls", help="CLS token (standard) or mean."
    )
    parser.add_argument(
        "--dinov2-resolution", type=int, default=224, help="DINOv2 input side (224 in dgm-eval)."
    )
    parser.add_argument(
        "--bpd-num-images", type=int, default=256, help="Reference images for bits per dimension."
    )
    parser.add_argument(
        "--bpd-steps", type=int, default=32, help="Likelihood ODE steps (fixed-grid methods)."
    )
    parser.add_argument("--bpd-method", choices=METHODS, default="rk4", help="Likelihood ODE solver.")
    parser.add_argument(
        "--bpd-divergence", choices=DIVERGENCES, default="hutchinson", help="Divergence estimator."
    )
    parser.add_argument("--bpd-probes", type=int, default=1, help="Hutchinson probes per evaluation.")
    parser.add_argument(
        "--bpd-sigma-min", type=float, default=1e-5, help="Data-side end of the likelihood ODE."
    )
    parser.add_argument(
        "--bpd-rho",
        type=float,
        default=1.0,
        help="Grid spacing (1 uniform; 3 puts steps near the data, for sharp data).",
    )
    parser.add_argument("--bpd-batch-size", type=int, default=64, help="Images per likelihood solve.")
    parser.add_argument(
        "--bpd-conditional",
        action="store_true",
        help="Conditional likelihood log p(x | y) with the reference labels (and --guidance); default log p(x).",
    )
    return parser


def _output_geometry(pipeline: Any) -> tuple[int, int, int]:
    """(channels, height, width) of the images the pipeline returns."""
    sample_size = pipeline.transformer.config.sample_size
    height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    scale = int(getattr(pipeline, "vae_scale_factor", 1))
    channels = (
        int(pipeline.vae.config.out_channels)
        if pipeline.vae is not None
        else int(pipeline.transformer.config.in_channels)
    )
    return channels, int(height) * scale, int(width) * scale


def build_extractor(metric: str, args: argparse.Namespace, device: torch.device) -> FeatureExtractor:
    """The feature extractor of a Fréchet metric, loaded from the flags.

    Args:
        metric: ``"fid"`` or ``"fd_dinov2"``.
        args: Parsed flags.
        device: Where it runs.

    Returns:
        The extractor on ``device``.

    Raises:
        WeightsUnavailableError: If its weights cannot be loaded.
    """
    if metric == "fid":
        extractor = InceptionFeatureExtractor.from_pretrained(
            args.inception_weights, feature_dim=args.fid_features
        )
    else:
        extractor = DinoV2FeatureExtractor.from_pretrained(
            args.dinov2_model, pooling=args.dinov2_pooling, resolution=args.dinov2_resolution
        )
    return extractor.to(device)


def _cache_path(cache_dir: Path, metric: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"{metric}-{digest}.npz"


@torch.no_grad()
def generate_samples(
    pipeline: Any, num_samples: int, batch_size: int, steps: int, guidance: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw class-balanced samples, each from its own seeded generator, quantised to uint8 once.

    Args:
        pipeline: The `FlowPipeline`.
        num_samples: Images to draw.
        batch_size: Images per pipeline call.
        steps: Sampling steps.
        guidance: Guidance scale.
        seed: Sample ``i`` uses a CPU generator seeded ``seed + i``.

    Returns:
        ``(images uint8 (N, H, W, C), labels int64 (N,))``.
    """
    labels = np.asarray(balanced_labels(num_samples, pipeline.null_class_id), dtype=np.int64)
    batches = []
    for start in tqdm(range(0, num_samples, batch_size), desc="sampling"):
        chunk = labels[start : start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipeline(
            chunk.tolist(),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        ).images
        batches.append(quantize_images(images).permute(0, 2, 3, 1).numpy())
    return np.concatenate(batches), labels


def save_samples(path: Path, images: np.ndarray, labels: np.ndarray, overwrite: bool = True) -> Path:
    """Write samples as the ADM evaluator reads them: ``arr_0`` uint8 NHWC, ``arr_1`` labels (atomically).

    Args:
        path: Target ``.npz``.
        images: uint8 ``(N, H, W, C)``.
        labels: ``(N,)`` class ids.
        overwrite: Replace an existing file (else it is never replaced, even one created meanwhile).

    Returns:
        The path.

    Raises:
        FileExistsError: If ``overwrite`` is False and the file exists when it is published.
    """
    with atomic_file(path, overwrite=overwrite) as handle:
        np.savez(handle, arr_0=images, arr_1=labels)
    return path


def _report_written(path: Path, replaced: bool, detail: str = "") -> None:
    """Say which file was written, and whether it replaced one."""
    print(f"{'replaced' if replaced else 'wrote'} {path}{detail}")


def _record(metric: str, value: float, args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    record = {
        "metric": metric,
        "value": value,
        "num_samples": args.num_samples,
        "scheduler": args.scheduler,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "model": str(args.model),
        "reference": str(args.reference),
    }
    record.update(fields)
    return record


def _read_reference(
    source: ReferenceSource,
    indices: np.ndarray,
    args: argparse.Namespace,
    geometry: tuple[int, int, int],
    resize_to: tuple[int, int] | None,
    description: str,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """Decode the chosen reference images, checking their geometry against the samples' on the first batch."""
    pixels, labels = [], []
    batches = iter_reference(source, indices, args.extractor_batch_size, resize_to, args.interpolation)
    total = math.ceil(len(indices) / args.extractor_batch_size)
    for batch, batch_labels in tqdm(batches, total=total, desc=f"reference ({description})"):
        if not pixels:
            check_same_geometry(geometry, batch.shape[1:])
        pixels.append(batch)
        if batch_labels is not None:
            labels.append(batch_labels)
    return torch.cat(pixels), (np.concatenate(labels) if labels else None)


def _reference_statistics(
    frechet: dict[str, FrechetDistance],
    source: ReferenceSource,
    args: argparse.Namespace,
    geometry: tuple[int, int, int],
    resize_to: tuple[int, int] | None,
) -> None:
    """Give every Fréchet metric its reference statistics: from the cache, or from one pass over the reference."""
    indices = reference_indices(source.num_images, args.num_reference)
    reference_key = {
        "reference": source.identity,
        "num_reference": len(indices),
        "resize": [*resize_to, args.interpolation] if resize_to else None,
    }
    pending = {}
    for metric, distance in frechet.items():
        key = {**reference_key, "extractor": distance.extractor.identifier}
        path = _cache_path(args.stats_cache, metric, key)
        if not args.no_stats_cache and path.is_file():
            statistics = FeatureStatistics.load(path)
            if statistics.metadata.get("key") == key:
                check_same_geometry(geometry, statistics.metadata["image_shape"])
                distance.set_reference_statistics(statistics)
                print(f"{metric}: reference statistics read from {path}")
                continue
        pending[metric] = (key, path)
    if not pending:
        return
    batches = iter_reference(source, indices, args.extractor_batch_size, resize_to, args.interpolation)
    total = math.ceil(len(indices) / args.extractor_batch_size)
    image_shape = None
    for pixels, _ in tqdm(batches, total=total, desc="reference"):
        if image_shape is None:
            image_shape = list(pixels.shape[1:])
            check_same_geometry(geometry, image_shape)
        for metric in pending:
            frechet[metric].update(pixels, real=True, description="reference")
    for metric, (key, path) in pending.items():
        distance = frechet[metric]
        check_enough_samples(distance.num_reference, distance.num_features, f"reference images for {metric}")
        statistics = distance.reference_statistics(key=key, image_shape=image_shape)
        if not args.no_stats_cache:
            statistics.save(path)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the evaluation: check everything, read the reference, sample, score, write JSON (and npz).

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The metric records written to ``metrics.json``.

    Raises:
        ValueError: For an unknown metric, non-positive counts, too few samples or reference images for the
            feature dimension, reference and samples of different resolution or channels, digit accuracy on a
            model without 10 classes, bits per dimension on a latent (VAE) model, or results that exist in
            ``--output-dir`` (without ``--overwrite``).
        WeightsUnavailableError: If a feature extractor's weights cannot be fetched.
    """
    args = build_parser().parse_args(argv)
    metrics = check_metrics(args.metrics)
    sample_metrics = [m for m in metrics if m in SAMPLE_METRICS]
    guidances = _guidance_scales(args, bool(sample_metrics))
    sweep = args.guidance_sweep is not None
    sample_files = {g: args.output_dir / _samples_name(g, sweep) for g in guidances} if sample_metrics else {}
    outputs = [args.output_dir / "metrics.json", *sample_files.values()]
    if sweep:
        outputs += [args.output_dir / SWEEP_TABLE, args.output_dir / SWEEP_PLOT]
    for output in outputs:
        check_output_file(output, args.overwrite, "--output-dir")
    if args.update_card and not (Path(args.model) / "README.md").is_file():
        raise ValueError(f"--update-card: {args.model}/README.md does not exist; there is no card to update.")
    counts = ("num_samples", "batch_size", "steps", "num_reference", "extractor_batch_size")
    check_positive(args, *counts, "bpd_num_images", "bpd_steps", "bpd_probes", "bpd_batch_size")
    if not 0.0 <= args.bpd_sigma_min < 1.0:
        raise ValueError(f"--bpd-sigma-min {args.bpd_sigma_min} must lie in [0, 1).")
    if args.bpd_rho < 1.0:
        raise ValueError(f"--bpd-rho {args.bpd_rho} must be >= 1 (1 is a uniform grid).")
    device = default_device(args.device)

    pipeline = load_sampling_pipeline(args)
    pipeline.set_progress_bar_config(disable=True)
    geometry = _output_geometry(pipeline)
    digit_metrics = [m for m in metrics if m in DIGIT_METRICS]
    if digit_metrics and pipeline.null_class_id != 10:
        raise ValueError(
            f"{', '.join(digit_metrics)} need{'s' if len(digit_metrics) == 1 else ''} a 10-class digit model; this "
            f"one has {pipeline.null_class_id} classes."
        )
    if "bpd" in metrics and pipeline.vae is not None:
        raise ValueError(
            "bpd is defined for pixel-space models; this pipeline has a VAE (its likelihood is of latents)."
        )

    # Everything that can fail cheaply fails before reading the reference or sampling.
    digits = _digit_scorers(digit_metrics, geometry, args)
    frechet: dict[str, FrechetDistance] = {}
    for metric in (m for m in metrics if m in FRECHET_METRICS):
        extractor = build_extractor(metric, args, device)
        frechet[metric] = FrechetDistance(extractor, batch_size=args.extractor_batch_size, device=device)
        check_enough_samples(
            args.num_samples, extractor.num_features, f"samples (--num-samples) for {metric}"
        )
        if args.num_reference is not None:
            check_enough_samples(args.num_reference, extractor.num_features, f"reference images for {metric}")

    source = open_reference(args.reference, args.reference_split) if frechet or "bpd" in metrics else None
    if args.resize_reference and geometry[1] != geometry[2]:
        raise ValueError(
            f"--resize-reference makes square images; the model's are {geometry[1]}x{geometry[2]}."
        )
    resize_to = (geometry[1], geometry[0]) if args.resize_reference else None
    if frechet:
        _reference_statistics(frechet, source, args, geometry, resize_to)
    if "bpd" in metrics:
        bpd_indices = reference_indices(source.num_images, min(args.bpd_num_images, source.num_images))
        bpd_pixels, bpd_labels = _read_reference(source, bpd_indices, args, geometry, resize_to, "bpd images")

    records: list[dict[str, Any]] = []
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for guidance, samples_path in sample_files.items():
        images, labels = generate_samples(
            pipeline, args.num_samples, args.batch_size, args.steps, guidance, args.seed
        )
        replaced = samples_path.exists()
        save_samples(samples_path, images, labels, overwrite=args.overwrite)
        _report_written(
            samples_path, replaced, f" ({len(images)} samples{f', guidance {guidance:g}' if sweep else ''})"
        )
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        for metric, distance in frechet.items():
            distance.reset_generated()
            distance.update(pixels, real=False, description=f"generated, guidance {guidance:g}")
            records.append(
                _record(
                    metric,
                    distance.compute(),
                    args,
                    guidance=guidance,
                    num_reference=distance.num_reference,
                    protocol=distance.extractor.protocol,
                    extractor=distance.extractor.identifier,
                )
            )
        if digits is not None:
            records += _digit_records(digit_metrics, *digits, pixels, labels, guidance, args)

    if "bpd" in metrics:
        records.append(_bpd_record(pipeline, bpd_pixels, bpd_labels, args, device))

    metrics_path = args.output_dir / "metrics.json"
    replaced = metrics_path.exists()
    with atomic_file(metrics_path, overwrite=args.overwrite) as handle:
        handle.write(json.dumps(records, indent=2).encode())
    for record in records:
        setting = (
            f" (guidance {record['guidance']:g})" if sweep and record["metric"] in SAMPLE_METRICS else ""
        )
        print(f"{record['metric']:>16}: {record['value']:.6g}{setting}")
    _report_written(metrics_path, replaced)
    if sweep:
        _write_sweep(records, sample_metrics, args)
    if args.update_card:
        _report_written(update_model_card(args.model, results=records), replaced=True, detail=" (results)")
    return records


def _guidance_scales(args: argparse.Namespace, draws_samples: bool) -> list[float]:
    """The guidance scales to sample at: the sweep's (sorted, each once) or ``--guidance``."""
    if args.guidance_sweep is None:
        return [check_guidance_scale(args.guidance)]
    if not draws_samples:
        raise ValueError(
            f"--guidance-sweep repeats the sample metrics ({', '.join(SAMPLE_METRICS)}); none is requested."
        )
    if len(args.guidance_sweep) < 2:
        raise ValueError(
            f"--guidance-sweep {args.guidance_sweep[0]:g} is one scale; a sweep takes two or more."
        )
    return sorted({check_guidance_scale(g) for g in args.guidance_sweep})


def _samples_name(guidance: float, sweep: bool) -> str:
    return f"samples-guidance-{guidance:g}.npz" if sweep else "samples.npz"


def _digit_scorers(
    digit_metrics: Sequence[str], geometry: tuple[int, int, int], args: argparse.Namespace
) -> tuple[DigitClassifier | None, DigitDistribution | None] | None:
    """The classifier and the feature space the digit metrics need (None when none is requested)."""
    if not digit_metrics:
        return None
    if geometry[1] != geometry[2]:
        raise ValueError(
            f"The digit metrics take square images; the model's are {geometry[1]}x{geometry[2]}."
        )
    classifier = DigitClassifier.fit() if "digit_accuracy" in digit_metrics else None
    distribution = None
    if set(digit_metrics) - {"digit_accuracy"}:
        distribution = DigitDistribution(geometry[1], args.interpolation)
        compared = min(args.num_samples, distribution.max_balanced_samples)
        check_enough_samples(compared, DIGIT_PCA_COMPONENTS, "samples (--num-samples) for the digit FD")
    return classifier, distribution


def _digit_records(
    digit_metrics: Sequence[str],
    classifier: DigitClassifier | None,
    distribution: DigitDistribution | None,
    pixels: torch.Tensor,
    labels: np.ndarray,
    guidance: float,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Records of the requested digit metrics for one set of samples."""
    images = pixels.float() / 255.0
    records = []
    if classifier is not None:
        records.append(_digit_accuracy_record(classifier, images, labels, guidance, args))
    if distribution is None:
        return records
    # The first samples are balanced over the digits (sample i has class i mod 10); the floor matches them.
    compared = min(len(labels), distribution.max_balanced_samples)
    report = distribution.compare(images[:compared], labels[:compared]).as_dict()
    common = {
        "guidance": guidance,
        "num_samples": report["num_samples"],
        "num_reference": report["num_reference"],
        "protocol": f"uint8 samples area-averaged to 8x8 grey, {DIGIT_PCA_COMPONENTS}-component PCA of real digits; "
        "reference: half of the digits, floor: the other half at the same size and class counts",
        "extractor": "PCA of scikit-learn's digits (flow_pipelines.evaluation.digits.DigitDistribution)",
    }
    if "digit_fd" in digit_metrics:
        fields = {"fd_floor": report["fd_floor"], "fd_ratio": report["fd_ratio"]}
        records.append(_record("digit_fd", report["fd"], args, **common, **fields))
    for name in ("precision", "recall"):
        if f"digit_{name}" in digit_metrics:
            floor = {"floor": report[f"{name}_floor"], "k": distribution.k}
            records.append(_record(f"digit_{name}", report[name], args, **common, **floor))
    return records


def sweep_table(
    records: Sequence[dict[str, Any]], metrics: Sequence[str]
) -> tuple[list[dict[str, float]], dict]:
    """The rows of a guidance sweep (one per scale) and where real data stands, from the metric records.

    Args:
        records: The records of :func:`main` (each with its ``guidance``).
        metrics: The sample metrics measured.

    Returns:
        ``(rows, floors)``: ``rows`` hold ``guidance`` and one value per metric (the digit FD as
        ``digit_fd_ratio``, its ratio to the real-vs-real floor); ``floors`` the real-data value of the columns
        that have one.
    """
    rows: dict[float, dict[str, float]] = {}
    floors: dict[str, float] = {}
    for record in records:
        if record["metric"] not in metrics:
            continue
        row = rows.setdefault(record["guidance"], {"guidance": record["guidance"]})
        if record["metric"] == "digit_fd":
            row["digit_fd_ratio"] = record["fd_ratio"]
            floors["digit_fd_ratio"] = 1.0
        else:
            row[record["metric"]] = record["value"]
        if "floor" in record:
            floors[record["metric"]] = record["floor"]
        if record["metric"] == "digit_accuracy":
            floors["digit_accuracy"] = record["classifier_roundtrip_accuracy"]
    return [rows[g] for g in sorted(rows)], floors


def _write_sweep(records: Sequence[dict[str, Any]], metrics: Sequence[str], args: argparse.Namespace) -> None:
    """Write the sweep's table (JSON) and plot (PNG) and print the table."""
    rows, floors = sweep_table(records, metrics)
    setting = {
        "model": str(args.model),
        "scheduler": args.scheduler,
        "steps": args.steps,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }
    table_path, plot_path = args.output_dir / SWEEP_TABLE, args.output_dir / SWEEP_PLOT
    title = f"{'/'.join(Path(str(args.model)).parts[-2:])}: {args.scheduler}, {args.steps} steps, {args.num_samples} samples"
    plot = plot_guidance_sweep(rows, floors, title)
    for path, write in (
        (
            table_path,
            lambda handle: handle.write(
                json.dumps({**setting, "floors": floors, "rows": rows}, indent=2).encode()
            ),
        ),
        (plot_path, lambda handle: plot.save(handle, format="PNG")),
    ):
        replaced = path.exists()
        with atomic_file(path, overwrite=args.overwrite) as handle:
            write(handle)
        _report_written(path, replaced)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |")
    print(
        "| real data | " + " | ".join(f"{floors[c]:.4g}" if c in floors else "" for c in columns[1:]) + " |"
    )


def _digit_accuracy_record(
    classifier: DigitClassifier,
    images: torch.Tensor,
    labels: np.ndarray,
    guidance: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    correct = classifier.predict(images) == labels
    per_class = [float(correct[labels == digit].mean()) for digit in range(10) if (labels == digit).any()]
    return _record(
        "digit_accuracy",
        float(correct.mean()),
        args,
        guidance=guidance,
        per_class_min_accuracy=min(per_class),
        classifier_heldout_accuracy=classifier.heldout_accuracy,
        classifier_roundtrip_accuracy=classifier.roundtrip_accuracy(images.shape[-1], args.interpolation),
        protocol="uint8 samples area-averaged to 8x8 grey, read by an RBF SVM fitted on real digits; share read as "
        "the class requested",
        extractor="sklearn SVC (flow_pipelines.evaluation.digits)",
    )


def _bpd_record(
    pipeline: Any,
    pixels: torch.Tensor,
    labels: np.ndarray | None,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    class_labels = None
    if args.bpd_conditional:
        if labels is None:
            raise ValueError("--bpd-conditional needs reference labels; the reference has none.")
        class_labels = torch.from_numpy(labels).long()
    guidance = args.guidance if args.bpd_conditional else 1.0
    velocity = GuidedVelocity(pipeline.transformer, class_labels=class_labels, guidance_scale=guidance)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    # The solver's settings, passed to it and recorded with the figure.
    solver = {
        "divergence": args.bpd_divergence,
        "num_probes": args.bpd_probes,
        "sigma_min": args.bpd_sigma_min,
        "rho": args.bpd_rho,
    }
    result = image_bits_per_dim(
        velocity,
        pixels,
        batch_size=args.bpd_batch_size,
        generator=generator,
        device=device,
        class_labels=class_labels,
        num_steps=args.bpd_steps,
        method=args.bpd_method,
        **solver,
    )
    record = _record(
        "bpd",
        result.bits_per_dim,
        args,
        num_samples=len(pixels),
        scheduler=f"likelihood-ode-{args.bpd_method}",
        steps=args.bpd_steps,
        guidance=args.guidance if args.bpd_conditional else None,
        standard_error=result.standard_error,
        num_function_evals=result.num_function_evals,
        conditional=bool(args.bpd_conditional),
        protocol="reference pixels k -> k/127.5 - 1, uniform dequantisation, probability-flow ODE from sigma_min to 1, "
        "bpd = -log p / (D ln 2) + log2(127.5)",
        extractor=None,
        **solver,
    )
    return record


def cli(argv: Sequence[str] | None = None) -> int:
    """The command: :func:`main`, with bad input and unfetchable weights reported as one line on stderr.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The exit status: 0 on success, 2 after an ``error: ...`` message (as for every command of the package,
        see :mod:`flow_pipelines.cli_utils`).
    """
    return exit_status(main, argv, (*INPUT_ERRORS, WeightsUnavailableError))


if __name__ == "__main__":
    sys.exit(cli())
