"""Semantic synthesis, layout-to-image and sampling beyond the training size (Sec. 4.3): the
map's downsampling, the layout's tokens and mirror, and tiny models of both kinds that train,
save, load and sample, at the training size and at twice it."""

import math

import pytest
import torch

from minildm.conditioning import ConditioningConfig, LayoutEncoder, box_features, layout_tensor, mirror_layout
from minildm.config import MinildmError, get_profile
from minildm.data import ImageDataset, load_images
from minildm.data.images import float_to_uint8
from minildm.data.toyface_parts import PARTS, generate_parts
from minildm.evaluation.part_scores import (box_agreement, count_faces, count_regions, map_agreement,
                                            presence_agreement, shuffled, tiled)
from minildm.image_conditions import extra_input_channels, semantic_condition
from minildm.ldm import token_attention
from minildm.ldm_training import LDMTraining, load_ldm, semantic_conditions, train_ldm
from minildm.recipes import condition_tensor, conditioning_config
from minildm.sampling import SamplerOptions

from conftest import train_tiny_autoencoder


def test_the_semantic_input_is_each_part_s_share_of_each_latent_cell():
    maps = torch.zeros(2, 4, 4, dtype=torch.uint8)
    maps[0, :2, :2] = 2  # one whole cell of part 2
    maps[1, 0, 0] = 1  # a quarter of a cell of part 1
    condition = semantic_condition(maps, 3, (2, 2))
    assert condition.shape == (2, 3, 2, 2)
    assert torch.allclose(condition.sum(1), torch.ones(2, 2, 2))  # shares add up to 1 in every cell
    assert condition[0, 2, 0, 0] == 1 and condition[0, 2].sum() == 1 and condition[0, 0, 0, 0] == 0
    assert condition[1, 1, 0, 0] == 0.25 and condition[1, 0, 0, 0] == 0.75
    with pytest.raises(ValueError, match="indices 0 to 2"):
        semantic_condition(maps + 3, 3, (2, 2))
    assert extra_input_channels("semantic", latent_channels=4, parts=len(PARTS)) == len(PARTS)


def test_a_layout_is_flag_then_box_and_its_mirror_flips_x_only():
    boxes = torch.tensor([[[0.1, 0.2, 0.4, 0.9], [0.5, 0.5, 0.6, 0.7]]])
    layout = layout_tensor(boxes, torch.tensor([[True, False]]))
    assert torch.equal(layout, torch.tensor([[[1, 0.1, 0.2, 0.4, 0.9], [0, 0, 0, 0, 0]]]))
    mirrored = mirror_layout(layout)
    assert torch.allclose(mirrored[0, 0], torch.tensor([1, 0.6, 0.2, 0.9, 0.9])) and not mirrored[0, 1].any()
    assert torch.allclose(mirror_layout(mirrored), layout)


def test_box_features_are_sines_and_cosines_of_the_scaled_coordinates():
    box = [0.25, 0.5, 0.0, 1.0]
    angles = [math.pi * 2**k * x for x in box for k in range(4)]
    expected = torch.tensor([math.sin(a) for a in angles] + [math.cos(a) for a in angles])
    assert torch.allclose(box_features(torch.tensor([box])), expected[None], atol=1e-5)


def test_a_part_that_is_not_there_changes_no_token():
    torch.manual_seed(0)
    encoder = LayoutEncoder(num_parts=3, channels=16, layers=2).eval()
    layout = torch.tensor([[[1, 0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0, 0], [1, 0.2, 0.6, 0.9, 0.8]]])
    tokens, mask = encoder(layout)
    assert tokens.shape == (1, 4, 16) and mask.tolist() == [[True, True, False, True]]
    moved = layout.clone()
    moved[0, 1, 1:] = torch.tensor([0.3, 0.3, 0.4, 0.4])  # the absent part's box: ignored
    assert torch.allclose(encoder(moved)[0][mask], tokens[mask], atol=1e-6)
    moved[0, 2, 1] = 0.3  # a present part's box: every token may see it
    assert not torch.allclose(encoder(moved)[0][0, 0], tokens[0, 0])


