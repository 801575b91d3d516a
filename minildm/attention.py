"""Attention for conditioning: the UNet reads a token sequence through cross-attention
(Rombach et al. 2022, Sec. 3.3, "Conditioning Mechanisms").

A conditioning encoder tau_theta turns a class label, a set of attributes or a caption into
tokens ``tau_theta(y)`` of shape (B, L, D). Inside the UNet, the feature map ``phi(z_t)`` is
flattened to one token per pixel, and

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
    Q = W_Q phi(z_t),   K = W_K tau_theta(y),   V = W_V tau_theta(y)       (LDM eq. 3 context)

so every pixel gathers what it needs from the condition. The layers, in the order they are
built on one another:

- :class:`Attention`: multi-head attention, self (keys from the same tokens) or cross (keys
  from the context), with a padding mask for sequences of different lengths, and optional
  capture of the attention weights for pictures of "which pixel looked at which token";
- :class:`TransformerBlock`: norm -> self-attention, norm -> cross-attention, norm ->
  feed-forward, each a residual branch (the LDM code's "BasicTransformerBlock");
- :class:`SpatialTransformer`: a feature map (B, C, H, W) -> tokens -> transformer blocks ->
  back to a feature map, with a residual connection; this is what the UNet holds.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minildm.nn import norm_groups, normalization, zero_module


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B, N, C) over ``context`` (B, L, D), or over ``x``
    itself when no context is given.

    Args:
        channels: size C of the query tokens (and of the output).
        context_channels: size D of the context tokens; None for self-attention only.
        head_channels: channels per head d (the LDM configs: 32 for faces).

    ``forward(x, context, mask)``: ``mask`` (B, L) is True for real tokens and False for
    padding, which then receives zero weight. With ``capture_maps = True`` the weights
    softmax(Q K^T / sqrt(d)) of the last call are kept in ``last_map`` (B, heads, N, L).
    """

    def __init__(self, channels: int, context_channels: int | None = None, head_channels: int = 32):
        super().__init__()
        head_channels = min(head_channels, channels)
        if channels % head_channels:
            raise ValueError(f"cannot split {channels} channels into heads of {head_channels}")
        self.heads = channels // head_channels
        context_channels = context_channels or channels
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_channels, channels, bias=False)
        self.to_v = nn.Linear(context_channels, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.capture_maps = False
        self.last_map: Tensor | None = None

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(projection, "b n (heads d) -> b heads n d", heads=self.heads)
                   for projection in (self.to_q(x), self.to_k(context), self.to_v(context)))  # (B, h, N|L, d)
        attn_mask = None if mask is None else rearrange(mask, "b l -> b 1 1 l")  # True = may attend
        if self.capture_maps:
            self.last_map = attention_weights(q, k, attn_mask).detach()
            attended = self.last_map.to(v.dtype) @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, N, d)
        return self.to_out(rearrange(attended, "b heads n d -> b n (heads d)"))  # (B, N, C)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(d)) over the keys (Vaswani et al. 2017, eq. 1; LDM eq. 3): queries q
    (B, h, N, d), keys k (B, h, L, d), ``mask`` (B, 1, 1, L) True where a key may be attended
    to -> weights (B, h, N, L), each row summing to 1 over the allowed keys."""
    # Exercise 07.1: the attention weights, masked keys getting weight 0
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, h, N, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)
    ### END SOLUTION


class FeedForward(nn.Module):
    """Position-wise MLP with a gated GELU (GEGLU, Shazeer 2020), 4x wider inside, as in
    the LDM code's transformer blocks."""

    def __init__(self, channels: int, mult: int = 4):
        super().__init__()
        self.project_in = nn.Linear(channels, 2 * mult * channels)
        self.project_out = nn.Linear(mult * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        hidden, gate = self.project_in(x).chunk(2, dim=-1)  # (B, N, mult * C) each
        return self.project_out(hidden * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to the context, MLP."""

    def __init__(self, channels: int, context_channels: int, head_channels: int = 32):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(channels) for _ in range(3))
        self.self_attention = Attention(channels, head_channels=head_channels)
        self.cross_attention = Attention(channels, context_channels, head_channels)
        self.feed_forward = FeedForward(channels)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attention(self.norm1(x))  # (B, N, C)
        x = x + self.cross_attention(self.norm2(x), context, mask)
        return x + self.feed_forward(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Cross-attention for feature maps: (B, C, H, W) and context (B, L, D) -> (B, C, H, W).

    GroupNorm, a 1x1 projection, one token per pixel, ``depth`` transformer blocks, back to
    a map, a 1x1 projection that starts at zero (so the block starts as the identity), plus
    the input. ``groups``: those of the GroupNorm, the UNet's :func:`~minildm.nn.norm_groups`;
    None (a block on its own) takes ``norm_groups(channels)``.
    """

    def __init__(self, channels: int, context_channels: int, head_channels: int = 32, depth: int = 1, *,
                 groups: int | None = None):
        super().__init__()
        self.norm = normalization(channels, groups or norm_groups(channels))
        self.project_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(TransformerBlock(channels, context_channels, head_channels)
                                    for _ in range(depth))
        self.project_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        height, width = x.shape[-2:]
        h = rearrange(self.project_in(self.norm(x)), "b c h w -> b (h w) c")  # (B, HW, C)
        for block in self.blocks:
            h = block(h, context, mask)
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)
        return x + self.project_out(h)

    def cross_attention_maps(self) -> list[Tensor]:
        """The captured cross-attention weights of each block, (B, heads, HW, L)."""
        return [block.cross_attention.last_map for block in self.blocks]


def capture_attention_maps(module: nn.Module, enabled: bool = True) -> None:
    """Switch the capture of attention weights on (or off) in every layer of ``module``."""
    for layer in module.modules():
        if isinstance(layer, Attention):
            layer.capture_maps = enabled
            layer.last_map = None

