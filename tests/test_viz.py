"""Image grids: tiles in order with white gaps, and row labels centred on their rows."""

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from minildm.viz import image_grid, show_grid

matplotlib.use("Agg")


def test_the_grid_tiles_images_in_reading_order_with_white_gaps():
    images = torch.stack([torch.full((3, 4, 4), value) for value in (-1.0, 0.0, 1.0)])  # black, grey, white
    grid = image_grid(images, ncols=2)  # 2 rows of 6 px: 4 px tiles and a 1 px gap on each side
    assert grid.shape == (12, 12, 3)
    assert grid[0].eq(255).all() and grid[1:5, 1:5].eq(0).all()  # a gap, then the black tile
    assert grid[1:5, 7:11].eq(128).all() and grid[7:11, 1:5].eq(255).all()
    assert grid[7:11, 7:11].eq(255).all()  # the empty place is white


def test_row_labels_sit_at_the_centre_of_their_rows(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda: None)
    show_grid(torch.zeros(6, 3, 8, 8), ncols=3, row_labels=["DDPM", "DDIM 50"])
    axes = plt.gcf().axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["DDPM", "DDIM 50"]
    assert list(axes.get_yticks()) == [4.5, 14.5]  # rows of 10 px (8 + two gaps), pixel centres
    plt.close("all")
    with pytest.raises(ValueError, match="3 row labels for a grid of 2 rows"):
        show_grid(torch.zeros(6, 3, 8, 8), ncols=3, row_labels=["a", "b", "c"])