@pytest.fixture(scope="module")
def faces():
    images, _, maps, boxes, present = generate_parts(48, resolution=32, seed=5)
    return float_to_uint8(images), maps, layout_tensor(boxes, present)


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory, faces):
    run_dir = tmp_path_factory.mktemp("ae")
    train_tiny_autoencoder(run_dir, faces[0])
    return run_dir


@pytest.mark.integration
def test_a_semantic_model_trains_with_mirrored_maps_and_samples_at_twice_the_size(tmp_path, faces, autoencoder_dir):
    pixels, maps, _ = faces
    conditioning = ConditioningConfig("semantic", class_names=list(PARTS))
    training = LDMTraining(profile=get_profile("tiny"), steps=3, conditioning=conditioning, progress=False)
    model = train_ldm(tmp_path, pixels, autoencoder_dir=autoencoder_dir, training=training, conditions=maps)
    assert model.unet.config.in_channels == 4 + len(PARTS)
    loaded = load_ldm(tmp_path)
    options = SamplerOptions(steps=3)
    images = loaded.synthesize(maps[:2], options, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32)
    assert torch.allclose(images, model.synthesize(maps[:2], options, generator=torch.Generator().manual_seed(0)),
                          atol=1e-5)
    large = torch.cat([torch.cat([maps[0], maps[1]], 1), torch.cat([maps[2], maps[3]], 1)], 0)  # four faces, 2x2
    assert loaded.synthesize(large[None], options).shape == (1, 3, 64, 64)
    both = semantic_conditions(model, maps, 32)  # what training saw: the maps, then the mirror images'
    assert torch.equal(both[48:], semantic_condition(maps.flip(-1), len(PARTS), (8, 8)))
    assert not torch.equal(both[:48], both[48:])
    with pytest.raises(ValueError, match="square"):
        loaded.synthesize(torch.cat([maps[0], maps[1]], 1)[None], options)


