"""The autoencoder and its building blocks: shapes, the KL posterior, vector quantisation,
ResBlocks and attention checked against hand-written formulas, and a short overfit run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from minildm.data import toyfaces
from minildm.autoencoder import (AutoencoderConfig, AutoencoderKL, AutoencoderVQ, PixelSpace, build_autoencoder,
                                 measure_scale_factor, pixel_space_config)
from minildm.regularizers import DiagonalGaussian, VectorQuantizer
from minildm.nn import Downsample, ResBlock, SelfAttention2d, norm_groups, normalization


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**overrides) -> AutoencoderConfig:
    return AutoencoderConfig(**{"base_channels": 32, **overrides})


@pytest.mark.parametrize("reg", ["kl", "vq"])
@pytest.mark.parametrize("factor", [4, 8, 16])
def test_latent_and_image_shapes(reg, factor):
    autoencoder = build_autoencoder(small(reg=reg, factor=factor))
    assert isinstance(autoencoder, AutoencoderKL if reg == "kl" else AutoencoderVQ)
    x = torch.randn(2, 3, 32, 32)
    z = autoencoder.encode(x)
    assert autoencoder.latent_shape(32) == (4, 32 // factor, 32 // factor)
    assert z.shape == (2, *autoencoder.latent_shape(32))
    assert autoencoder.decode(z).shape == x.shape
    reconstruction, extras = autoencoder(x)
    assert reconstruction.shape == x.shape
    expected_keys = {"kl"} if reg == "kl" else {"vq_loss", "perplexity", "indices"}
    assert set(extras) == expected_keys
    downsamplings = sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in autoencoder.encoder.modules())
    assert downsamplings == math.log2(factor)


def test_resolution_must_be_a_multiple_of_the_factor():
    autoencoder = build_autoencoder(small(factor=4))
    message = "resolution 30 is not a multiple of the autoencoder's factor 4"
    with pytest.raises(ValueError, match=message):
        autoencoder.latent_shape(30)
    with pytest.raises(ValueError, match=message):
        autoencoder.encode(torch.randn(1, 3, 30, 30))


def test_config_round_trips_through_json_and_rejects_bad_values():
    config = AutoencoderConfig(reg="vq", factor=8, base_channels=48, codebook_size=256)
    assert AutoencoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.channel_multipliers == (1, 2, 4, 4)
    assert AutoencoderConfig(factor=16).channel_multipliers == (1, 1, 2, 2, 4)
    with pytest.raises(ValueError, match="unknown key 'colour' in AutoencoderConfig"):
        AutoencoderConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="factor must be 4, 8 or 16, got 2"):
        AutoencoderConfig(factor=2)
    with pytest.raises(ValueError, match="unknown autoencoder regularisation 'ae'"):
        AutoencoderConfig(reg="ae")
    with pytest.raises(ValueError, match="pixel space .* has factor 1"):
        AutoencoderConfig(reg="pixel", factor=4)


def test_the_saved_config_records_every_field_the_padding_too():
    config = AutoencoderConfig(reg="vq", factor=8, base_channels=48)
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["downsample_padding"] == "symmetric" and AutoencoderConfig.from_dict(saved) == config
    right_bottom = AutoencoderConfig(downsample_padding="right_bottom")
    assert AutoencoderConfig.from_dict(json.loads(json.dumps(right_bottom.to_dict()))) == right_bottom
    with pytest.raises(ValueError, match="unknown downsample padding 'left': choose 'symmetric' or 'right_bottom'$"):
        AutoencoderConfig(downsample_padding="left")
    with pytest.raises(ValueError, match="missing key 'downsample_padding'"):
        AutoencoderConfig.from_dict({key: value for key, value in saved.items() if key != "downsample_padding"})


def test_right_bottom_downsampling_pads_right_and_bottom_only():
    """The CompVis / diffusers encoder's downsampling: pad (0, 1, 0, 1), then a 3x3 conv of
    stride 2 without padding; the same parameters as the default (every side padded)."""
    torch.manual_seed(0)
    symmetric, right_bottom = Downsample(4), Downsample(4, "right_bottom")
    assert [(n, p.shape) for n, p in symmetric.named_parameters()] == \
        [(n, p.shape) for n, p in right_bottom.named_parameters()]
    right_bottom.load_state_dict(symmetric.state_dict())
    x = torch.randn(2, 4, 8, 6)
    weight, bias = symmetric.conv.weight, symmetric.conv.bias
    with torch.no_grad():
        torch.testing.assert_close(right_bottom(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), weight, bias, stride=2))
        torch.testing.assert_close(symmetric(x), F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, bias, stride=2))
        assert right_bottom(x).shape == symmetric(x).shape == (2, 4, 4, 3)
        assert (right_bottom(x) - symmetric(x)).abs().max() > 0.1
    with pytest.raises(ValueError, match="unknown downsample padding"):
        Downsample(4, "left")
    encoder = build_autoencoder(small(downsample_padding="right_bottom")).encoder
    assert {m.padding for m in encoder.modules() if isinstance(m, Downsample)} == {"right_bottom"}


def test_patches_fold_into_channels_and_unfold_at_the_end():
    """patch_size 2: the first conv sees pixel (c, 2h+i, 2w+j) as channel 4c + 2i + j at (h, w),
    the last conv's channel 4c + 2i + j becomes that pixel again, and only f / 2 is convolutional."""
    autoencoder = build_autoencoder(small(factor=8, patch_size=2))
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    autoencoder.encoder.conv_in.register_forward_hook(lambda m, inputs, out: seen.update(folded=inputs[0]))
    autoencoder.decoder.conv_out.register_forward_hook(lambda m, inputs, out: seen.update(last=out))
    z = autoencoder.encode(x)
    reconstruction = autoencoder.decode(z)
    assert z.shape == (2, *autoencoder.latent_shape(64)) == (2, 4, 8, 8) and reconstruction.shape == x.shape
    for c, i, j in [(0, 0, 0), (0, 1, 0), (1, 0, 1), (2, 1, 1)]:
        assert torch.equal(seen["folded"][:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
        assert torch.equal(reconstruction[:, c, i::2, j::2], seen["last"][:, 4 * c + 2 * i + j])
    downsamplings = sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in autoencoder.encoder.modules())
    assert downsamplings == 2 and autoencoder.config.channel_multipliers == (1, 2, 4)
    for factor, patch_size in [(4, 2), (8, 3), (16, 8), (8, 0)]:
        with pytest.raises(ValueError, match=f"patch size {patch_size} does not suit factor {factor}"):
            small(factor=factor, patch_size=patch_size)


def test_pixel_space_is_the_identity_with_factor_one():
    pixel_space = build_autoencoder(pixel_space_config())
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    assert isinstance(pixel_space, PixelSpace) and pixel_space.latent_shape(12) == (3, 12, 12)
    assert torch.equal(pixel_space.decode(pixel_space.encode(x)), x) and pixel_space.scale_factor.item() == 1.0


def test_kl_matches_torch_distributions():
    parameters = torch.randn(3, 8, 4, 5)
    posterior = DiagonalGaussian(parameters)
    mean, logvar = parameters[:, :4], parameters[:, 4:]
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=(1, 2, 3)).mean()
    assert torch.allclose(posterior.kl(), expected, rtol=1e-5)
    assert torch.equal(posterior.mode(), mean)
    assert DiagonalGaussian(torch.full((1, 2, 1, 1), 100.0)).logvar.item() == 20.0


