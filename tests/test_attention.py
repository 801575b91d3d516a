"""Cross-attention against a hand computation, padding masks, attention maps, and the UNet
with a context."""

import pytest
import torch
from einops import rearrange

from minildm.attention import Attention, SpatialTransformer, capture_attention_maps
from minildm.unet import UNet, UNetConfig, forward_flops


def randomize(module, generator):
    """Move every parameter away from its (partly zero) initialisation."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


def hand_attention(layer, x, context, mask=None):
    """softmax(Q K^T / sqrt(d)) V per head, with explicit loops over the heads."""
    q, k, v = layer.to_q(x), layer.to_k(context), layer.to_v(context)
    d = q.shape[-1] // layer.heads
    outputs = []
    for head in range(layer.heads):
        part = slice(head * d, (head + 1) * d)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / d**0.5  # (B, N, L)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        outputs.append(scores.softmax(-1) @ v[..., part])
    return layer.to_out(torch.cat(outputs, dim=-1))


def test_cross_attention_matches_the_formula_with_and_without_capture():
    generator = torch.Generator().manual_seed(0)
    layer = randomize(Attention(16, context_channels=8, head_channels=4), generator)
    x, context = torch.randn(2, 5, 16, generator=generator), torch.randn(2, 3, 8, generator=generator)
    expected = hand_attention(layer, x, context)
    assert torch.allclose(layer(x, context), expected, atol=1e-5)
    layer.capture_maps = True
    assert torch.allclose(layer(x, context), expected, atol=1e-5)
    assert layer.last_map.shape == (2, 4, 5, 3)
    assert torch.allclose(layer.last_map.sum(-1), torch.ones(2, 4, 5), atol=1e-6)


def test_padding_is_ignored():
    generator = torch.Generator().manual_seed(1)
    layer = randomize(Attention(8, context_channels=8, head_channels=4), generator)
    x, context = torch.randn(1, 6, 8, generator=generator), torch.randn(1, 2, 8, generator=generator)
    padded = torch.cat([context, 100 * torch.randn(1, 3, 8, generator=generator)], dim=1)  # (1, 5, 8)
    mask = torch.tensor([[True, True, False, False, False]])
    assert torch.allclose(layer(x, padded, mask), layer(x, context), atol=1e-5)
    assert torch.allclose(layer(x, padded, mask), hand_attention(layer, x, padded, mask), atol=1e-5)
    layer.capture_maps = True
    layer(x, padded, mask)
    assert torch.all(layer.last_map[..., 2:] == 0)


def test_spatial_transformer_starts_as_the_identity_and_then_reads_the_context():
    generator = torch.Generator().manual_seed(2)
    block = SpatialTransformer(16, context_channels=8, head_channels=8)
    x = torch.randn(2, 16, 4, 4, generator=generator)
    first, second = torch.randn(2, 3, 8, generator=generator), torch.randn(2, 3, 8, generator=generator)
    assert torch.equal(block(x, first), x)
    randomize(block, generator)
    assert not torch.allclose(block(x, first), block(x, second))
    capture_attention_maps(block)
    block(x, first)
    (maps,) = block.cross_attention_maps()
    assert maps.shape == (2, 2, 16, 3)  # (B, heads, pixels, tokens)


def test_pixels_are_tokens_in_row_major_order():
    """The transformer sees pixel (row, column) as token row * W + column."""
    block = SpatialTransformer(4, context_channels=4, head_channels=4)
    seen = {}

    def keep_tokens(module, args):
        seen["tokens"] = args[0]

    block.blocks[0].register_forward_pre_hook(keep_tokens)
    with torch.no_grad():
        block.norm = torch.nn.Identity()
        block.project_in.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        block.project_in.bias.zero_()
    x = torch.arange(2 * 4 * 2 * 3, dtype=torch.float32).view(2, 4, 2, 3)
    block(x, torch.zeros(2, 1, 4))
    assert torch.equal(seen["tokens"], rearrange(x, "b c h w -> b (h w) c"))
    assert torch.equal(seen["tokens"][0, 1 * 3 + 2], x[0, :, 1, 2])


def test_a_conditional_unet_depends_on_its_context():
    generator = torch.Generator().manual_seed(3)
    config = UNetConfig(base_channels=16, channel_mult=(1, 2), attention_levels=(1,), head_channels=8,
                        context_channels=12)
    unet = randomize(UNet(config), generator)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 500])
    context = torch.randn(2, 3, 12, generator=generator)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = unet(x, t, context, mask)
    assert out.shape == (2, 4, 8, 8)
    assert not torch.allclose(out, unet(x, t, torch.randn(2, 3, 12, generator=generator), mask))
    assert torch.allclose(out[1:], unet(x[1:], t[1:], context[1:, :1]), atol=1e-4)  # padding ignored
    with pytest.raises(ValueError, match="conditional"):
        unet(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), attention_levels=(1,)))(x, t, context)
    assert forward_flops(unet, (4, 8, 8), context_length=3) > forward_flops(unet, (4, 8, 8), context_length=1)
