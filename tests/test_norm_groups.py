"""One GroupNorm group count per network (minildm.nn.norm_groups): every autoencoder, UNet and
discriminator a profile builds normalises all its layers with the same count, the largest divisor
of 32 that divides every layer's width. That one count is what diffusers' models take
(norm_num_groups), and the one-GPU profiles keep the 32 groups their checkpoints were trained with."""

import math

import pytest
import torch
from torch import nn

from minildm.autoencoder import build_autoencoder
from minildm.conditioning import ConditioningConfig
from minildm.config import PROFILES
from minildm.losses import PatchDiscriminator
from minildm.recipes import autoencoder_config, ldm_config
from minildm.unet import UNet

# their widths are multiples of 32 (base 128 or 192, e.g. 192 * 3 = 576 = 18 * 32): 32 groups in every layer
THIRTY_TWO_GROUPS = ("gpu", "celebahq256", "churches256")
CONDITIONINGS = [ConditioningConfig(), ConditioningConfig("class", class_names=["a", "b"]),
                 ConditioningConfig("inpaint")]


def profile_models(profile) -> dict[str, nn.Module]:
    """The networks a profile builds, on the meta device (shapes without memory): its autoencoders
    (KL and VQ, every factor, and one folding 2x2 patches) and its UNets (unconditional,
    cross-attention to class tokens, concatenated inpainting input)."""
    models = {}
    with torch.device("meta"):
        for factor in (4, 8, 16):
            for reg in ("kl", "vq"):
                models[f"{reg}-f{factor}"] = build_autoencoder(autoencoder_config(profile, factor=factor, reg=reg))
        models["kl-f8-patch2"] = build_autoencoder(autoencoder_config(profile, factor=8, patch_size=2))
        for conditioning in CONDITIONINGS:
            config = ldm_config(profile, models["kl-f4"], conditioning=conditioning)
            models[f"unet-{conditioning.kind}"] = UNet(config.unet)
        models["discriminator"] = PatchDiscriminator()
    return models


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_group_norm_of_a_network_has_one_count_dividing_every_width(name):
    for model_name, model in profile_models(PROFILES[name]).items():
        norms = [layer for layer in model.modules() if isinstance(layer, nn.GroupNorm)]
        widths = {layer.num_channels for layer in norms}
        largest = max(g for g in (1, 2, 4, 8, 16, 32) if all(width % g == 0 for width in widths))
        assert {layer.num_groups for layer in norms} == {largest}, (name, model_name, sorted(widths))
        if name in THIRTY_TWO_GROUPS:  # as many as the former per-layer gcd(32, channels): checkpoints still load
            assert all(layer.num_groups == math.gcd(32, layer.num_channels) == 32 for layer in norms), model_name


def test_the_small_profiles_autoencoders_have_16_groups_in_every_layer():
    """The tiny and cpu autoencoders (16, 32 and 64 channels) had 16 groups in some layers and 32
    in others; now 16 everywhere, the count diffusers' norm_num_groups can express."""
    for name in ("tiny", "cpu"):
        autoencoder = profile_models(PROFILES[name])["kl-f4"]
        norms = [layer for layer in autoencoder.modules() if isinstance(layer, nn.GroupNorm)]
        assert sorted({layer.num_channels for layer in norms}) == [16, 32, 64]
        assert {layer.num_groups for layer in norms} == {16}
