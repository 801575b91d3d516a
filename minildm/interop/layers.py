"""Which minildm parameter holds which diffusers parameter, and copying along those links in
either direction.

minildm's networks and diffusers' ``UNet2DModel``, ``AutoencoderKL`` and ``VQModel`` are built
from the same blocks (DDPM / ADM / CompVis), so a walk over both networks pairs their layers
one for one (:mod:`~minildm.interop.diffusers_unet`, :mod:`~minildm.interop.diffusers_autoencoder`).
A pair of layers gives *links*, ``(our tensor, their tensors)``:

- one diffusers tensor for most parameters (convolutions, linear layers, group norms, the
  VQ codebook): same name, same shape;
- three for self-attention's query, key and value: minildm computes them with one 1x1
  convolution (``qkv``, (3C, C, 1, 1)), diffusers with three Linear layers (``to_q``,
  ``to_k``, ``to_v``, (C, C) each). Flattened, minildm's tensor is diffusers' three
  concatenated, so one rule copies both ways; a 1x1 convolution and a Linear layer differ only
  by the two trailing dimensions of size 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor, nn

from minildm.config import MinildmError
from minildm.nn import ResBlock, SelfAttention2d

Link = tuple[Tensor, list[Tensor]]  # (a minildm parameter, the diffusers parameters it holds)


class InteropError(MinildmError):
    """A model that the other library cannot express, or a source that cannot be read; the
    message is one line saying what and why."""


def require_diffusers():
    """The diffusers package, imported on first use: it is slow to import, and only the model
    exchange needs it. Without it, one line saying how to install it."""
    try:
        import diffusers
    except ModuleNotFoundError:
        raise InteropError("exchanging models with diffusers needs the diffusers package: "
                           "pip install diffusers") from None
    return diffusers


def layer_links(ours: nn.Module, theirs: nn.Module) -> list[Link]:
    """The links of one pair of layers that compute the same function; a ValueError when they
    do not (another layer type, group count, epsilon, head count or shape)."""
    if isinstance(ours, ResBlock):
        return _resblock_links(ours, theirs)
    if isinstance(ours, SelfAttention2d):
        return _attention_links(ours, theirs)
    return _same_layer_links(ours, theirs)


def _same_layer_links(ours: nn.Module, theirs: nn.Module) -> list[Link]:
    """Layers of the same class (Conv2d, Linear, GroupNorm, Embedding): parameter by name."""
    if type(ours) is not type(theirs):
        raise ValueError(f"cannot link a {type(ours).__name__} to a {type(theirs).__name__}")
    if isinstance(ours, nn.GroupNorm) and (ours.num_groups, ours.eps) != (theirs.num_groups, theirs.eps):
        raise ValueError(f"GroupNorm with {ours.num_groups} groups, eps {ours.eps} against "
                         f"{theirs.num_groups} groups, eps {theirs.eps}")
    their_parameters = dict(theirs.named_parameters())
    our_parameters = dict(ours.named_parameters())
    if set(our_parameters) != set(their_parameters) or any(
            our_parameters[name].shape != their_parameters[name].shape for name in our_parameters):
        raise ValueError(f"{type(ours).__name__} parameters differ: "
                         f"{[(n, tuple(p.shape)) for n, p in our_parameters.items()]} against "
                         f"{[(n, tuple(p.shape)) for n, p in their_parameters.items()]}")
    return [(parameter, [their_parameters[name]]) for name, parameter in our_parameters.items()]


def _resblock_links(ours: ResBlock, theirs: nn.Module) -> list[Link]:
    """minildm's ResBlock and diffusers' ResnetBlock2D: the same layers under other names.
    With a time embedding, diffusers must scale and shift (``scale_shift``) as minildm does,
    not add it (``default``)."""
    if (ours.time_proj is None) != (theirs.time_emb_proj is None):
        raise ValueError("one ResBlock takes a time embedding and the other does not")
    if ours.time_proj is not None and theirs.time_embedding_norm != "scale_shift":
        raise ValueError(f"diffusers' ResnetBlock2D injects time by {theirs.time_embedding_norm!r}, "
                         f"minildm's by scale and shift")
    if theirs.output_scale_factor != 1 or theirs.up or theirs.down:
        raise ValueError("a ResnetBlock2D that rescales or resamples has no minildm counterpart")
    pairs = [(ours.norm1, theirs.norm1), (ours.conv1, theirs.conv1), (ours.norm2, theirs.norm2),
             (ours.conv2, theirs.conv2)]
    if ours.time_proj is not None:
        pairs.append((ours.time_proj[1], theirs.time_emb_proj))  # time_proj = SiLU, Linear
    if theirs.conv_shortcut is not None or not isinstance(ours.skip, nn.Identity):
        pairs.append((ours.skip, theirs.conv_shortcut))
    return [link for pair in pairs for link in layer_links(*pair)]


def _attention_links(ours: SelfAttention2d, theirs: nn.Module) -> list[Link]:
    """minildm's SelfAttention2d and diffusers' Attention over the pixels of a feature map:
    group norm, q/k/v (one 1x1 conv against three Linear layers), output projection (a 1x1
    conv against a Linear layer), residual."""
    if theirs.group_norm is None or theirs.heads != ours.heads or theirs.rescale_output_factor != 1 \
            or not theirs.residual_connection or theirs.spatial_norm is not None:
        raise ValueError(f"diffusers' Attention ({theirs.heads} heads) does not compute minildm's "
                         f"SelfAttention2d ({ours.heads} heads, group norm, residual)")
    projections, output = (theirs.to_q, theirs.to_k, theirs.to_v), theirs.to_out[0]
    return [*layer_links(ours.norm, theirs.group_norm),
            (ours.qkv.weight, [projection.weight for projection in projections]),
            (ours.qkv.bias, [projection.bias for projection in projections]),
            (ours.proj_out.weight, [output.weight]), (ours.proj_out.bias, [output.bias])]


def links_of(pairs: list[tuple[nn.Module, nn.Module]], ours: list[nn.Module], theirs: list[nn.Module]) -> list[Link]:
    """The links of every pair, checked to hold each parameter of the modules ``ours`` and
    ``theirs`` exactly once: a walk that skipped a layer, or a diffusers version with a
    layer more, fails here instead of leaving weights at their initial values."""
    links = [link for pair in pairs for link in layer_links(*pair)]
    for side, linked, modules in (("minildm", [o for o, _ in links], ours),
                                  ("diffusers", [t for _, ts in links for t in ts], theirs)):
        expected = Counter(id(p) for module in modules for p in module.parameters())
        if Counter(id(p) for p in linked) != expected:
            raise ValueError(f"the layer walk does not link every {side} parameter exactly once")
    for our_tensor, their_tensors in links:
        if our_tensor.numel() != sum(t.numel() for t in their_tensors):
            raise ValueError(f"a {tuple(our_tensor.shape)} tensor linked to "
                             f"{[tuple(t.shape) for t in their_tensors]}")
    return links


@torch.no_grad()
def copy_to_diffusers(links: list[Link]) -> None:
    """Give each diffusers parameter the values of the minildm parameter it is linked to."""
    for our_tensor, their_tensors in links:
        pieces = our_tensor.flatten().split([t.numel() for t in their_tensors])
        for their_tensor, piece in zip(their_tensors, pieces):
            their_tensor.copy_(piece.view_as(their_tensor))


@torch.no_grad()
def copy_from_diffusers(links: list[Link]) -> None:
    """Give each minildm parameter the values of the diffusers parameters it is linked to."""
    for our_tensor, their_tensors in links:
        our_tensor.copy_(torch.cat([t.flatten() for t in their_tensors]).view_as(our_tensor))


def one_group_count(build: Callable[[], nn.Module], what: str, theirs: str) -> int:
    """The one group count of a model's GroupNorm layers, which diffusers' models (``theirs``)
    take as ``norm_num_groups`` for every layer. minildm's networks give all their layers one
    count (:func:`minildm.nn.norm_groups`); a model whose layers have different counts is refused
    in one line. ``build`` makes the model on the meta device: shapes without memory or compute."""
    with torch.device("meta"):
        module = build()
    groups = {layer.num_groups for layer in module.modules() if isinstance(layer, nn.GroupNorm)}
    if len(groups) > 1:
        raise InteropError(f"{what} GroupNorm layers have {sorted(groups)} groups; {theirs} one count for all")
    return groups.pop()