def test_posterior_samples_have_its_mean_and_std():
    mean, std = 1.5, 0.5
    parameters = torch.cat([torch.full((4, 1, 128, 128), mean), torch.full((4, 1, 128, 128), math.log(std**2))], 1)
    posterior = DiagonalGaussian(parameters)
    samples = posterior.sample(torch.Generator().manual_seed(1))
    assert abs(samples.mean().item() - mean) < 0.01 and abs(samples.std().item() - std) < 0.01
    assert torch.equal(samples, posterior.sample(torch.Generator().manual_seed(1)))


def quantizer_with_random_codebook(codebook_size: int = 16, dim: int = 3) -> VectorQuantizer:
    quantizer = VectorQuantizer(codebook_size, dim, beta=0.25)
    nn.init.normal_(quantizer.codebook.weight)
    return quantizer.eval()


def test_quantizer_picks_the_nearest_code():
    quantizer = quantizer_with_random_codebook()
    z_e = torch.randn(2, 3, 4, 5)
    z_q, _, indices = quantizer(z_e)
    codebook = quantizer.codebook.weight
    for b, i, j in [(b, i, j) for b in range(2) for i in range(4) for j in range(5)]:
        distances = [((z_e[b, :, i, j] - row) ** 2).sum().item() for row in codebook]
        assert indices[b, i, j].item() == min(range(len(distances)), key=distances.__getitem__)
        assert torch.allclose(z_q[b, :, i, j], codebook[indices[b, i, j]])


