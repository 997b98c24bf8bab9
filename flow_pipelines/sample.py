"""Sample a labelled image grid from a saved `FlowPipeline`: one row per class.

Example (the pipeline that ``accelerate launch train_scripts/train_flow.py`` leaves)::

    python -m flow_pipelines.sample --model outputs/digits/pipeline --class-labels 3 7 -1 --steps 30 \\
        --guidance 4 --scheduler heun --seed 0 --batch-size 8 --out grid.png

``--class-labels`` takes class ids, class names (from the pipeline's ``id2label``) or ``-1`` for a
random class. Column ``k`` of every row starts from the same noise (seed ``seed + k``).

The grid is written atomically (aside, then renamed into place). An existing ``--out`` is refused before any
work unless ``--overwrite`` is given. Bad input ends with one ``error: ...`` line and exit status 2 (see
:mod:`flow_pipelines.cli_utils`).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .cli_utils import check_output_file, check_positive, exit_status, load_sampling_pipeline, sampling_parser
from .file_utils import atomic_file
from .visualization import make_labelled_grid

RANDOM_CLASS = -1
DESCRIPTION = "Sample a labelled grid (one row per class) from a saved FlowPipeline."


def build_parser() -> argparse.ArgumentParser:
    """The sample command's flags: those of every sampling command, then the labels and the grid's own.

    Returns:
        The argument parser.
    """
    seed_help = "Column k starts from the noise of seed + k."
    parser = sampling_parser(
        "python -m flow_pipelines.sample", DESCRIPTION, guidance=4.0, seed_help=seed_help
    )
    parser.add_argument(
        "--class-labels",
        nargs="+",
        default=["-1"],
        help="Class ids, class names, or -1 for a random class; one grid row each.",
    )
    parser.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="Guide only for noise levels LOW <= sigma <= HIGH (1 = noise).",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="Images per class (grid columns).")
    parser.add_argument(
        "--out", type=Path, default=Path("grid.png"), help="Where to write the grid (PNG, or by its suffix)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    parser.add_argument(
        "--min-cell-size", type=int, default=64, help="Upscale images to at least this many pixels."
    )
    return parser


def _parse_labels(values: Sequence[str], num_classes: int, seed: int) -> list[int | str]:
    """Integers stay ids (-1 becomes a random class drawn from ``seed``); anything else is a class name."""
    rng = random.Random(seed)
    labels: list[int | str] = []
    for value in values:
        try:
            number = int(value)
        except ValueError:
            labels.append(value)
            continue
        labels.append(rng.randrange(num_classes) if number == RANDOM_CLASS else number)
    return labels


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the command line: load the pipeline, sample, write the grid.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: For a non-positive ``--steps`` or ``--batch-size``, an unknown class name or an
            out-of-range id, a model folder that lacks files or holds broken ones, an ``--out`` that exists
            (without ``--overwrite``) or whose suffix names no image format.
    """
    args = build_parser().parse_args(argv)
    check_positive(args, "batch_size", "steps")
    image_format = _image_format(args.out)
    check_output_file(args.out, args.overwrite, "--out")
    pipeline = load_sampling_pipeline(args)

    labels = _parse_labels(args.class_labels, pipeline.null_class_id, args.seed)
    class_ids = pipeline.label_ids(labels)  # validates names and ranges before sampling
    names = pipeline.id2label
    row_labels = [names.get(class_id, str(class_id)) for class_id in class_ids]

    batch_labels = [class_id for class_id in class_ids for _ in range(args.batch_size)]
    generators = [
        torch.Generator(device="cpu").manual_seed(args.seed + column)
        for _ in class_ids
        for column in range(args.batch_size)
    ]
    images = pipeline(
        batch_labels,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
        generator=generators,
    ).images
    rows = [images[row * args.batch_size : (row + 1) * args.batch_size] for row in range(len(class_ids))]
    grid = make_labelled_grid(rows, row_labels, min_cell_size=args.min_cell_size)
    replaced = args.out.exists()
    with atomic_file(args.out, overwrite=args.overwrite) as handle:
        grid.save(handle, format=image_format)
    print(
        f"{'replaced' if replaced else 'wrote'} {args.out}: {len(class_ids)} classes x {args.batch_size} images, "
        f"{type(pipeline.scheduler).__name__}, {args.steps} steps, guidance {args.guidance:g}"
    )
    return args.out


def _image_format(path: Path) -> str:
    """The PIL format a file name's suffix asks for (``PNG`` for ``.png``)."""
    formats = Image.registered_extensions()
    image_format = formats.get(path.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise ValueError(
            f"--out {str(path)!r} has no image suffix to write; allowed: .png (or another format PIL writes, "
            "such as .jpg or .webp)."
        )
    return image_format


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flow_pipelines.sample``: `main`, with bad input reported as one line.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The exit status: 0 on success, 2 for bad input (after printing ``error: ...`` to stderr).
    """
    return exit_status(main, argv)


if __name__ == "__main__":
    sys.exit(run())
