"""Figures: image grids for files and for notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from einops import rearrange
from PIL import Image

from minildm.data.images import float_to_uint8


def image_grid(images: torch.Tensor, ncols: int = 8, padding: int = 1) -> torch.Tensor:
    """Tile a batch (B, 3, H, W) in [-1, 1] into one uint8 image (H', W', 3), white gaps."""
    count = len(images)
    nrows = -(-count // ncols)  # ceiling division
    blank = torch.ones(nrows * ncols - count, *images.shape[1:])
    tiles = torch.cat([images.detach().cpu().float(), blank])
    tiles = torch.nn.functional.pad(tiles, (padding,) * 4, value=1.0)
    grid = rearrange(tiles, "(rows cols) c h w -> (rows h) (cols w) c", cols=ncols)
    return float_to_uint8(grid)


def part_map_image(part_maps: torch.Tensor, parts: int) -> torch.Tensor:
    """Part maps, integer (B, H, W), as images (B, 3, H, W) in [-1, 1]: one colour of
    matplotlib's ``tab20`` per part, to show a map beside what was drawn from it."""
    palette = torch.tensor(plt.get_cmap("tab20").colors[:parts], dtype=torch.float32) * 2 - 1  # (P, 3)
    return rearrange(palette[part_maps.long()], "b h w c -> b c h w")


def save_grid(images: torch.Tensor, path: str | Path, ncols: int = 8, scale: int = 1) -> Path:
    """Write a grid of images (B, 3, H, W) in [-1, 1] as a PNG, enlarged ``scale`` times."""
    grid = Image.fromarray(image_grid(images, ncols).numpy())
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def show_grid(images: torch.Tensor, ncols: int = 8, title: str | None = None, size: float = 8.0,
              row_labels: Sequence[str] | None = None) -> None:
    """Show a grid of images (B, 3, H, W) in [-1, 1] in a notebook; ``row_labels`` names each
    row at its left (short labels keep the grid wide, where a long title would squeeze it)."""
    rows = -(-len(images) // ncols)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for a grid of {rows} rows")
    grid = image_grid(images, ncols)
    figure, axes = plt.subplots(figsize=(size, size * grid.shape[0] / grid.shape[1]))
    axes.imshow(grid.numpy(), interpolation="nearest")
    axes.set_axis_off()
    if row_labels is not None:
        tile = grid.shape[0] / rows  # rows of equal height, gaps included
        axes.set_axis_on()
        axes.set_xticks([])
        axes.set_yticks([tile * (row + 0.5) - 0.5 for row in range(len(row_labels))], labels=list(row_labels))
        axes.tick_params(left=False)
        axes.spines[:].set_visible(False)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    plt.show()
