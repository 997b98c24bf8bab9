"""Pictures of results: image grids with a text label per row (one row per class), guidance-sweep plots."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def _upscale_factor(width: int, height: int, min_cell_size: int) -> int:
    """Smallest integer factor that makes the shorter side of a cell at least ``min_cell_size`` pixels."""
    shorter = max(1, min(width, height))
    return max(1, -(-min_cell_size // shorter))


def make_labelled_grid(
    images_per_row: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    min_cell_size: int = 64,
    padding: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
    text_color: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Arrange images in rows, each row headed by a text label on its left.

    Tiny images (digits are 8x8) are enlarged by an integer factor with nearest-neighbour sampling, so
    that pixels stay sharp and the shorter cell side is at least ``min_cell_size``. Grayscale images are
    shown as gray; all cells take the size of the first image (others are resized to it).

    Args:
        images_per_row: One list of PIL images per row; rows may have different lengths.
        row_labels: One label per row, drawn with PIL's default font.
        min_cell_size: Smallest side, in pixels, of a cell after upscaling (no downscaling is done).
        padding: Pixels between cells and around the grid.
        background: RGB colour of the margins.
        text_color: RGB colour of the labels.

    Returns:
        The grid as an RGB image.

    Raises:
        ValueError: If there are no rows or images, the number of labels differs from the number of
            rows, or ``min_cell_size`` / ``padding`` is negative.
    """
    if len(images_per_row) == 0 or not any(len(row) for row in images_per_row):
        raise ValueError("images_per_row is empty; pass at least one row with at least one image.")
    if len(row_labels) != len(images_per_row):
        raise ValueError(
            f"got {len(row_labels)} row labels for {len(images_per_row)} rows; pass one label per row."
        )
    if min_cell_size < 0 or padding < 0:
        raise ValueError(f"min_cell_size={min_cell_size} and padding={padding} must be >= 0.")

    first = next(image for row in images_per_row for image in row)
    factor = _upscale_factor(first.width, first.height, min_cell_size)
    cell_width, cell_height = first.width * factor, first.height * factor

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.textbbox((0, 0), str(label), font=font) for label in row_labels]
    label_width = max((box[2] - box[0] for box in boxes), default=0)
    label_width = label_width + 2 * padding if label_width else 0

    columns = max(len(row) for row in images_per_row)
    width = label_width + padding + columns * (cell_width + padding)
    height = padding + len(images_per_row) * (cell_height + padding)
    grid = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(grid)

    for row_index, (row, label, box) in enumerate(zip(images_per_row, row_labels, boxes, strict=True)):
        top = padding + row_index * (cell_height + padding)
        text_height = box[3] - box[1]
        draw.text(
            (padding, top + (cell_height - text_height) // 2 - box[1]), str(label), fill=text_color, font=font
        )
        for column_index, image in enumerate(row):
            cell = image.convert("RGB").resize((cell_width, cell_height), Image.Resampling.NEAREST)
            grid.paste(cell, (label_width + padding + column_index * (cell_width + padding), top))
    return grid


SWEEP_TITLES: dict[str, str] = {
    "digit_accuracy": "digit accuracy",
    "digit_fd_ratio": "FD / real-vs-real floor",
    "digit_precision": "precision",
    "digit_recall": "recall",
    "fid": "FID",
    "fd_dinov2": "FD-DINOv2",
}
"""Panel titles of :func:`plot_guidance_sweep` by column (other columns are titled by their name)."""


def plot_guidance_sweep(
    rows: Sequence[dict[str, float]],
    floors: dict[str, float] | None = None,
    title: str = "",
) -> Image.Image:
    """Every figure of a guidance sweep against the guidance scale, one panel per figure.

    Args:
        rows: One dictionary per guidance scale: ``guidance`` and a value per figure (the same figures in each).
        floors: Where real data stands for some figures (drawn as a dashed line in their panels).
        title: Heading over the panels (the model and sampler, say).

    Returns:
        The plot as an RGB image (save it as PNG).

    Raises:
        ValueError: If there are no rows or no figures besides ``guidance``.
    """
    import io

    # A bare Figure draws with Agg and leaves pyplot's global state (and any backend the user chose) alone.
    from matplotlib.figure import Figure

    columns = [key for key in (rows[0] if rows else {}) if key != "guidance"]
    if not columns:
        raise ValueError("A guidance sweep plot needs at least one row with a figure besides 'guidance'.")
    floors = floors or {}
    guidance = [row["guidance"] for row in rows]
    figure = Figure(figsize=(3.2 * len(columns), 3.0))
    axes = figure.subplots(1, len(columns), squeeze=False)
    for axis, column in zip(axes[0], columns, strict=True):
        axis.plot(guidance, [row[column] for row in rows], marker="o", label="samples")
        if column in floors:
            axis.axhline(floors[column], linestyle="--", color="grey", label="real data")
            axis.legend(fontsize="small")
        axis.set_title(SWEEP_TITLES.get(column, column), fontsize="medium")
        axis.set_xlabel("guidance scale")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
