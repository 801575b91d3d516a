"""Tests for the procedurally drawn toy faces data set (minildm/toyfaces.py)."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minildm.data import toyfaces
from minildm.data.toyfaces import (ATTRIBUTES, attributes_from_params, caption, generate, render_faces,
                              sample_face_params)

HAIR = list(range(5))  # columns of the hair options in ATTRIBUTES
COLUMN = {name: k for k, name in enumerate(ATTRIBUTES)}


@pytest.fixture(scope="module")
def faces():
    """2000 faces at 32 px: their parameters, images and attributes."""
    params = sample_face_params(2000, seed=0)
    return params, render_faces(params, 32), attributes_from_params(params)


def edited(params, n, **changes):
    """The first n faces of `params` with some parameters set to new values."""
    new = {name: value[:n].copy() for name, value in params.items()}
    for name, value in changes.items():
        new[name][:] = value
    return new


def test_attribute_names():
    assert ATTRIBUTES == ("Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Eyeglasses",
                          "Wearing_Hat", "Smiling", "No_Beard", "Pale_Skin")


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_shapes_dtype_and_range(resolution):
    images, attributes = generate(3, resolution=resolution, seed=1)
    assert images.shape == (3, 3, resolution, resolution) and images.dtype == torch.float32
    assert attributes.shape == (3, len(ATTRIBUTES)) and attributes.dtype == torch.bool
    assert images.min() > -1 and images.max() < 1  # inside [-1, 1] and never saturated
    assert images.std() > 0.2


def test_empty_batch():
    images, attributes = generate(0, resolution=32)
    assert images.shape == (0, 3, 32, 32) and attributes.shape == (0, len(ATTRIBUTES))


def test_same_seed_same_faces_other_seed_other_faces():
    images, attributes = generate(8, seed=3)
    again, attributes_again = generate(8, seed=3)
    assert torch.equal(images, again) and torch.equal(attributes, attributes_again)
    other, _ = generate(8, seed=4)
    assert (images - other).abs().mean(dim=(1, 2, 3)).min() > 0.05


def test_face_depends_only_on_seed_and_index():
    many = sample_face_params(100, seed=7)
    prefix = sample_face_params(10, seed=7)
    middle = sample_face_params(5, seed=7, start=10)
    for name, values in many.items():
        np.testing.assert_array_equal(prefix[name], values[:10])
        np.testing.assert_array_equal(middle[name], values[10:15])
    images, attributes = generate(100, seed=7)
    middle_images, middle_attributes = generate(5, seed=7, start=10)
    assert (middle_images - images[10:15]).abs().max() < 1e-5  # equal up to rounding
    assert torch.equal(middle_attributes, attributes[10:15])


def test_exactly_one_hair_option(faces):
    _, _, attributes = faces
    assert (attributes[:, HAIR].sum(dim=1) == 1).all()


def test_attribute_frequencies(faces):
    _, _, attributes = faces
    frequency = dict(zip(ATTRIBUTES, attributes.float().mean(dim=0).tolist()))
    for name in ATTRIBUTES[:5]:
        assert 0.15 <= frequency[name] <= 0.25, name
    assert 0.25 <= frequency["Eyeglasses"] <= 0.35
    assert 0.20 <= frequency["Wearing_Hat"] <= 0.30
    assert 0.45 <= frequency["Smiling"] <= 0.55
    assert 0.70 <= frequency["No_Beard"] <= 0.80
    assert 0.20 <= frequency["Pale_Skin"] <= 0.30


def test_attributes_are_independent(faces):
    _, _, attributes = faces
    a = attributes.float()
    for i, j in itertools.combinations(range(4, len(ATTRIBUTES)), 2):  # Gray_Hair and the flags
        joint, product = (a[:, i] * a[:, j]).mean(), a[:, i].mean() * a[:, j].mean()
        assert abs(joint - product) < 0.03, (ATTRIBUTES[i], ATTRIBUTES[j])
    both = attributes[:, COLUMN["Eyeglasses"]] & attributes[:, COLUMN["Wearing_Hat"]]
    assert both.sum() > 50
    combinations = {tuple(row.tolist()) for row in attributes}
    assert len(combinations) > 140  # of 5 * 2**5 = 160 possible; about 153 expected


def test_images_are_varied(faces):
    _, images, _ = faces
    flat = images[:200].flatten(1)
    distance = torch.cdist(flat, flat, p=1) / flat.shape[1]  # mean absolute difference
    distance.fill_diagonal_(float("inf"))
    assert distance.min() > 0.05
    assert images.std(dim=0).mean() > 0.2  # every pixel varies across the data set


def test_changing_an_attribute_flag_changes_its_attribute():
    params = sample_face_params(5, seed=0)
    glasses = edited(params, 5, eyeglasses=True)
    assert attributes_from_params(glasses)[:, COLUMN["Eyeglasses"]].all()
    assert not attributes_from_params(edited(params, 5, beard=True))[:, COLUMN["No_Beard"]].any()
    assert attributes_from_params(edited(params, 5, hair=0))[:, COLUMN["Bald"]].all()


def test_blond_hair_is_brighter_than_black_hair(faces):
    _, images, attributes = faces
    no_hat = ~attributes[:, COLUMN["Wearing_Hat"]]
    top_of_head = images[:, :, 5:9, 13:19].mean(dim=(1, 2, 3))  # hair, unless bald or hat
    blond = top_of_head[no_hat & attributes[:, COLUMN["Blond_Hair"]]].mean()
    black = top_of_head[no_hat & attributes[:, COLUMN["Black_Hair"]]].mean()
    assert blond > black + 0.6


def test_hair_colour_is_visible_under_a_hat(faces):
    params, _, _ = faces
    with_hair, hat = params["hair"][:300] > 0, params["hat"][:300]
    black = render_faces(edited(params, 300, hair=np.where(with_hair, 1, 0)), 32)
    blond = render_faces(edited(params, 300, hair=np.where(with_hair, 2, 0)), 32)
    changed = ((blond - black).abs().sum(dim=1) > 0.3).sum(dim=(1, 2))  # (N,) pixels
    assert changed[~with_hair].max() == 0
    assert changed[with_hair & hat].min() >= 30  # sides and fringe below the hat
    assert changed[with_hair & ~hat].min() >= 80


def flag_change(params, flag, n=300):
    """Images (N, 3, R, R) at 32 px without and with an attribute flag."""
    without = render_faces(edited(params, n, **{flag: False}), 32)
    return without, render_faces(edited(params, n, **{flag: True}), 32)


def visibly_changed(before, after):
    """Pixels (N, R, R) whose colour changed clearly, and how many per image (N,)."""
    changed = (after - before).abs().sum(dim=1) > 0.3
    return changed, changed.sum(dim=(1, 2))


def test_eyeglasses_are_dark_frames_in_the_eye_band(faces):
    without, with_glasses = flag_change(faces[0], "eyeglasses")
    changed, count = visibly_changed(without, with_glasses)
    assert (count >= 15).all()
    assert not changed[:, :11].any() and not changed[:, 20:].any()
    darker = (with_glasses - without).mean(dim=1) < -0.2
    assert (darker.sum(dim=(1, 2)) >= 8).all()  # dark frames on every face, even dark skin


def test_hats_change_only_the_top_of_the_image(faces):
    without, with_hat = flag_change(faces[0], "hat")
    changed, count = visibly_changed(without, with_hat)
    assert (count >= 35).all()
    assert (with_hat - without)[:, :, 15:].abs().max() < 1e-6


def test_smiles_change_only_the_mouth(faces):
    without, smiling = flag_change(faces[0], "smiling")
    changed, count = visibly_changed(without, smiling)
    assert (count >= 5).all()
    assert (smiling - without)[:, :, :17].abs().max() < 1e-6
    assert (smiling - without)[:, :, 27:].abs().max() < 1e-6


def test_beards_change_the_lower_face(faces):
    without, bearded = flag_change(faces[0], "beard")
    changed, count = visibly_changed(without, bearded)
    assert (count >= 25).all()
    assert (bearded - without)[:, :, :14].abs().max() < 1e-6


def test_pale_skin_is_lighter(faces):
    params, _, _ = faces
    without = render_faces(edited(params, 300, pale=False), 32)
    pale = render_faces(edited(params, 300, pale=True), 32)
    assert (pale - without).min() > -1e-6  # no pixel gets darker in any channel
    assert ((pale - without).mean(dim=1) > 0.1).sum(dim=(1, 2)).min() >= 50


def test_crops_do_not_change_the_image(monkeypatch):
    params, few = sample_face_params(300, seed=2), sample_face_params(50, seed=2)
    cropped = render_faces(params, 32), render_faces(few, 64)
    monkeypatch.setattr(toyfaces.Canvas, "crop", lambda canvas, *ranges: canvas)
    whole = render_faces(params, 32), render_faces(few, 64)
    for a, b in zip(cropped, whole):
        assert (a - b).abs().max() < 1e-5


def test_resolutions_are_consistent():
    params = sample_face_params(100, seed=5)
    small, large = render_faces(params, 32), render_faces(params, 64)
    downsampled = F.interpolate(large, size=32, mode="area")
    assert (downsampled - small).abs().mean() < 0.02  # different faces differ by about 0.3


@pytest.mark.parametrize("row, expected", [
    ([0, 1, 0, 0, 0, 0, 0, 0, 1, 0], "a face with black hair"),
    ([1, 0, 0, 0, 0, 1, 0, 1, 0, 0], "a smiling bald face with eyeglasses and a beard"),
    ([0, 0, 1, 0, 0, 1, 1, 0, 1, 1], "a face with blond hair, pale skin, eyeglasses and a hat"),
    ([0, 0, 0, 0, 1, 0, 1, 1, 0, 0], "a smiling face with gray hair, a hat and a beard"),
])
def test_caption_examples(row, expected):
    assert caption([bool(x) for x in row]) == expected
    assert caption(torch.tensor(row, dtype=torch.bool)) == expected


def test_caption_mentions_exactly_the_present_attributes():
    words = {"Bald": "bald", "Black_Hair": "black hair", "Blond_Hair": "blond hair",
             "Brown_Hair": "brown hair", "Gray_Hair": "gray hair", "Eyeglasses": "eyeglasses",
             "Wearing_Hat": "a hat", "Smiling": "smiling", "Pale_Skin": "pale skin"}
    captions = set()
    for hair in range(5):
        for flags in itertools.product([False, True], repeat=5):
            row = [k == hair for k in range(5)] + list(flags)
            text = caption(row)
            for name, present in zip(ATTRIBUTES, row):
                if name in words:
                    assert (words[name] in text) == present, (text, name)
            assert ("beard" in text) == (not row[COLUMN["No_Beard"]])
            captions.add(text)
    assert len(captions) == 5 * 2**5  # different attributes, different captions
    with pytest.raises(ValueError):
        caption([True, False])

