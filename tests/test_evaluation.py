"""The scores of conditional models, against independent computations."""

import math

import torch

from minildm.data import toyfaces
from minildm.evaluation.scores import mentioned_attributes, region_psnr

WORDS = {"Bald": "bald", "Black_Hair": "black hair", "Blond_Hair": "blond hair", "Brown_Hair": "brown hair",
         "Gray_Hair": "gray hair", "Eyeglasses": "eyeglasses", "Wearing_Hat": "a hat", "Smiling": "smiling",
         "No_Beard": "a beard", "Pale_Skin": "pale skin"}


def test_mentioned_attributes_are_the_words_of_the_caption():
    _, attributes = toyfaces.generate(300, resolution=8, seed=3)
    mentioned = mentioned_attributes(attributes)
    for row, names in zip(attributes, mentioned):
        text = toyfaces.caption(row)
        for name, is_mentioned in zip(toyfaces.ATTRIBUTES, names.tolist()):
            assert (WORDS[name] in text) == is_mentioned, (text, name)


def test_region_psnr_counts_only_the_region():
    reference = torch.zeros(2, 3, 4, 4)
    images = reference.clone()
    images[:, :, :2] = 0.2  # error 0.1 in [0, 1] units in the top half: 20 dB there
    images[:, :, 2:] = 1.0  # a large error in the bottom half
    top = torch.zeros(2, 1, 4, 4)
    top[:, :, :2] = 1
    assert math.isclose(region_psnr(images, reference, top), 20.0, abs_tol=0.01)
    assert region_psnr(images, reference, 1 - top) < 7
