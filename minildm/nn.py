"""Building blocks shared by the autoencoder and the diffusion UNet.

Both networks of a latent diffusion model (Rombach et al., CVPR 2022, Sec. 3.1 and 3.3) are
stacks of the same few pieces, taken from DDPM (Ho et al. 2020) and its improved UNet, ADM
(Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 3):

- :func:`normalization`: GroupNorm, which works for any batch size, with one group count
  per network (:func:`norm_groups`).
- :class:`ResBlock`: norm, SiLU, 3x3 conv, twice, plus a skip path. With a time embedding it
  becomes the UNet's block, which scales and shifts its features by the diffusion time step.
- :class:`Downsample` / :class:`Upsample`: halve or double the resolution.
- :class:`SelfAttention2d`: every pixel attends to every other pixel.
- :func:`checkpointed` / :func:`set_gradient_checkpointing`: gradient checkpointing, a
  memory option of both networks' training.

Layers that end a residual branch start at zero (ADM practice, also used in the LDM code), so
each block is the identity at initialisation and a deep stack trains stably from step one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

MAX_GROUPS = 32


def norm_groups(*widths: int) -> int:
    """The group count of every GroupNorm in a network whose layers have ``widths`` channels:
    32 (Wu & He 2018, "Group Normalization", Sec. 3.1; the count of DDPM, ADM and the LDM code),
    or the largest divisor of 32 that divides every width: gcd(32, widths), 16 for a network of
    16, 32 and 64 channels. One count for the whole network, as diffusers' models take it (one
    ``norm_num_groups``)."""
    return math.gcd(MAX_GROUPS, *widths)


def normalization(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm of ``channels`` in ``groups`` groups (the network's :func:`norm_groups`)."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def checkpointed(block: nn.Module, *inputs: Tensor | None, enabled: bool) -> Tensor:
    """``block(*inputs)``, under gradient checkpointing when ``enabled`` and training.

    Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
    Cost") keeps only the block's inputs for the backward pass, not the activations inside
    it; the backward pass runs the block's forward once more to get them back. A network
    that checkpoints each of its blocks keeps roughly one tensor per block instead of every
    intermediate one, for one more forward pass per block: as a backward pass costs about
    two forward passes, a step takes about a third more time (measured: 1.15-1.8 times,
    README). The result and the gradients
    are the same: the recomputation replays the random state, so dropout draws the same mask
    (``use_reentrant=False``, PyTorch's recommended form, which also works with
    ``torch.autograd.grad``). In eval mode or without gradients nothing is kept for
    backward, so the block simply runs.
    """
    if enabled and block.training and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Switch gradient checkpointing (:func:`checkpointed`) on or off in every submodule of
    ``model`` that offers it (those with a ``gradient_checkpointing`` attribute: the UNet,
    the autoencoder's encoder and decoder), like diffusers' ``enable_gradient_checkpointing``.

    It trades time for memory (Chen et al. 2016): the activations inside each block are
    recomputed in the backward pass instead of kept, for more time per step (README).
    It changes neither weights nor outputs, so it is not part of any saved configuration: a
    run folder trained with it loads and resumes without it, and the other way round.
    """
    switched = [module for module in model.modules() if hasattr(module, "gradient_checkpointing")]
    if enabled and not switched:
        raise ValueError(f"{type(model).__name__} has no part that supports gradient checkpointing")
    for module in switched:
        module.gradient_checkpointing = enabled