@pytest.mark.integration
def test_a_layout_model_trains_on_mirrored_layouts_and_samples_from_a_layout(tmp_path, faces, autoencoder_dir):
    pixels, _, layouts = faces
    conditioning = ConditioningConfig("layout", class_names=list(PARTS))
    training = LDMTraining(profile=get_profile("tiny"), steps=3, conditioning=conditioning, progress=False)
    model = train_ldm(tmp_path, pixels, autoencoder_dir=autoencoder_dir, training=training, conditions=layouts)
    loaded = load_ldm(tmp_path)
    noise = torch.randn(2, *loaded.latent_shape(32), generator=torch.Generator().manual_seed(0))
    options = SamplerOptions(steps=3)
    samples = loaded.sample(2, 32, options, condition=layouts[:2], guidance=2.0, noise=noise)
    assert samples.shape == (2, 3, 32, 32)
    assert torch.allclose(samples, model.sample(2, 32, options, condition=layouts[:2], guidance=2.0, noise=noise),
                          atol=1e-5)
    images, maps = token_attention(loaded, layouts[:2], 32, options, generator=torch.Generator().manual_seed(0))
    plain = loaded.sample(2, 32, options, condition=layouts[:2], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(images, plain, atol=1e-6)  # recording the maps does not change the samples
    assert maps.shape == (2, 1 + len(PARTS), 4, 4)  # the tiny UNet cross-attends at level 1 only: 8 x 8 latents / 2
    assert torch.allclose(maps.sum(dim=1), torch.ones(2, 4, 4), atol=1e-5)  # a softmax over the tokens
    absent = ~(layouts[:2, :, 0] > 0.5)  # (2, P): parts not in the layout are padding
    assert absent.any() and maps[:, 1:][absent].abs().max() == 0
    with pytest.raises(ValueError, match="no condition tokens"):
        token_attention(semantic_model_stub(), layouts[:1], 32)


def semantic_model_stub():
    """An object that says it is a semantic model: enough for token_attention to refuse it."""
    return type("Semantic", (), {"kind": "semantic"})()


def test_semantic_and_layout_conditions_come_from_toy_faces_only():
    toy = load_images("toyfaces", 32, 6, start=4, seed=2)
    for kind in ("semantic", "layout"):
        config = conditioning_config(kind, toy)
        assert config.class_names == list(PARTS)
    _, _, maps, boxes, present = generate_parts(6, resolution=32, seed=2, start=4)
    assert torch.equal(condition_tensor(conditioning_config("semantic", toy), toy), maps)
    assert torch.equal(condition_tensor(conditioning_config("layout", toy), toy), layout_tensor(boxes, present))
    folder = ImageDataset(pixels=toy.pixels, info={"source": "folder"})
    with pytest.raises(MinildmError, match="only --dataset toyfaces has"):
        conditioning_config("layout", folder)
    toy.pixels[0, 0, 0, 0] ^= 1  # no longer the faces its seed draws
    with pytest.raises(MinildmError, match="could not be drawn again"):
        condition_tensor(conditioning_config("semantic", toy), toy)


class ReadsBack:
    """A stand-in segmenter whose reading of image i is ``maps[i]``."""

    def __init__(self, maps):
        self.maps = maps

    def segment(self, images, resize=True):
        return self.maps[:len(images)]


def test_box_agreement_scores_each_asked_part_but_the_background():
    found = torch.zeros(1, 10, 10, dtype=torch.uint8)
    found[0, 2:6, 2:6] = PARTS.index("skin")  # the skin fills x, y in [0.2, 0.6]
    asked = torch.zeros(1, len(PARTS), 5)
    asked[0, PARTS.index("background")] = torch.tensor([1, 0.0, 0.0, 1.0, 1.0])  # left out of the score
    asked[0, PARTS.index("skin")] = torch.tensor([1, 0.2, 0.2, 0.6, 0.4])  # half of the skin's box: IoU 1/2
    asked[0, PARTS.index("hat")] = torch.tensor([1, 0.1, 0.0, 0.9, 0.2])  # no hat found: 0
    images = torch.zeros(1, 3, 10, 10)
    assert box_agreement(ReadsBack(found), images, asked) == pytest.approx(0.25)
    assert map_agreement(ReadsBack(found), images, found) == 1.0


def test_shuffled_pairs_every_row_with_another_and_tiled_puts_four_faces_in_a_square():
    maps = torch.arange(4)[:, None, None].expand(4, 2, 2)
    assert shuffled(maps)[:, 0, 0].tolist() == [3, 0, 1, 2]
    assert tiled(maps)[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_presence_agreement_is_the_balanced_accuracy_of_the_optional_parts():
    found = torch.zeros(4, 4, 4, dtype=torch.uint8)
    found[0, 0, 0] = found[2, 0, 0] = PARTS.index("hat")  # hats on samples 0 and 2
    found[0, 3, 3] = PARTS.index("glasses")  # glasses on sample 0
    layouts = torch.zeros(4, len(PARTS), 5)
    layouts[[0, 1], PARTS.index("hat"), 0] = 1  # hats asked of 0 and 1: found 1 of 2 asked, absent 1 of 2 not asked
    layouts[0, PARTS.index("glasses"), 0] = 1  # glasses asked of 0 only: right everywhere
    # no beard is asked of any sample: it has no balanced accuracy and is left out
    assert presence_agreement(ReadsBack(found), torch.zeros(4, 3, 4, 4), layouts) == pytest.approx((0.5 + 1.0) / 2)


def test_count_regions_joins_diagonal_neighbours_and_drops_specks():
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True  # a 2 x 2 block
    masks[0, 2, 2] = True  # touches it at a corner: the same region
    masks[0, 4:6, 4:6] = True  # a second block
    masks[0, 0, 5] = True  # a speck of one pixel
    assert count_regions(masks).tolist() == [3, 0]
    assert count_regions(masks, min_pixels=2).tolist() == [2, 0]


def test_count_faces_finds_one_face_in_a_render_and_four_in_a_tiled_canvas():
    _, _, maps, _, _ = generate_parts(40, resolution=32, seed=3)
    canvas = tiled(maps)  # (10, 64, 64): four faces each
    assert count_faces(ReadsBack(maps), torch.zeros(40, 3, 32, 32)).tolist() == [1] * 40
    assert count_faces(ReadsBack(canvas), torch.zeros(10, 3, 64, 64)).tolist() == [4] * 10
