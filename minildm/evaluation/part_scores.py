"""How well samples follow a part map or a layout (LDM Sec. 4.3), read by the toy-face segmenter.

- Semantic synthesis: the segmenter's part map of each sample against the map it was drawn
  from, by mIoU (:func:`map_agreement`).
- Layout-to-image: for each part the layout asks for, the IoU of the asked box with the box
  of that part in the sample's segmented map, 0 where the part is missing; the mean over all
  asked parts but the background, whose box is nearly always the whole image
  (:func:`box_agreement`). Toy faces are centred, so the boxes of skin, hair and clothes are
  much alike from face to face; whether the parts that come and go (glasses, hat, beard) are
  there when asked, and only then, is scored apart (:func:`presence_agreement`).

Each score needs its reference points, which :func:`shuffled` and :func:`tiled` make: the
same samples against another sample's map or layout (what agreement by chance gives), and
maps of four faces at twice the size (sampling beyond the training size, Sec. 4.3.2). The
segmenter's own mIoU on real renders is the ceiling. :func:`count_faces` counts the faces the
segmenter finds in a sample, for samples drawn larger than the training images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minildm.data.dataset import ImageDataset
from minildm.data.toyface_parts import PARTS, part_boxes
from minildm.evaluation.segmenter import ToyFaceSegmenter, box_iou, load_segmenter, miou
from minildm.ldm import DEFAULT_GUIDANCE, LatentDiffusion
from minildm.recipes import condition_tensor

BACKGROUND = PARTS.index("background")
OPTIONAL_PARTS = ("glasses", "hat", "beard")  # the parts a face may or may not have
FACE_PARTS = ("skin", "eyes", "eyebrows", "nose", "mouth", "beard", "glasses")  # inside a face's outline


def map_agreement(segmenter: ToyFaceSegmenter, images: Tensor, part_maps: Tensor, *, resize: bool = True) -> float:
    """mIoU between the segmenter's maps of ``images`` (N, 3, H, W) and ``part_maps`` (N, H, W).
    ``resize`` False reads each image at its own size (faces drawn at the training scale on a
    larger canvas)."""
    return miou(segmenter.segment(images, resize=resize), part_maps)


def box_agreement(segmenter: ToyFaceSegmenter, images: Tensor, layouts: Tensor) -> float:
    """Mean IoU between each asked box of ``layouts`` (N, P, 5: flag, box) but the background's
    and the box of the same part in the segmented ``images``; a part not found scores 0."""
    found, found_present = part_boxes(segmenter.segment(images))  # (N, P, 4), (N, P)
    asked = layouts[..., 0] > 0.5  # (N, P)
    asked[:, BACKGROUND] = False
    scores = box_iou(layouts[..., 1:], found) * found_present  # (N, P)
    return scores[asked].mean().item()


def presence_agreement(segmenter: ToyFaceSegmenter, images: Tensor, layouts: Tensor) -> float:
    """For each of :data:`OPTIONAL_PARTS`, the balanced accuracy of "the segmented sample has
    the part" against "the layout asks for it" (the mean of the rates on asked and on not asked
    samples, 0.5 for samples that ignore the layout); the mean over the parts."""
    _, found = part_boxes(segmenter.segment(images))  # (N, P)
    rates = []
    for name in OPTIONAL_PARTS:
        asked, seen = layouts[:, PARTS.index(name), 0] > 0.5, found[:, PARTS.index(name)]
        if asked.all() or not asked.any():
            continue
        rates.append(((seen[asked].float().mean() + (~seen[~asked]).float().mean()) / 2).item())
    return sum(rates) / len(rates) if rates else float("nan")


def count_regions(masks: Tensor, min_pixels: int = 1) -> Tensor:
    """The number of 8-connected regions of True pixels, each of at least ``min_pixels``, in
    each mask (N, H, W) -> (N,). Every pixel starts with its own label and takes the largest
    label of its 3 x 3 neighbourhood inside the mask until nothing changes: one label is left
    per region."""
    n, height, width = masks.shape
    inside = masks[:, None].float()  # (N, 1, H, W)
    labels = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width) * inside
    while True:
        spread = F.max_pool2d(labels, 3, stride=1, padding=1) * inside
        if torch.equal(spread, labels):
            break
        labels = spread
    counts = []
    for image_labels in labels[:, 0]:
        _, sizes = image_labels[image_labels > 0].unique(return_counts=True)
        counts.append(int((sizes >= min_pixels).sum()))
    return torch.tensor(counts)


def count_faces(segmenter: ToyFaceSegmenter, images: Tensor, min_pixels: int = 20) -> Tensor:
    """The faces the segmenter finds in each image (N, 3, H, W), read at its own size: regions
    of the parts inside a face's outline (:data:`FACE_PARTS`) of at least ``min_pixels``
    pixels (a face drawn at 32 px covers about 200)."""
    maps = segmenter.segment(images, resize=False)  # (N, H, W)
    face = torch.zeros_like(maps, dtype=torch.bool)
    for name in FACE_PARTS:
        face |= maps == PARTS.index(name)
    return count_regions(face, min_pixels)


def shuffled(conditions: Tensor) -> Tensor:
    """Each row's condition replaced by the next row's (the last by the first): every sample
    is scored against a map or layout it was not drawn from."""
    return conditions.roll(1, dims=0)


def tiled(part_maps: Tensor) -> Tensor:
    """Maps (4N, R, R) -> (N, 2R, 2R): four faces side by side and one above the other."""
    return rearrange(part_maps[:len(part_maps) // 4 * 4], "(n a b) h w -> n (a h) (b w)", a=2, b=2)


def evaluate_parts(model: LatentDiffusion, held_out: ImageDataset, seed: int = 0) -> dict:
    """``evaluate`` for a semantic or a layout model on held-out toy faces: one sample per face
    from its map or layout (layouts with guidance 3), scored against it, against shuffled maps
    or layouts, and, for the segmenter's ceiling, the real faces against their own; a layout
    model's null layout gives unconditional samples too."""
    segmenter, generator = load_segmenter(), torch.Generator().manual_seed(seed)
    asked = condition_tensor(model.config.conditioning, held_out)  # maps (N, R, R) or layouts (N, P, 5)
    if model.kind == "semantic":
        samples = model.synthesize(asked, generator=generator)
        result = {"score": "mIoU of the segmented samples with their maps"}
        score = map_agreement
    else:
        samples = model.sample(len(asked), held_out.resolution, condition=asked, guidance=DEFAULT_GUIDANCE,
                               generator=generator).cpu()
        free = model.sample(len(asked), held_out.resolution, generator=generator).cpu()
        result = {"score": "box IoU of the asked parts (but the background) with the segmented samples' parts",
                  "guidance": DEFAULT_GUIDANCE, "unconditional": box_agreement(segmenter, free, asked),
                  "presence": presence_agreement(segmenter, samples, asked),
                  "presence_shuffled": presence_agreement(segmenter, samples, shuffled(asked)),
                  "presence_on_real": presence_agreement(segmenter, held_out.images(), asked)}
        score = box_agreement
    return {**result, "n_samples": len(asked), "asked": score(segmenter, samples, asked),
            "shuffled": score(segmenter, samples, shuffled(asked)),
            "segmenter_on_real": score(segmenter, held_out.images(), asked),
            "segmenter_heldout_miou": segmenter.heldout_miou}
