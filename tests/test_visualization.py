"""Labelled image grids: one row per class, cells upscaled with nearest neighbour, a text label per row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flow_pipelines.visualization import make_labelled_grid


def test_labelled_grid_layout():
    rows = [[Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)], [Image.new("L", (8, 8), 128)]]
    grid = make_labelled_grid(rows, ["zero", "a longer label"], min_cell_size=64, padding=2)
    assert grid.mode == "RGB"
    label_width = grid.width - 2 - 2 * (64 + 2)
    assert label_width > 20  # room for the text
    assert grid.height == 2 + 2 * (64 + 2)
    pixels = np.asarray(grid)
    # Cells are upscaled 8x with nearest neighbour: uniform blocks of the source values.
    first_cell = pixels[2 : 2 + 64, label_width + 2 : label_width + 2 + 64]
    second_cell = pixels[2 : 2 + 64, label_width + 2 + 66 : label_width + 2 + 66 + 64]
    assert (first_cell == 0).all() and (second_cell == 255).all()
    assert (pixels[68 : 68 + 64, label_width + 2 : label_width + 66] == 128).all()
    assert (pixels[68 : 68 + 64, label_width + 68 :] == 255).all()  # the short row leaves background
    label_area = pixels[:, :label_width]
    assert (label_area < 128).any() and (label_area == 255).any()  # dark text drawn on the light margin
    with pytest.raises(ValueError, match="got 1 row labels for 2 rows"):
        make_labelled_grid(rows, ["only one"])
    with pytest.raises(ValueError, match="images_per_row is empty"):
        make_labelled_grid([], [])
