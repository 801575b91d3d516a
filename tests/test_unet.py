"""The time-conditional UNet: shapes, the time embedding, skip wiring, budget reporting."""

import math

import pytest
import torch

from minildm.unet import UNet, UNetConfig, forward_flops, parameter_count, timestep_embedding

SMALL = UNetConfig(in_channels=4, out_channels=4, base_channels=16, channel_mult=(1, 2), res_blocks=1,
                   attention_levels=(1,), head_channels=8)


def test_timestep_embedding_matches_the_formula():
    t = torch.tensor([0, 7, 999])
    embedding = timestep_embedding(t, 8)
    assert embedding.shape == (3, 8)
    for row, step in enumerate(t.tolist()):
        for i in range(4):
            frequency = 10_000 ** (-i / 4)
            assert embedding[row, i].item() == pytest.approx(math.cos(step * frequency), abs=1e-5)
            assert embedding[row, 4 + i].item() == pytest.approx(math.sin(step * frequency), abs=1e-5)


@pytest.mark.parametrize("config", [
    SMALL,
    UNetConfig(in_channels=3, out_channels=3, base_channels=16, channel_mult=(1, 2, 2), res_blocks=2,
               attention_levels=(0, 2), head_channels=8),
])
def test_output_has_the_latent_shape_and_starts_at_zero(config):
    unet = UNet(config)
    x = torch.randn(2, config.in_channels, 8, 8)
    out = unet(x, torch.tensor([3, 900]))
    assert out.shape == (2, config.out_channels, 8, 8)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer: predicts no noise yet


def test_every_parameter_gets_a_gradient_and_time_matters():
    torch.manual_seed(0)
    unet = UNet(SMALL)
    for parameter in unet.parameters():  # move away from the zero initialisation
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    x = torch.randn(2, 4, 8, 8)
    out = unet(x, torch.tensor([10, 10]))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())
    assert not torch.allclose(out, unet(x, torch.tensor([500, 500])))  # the time step changes the output


def test_skip_connections_carry_the_input_to_the_output():
    torch.manual_seed(0)
    unet = UNet(SMALL)
    for parameter in unet.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    unet(x, torch.tensor([5]))[0, :, 0, 0].sum().backward()
    # the corner output depends on the corner input, and (through the down path) on far pixels
    assert x.grad[0, :, 0, 0].abs().sum() > 0 and x.grad[0, :, 7, 7].abs().sum() > 0


def test_bad_inputs_are_refused():
    unet = UNet(SMALL)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        unet(torch.randn(1, 4, 7, 7), torch.tensor([0]))
    with pytest.raises(ValueError, match="unconditional"):
        unet(torch.randn(1, 4, 8, 8), torch.tensor([0]), context=torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="unknown key 'width' in UNetConfig"):
        UNetConfig.from_dict({"base_channels": 8, "width": 3})


def test_config_round_trips_through_json_values():
    config = UNetConfig(base_channels=24, channel_mult=(1, 2, 3), attention_levels=(2,))
    restored = UNetConfig.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()})
    assert restored == config
    with pytest.raises(ValueError, match="missing key 'dropout' in UNetConfig"):
        UNetConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "dropout"})


def test_parameter_count_and_flops():
    unet = UNet(SMALL)
    assert parameter_count(unet) == sum(p.numel() for p in unet.parameters())
    one, four = forward_flops(unet, (4, 8, 8), 1), forward_flops(unet, (4, 8, 8), 4)
    assert four == 4 * one
    input_conv = 2 * 4 * 16 * 9 * 8 * 8  # the first 3x3 conv alone, multiply-adds counted twice
    assert one > 20 * input_conv