class ResBlock(nn.Module):
    """Residual block: ``skip(x) + conv(SiLU(norm(conv(SiLU(norm(x))))))``.

    With ``time_channels`` set, ``forward(x, t_emb)`` injects the time embedding after the
    second norm as a scale and a shift (FiLM; ADM's "scale-shift norm"):
    ``h = norm(h) * (1 + scale) + shift``, where ``(scale, shift)`` is a linear map of ``t_emb``.
    Without it, ``forward(x)`` takes the features only.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; a 1x1 conv adapts the skip path when they differ.
        dropout: dropout probability before the last conv.
        time_channels: size of the time embedding vector, or None for a block without one.
        groups: GroupNorm groups of both norms, the network's :func:`norm_groups`; None (a
            block on its own) takes ``norm_groups(in_channels, out_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 time_channels: int | None = None, *, groups: int | None = None) -> None:
        super().__init__()
        groups = groups or norm_groups(in_channels, out_channels)
        self.norm1 = normalization(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = None
        if time_channels is not None:
            self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, 2 * out_channels))
        self.norm2 = normalization(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, t_emb: Tensor | None = None) -> Tensor:
        """``x``: (B, in, H, W); ``t_emb``: (B, time_channels) when the block has one."""
        if (t_emb is None) != (self.time_proj is None):
            expected = "a time embedding" if self.time_proj is not None else "no time embedding"
            raise ValueError(f"this ResBlock was built for {expected}")
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = self.norm2(h)
        if self.time_proj is not None:
            # Exercise 04.2: scale and shift h by the time embedding (time_proj gives scale, then shift)
            ### BEGIN SOLUTION
            scale_shift = rearrange(self.time_proj(t_emb), "b c -> b c 1 1")  # (B, 2 * out, 1, 1)
            scale, shift = scale_shift.chunk(2, dim=1)  # (B, out, 1, 1) each
            h = h * (1 + scale) + shift
            ### END SOLUTION
        h = self.conv2(self.dropout(F.silu(h)))  # (B, out, H, W)
        return self.skip(x) + h


DOWNSAMPLE_PADDINGS = ("symmetric", "right_bottom")


class Downsample(nn.Module):
    """Halve height and width with a learned 3x3 convolution of stride 2.

    ``padding`` says where the convolution's zero padding goes:

    - ``"symmetric"`` (the default): one pixel on every side (``padding=1``), the convention
      of the DDPM / ADM UNet, which minildm's UNet and autoencoder both follow. Output pixel i
      sees input pixels 2i-1..2i+1.
    - ``"right_bottom"``: ``F.pad(x, (0, 1, 0, 1))``, one pixel on the right and bottom only,
      then the convolution without padding. This is the autoencoder of the CompVis LDM code
      (``ldm/modules/diffusionmodules/model.py``, ``Downsample``) and of diffusers'
      ``AutoencoderKL`` / ``VQModel`` (``Downsample2D`` with ``padding=0``), so a pretrained
      one (Stable Diffusion's VAE) needs it. Output pixel i sees input pixels 2i..2i+2.

    Neither is better: both give H/2 x W/2 for even H, W, with the same parameters (names and
    shapes), so weights move between them unchanged; they only compute different functions.
    """

    def __init__(self, channels: int, padding: str = "symmetric") -> None:
        super().__init__()
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"unknown downsample padding {padding!r}: choose one of {', '.join(DOWNSAMPLE_PADDINGS)}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1 if padding == "symmetric" else 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "right_bottom":
            x = F.pad(x, (0, 1, 0, 1))  # (B, C, H + 1, W + 1)
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour copy, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection.

    Each pixel is a token: ``softmax(Q K^T / sqrt(d)) V`` per head (Vaswani et al. 2017), where
    ``d`` is the channels per head. Give either ``heads`` or ``head_channels`` (the LDM configs
    use 32 channels per head for faces and 8 heads for churches). ``groups``: those of the
    GroupNorm, the network's :func:`norm_groups`; None (a block on its own) takes ``norm_groups(channels)``.
    """

    def __init__(self, channels: int, heads: int = 1, head_channels: int | None = None, *,
                 groups: int | None = None) -> None:
        super().__init__()
        if head_channels is not None:
            heads = channels // head_channels
        if heads < 1 or channels % heads:
            raise ValueError(f"cannot split {channels} channels into {heads} attention heads")
        self.heads = heads
        self.norm = normalization(channels, groups or norm_groups(channels))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        # Exercise 04.3: qkv channels are (q, k, v) x heads x d; attend per head over the HW pixel tokens
        ### BEGIN SOLUTION
        q, k, v = rearrange(qkv, "b (three heads d) h w -> three b heads (h w) d",
                            three=3, heads=self.heads)  # (B, heads, HW, d) each
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        ### END SOLUTION
        attended = rearrange(attended, "b heads (h w) d -> b (heads d) h w", h=height, w=width)
        return x + self.proj_out(attended)  # (B, C, H, W)