def test_straight_through_gradient_and_loss_formula():
    quantizer = quantizer_with_random_codebook()
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    z_q, loss, indices = quantizer(z_e)
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.equal(z_e.grad, upstream)  # the decoder's gradient reaches the encoder unchanged

    codes = quantizer.codebook.weight[indices].permute(0, 3, 1, 2)  # (B, dim, H, W)
    squared = ((z_e.detach() - codes.detach()) ** 2).mean()
    assert torch.allclose(loss, (1 + 0.25) * squared)
    z_e.grad = None
    loss.backward()  # only the commitment term reaches the encoder
    assert torch.allclose(z_e.grad, 2 * 0.25 * (z_e - codes).detach() / z_e.numel(), atol=1e-7)
    used = indices.unique()
    assert quantizer.codebook.weight.grad[used].abs().sum() > 0


def test_perplexity_counts_codes_in_use():
    quantizer = VectorQuantizer(8, 2)
    assert quantizer.perplexity(torch.arange(8).repeat(3)).item() == pytest.approx(8.0)
    assert quantizer.perplexity(torch.zeros(10, dtype=torch.long)).item() == pytest.approx(1.0)
    assert quantizer.perplexity(torch.tensor([[0, 5], [0, 5]])).item() == pytest.approx(2.0)


def test_dead_codes_are_revived_onto_encoder_outputs():
    quantizer = VectorQuantizer(16, 2, revive_after=3)
    with torch.no_grad():
        quantizer.codebook.weight.fill_(100.0)
        quantizer.codebook.weight[0] = 0.0  # the only code near the data
    quantizer.steps_since_used.zero_()
    z_e = torch.randn(4, 2, 4, 4)
    for _ in range(3):
        _, _, indices = quantizer(z_e)
        assert quantizer.perplexity(indices).item() == pytest.approx(1.0)
    _, _, indices = quantizer(z_e)  # codes 1..15 have been unused for 3 steps: revived first
    assert quantizer.perplexity(indices).item() > 8
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    for row in quantizer.codebook.weight[1:]:
        assert (flat - row).abs().sum(dim=1).min() < 1e-6  # every revived code is an encoder output

    frozen_codebook = quantizer.codebook.weight.clone()
    quantizer.eval()
    quantizer(100 + z_e)
    assert torch.equal(quantizer.codebook.weight, frozen_codebook)  # eval mode changes nothing


def test_first_training_step_fills_the_codebook_from_the_batch():
    quantizer = VectorQuantizer(32, 4)
    _, _, indices = quantizer(torch.randn(8, 4, 8, 8))
    assert quantizer.perplexity(indices).item() > 16


def test_vq_encode_gives_the_latent_before_quantisation_and_decode_snaps_it():
    autoencoder = build_autoencoder(small(reg="vq", codebook_size=64)).eval()
    x = torch.randn(2, 3, 32, 32)
    z = autoencoder.encode(x)  # what the diffusion model learns, as in the paper's code
    assert torch.equal(z, autoencoder.encoder(x))
    codebook = autoencoder.quantizer.codebook.weight
    assert torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 4), codebook).min(dim=1).values.max() > 1e-3
    codes = autoencoder.quantized_codes(x)
    rows = codes.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.cdist(rows, codebook).min(dim=1).values.max() < 1e-5
    assert torch.allclose(autoencoder.decode(z), autoencoder.decode(codes), atol=1e-5)
    assert torch.allclose(autoencoder.decode(codes), autoencoder.decoder(codes), atol=1e-5)


def test_resblock_starts_as_its_skip_path():
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(ResBlock(32, 32)(x), x)
    block = ResBlock(32, 64)
    assert torch.equal(block(x), block.skip(x))
    with pytest.raises(ValueError, match="built for no time embedding"):
        block(x, torch.randn(2, 16))


