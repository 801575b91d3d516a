"""Tests for the part maps and part boxes of toy faces (minildm/data/toyface_parts.py)."""
import numpy as np
import pytest
import torch

from minildm.data import toyfaces
from minildm.data.toyface_parts import PARTS, generate_parts, part_boxes, render_parts
from minildm.data.toyfaces import ATTRIBUTES, generate, render_faces, sample_face_params

PART = {name: k for k, name in enumerate(PARTS)}
COLUMN = {name: k for k, name in enumerate(ATTRIBUTES)}


@pytest.fixture(scope="module")
def labelled():
    """300 faces at 32 px: parameters, images, attributes, maps, boxes, present."""
    params = sample_face_params(300, seed=11)
    return (params, *generate_parts(300, resolution=32, seed=11))


def edited(params, n, **changes):
    """The first n faces of ``params`` with some parameters set to new values."""
    new = {name: value[:n].copy() for name, value in params.items()}
    for name, value in changes.items():
        new[name][:] = value
    return new


def contains(maps, part):
    """Per map, whether any pixel has ``part``: (N,) bool."""
    return (maps == PART[part]).flatten(1).any(dim=1)


@pytest.mark.parametrize("resolution, n", [(16, 40), (32, 300), (64, 40), (256, 20)])  # 256 px: 3 chunks of faces
def test_images_are_identical_with_and_without_labels(resolution, n):
    params = sample_face_params(n, seed=3, start=7)
    images, maps = render_parts(params, resolution)
    assert torch.equal(images, render_faces(params, resolution))
    assert maps.shape == (n, resolution, resolution) and maps.dtype == torch.uint8
    plain_images, plain_attributes = generate(n, resolution, seed=3, start=7)
    with_parts = generate_parts(n, resolution, seed=3, start=7)
    assert torch.equal(with_parts[0], plain_images) and torch.equal(with_parts[1], plain_attributes)


def test_every_pixel_has_a_part_and_every_face_its_base_parts(labelled):
    _, images, _, maps, _, present = labelled
    assert maps.shape == (300, 32, 32) and int(maps.max()) < len(PARTS)
    counts = torch.stack([(maps == k).sum(dim=(1, 2)) for k in range(len(PARTS))], dim=1)  # (N, P)
    assert (counts.sum(dim=1) == 32 * 32).all()
    for part in ("background", "skin", "clothes"):
        assert present[:, PART[part]].all()
    assert set(PARTS) >= {"background", "skin", "hair", "eyes", "mouth", "glasses", "hat", "beard", "clothes"}


def test_parts_follow_the_attributes(labelled):
    _, _, attributes, maps, _, present = labelled
    for part, attribute, shown in (("glasses", "Eyeglasses", True), ("hat", "Wearing_Hat", True),
                                   ("beard", "No_Beard", False), ("hair", "Bald", False)):
        expected = attributes[:, COLUMN[attribute]] == shown
        assert torch.equal(contains(maps, part), expected), part
        assert torch.equal(present[:, PART[part]], expected), part
        assert 0 < expected.sum() < len(expected)  # both kinds of face are tested


@pytest.mark.parametrize("parameter, part", [("hat", "hat"), ("eyeglasses", "glasses")])
def test_a_top_layer_only_adds_its_own_part(labelled, parameter, part):
    """Putting on a hat or glasses (the top layers) relabels pixels as that part and leaves every
    other label as it was: the last layer that covers a pixel names it."""
    params = labelled[0]
    _, without = render_parts(edited(params, 60, **{parameter: False}), 32)
    _, with_it = render_parts(edited(params, 60, **{parameter: True}), 32)
    assert not contains(without, part).any() and contains(with_it, part).all()
    changed = with_it != without
    assert changed.any() and (with_it[changed] == PART[part]).all()


def test_labels_are_point_samples_at_pixel_centres():
    """Anti-aliased edges are labelled by the shape holding the pixel's centre. The centre of
    pixel i at R px is the centre of pixel 3i + 1 at 3R px, so the 3R map subsampled there
    must be the R map exactly, whatever the anti-aliasing does at either size."""
    params = sample_face_params(40, seed=4)
    _, small = render_parts(params, 32)
    _, large = render_parts(params, 96)
    assert torch.equal(small, large[:, 1::3, 1::3])


def test_crops_do_not_change_the_labels(monkeypatch):
    params = sample_face_params(100, seed=2)
    cropped = render_parts(params, 32)[1], render_parts(edited(params, 20), 64)[1]
    monkeypatch.setattr(toyfaces.Canvas, "crop", lambda canvas, *ranges: canvas)
    whole = render_parts(params, 32)[1], render_parts(edited(params, 20), 64)[1]
    for a, b in zip(cropped, whole):
        assert torch.equal(a, b)


def test_boxes_are_the_tight_boxes_of_the_map(labelled):
    _, _, _, maps, boxes, present = labelled
    assert boxes.shape == (300, len(PARTS), 4) and present.shape == (300, len(PARTS))
    for face in range(0, 300, 7):
        for k in range(len(PARTS)):
            ys, xs = np.nonzero(maps[face].numpy() == k)
            assert bool(present[face, k]) == (len(xs) > 0)
            expected = [xs.min() / 32, ys.min() / 32, (xs.max() + 1) / 32, (ys.max() + 1) / 32] if len(xs) else [0] * 4
            assert boxes[face, k].tolist() == pytest.approx(expected, abs=1e-7)
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[..., 2:] > boxes[..., :2])[present].all()


def test_part_boxes_of_a_constructed_map():
    maps = torch.zeros(2, 4, 8, dtype=torch.uint8)
    maps[0, 1:3, 2:4] = 3  # rows 1-2, columns 2-3
    maps[0, 3, 7] = 1  # one pixel in the corner
    maps[1] = 2
    boxes, present = part_boxes(maps, n_classes=4)
    assert present.tolist() == [[True, True, False, True], [False, False, True, False]]
    assert boxes[0, 3].tolist() == pytest.approx([2 / 8, 1 / 4, 4 / 8, 3 / 4])
    assert boxes[0, 1].tolist() == pytest.approx([7 / 8, 3 / 4, 1, 1])
    assert boxes[0, 0].tolist() == pytest.approx([0, 0, 1, 1])
    assert boxes[1, 2].tolist() == pytest.approx([0, 0, 1, 1])
    assert boxes[0, 2].tolist() == [0, 0, 0, 0] and boxes[1, 0].tolist() == [0, 0, 0, 0]


def test_labels_depend_only_on_seed_and_index():
    first = generate_parts(12, 32, seed=9, start=4)
    again = generate_parts(12, 32, seed=9, start=4)
    longer = generate_parts(20, 32, seed=9, start=0)
    other = generate_parts(12, 32, seed=10, start=4)
    for a, b, c in zip(first, again, longer):
        assert torch.equal(a, b) and torch.equal(a, c[4:16])
    assert (first[2] != other[2]).float().mean() > 0.05
