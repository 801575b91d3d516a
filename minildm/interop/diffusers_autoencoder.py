"""minildm's autoencoders as diffusers' ``AutoencoderKL`` / ``VQModel``, and back.

Both libraries build the autoencoder of LDM (Rombach et al. 2022, Sec. 3.1; the CompVis code):
``conv_in``, per level ResBlocks and a 2x resampling, a middle block (ResBlock, single-head
self-attention, ResBlock), GroupNorm, SiLU, ``conv_out``; the decoder has one ResBlock more per
level. :func:`autoencoder_layer_pairs` pairs the layers one for one. The differences:

- downsampling: diffusers' encoder pads each stride-2 convolution on the right and bottom
  only (CompVis); minildm's :class:`minildm.nn.Downsample` pads every side by default and
  right and bottom with ``AutoencoderConfig(downsample_padding="right_bottom")``. Output pixel
  i sees input pixels 2i..2i+2 in the one and 2i-1..2i+1 in the other, and no 3x3 kernel turns
  one into the other. An imported encoder gets ``"right_bottom"`` and computes what diffusers'
  computes; an exported ``"right_bottom"`` autoencoder encodes in diffusers as in minildm. A
  ``"symmetric"`` one (minildm's default) exports a different *encoder*, but the same decoder
  (upsampling pads every side in both): it decodes exactly as minildm's, which is all a
  diffusers pipeline does with it.
- ``quant_conv`` and ``post_quant_conv``, 1x1 convolutions after the encoder and before the
  decoder that minildm does not have. Exported: KL leaves them out (``use_quant_conv=False``),
  VQ sets them to the identity. Imported: ``quant_conv`` folds into the encoder's last
  convolution; ``post_quant_conv`` (P z + p) folds into the decoder's first by moving minildm's
  latent to ``z + P^-1 p``: then P z + p = P (z + P^-1 p), a bias-free 1x1 map that commutes
  with the decoder convolution's zero padding. The posterior keeps its variance and its
  diagonal form; its mean moves by that constant vector.
- GroupNorm: both give every layer one group count, minildm gcd(32, base channels)
  (:func:`minildm.nn.norm_groups`), diffusers its ``norm_num_groups``; an imported autoencoder
  must have the count minildm would give it.
- minildm's ``patch_size`` (space-to-depth) has no diffusers counterpart.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from minildm.autoencoder import CHANNEL_MULTIPLIERS, Autoencoder, AutoencoderConfig, build_autoencoder
from minildm.interop.layers import InteropError, Link, copy_from_diffusers, copy_to_diffusers, links_of, \
    one_group_count, require_diffusers
from minildm.nn import norm_groups

ENCODER_BLOCK, DECODER_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"


def diffusers_autoencoder_config(config: AutoencoderConfig, *, scaling_factor: float, sample_size: int) -> dict:
    """``AutoencoderKL`` (KL) or ``VQModel`` (VQ) keyword arguments for the same layers as
    ``build_autoencoder(config)``; ``scaling_factor`` is what a pipeline divides latents by
    before decoding, ``sample_size`` the image side."""
    if config.reg not in ("kl", "vq"):
        raise InteropError("a pixel-space model has no autoencoder to export (diffusers' LDMPipeline decodes "
                           "latents with one)")
    if config.patch_size != 1:
        raise InteropError(f"the autoencoder folds {config.patch_size}x{config.patch_size} pixel patches into "
                           f"channels (patch_size); diffusers' autoencoders cannot")
    groups = one_group_count(lambda: build_autoencoder(config), "the autoencoder's", "diffusers' take")
    levels = len(config.channel_multipliers)
    shared = dict(in_channels=config.image_channels, out_channels=config.image_channels,
                  down_block_types=(ENCODER_BLOCK,) * levels, up_block_types=(DECODER_BLOCK,) * levels,
                  block_out_channels=config.widths,
                  layers_per_block=config.res_blocks, act_fn="silu", latent_channels=config.latent_channels,
                  norm_num_groups=groups, sample_size=sample_size, scaling_factor=scaling_factor,
                  mid_block_add_attention=config.attention)
    if config.reg == "kl":
        return {**shared, "use_quant_conv": False, "use_post_quant_conv": False}
    return {**shared, "num_vq_embeddings": config.codebook_size, "vq_embed_dim": config.latent_channels,
            "norm_type": "group"}


def autoencoder_config_from_diffusers(config) -> AutoencoderConfig:
    """The minildm configuration of an ``AutoencoderKL`` configuration, or an
    :class:`InteropError` naming the first thing minildm's :class:`AutoencoderConfig` cannot hold."""
    widths = tuple(config.block_out_channels)
    base, levels = widths[0], len(widths)
    factor = 2 ** (levels - 1)
    if CHANNEL_MULTIPLIERS.get(factor) != tuple(width / base for width in widths):
        layouts = "; ".join(f"f = {f}: {multipliers}" for f, multipliers in CHANNEL_MULTIPLIERS.items())
        raise InteropError(f"block_out_channels {widths} are not base channels times minildm's level layout "
                           f"({layouts})")
    blocks = {*config.down_block_types, *config.up_block_types} - {ENCODER_BLOCK, DECODER_BLOCK}
    if blocks:
        raise InteropError(f"block type {sorted(blocks)[0]} has no minildm counterpart")
    if config.act_fn != "silu":
        raise InteropError(f"activation {config.act_fn!r}: minildm's autoencoder uses SiLU")
    if config.in_channels != config.out_channels:
        raise InteropError(f"{config.in_channels} input but {config.out_channels} output channels: minildm "
                           f"reconstructs the image's own channels")
    if norm_groups(*widths) != config.norm_num_groups:
        raise InteropError(f"norm_num_groups {config.norm_num_groups}: minildm gives every layer of an autoencoder "
                           f"of {widths} channels {norm_groups(*widths)} groups (the largest divisor of 32 that "
                           f"divides every width)")
    return AutoencoderConfig(reg="kl", factor=factor, base_channels=base, res_blocks=config.layers_per_block,
                             latent_channels=config.latent_channels, attention=config.mid_block_add_attention,
                             image_channels=config.in_channels, downsample_padding="right_bottom")


