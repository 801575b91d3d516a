"""Part maps and part boxes of toy faces: exact labels for semantic synthesis and layouts.

The paper conditions on semantic maps (landscapes) and on bounding boxes (layout-to-image on
OpenImages and COCO, Sec. 4.3, Fig. 8). The toy-face renderer (:mod:`minildm.data.toyfaces`)
knows which part it paints where, so every face comes with its labels for free:

* a **part map**: one class of ``PARTS`` per pixel, uint8 (N, R, R);
* the **part boxes**: per face and part, the normalised box (x0, y0, x1, y1) of that part's
  pixels in the map, and a flag ``present`` (False: the part is not in the map, box zero).

How a pixel is labelled. Every layer of the renderer belongs to one part (``LAYER_PARTS``:
the neck and ears are skin, the hair shine is hair, the lenses are glasses). A shape paints
a pixel with the anti-aliased weight ``clamp(0.5 - d / pixel, 0, 1)`` for its signed
distance d, times its opacity. The label is that of the **last shape whose weight before
opacity is at least 1/2 and whose opacity is not zero**, i.e. the topmost visible shape that
contains the pixel's centre (d <= 0). Edges are thus labelled as if drawn without
anti-aliasing, by point sampling at pixel centres; a translucent shape on top (the lenses,
the beard, the nose's shadow) still takes the pixel; a shape switched off (opacity zero, e.g.
the hat of a face without one) never does. Labelling reads the distances the renderer
computes anyway and never writes the colours, so the images are bit-identical to
:func:`~minildm.data.toyfaces.generate`'s.

Example::

    images, attributes, maps, boxes, present = generate_parts(16, resolution=32, seed=0)
    # (16, 3, 32, 32), (16, 10), (16, 32, 32) uint8, (16, 11, 4), (16, 11) bool
"""
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from minildm.data import toyfaces

PARTS = ("background", "skin", "hair", "eyes", "eyebrows", "nose", "mouth", "beard", "glasses", "hat",
         "clothes")  # the classes of a part map, in this order: background is 0
LAYER_PARTS = {toyfaces.draw_background: "background", toyfaces.draw_shoulders: "clothes",
               toyfaces.draw_hair_back: "hair", toyfaces.draw_neck: "skin", toyfaces.draw_ears: "skin",
               toyfaces.draw_face: "skin", toyfaces.draw_hair_front: "hair", toyfaces.draw_beard: "beard",
               toyfaces.draw_nose: "nose", toyfaces.draw_mouth: "mouth", toyfaces.draw_eyes: "eyes",
               toyfaces.draw_eyebrows: "eyebrows", toyfaces.draw_eyeglasses: "glasses",
               toyfaces.draw_hat: "hat"}  # the part each layer of the renderer draws


class LabelledCanvas(toyfaces.Canvas):
    """A canvas that also keeps a part map: each painted shape that covers a pixel's centre
    and is not fully transparent writes ``part`` (the index in ``PARTS`` of the layer being
    drawn) there. The colours are painted exactly as on a :class:`~minildm.data.toyfaces.Canvas`."""

    planes = ("rgb", "labels")

    def __init__(self, p: dict[str, Tensor], resolution: int):
        super().__init__(p, resolution)
        self.labels = torch.zeros(len(p["scale"]), resolution, resolution, dtype=torch.uint8)  # (N, R, R)
        self.part = 0

    def paint(self, distance: Tensor, color: Tensor, opacity: toyfaces.Number = 1.0) -> None:
        """Paint as the plain canvas does, then label the pixels whose centre is inside."""
        super().paint(distance, color, opacity)
        covered = (distance <= 0) & (torch.as_tensor(opacity) > 0)  # (N, r, c)
        self.labels.masked_fill_(covered.expand_as(self.labels), self.part)


def render_parts(params: dict[str, np.ndarray], resolution: int,
                 layers: Sequence = toyfaces.LAYERS) -> tuple[Tensor, Tensor]:
    """Draw the faces described by ``params`` with their labels: images float32
    (N, 3, R, R) in [-1, 1], identical to :func:`~minildm.data.toyfaces.render_faces`'s, and
    part maps uint8 (N, R, R) of indices into ``PARTS``."""
    p = toyfaces._drawing_params(params)
    n, chunk = len(params["hair"]), max(1, toyfaces._PIXELS_PER_CHUNK // resolution**2)
    images = torch.empty(n, 3, resolution, resolution)
    maps = torch.empty(n, resolution, resolution, dtype=torch.uint8)
    for first in range(0, n, chunk):  # the same chunks as render_faces, so the same arithmetic
        chunk_params = {name: value[first:first + chunk] for name, value in p.items()}
        canvas = LabelledCanvas(chunk_params, resolution)
        for draw in layers:
            canvas.part = PARTS.index(LAYER_PARTS[draw])
            draw(canvas, chunk_params)
        images[first:first + chunk] = canvas.rgb * 2 - 1
        maps[first:first + chunk] = canvas.labels
    return images.clamp(-1, 1), maps


def part_boxes(part_maps: Tensor, n_classes: int = len(PARTS)) -> tuple[Tensor, Tensor]:
    """The tight box of each class in each map: ``part_maps`` integer (N, H, W) ->
    boxes float (N, n_classes, 4) and present bool (N, n_classes).

    A box is (x0, y0, x1, y1) in [0, 1], the pixel edges around the class's pixels: x0 is
    the first column holding the class divided by W, x1 one past the last column divided by
    W (likewise y with rows and H). A class absent from a map has ``present`` False and the
    box (0, 0, 0, 0).
    """
    n, height, width = part_maps.shape
    boxes = torch.zeros(n, n_classes, 4)
    present = torch.zeros(n, n_classes, dtype=torch.bool)
    for k in range(n_classes):
        mask = part_maps == k  # (N, H, W)
        rows, cols = mask.any(dim=2).float(), mask.any(dim=1).float()  # (N, H), (N, W)
        present[:, k] = rows.any(dim=1).bool()
        first_row, last_row = rows.argmax(dim=1), height - rows.flip(1).argmax(dim=1)  # last_row: one past
        first_col, last_col = cols.argmax(dim=1), width - cols.flip(1).argmax(dim=1)
        edges = torch.stack([first_col / width, first_row / height, last_col / width, last_row / height], dim=1)
        boxes[:, k] = edges * present[:, k, None]  # (N, 4)
    return boxes, present


def generate_parts(n: int, resolution: int = 32, seed: int = 0,
                   start: int = 0) -> tuple[Tensor, torch.BoolTensor, Tensor, Tensor, Tensor]:
    """Faces ``start .. start + n - 1`` of the data set ``seed`` with their labels: images
    (N, 3, R, R) in [-1, 1] and attributes (N, 10), exactly those of
    :func:`~minildm.data.toyfaces.generate`, part maps uint8 (N, R, R), part boxes float
    (N, len(PARTS), 4) and their flags bool (N, len(PARTS)) (:func:`part_boxes`)."""
    params = toyfaces.sample_face_params(n, seed, start)
    images, maps = render_parts(params, resolution)
    boxes, present = part_boxes(maps)
    return images, toyfaces.attributes_from_params(params), maps, boxes, present
