"""Masks, the inpainting and super-resolution inputs, and pasting back the known pixels."""

import pytest
import torch
from einops import reduce

from minildm.image_conditions import (MASK_SHAPES, bicubic_upsample, concat_conditioning, downsample,
                                      extra_input_channels, inpainting_condition, mask_of_shape, paste,
                                      random_masks, superres_condition)


def test_each_mask_shape_covers_the_expected_area():
    generator = torch.Generator().manual_seed(0)
    areas = {shape: mask_of_shape(shape, 200, 32, generator).mean(dim=(1, 2, 3)) for shape in MASK_SHAPES}
    assert torch.all(areas["half"] == 0.5)
    assert areas["box"].min() >= 0.2**2 and areas["box"].max() <= 0.65**2
    assert areas["band"].min() >= 0.15 and areas["band"].max() <= 0.4
    assert areas["ellipse"].min() >= 0.03 and areas["ellipse"].max() <= 0.4
    halves = mask_of_shape("half", 200, 32, generator)
    left = halves[:, 0, :, :16].mean(dim=(1, 2))
    top = halves[:, 0, :16, :].mean(dim=(1, 2))
    assert set(left.tolist()) <= {0.0, 0.5, 1.0} and (left == 1).any() and (top == 1).any()
    with pytest.raises(ValueError, match="unknown mask shape"):
        mask_of_shape("star", 1, 32)


def test_random_masks_are_binary_seeded_and_mixed():
    masks = random_masks(64, 32, torch.Generator().manual_seed(1))
    assert masks.shape == (64, 1, 32, 32)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(masks, random_masks(64, 32, torch.Generator().manual_seed(1)))
    assert len(set(masks.mean(dim=(1, 2, 3)).tolist())) > 10  # many shapes and sizes


def test_inpainting_input_is_the_latent_of_the_masked_image_and_the_small_mask():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, :8] = 1  # top half
    masks[1, :, 0:2, 0:2] = 1  # a quarter of one latent cell
    seen = []

    def encode(x):
        seen.append(x)
        return reduce(x, "b c (h 4) (w 4) -> b c h w", "mean")  # a stand-in encoder, f = 4

    condition = inpainting_condition(encode, images, masks)
    assert condition.shape == (2, 4, 4, 4)
    assert torch.all(seen[0][0, :, :8] == 0) and torch.equal(seen[0][0, :, 8:], images[0, :, 8:])
    assert torch.equal(condition[0, 3, :2], torch.ones(2, 4)) and torch.all(condition[0, 3, 2:] == 0)
    assert condition[1, 3, 0, 0] == 0.25 and condition[1, 3].sum() == 0.25


def test_downsampling_averages_blocks_and_upsampling_keeps_the_shape():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    low = downsample(images, 4)
    assert torch.allclose(low, images.view(2, 3, 8, 4, 8, 4).mean(dim=(3, 5)), atol=1e-6)
    assert superres_condition(low, (8, 8)) is low  # f = 4 and 4x: the latent grid already
    assert superres_condition(low, (4, 4)).shape == (2, 3, 4, 4)
    upsampled = bicubic_upsample(low, 4)
    assert upsampled.shape == images.shape and upsampled.abs().max() <= 1
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(bicubic_upsample(flat, 4), torch.full((1, 3, 32, 32), 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple"):
        downsample(torch.zeros(1, 3, 30, 30), 4)


def test_paste_keeps_every_known_pixel():
    images, generated = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    masks = random_masks(3, 8, torch.Generator().manual_seed(2))
    result = paste(generated, images, masks)
    known = masks.expand_as(images) == 0
    assert torch.equal(result[known], images[known]) and torch.equal(result[~known], generated[~known])


def test_concat_conditioning_stacks_the_condition_after_the_latent_channels():
    seen = []

    def unet(x, t):  # a stand-in that records its input and returns its first 4 channels
        seen.append((x, t))
        return x[:, :4]

    z_t, condition, t = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8), torch.tensor([3, 700])
    assert torch.equal(concat_conditioning(unet, condition)(z_t, t), z_t)
    (x, seen_t), = seen
    assert x.shape == (2, 9, 8, 8) and torch.equal(x[:, 4:], condition) and torch.equal(seen_t, t)


def test_each_concat_kind_adds_its_channels_and_other_kinds_none():
    assert extra_input_channels("inpaint", latent_channels=4) == 5  # the masked image's latent and the mask
    assert extra_input_channels("superres", latent_channels=4) == 3  # the low-resolution RGB image
    assert extra_input_channels("text", latent_channels=4) == 0 and extra_input_channels("none", 3) == 0