def autoencoder_layer_pairs(ours: Autoencoder, theirs: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """Pairs (minildm layer, diffusers layer) of the encoder, the decoder and a VQ codebook."""
    pairs = []
    for our_coder, their_coder, blocks, resampler in ((ours.encoder, theirs.encoder, "down_blocks", "downsamplers"),
                                                      (ours.decoder, theirs.decoder, "up_blocks", "upsamplers")):
        our_layers = iter(our_coder.down if blocks == "down_blocks" else our_coder.up)
        for block in getattr(their_coder, blocks):
            pairs += [(next(our_layers), resnet) for resnet in block.resnets]
            for sampler in getattr(block, resampler) or ():
                pairs.append((next(our_layers).conv, sampler.conv))
        if next(our_layers, None) is not None:
            raise ValueError("minildm's autoencoder has more layers than diffusers'")
        middle = their_coder.mid_block
        pairs += [(our_coder.conv_in, their_coder.conv_in), (our_coder.mid[0], middle.resnets[0]),
                  (our_coder.mid[2], middle.resnets[1]), (our_coder.norm_out, their_coder.conv_norm_out),
                  (our_coder.conv_out, their_coder.conv_out)]
        if middle.attentions[0] is not None or not isinstance(our_coder.mid[1], nn.Identity):
            pairs.append((our_coder.mid[1], middle.attentions[0]))
    if ours.config.reg == "vq":
        pairs.append((ours.quantizer.codebook, theirs.quantize.embedding))
    return pairs


def autoencoder_links(ours: Autoencoder, theirs: nn.Module) -> list[Link]:
    """Every parameter of ``ours`` linked to the diffusers parameters that hold it; diffusers'
    ``quant_conv`` and ``post_quant_conv`` are not among them (see the module's docstring)."""
    their_modules = [theirs.encoder, theirs.decoder, *([theirs.quantize] if ours.config.reg == "vq" else [])]
    return links_of(autoencoder_layer_pairs(ours, theirs), [ours], their_modules)


def autoencoder_to_diffusers(autoencoder: Autoencoder, *, scaling_factor: float, sample_size: int) -> nn.Module:
    """An ``AutoencoderKL`` or ``VQModel`` with ``autoencoder``'s weights. Its decoder computes
    what minildm's does; its encoder too when ``downsample_padding`` is ``"right_bottom"`` (with
    ``"symmetric"`` it is the same layers under diffusers' downsampling, see the module's docstring)."""
    diffusers = require_diffusers()
    config = diffusers_autoencoder_config(autoencoder.config, scaling_factor=scaling_factor, sample_size=sample_size)
    theirs = diffusers.AutoencoderKL(**config) if autoencoder.config.reg == "kl" else diffusers.VQModel(**config)
    copy_to_diffusers(autoencoder_links(autoencoder, theirs))
    if autoencoder.config.reg == "vq":
        with torch.no_grad():
            for conv in (theirs.quant_conv, theirs.post_quant_conv):  # (c, c, 1, 1): the identity
                conv.weight.copy_(torch.eye(conv.in_channels)[..., None, None])
                conv.bias.zero_()
    return theirs.eval()


DOWNSAMPLE_PADDINGS = {0: "right_bottom", 1: "symmetric"}  # diffusers Downsample2D padding -> minildm's


def encoder_downsample_padding(theirs: nn.Module) -> str:
    """minildm's ``downsample_padding`` for the encoder of ``theirs``: diffusers' ``Downsample2D``
    with ``padding=0`` pads right and bottom (``F.pad(x, (0, 1, 0, 1))``, what ``AutoencoderKL``
    builds), with ``padding=1`` every side."""
    paddings = {sampler.padding for block in theirs.encoder.down_blocks for sampler in block.downsamplers or ()}
    if len(paddings) > 1 or not paddings <= set(DOWNSAMPLE_PADDINGS):
        raise InteropError(f"the encoder's downsampling layers pad by {sorted(paddings)}: minildm's encoder pads "
                           f"all of them one way, 0 (right and bottom) or 1 (every side)")
    return DOWNSAMPLE_PADDINGS[paddings.pop()] if paddings else "right_bottom"


def autoencoder_from_diffusers(theirs: nn.Module) -> Autoencoder:
    """A minildm KL autoencoder computing what the diffusers ``AutoencoderKL`` ``theirs``
    computes: the same reconstructions and log-variances, the posterior mean moved by a constant
    vector when there is a ``post_quant_conv`` (see the module's docstring). Scale factor not measured."""
    if type(theirs).__name__ != "AutoencoderKL":
        raise InteropError(f"a {type(theirs).__name__} is not imported; only AutoencoderKL is")
    config = autoencoder_config_from_diffusers(theirs.config)
    config = dataclasses.replace(config, downsample_padding=encoder_downsample_padding(theirs))
    ours = build_autoencoder(config)
    copy_from_diffusers(autoencoder_links(ours, theirs))
    with torch.no_grad():
        if theirs.quant_conv is not None:
            _fold_quant_conv(ours, theirs.quant_conv)
        if theirs.post_quant_conv is not None:
            _fold_post_quant_conv(ours, theirs.post_quant_conv)
    return ours.eval()


def _fold_quant_conv(ours: Autoencoder, quant_conv: nn.Conv2d) -> None:
    """conv_out, then the 1x1 map Q h + q, is one convolution: weights Q W, bias Q b + q."""
    mix, conv = quant_conv.weight[:, :, 0, 0], ours.encoder.conv_out
    conv.weight.copy_(torch.einsum("oj,jikl->oikl", mix, conv.weight))
    conv.bias.copy_(mix @ conv.bias + quant_conv.bias)


def _fold_post_quant_conv(ours: Autoencoder, post_quant_conv: nn.Conv2d) -> None:
    """Decoder input P z + p = P (z + s) with s = P^-1 p: minildm's latent is z + s (the
    encoder's mean moves by s), and P joins the decoder's first convolution."""
    mix = post_quant_conv.weight[:, :, 0, 0].double()
    if torch.linalg.matrix_rank(mix) < len(mix):
        raise InteropError("post_quant_conv is singular: its bias cannot move into the latent")
    shift = torch.linalg.solve(mix, post_quant_conv.bias.double()).float()
    channels = ours.config.latent_channels
    ours.encoder.conv_out.bias[:channels] += shift  # the mean half of (mean, logvar)
    conv_in = ours.decoder.conv_in
    conv_in.weight.copy_(torch.einsum("ojkl,ji->oikl", conv_in.weight, mix.float()))
