"""benchmarks/compare_unet.py: the diffusers UNet2DModel it builds is the same network as
minildm's UNet (same parameters, and the same outputs once given the same weights), and its
timing loop measures something."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from minildm.interop.diffusers_unet import copy_unet_from_diffusers
from minildm.interop.layers import InteropError
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
    """Copy every diffusers weight into minildm's UNet (the package's mapping,
    :mod:`minildm.interop.diffusers_unet`): a wrong group count, eps, head size, time
    embedding or attention placement in the matching would change the output."""
    ours, theirs = UNet(config), compare_unet.build_diffusers_unet(config)
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.fill_(math.nan)  # any weight the walk misses poisons the output
    copy_unet_from_diffusers(theirs.model, ours)
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
    with pytest.raises(InteropError, match="attention heads"):
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
