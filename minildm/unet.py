"""The time-conditional UNet that predicts the noise (LDM, Rombach et al. 2022, Sec. 3.2-3.3).

The network ``eps_theta(z_t, t)`` of LDM eq. 2 is a UNet (Ronneberger et al. 2015) in the
form DDPM and ADM (Dhariwal & Nichol 2021) gave it:

- the time step ``t`` becomes a vector by a sinusoidal embedding (Vaswani et al. 2017) and an
  MLP; every ResBlock scales and shifts its features by it (:class:`minildm.nn.ResBlock`);
- a down path of levels, each ``res_blocks`` ResBlocks (plus self-attention at the levels in
  ``attention_levels``) followed by a 2x downsampling; a middle block (ResBlock, attention,
  ResBlock); an up path that mirrors it, each block taking the matching down-path features
  through a skip connection (concatenated channels);
- the output layer starts at zero, so the untrained network predicts zero noise.

``gradient_checkpointing = True`` (:func:`minildm.nn.set_gradient_checkpointing`) recomputes
each block's activations in the backward pass instead of keeping them (Chen et al. 2016).

With ``context_channels`` set, the attention layers become spatial transformers
(:mod:`minildm.attention`): self-attention, then cross-attention to ``context`` (B, L, D),
the token sequence of a conditioning encoder (LDM Sec. 3.3), then a feed-forward layer.
Concat conditioning (inpainting, super-resolution) needs nothing here: it only adds input
channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from minildm.attention import SpatialTransformer
from minildm.config import SavedConfig
from minildm.nn import (Downsample, ResBlock, SelfAttention2d, Upsample, checkpointed, norm_groups, normalization,
                        zero_module)


@dataclass
class UNetConfig(SavedConfig):
    """Sizes of the UNet; saved in a run folder's ``config.json``.

    Attributes:
        in_channels, out_channels: channels of the latent (4 for a KL autoencoder, 3 for VQ).
        base_channels: channels at the first level (the paper's CelebA-HQ model: 224). Every
            GroupNorm has gcd(32, base_channels) groups (:func:`minildm.nn.norm_groups` of the widths).
        channel_mult: channels of each level as multiples of ``base_channels``; one
            downsampling between consecutive levels (the paper: 1, 2, 3, 4).
        res_blocks: ResBlocks per level on the way down (the paper: 2); one more on the way up.
        attention_levels: levels (0 = full latent resolution) with self-attention.
        head_channels: channels per attention head (the paper: 32).
        dropout: dropout inside the ResBlocks.
        context_channels: size D of conditioning tokens, or None for an unconditional model.

    The ResBlocks inject time by scale and shift (ADM); the paper's CelebA-HQ config adds it
    instead, so the same sizes give 286M parameters here against the paper's 274M.
    """

    in_channels: int = 4
    out_channels: int = 4
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)
    head_channels: int = 32
    dropout: float = 0.0
    context_channels: int | None = None


def timestep_embedding(t: Tensor, channels: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of integer time steps (Vaswani et al. 2017, Sec. 3.5):
    ``[cos(t w_i), sin(t w_i)]`` with frequencies ``w_i = max_period^(-i / (channels/2))``.

    ``t``: (B,) -> (B, channels).
    """
    # Exercise 04.1: the sinusoidal embedding, cosines first
    ### BEGIN SOLUTION
    half = channels // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    angles = t.float()[:, None] * frequencies[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    ### END SOLUTION


class UNetBlock(nn.ModuleList):
    """Layers applied in order; ResBlocks also get the time embedding, spatial transformers
    the context tokens and their padding mask."""

    def forward(self, h: Tensor, t_emb: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, t_emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    """``forward(x, t, context=None, context_mask=None)``: latents (B, C, H, W), time steps
    (B,) and, for a conditional UNet, tokens (B, L, D) with a mask (B, L) that is False at
    padding -> (B, C_out, H, W).

    H and W must be multiples of ``2 ** (len(channel_mult) - 1)``. ``gradient_checkpointing``
    (not part of the config) runs every block through :func:`minildm.nn.checkpointed`.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        base = config.base_channels
        groups = norm_groups(base, *(base * mult for mult in config.channel_mult))  # one count for every GroupNorm
        time_channels = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, time_channels), nn.SiLU(),
                                      nn.Linear(time_channels, time_channels))

        def resblock(in_channels: int, out_channels: int) -> ResBlock:
            return ResBlock(in_channels, out_channels, config.dropout, time_channels, groups=groups)

        def block(in_channels: int, out_channels: int, level: int) -> UNetBlock:
            layers = [resblock(in_channels, out_channels)]
            if level in config.attention_levels:
                layers.append(self.make_attention(out_channels, groups))
            return UNetBlock(layers)

        self.input_conv = nn.Conv2d(config.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base]
        channels = base
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.res_blocks):
                self.down.append(block(channels, base * mult, level))
                channels = base * mult
                skip_channels.append(channels)
            if level < len(config.channel_mult) - 1:
                self.down.append(UNetBlock([Downsample(channels)]))
                skip_channels.append(channels)

        self.middle = UNetBlock([resblock(channels, channels), self.make_attention(channels, groups),
                                 resblock(channels, channels)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for index in range(config.res_blocks + 1):
                layers = block(channels + skip_channels.pop(), base * mult, level)
                channels = base * mult
                if level > 0 and index == config.res_blocks:
                    layers.append(Upsample(channels))
                self.up.append(layers)

        self.output = nn.Sequential(normalization(channels, groups), nn.SiLU(),
                                    zero_module(nn.Conv2d(channels, config.out_channels, 3, padding=1)))

    def make_attention(self, channels: int, groups: int) -> nn.Module:
        """The attention layer at one place in the network: self-attention over the pixels,
        or a spatial transformer that also attends to the context tokens; ``groups`` in its GroupNorm."""
        head_channels = min(self.config.head_channels, channels)
        if self.config.context_channels is None:
            return SelfAttention2d(channels, head_channels=head_channels, groups=groups)
        return SpatialTransformer(channels, self.config.context_channels, head_channels, groups=groups)

    @property
    def downsampling(self) -> int:
        """How much smaller the deepest level is than the input, per side."""
        return 2 ** (len(self.config.channel_mult) - 1)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        if (context is None) != (self.config.context_channels is None):
            raise ValueError("this UNet is unconditional: it was built without context_channels"
                             if context is not None else "this UNet is conditional: pass the context tokens")
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(f"latent side {tuple(x.shape[-2:])} is not a multiple of {self.downsampling}")
        t_emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, 4 * base)
        h = self.input_conv(x)  # (B, base, H, W)
        recompute = self.gradient_checkpointing
        skips = [h]
        for block in self.down:
            h = checkpointed(block, h, t_emb, context, context_mask, enabled=recompute)
            skips.append(h)
        h = checkpointed(self.middle, h, t_emb, context, context_mask,
                         enabled=recompute)  # (B, C_deepest, H / 2^(levels-1), ...)
        for block in self.up:
            h = checkpointed(block, torch.cat([h, skips.pop()], dim=1), t_emb, context, context_mask,
                             enabled=recompute)
        return self.output(h)  # (B, out_channels, H, W)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def forward_flops(unet: UNet, latent_shape: tuple[int, int, int], batch_size: int = 1, context_length: int = 1) -> int:
    """Floating-point operations of one forward pass on ``batch_size`` latents (C, H, W),
    counted by PyTorch's FlopCounterMode (a multiply-add counts as 2). A training step
    (forward and backward) costs about three times as much. The input channels are the
    UNet's own (more than C with concat conditioning); a conditional UNet attends to
    ``context_length`` tokens."""
    config = unet.config
    x = torch.zeros(batch_size, config.in_channels, *latent_shape[1:], device=next(unet.parameters()).device)
    t = torch.zeros(batch_size, dtype=torch.long, device=x.device)
    context = None
    if config.context_channels is not None:
        context = torch.zeros(batch_size, context_length, config.context_channels, device=x.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, context)
    return counter.get_total_flops()
