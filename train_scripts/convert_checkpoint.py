"""Convert pretrained DiT weights into a ``flow_pipelines.DiTModel`` folder (safetensors).

Examples::

    # SiT's released XL/2 (SiT-XL-2-256x256.pt from willisma/SiT, a plain state dict: linear path, velocity):
    # a velocity model on the reversed linear path, called with t itself. The training checkpoints of SiT's
    # train.py (results/.../checkpoints/0400000.pt) carry their path and prediction, which are honoured.
    python train_scripts/convert_checkpoint.py --source sit --checkpoint SiT-XL-2-256x256.pt \\
        --output_dir sit-xl-2-256 --preset SiT-XL/2

    # Original DiT (DDPM epsilon + learned variance): forward parity with the original, DDPM timesteps.
    python train_scripts/convert_checkpoint.py --source dit --checkpoint DiT-XL-2-256x256.pt --output_dir dit-xl-2-256

    # diffusers' DiTTransformer2DModel folder (or a DiTPipeline folder with a transformer/ subfolder), e.g. a
    # local copy of facebook/DiT-XL-2-256 (huggingface-cli download facebook/DiT-XL-2-256 --local-dir DiT-XL-2-256).
    python train_scripts/convert_checkpoint.py --source diffusers --checkpoint DiT-XL-2-256 --output_dir dit-xl-2-256

Every converted model reproduces its source's output from the same time input; its config records what it was
trained for (path, time scale, prediction type), through which ``FlowPipeline`` samples it with every flow
scheduler. What was read from the checkpoint, or assumed for one without training args, is printed; what cannot
be converted faithfully is refused with the reason. Only ``config.json`` and the weights are written into
``--output_dir`` (an existing folder keeps everything else, the checkpoint too). Load the result with
``DiTModel.from_pretrained(output_dir)``.

Bad input ends with one ``error: ...`` line on stderr and exit status 2 (see ``flow_pipelines.cli_utils``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from flow_pipelines import DiTModel
from flow_pipelines.cli_utils import exit_status
from flow_pipelines.models.conversion import SOURCES, TIME_CONVENTIONS, convert_checkpoint

# What the conversion reads from a checkpoint or assumes is logged here, at INFO level.
CONVERSION_LOGGER = "flow_pipelines.models"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, choices=SOURCES, help="Kind of checkpoint to convert.")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="The .pt file (dit, sit) or the saved diffusers folder (diffusers).",
    )
    parser.add_argument("--output_dir", required=True, help="Folder to write the converted DiTModel to.")
    parser.add_argument(
        "--preset",
        default=None,
        help="dit / sit: preset name such as DiT-XL/2 or SiT-XL/2; checks the shapes and gives the head count.",
    )
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        default=None,
        help="dit / sit: head count, needed only for widths other than the paper's (384, 768, 1024, 1152).",
    )
    parser.add_argument(
        "--time_convention",
        default=None,
        choices=tuple(TIME_CONVENTIONS),
        help="diffusers only: what the weights were trained for (default ddpm, as diffusers' DiT pipelines).",
    )
    parser.add_argument(
        "--no_verify", action="store_true", help="diffusers only: skip comparing both models' outputs."
    )
    return parser.parse_args(argv)


class _PrintedNotes(logging.Handler):
    """Prints log records as plain lines on the current ``sys.stdout``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record))


def _print_conversion_notes() -> None:
    """Print what the conversion reads or assumes (its INFO log) on stdout; once, however often main runs."""
    logger = logging.getLogger(CONVERSION_LOGGER)
    logger.setLevel(logging.INFO)
    if not any(handler.get_name() == _PrintedNotes.__name__ for handler in logger.handlers):
        handler = _PrintedNotes()
        handler.set_name(_PrintedNotes.__name__)
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> DiTModel:
    """Run the conversion, printing what it read or assumed, then a summary.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The converted model.

    Raises:
        ValueError: For a checkpoint that is missing, unreadable or cannot be converted faithfully, options that do
            not apply to the source, or an ``--output_dir`` that is a file or would replace the checkpoint.
    """
    args = parse_args(argv)
    _print_conversion_notes()
    model = convert_checkpoint(
        args.source,
        args.checkpoint,
        args.output_dir,
        preset=args.preset,
        num_attention_heads=args.num_attention_heads,
        time_convention=args.time_convention,
        verify=not args.no_verify,
    )
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"Wrote {args.output_dir}: DiTModel {config.hidden_size} wide, {config.num_layers} blocks, "
        f"{config.num_attention_heads} heads, patch {config.patch_size}, {parameters / 1e6:.1f}M parameters, "
        f"path={config.path!r} {config.path_kwargs or {}}, time scale {config.num_train_timesteps}, "
        f"prediction_type={config.prediction_type!r}."
    )
    return model


def run(argv: list[str] | None = None) -> int:
    """Entry point of the script: `main`, with bad input reported as one ``error: ...`` line on stderr.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input (see ``flow_pipelines.cli_utils``).
    """
    return exit_status(main, argv)


if __name__ == "__main__":
    sys.exit(run())
