"""Tests for the toy-face segmenter and its scores (minildm/evaluation/segmenter.py)."""
import os

import pytest
import torch

from minildm import checkpoint
from minildm.config import MinildmError
from minildm.data.images import float_to_uint8
from minildm.data.toyface_parts import PARTS, generate_parts
from minildm.evaluation import segmenter
from minildm.evaluation.segmenter import (SEGMENTER_FILE, PartSegmenter, ToyFaceSegmenter, box_iou, class_iou,
                                          load_segmenter, miou, train_segmenter)

TINY = {**segmenter.SEGMENTER_SETTINGS, "train": 96, "heldout": 16, "steps": 3, "batch_size": 8, "width": 8}


def test_miou_of_identical_and_disjoint_maps():
    maps = torch.randint(0, 5, (3, 6, 6))
    assert miou(maps, maps.clone(), n_classes=5) == 1.0
    assert miou(torch.zeros(2, 4, 4), torch.ones(2, 4, 4), n_classes=3) == 0.0
    swapped = (maps + 1) % 5  # every pixel wrong
    assert miou(swapped, maps, n_classes=5) == 0.0


def test_miou_of_a_partial_overlap_counts_only_classes_present():
    target = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 2]]])
    predicted = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 0]]])
    # class 0: intersection 1 (one pixel), union 3; class 1: 2 / 3; class 2: 3 / 4; classes 3-6: absent
    expected = (1 / 3 + 2 / 3 + 3 / 4) / 3
    assert miou(predicted, target, n_classes=7) == pytest.approx(expected)
    per_class = class_iou(predicted, target, n_classes=7)
    assert per_class[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 3 / 4])
    assert per_class[3:].isnan().all()
    assert miou(target, predicted, n_classes=7) == pytest.approx(expected)  # symmetric


def test_miou_rejects_mismatched_or_empty_maps():
    with pytest.raises(MinildmError, match="shapes"):
        miou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5), n_classes=2)
    with pytest.raises(MinildmError, match="empty"):
        miou(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4), n_classes=2)


def test_box_iou_closed_forms():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.5, 0.5],
                      [0.0, 0.0, 0.5, 1.0], [0.2, 0.2, 0.2, 0.6]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 1.0, 0.5],
                      [0.25, 0.0, 0.75, 1.0], [0.2, 0.2, 0.2, 0.6]])
    # overlap 1/16 of union 7/16; nested quarter; identical; touching edges; half-overlapping strips; two empty
    expected = [1 / 7, 1 / 4, 1.0, 0.0, 1 / 3, 0.0]
    assert box_iou(a, b).tolist() == pytest.approx(expected)
    assert box_iou(b, a).tolist() == pytest.approx(expected)
    assert box_iou(a.view(2, 3, 4), b.view(2, 3, 4)).shape == (2, 3)


def test_network_shapes_and_input_checks():
    network = PartSegmenter(len(PARTS), width=8)
    assert network(torch.zeros(2, 3, 32, 48)).shape == (2, len(PARTS), 32, 48)
    reader = ToyFaceSegmenter(network, {}, 0.0)
    images = generate_parts(3, 64, seed=1)[0]
    assert reader.segment(images).shape == (3, 64, 64) and reader.segment(images).dtype == torch.uint8
    assert reader.segment(images, resize=False).shape == (3, 64, 64)
    assert reader.segment(images[:0]).shape == (0, 64, 64)
    with pytest.raises(MinildmError, match="multiples of 4"):
        reader.segment(torch.zeros(2, 3, 30, 30))
    with pytest.raises(MinildmError, match="part maps"):
        train_segmenter(images, torch.zeros(3, 32, 32), steps=1)


def test_a_briefly_trained_segmenter_beats_the_majority_class(one_thread):
    images, _, maps, _, _ = generate_parts(512, 32, seed=21)
    test_images, _, test_maps, _, _ = generate_parts(200, 32, seed=21, start=512)
    network = train_segmenter(float_to_uint8(images), maps, steps=300, batch_size=8, learning_rate=4e-3,
                              width=8, seed=0)  # about 6 s on one core
    predicted = ToyFaceSegmenter(network, {}, 0.0).segment(test_images)
    majority = torch.full_like(test_maps, int(torch.bincount(maps.flatten().long()).argmax()))
    accuracy, baseline_accuracy = ((m == test_maps).float().mean().item() for m in (predicted, majority))
    score, baseline = miou(predicted, test_maps), miou(majority, test_maps)
    assert baseline_accuracy > 0.5 and baseline == pytest.approx(baseline_accuracy / len(PARTS), rel=1e-5)
    assert accuracy > baseline_accuracy + 0.15  # measured: 0.88 against 0.64
    assert score > 3 * baseline  # measured: 0.28 against 0.06
    per_class = class_iou(predicted, test_maps, len(PARTS))
    assert min(per_class[PARTS.index(part)] for part in ("background", "skin", "hair", "clothes")) > 0.45


def test_load_segmenter_uses_its_cache_and_retrains_on_other_settings(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(segmenter, "SEGMENTER_SETTINGS", TINY)
    first = load_segmenter(tmp_path, progress=False)
    path = tmp_path / SEGMENTER_FILE
    assert set(first.heldout_iou) == set(PARTS) and 0 <= first.heldout_miou <= 1
    os.utime(path, ns=(10**18, 10**18))  # a known modification time

    train = segmenter._train_toyface_segmenter
    monkeypatch.setattr(segmenter, "_train_toyface_segmenter", lambda *args: pytest.fail("the cache was not used"))
    second = load_segmenter(tmp_path, progress=False)
    assert path.stat().st_mtime_ns == 10**18
    assert second.heldout_miou == pytest.approx(first.heldout_miou)
    assert second.heldout_iou == pytest.approx(first.heldout_iou, nan_ok=True)
    for name, value in first.network.state_dict().items():
        assert torch.equal(second.network.state_dict()[name], value)
    images = generate_parts(4, 32, seed=3)[0]
    assert torch.equal(first.segment(images), second.segment(images))

    monkeypatch.setattr(segmenter, "_train_toyface_segmenter", train)
    monkeypatch.setattr(segmenter, "SEGMENTER_SETTINGS", {**TINY, "steps": 4})
    load_segmenter(tmp_path, progress=False)
    assert path.stat().st_mtime_ns != 10**18
    assert checkpoint.load(path)[1]["settings"]["steps"] == 4

    path.write_bytes(b"not a safetensors file")
    load_segmenter(tmp_path, progress=False)
    assert checkpoint.load(path)[1]["settings"]["steps"] == 4

    monkeypatch.setattr(segmenter, "QUICK_SETTINGS", {**TINY, "steps": 3})
    before = path.read_bytes()
    load_segmenter(tmp_path, progress=False, quick=True)  # its own file: the full reader stays
    assert checkpoint.load(tmp_path / f"quick-{SEGMENTER_FILE}")[1]["settings"]["steps"] == 3
    assert path.read_bytes() == before
