"""The inputs of semantic synthesis and layout-to-image on the command line, read and checked.

- A **part map** (``sample --map FILE``) is a grayscale PNG whose pixel values are part
  indices: 0 background, 1 skin, ... (``minildm.data.toyface_parts.PARTS``). It is square, at
  the size to draw: the model's training size times ``--scale``. :func:`write_part_map` writes
  one from a map tensor, e.g. a toy face's.
- A **layout** (``sample --layout``) is a JSON object, given inline or as a file: part name ->
  box [x0, y0, x1, y1], the box's edges as fractions of the image's width and height.

Each mistake (a missing file, an RGB image, a wrong size, an unknown part, a box outside the
image) is one line that says what to give instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from minildm.config import MinildmError
from minildm.conditioning import layout_tensor
from minildm.data.images import UNREADABLE_ERRORS, NotRegularFile, open_image

MAP_MODES = ("L", "P")  # grayscale, or a palette image: the stored value is the part index


def write_part_map(part_map: Tensor, path: str | Path) -> Path:
    """A part map, integer (H, W), as a grayscale PNG of its indices."""
    path = Path(path)
    Image.fromarray(part_map.to(torch.uint8).numpy(), mode="L").save(path)
    return path


def read_part_map(path: Path, part_names: list[str], size: int) -> Tensor:
    """The part map in the PNG ``path``, uint8 (1, size, size) of indices into ``part_names``."""
    try:
        image = open_image(path)
    except FileNotFoundError:
        raise MinildmError(f"--map: no such file: {path}") from None
    except NotRegularFile:
        raise MinildmError(f"--map: {path} is not a regular file: give a PNG file") from None
    except UNREADABLE_ERRORS as error:
        raise MinildmError(f"--map: cannot read {path} as an image ({type(error).__name__})") from None
    if image.mode not in MAP_MODES:
        raise MinildmError(f"--map: {path} is a {image.mode} image: a part map is a grayscale PNG whose values are "
                           f"part indices (0 {part_names[0]} to {len(part_names) - 1} {part_names[-1]})")
    if image.size != (size, size):
        raise MinildmError(f"--map: {path} is {image.size[0]} x {image.size[1]} px: this model at this --scale "
                           f"draws {size} x {size} px, so give a map of that size")
    indices = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    if int(indices.max()) >= len(part_names):
        row, column = divmod(int(indices.flatten().argmax()), size)
        raise MinildmError(f"--map: {path} holds the unknown part {int(indices.max())} at x = {column}, y = {row}: "
                           f"the parts are 0 to {len(part_names) - 1} ({', '.join(part_names)})")
    return indices[None]


def read_layout(value: str, part_names: list[str]) -> Tensor:
    """The layout that ``--layout`` gives (inline JSON, or a JSON file), (1, P, 5)."""
    text = value if value.lstrip().startswith("{") else _layout_file(Path(value))
    try:
        boxes = json.loads(text)
    except (ValueError, RecursionError):
        raise MinildmError("--layout is not valid JSON: give an object such as "
                           '\'{"skin": [0.3, 0.3, 0.7, 0.8], "hat": [0.25, 0.05, 0.75, 0.35]}\'') from None
    if not isinstance(boxes, dict):
        raise MinildmError("--layout must be a JSON object: part name -> [x0, y0, x1, y1]")
    layout = torch.zeros(1, len(part_names), 4)
    present = torch.zeros(1, len(part_names), dtype=torch.bool)
    for name, box in boxes.items():
        if name not in part_names:
            raise MinildmError(f"--layout: unknown part {name!r}; the parts are: {', '.join(part_names)}")
        layout[0, part_names.index(name)] = _box(name, box)
        present[0, part_names.index(name)] = True
    return layout_tensor(layout, present)


def _layout_file(path: Path) -> str:
    try:
        if not path.is_file():
            raise MinildmError(f"--layout: no such file: {path} (or give the JSON itself, starting with {{)")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MinildmError(f"--layout: cannot read {path} ({type(error).__name__})") from None


def _box(name: str, box) -> Tensor:
    """One part's box, checked: four numbers in [0, 1], x0 < x1 and y0 < y1."""
    if not (isinstance(box, list) and len(box) == 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in box)):
        raise MinildmError(f"--layout: the box of {name!r} must be four numbers [x0, y0, x1, y1], got {box!r}"[:300])
    x0, y0, x1, y1 = box
    if not all(0 <= x <= 1 for x in box):
        raise MinildmError(f"--layout: the box of {name!r} reaches outside the image: its edges must lie in [0, 1]")
    if not (x0 < x1 and y0 < y1):
        raise MinildmError(f"--layout: the box of {name!r} is empty: give x0 < x1 and y0 < y1")
    return torch.tensor([x0, y0, x1, y1], dtype=torch.float32)