def test_resblock_time_embedding_scales_and_shifts():
    block = ResBlock(32, 64, time_channels=16)
    x, t1, t2 = torch.randn(2, 32, 8, 8), torch.randn(2, 16), torch.randn(2, 16)
    assert torch.equal(block(x, t1), block.skip(x))  # zero-initialised last conv
    nn.init.normal_(block.conv2.weight, std=0.05)
    assert not torch.allclose(block(x, t1), block(x, t2))
    with pytest.raises(ValueError, match="built for a time embedding"):
        block(x)
    h = block.norm2(block.conv1(F.silu(block.norm1(x))))
    scale, shift = block.time_proj(t1)[:, :64, None, None], block.time_proj(t1)[:, 64:, None, None]
    expected = block.skip(x) + block.conv2(F.silu(h * (1 + scale) + shift))
    assert torch.allclose(block(x, t1), expected, atol=1e-6)


def test_self_attention_matches_the_formula():
    channels, heads, d = 32, 2, 16
    attention = SelfAttention2d(channels, heads=heads)
    nn.init.normal_(attention.proj_out.weight, std=0.1)
    x = torch.randn(2, channels, 4, 5)
    qkv = attention.qkv(attention.norm(x)).reshape(2, 3, heads, d, 20)  # (B, 3, heads, d, HW)
    q, k, v = qkv[:, 0].transpose(-1, -2), qkv[:, 1].transpose(-1, -2), qkv[:, 2].transpose(-1, -2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, heads, HW, HW)
    out = (weights @ v).transpose(-1, -2).reshape(2, channels, 4, 5)
    assert torch.allclose(attention(x), x + attention.proj_out(out), atol=1e-5)
    assert SelfAttention2d(channels, head_channels=8).heads == 4
    assert torch.equal(SelfAttention2d(channels)(x), x)  # zero-initialised output projection


def test_norm_groups_is_the_largest_divisor_of_32_dividing_every_width():
    for widths in [(64,), (48,), (3,), (16, 32, 64), (192, 384, 576, 768), (24, 48, 96)]:
        expected = max(g for g in (1, 2, 4, 8, 16, 32) if all(width % g == 0 for width in widths))
        assert norm_groups(*widths) == expected, widths
    layer = normalization(64, groups=16)
    assert (layer.num_groups, layer.num_channels, layer.eps) == (16, 64, 1e-6)
    assert ResBlock(16, 32).norm2.num_groups == 16  # a block on its own: one count for both widths


def test_autoencoder_overfits_a_batch():
    x, _ = toyfaces.generate(4, 16)  # 16 px, no attention: a few seconds on two shared CPU cores
    autoencoder = build_autoencoder(AutoencoderConfig(base_channels=16, attention=False))
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=1e-3)

    def reconstruction_error() -> float:
        with torch.no_grad():
            return F.mse_loss(autoencoder.decode(autoencoder.encode(x)), x).item()

    before = reconstruction_error()
    for _ in range(100):
        reconstruction, extras = autoencoder(x)
        loss = F.mse_loss(reconstruction, x) + 1e-6 * extras["kl"] / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert reconstruction_error() < before / 10


def test_measure_scale_factor_gives_unit_variance_latents():
    autoencoder = build_autoencoder(small()).train()
    images = 3 * torch.randn(40, 3, 16, 16)
    scale = measure_scale_factor(autoencoder, images, batch_size=16)
    assert autoencoder.training  # the mode is restored
    autoencoder.eval()
    with torch.no_grad():
        latents = autoencoder.encode(images)
    assert scale == pytest.approx(1 / latents.std().item(), rel=1e-4)
    assert (latents * scale).std().item() == pytest.approx(1.0, rel=1e-4)
    assert not autoencoder.scale_factor_measured and "scale_factor" in autoencoder.state_dict()
    autoencoder.scale_factor.fill_(scale)
    assert autoencoder.scale_factor_measured


def test_only_a_kl_autoencoders_scale_factor_waits_to_be_measured():
    kl, vq = build_autoencoder(small()), build_autoencoder(small(reg="vq"))
    assert torch.isnan(kl.scale_factor) and not kl.scale_factor_measured
    assert vq.scale_factor.item() == 1.0 and vq.scale_factor_measured  # 1 by definition
    pixel_space = build_autoencoder(pixel_space_config())
    assert pixel_space.scale_factor.item() == 1.0 and pixel_space.scale_factor_measured
