"""minildm's UNet as diffusers' ``UNet2DModel``: the configuration, and the weights both ways.

Both are the ADM-style UNet (Dhariwal & Nichol 2021): a sinusoidal time embedding and an MLP,
ResBlocks that scale and shift their features by it, self-attention at chosen levels, a
middle block (ResBlock, attention, ResBlock) and an up path with concatenated skips and one
ResBlock more per level. :func:`diffusers_unet_config` sets ``UNet2DModel`` up level by level
so the layers match one for one; :func:`unet_links` pairs them. Both give every GroupNorm one
group count: minildm gcd(32, base channels) (:func:`minildm.nn.norm_groups`), diffusers its
``norm_num_groups``. Two things ``UNet2DModel`` cannot express are refused
(:class:`~minildm.interop.layers.InteropError`):

- attention heads: minildm narrows heads below ``head_channels`` where a level has fewer
  channels; diffusers cannot;
- a conditional UNet (cross-attention to tokens): ``UNet2DModel`` is unconditional.
"""

from __future__ import annotations

from torch import nn

from minildm.interop.layers import InteropError, Link, copy_from_diffusers, copy_to_diffusers, links_of, \
    one_group_count, require_diffusers
from minildm.unet import UNet, UNetConfig


def check_unet_exportable(config: UNetConfig) -> None:
    """Raise an :class:`InteropError` naming what ``UNet2DModel`` cannot express, if anything."""
    if config.context_channels is not None:
        raise InteropError("a UNet with cross-attention to condition tokens has no UNet2DModel counterpart "
                           "(UNet2DModel is unconditional)")
    attended = [*config.attention_levels, len(config.channel_mult) - 1]  # the middle block attends too
    narrow = [config.base_channels * config.channel_mult[level] for level in attended
              if config.base_channels * config.channel_mult[level] < config.head_channels]
    if narrow:
        raise InteropError(f"minildm narrows attention heads below head_channels {config.head_channels} at "
                           f"{narrow[0]} channels; UNet2DModel cannot")


def diffusers_unet_config(config: UNetConfig, *, sample_size: int | None = None) -> dict:
    """``UNet2DModel`` keyword arguments for the same network as ``UNet(config)``;
    ``sample_size`` is the latent side LDMPipeline samples at."""
    check_unet_exportable(config)
    levels = range(len(config.channel_mult))
    attention = [level in config.attention_levels for level in levels]
    groups = one_group_count(lambda: UNet(config), "the UNet's", "UNet2DModel takes")
    return dict(
        sample_size=sample_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        block_out_channels=tuple(config.base_channels * mult for mult in config.channel_mult),
        layers_per_block=config.res_blocks,  # diffusers also puts one more in each up block
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        mid_block_type="UNetMidBlock2D",  # ResBlock, attention, ResBlock
        add_attention=True,
        attention_head_dim=config.head_channels,
        resnet_time_scale_shift="scale_shift",  # ADM's FiLM: norm(h) * (1 + scale) + shift
        norm_num_groups=groups,
        attn_norm_num_groups=groups,  # else the mid attention has no GroupNorm with scale_shift
        norm_eps=1e-6,
        time_embedding_type="positional",
        flip_sin_to_cos=True,  # [cos, sin] like minildm.unet.timestep_embedding
        freq_shift=0,
        downsample_type="conv",
        downsample_padding=1,  # the UNet's stride-2 convolution pads every side, as minildm's Downsample
        upsample_type="conv",
        dropout=config.dropout,
    )


def unet_layer_pairs(ours: UNet, theirs: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """Pairs (minildm layer, diffusers layer) that compute the same function, walking both
    UNets in order: time MLP, input conv, down path, middle block, up path, output."""
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
        if next(our_blocks, None) is not None:
            raise ValueError("minildm's UNet has more blocks than the UNet2DModel")
    middle = theirs.mid_block
    pairs += [(ours.middle[0], middle.resnets[0]), (ours.middle[1], middle.attentions[0]),
              (ours.middle[2], middle.resnets[1])]
    return pairs


def unet_links(ours: UNet, theirs: nn.Module) -> list[Link]:
    """Every parameter of ``ours`` linked to the ``UNet2DModel`` parameters that hold it."""
    return links_of(unet_layer_pairs(ours, theirs), [ours], [theirs])


def unet_to_diffusers(unet: UNet, *, sample_size: int | None = None) -> nn.Module:
    """A ``UNet2DModel`` with the weights of ``unet``."""
    theirs = require_diffusers().UNet2DModel(**diffusers_unet_config(unet.config, sample_size=sample_size))
    copy_to_diffusers(unet_links(unet, theirs))
    return theirs.eval()


def copy_unet_from_diffusers(theirs: nn.Module, ours: UNet) -> None:
    """Give ``ours`` the weights of a ``UNet2DModel`` of the same shape (built from
    :func:`diffusers_unet_config` of its config)."""
    copy_from_diffusers(unet_links(ours, theirs))
