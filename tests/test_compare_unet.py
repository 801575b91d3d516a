"""benchmarks/compare_unet.py: the diffusers UNet2DModel it builds is the same network as
minildm's UNet (same parameters, and the same outputs once given the same weights), and its
timing loop measures something."""

import importlib.util
import math
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

from minildm.nn import ResBlock, SelfAttention2d
from minildm.unet import UNet, UNetConfig, parameter_count

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_unet.py"
spec = importlib.util.spec_from_file_location("compare_unet", SCRIPT)
compare_unet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_unet)

SMALL = UNetConfig(in_channels=4, out_channels=4, base_channels=32, channel_mult=(1, 2), res_blocks=1,
                   attention_levels=(1,))
# the cpu profile's layout: attention only at the deepest level, a level without attention between
DEEPER = UNetConfig(in_channels=4, out_channels=4, base_channels=32, channel_mult=(1, 2, 2), res_blocks=1,
                    attention_levels=(2,))


def matching_layers(ours: UNet, theirs: diffusers.UNet2DModel) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """Pairs (minildm layer, diffusers layer) that hold the same weights, walking both UNets."""
    pairs = [(ours.time_mlp[0], theirs.time_embedding.linear_1), (ours.time_mlp[2], theirs.time_embedding.linear_2),
             (ours.input_conv, theirs.conv_in), (ours.output[0], theirs.conv_norm_out),
             (ours.output[2], theirs.conv_out)]
    for our_blocks, their_blocks, resampler in ((ours.down, theirs.down_blocks, "downsamplers"),
                                                (ours.up, theirs.up_blocks, "upsamplers")):
        our_blocks = iter(our_blocks)
        for block in their_blocks:
            for index, resnet in enumerate(block.resnets):
                layers = next(our_blocks)
                pairs.append((layers[0], resnet))
                if hasattr(block, "attentions"):
                    pairs.append((layers[1], block.attentions[index]))
            if getattr(block, resampler) is not None:
                layers = layers if resampler == "upsamplers" else next(our_blocks)  # Upsample ends an up block
                pairs.append((layers[-1].conv, getattr(block, resampler)[0].conv))
        assert next(our_blocks, None) is None
    middle = theirs.mid_block
    pairs += [(ours.middle[0], middle.resnets[0]), (ours.middle[1], middle.attentions[0]),
              (ours.middle[2], middle.resnets[1])]
    return pairs


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Give the minildm layer ``ours`` the weights of the diffusers layer ``theirs``."""
    if isinstance(ours, ResBlock):
        assert isinstance(theirs, ResnetBlock2D) and theirs.time_embedding_norm == "scale_shift"
        for our_layer, their_layer in ((ours.norm1, theirs.norm1), (ours.conv1, theirs.conv1),
                                       (ours.time_proj[1], theirs.time_emb_proj), (ours.norm2, theirs.norm2),
                                       (ours.conv2, theirs.conv2), (ours.skip, theirs.conv_shortcut)):
            if their_layer is not None:
                copy_weights(our_layer, their_layer)
    elif isinstance(ours, SelfAttention2d):
        assert isinstance(theirs, Attention) and theirs.heads == ours.heads
        copy_weights(ours.norm, theirs.group_norm)
        projections = (theirs.to_q, theirs.to_k, theirs.to_v)
        ours.qkv.weight.data = torch.cat([p.weight for p in projections])[..., None, None].clone()
        ours.qkv.bias.data = torch.cat([p.bias for p in projections]).clone()
        ours.proj_out.weight.data = theirs.to_out[0].weight[..., None, None].clone()
        ours.proj_out.bias.data = theirs.to_out[0].bias.clone()
    else:
        assert type(ours) is type(theirs)
        assert all(getattr(ours, a) == getattr(theirs, a) for a in ("num_groups", "eps") if hasattr(ours, a))
        ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("config", [SMALL, DEEPER])
def test_models_map_latents_to_latents_with_the_same_parameter_count(config, one_thread):
    ours, theirs = UNet(config), compare_unet.build_diffusers_unet(config)
    x, t, _ = compare_unet.random_batch(2, (4, 8, 8), torch.device("cpu"))
    assert ours(x, t).shape == theirs(x, t).shape == x.shape
    # the layers correspond one to one (see test_same_weights_give_the_same_outputs), so the
    # counts agree exactly, not merely within the 5% the brief allows
    assert parameter_count(ours) == parameter_count(theirs)


@pytest.mark.parametrize("config", [SMALL, DEEPER])
def test_same_weights_give_the_same_outputs(config, one_thread):
    """Copy every diffusers weight into minildm's UNet: a wrong group count, eps, head size,
    time embedding or attention placement in the matching would change the output."""
    ours, theirs = UNet(config), compare_unet.build_diffusers_unet(config)
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.fill_(math.nan)  # any weight the walk misses poisons the output
        for our_layer, their_layer in matching_layers(ours, theirs.model):
            copy_weights(our_layer, their_layer)
    x, t, _ = compare_unet.random_batch(2, (4, 8, 8), torch.device("cpu"))
    with torch.no_grad():
        expected = theirs(x, t)
        assert expected.abs().mean() > 0.01  # diffusers does not zero its output layer
        torch.testing.assert_close(ours(x, t), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config", [SMALL, DEEPER])
def test_forward_flops_agree(config, one_thread):
    """The same layers at the same resolutions, attention included (on CPU diffusers' attention
    runs a fused kernel that the counter needs to be told about)."""
    ours, theirs = UNet(config), compare_unet.build_diffusers_unet(config)
    x, t, _ = compare_unet.random_batch(1, (4, 8, 8), torch.device("cpu"))
    assert compare_unet.forward_flops(ours, x, t) == compare_unet.forward_flops(theirs, x, t) > 0


def test_heads_smaller_than_head_channels_are_refused():
    narrow = UNetConfig(base_channels=16, channel_mult=(1, 2), attention_levels=(0,))
    with pytest.raises(ValueError, match="attention heads"):
        compare_unet.build_diffusers_unet(narrow)


def test_timing_gives_a_positive_median_per_model(one_thread):
    models = {"ours": UNet(SMALL), "diffusers": compare_unet.build_diffusers_unet(SMALL)}
    medians = compare_unet.time_training_steps(models, batch=2, shape=(4, 8, 8), repeats=2, warmup=1)
    assert set(medians) == {"ours", "diffusers"}
    assert all(0 < median < math.inf for median in medians.values())


def test_training_step_changes_the_weights(one_thread):
    model = compare_unet.build_diffusers_unet(SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.model.conv_out.weight.clone()
    compare_unet.training_step(model, optimizer, *compare_unet.random_batch(2, (4, 8, 8), torch.device("cpu")),
                               bf16=False)
    assert not torch.equal(before, model.model.conv_out.weight)
