"""Concat conditioning: images as conditions, for inpainting and super-resolution
(Rombach et al. 2022, Sec. 3.3 and 4.5; Sec. 4.4 for super-resolution).

When the condition is itself an image aligned with the output, cross-attention is not
needed: the condition is brought to the latent's height and width and concatenated to the
noisy latent as extra input channels of the UNet (the paper's "concat" conditioning,
:func:`concat_conditioning`; how many channels each kind adds: :func:`extra_input_channels`).

- Inpainting: the image with the region to fill blanked out (set to 0, mid-gray), encoded by
  the autoencoder, plus the mask downsampled to the latent grid: c + 1 extra channels.
- Super-resolution: the low-resolution image itself. For f = 4 and 4x super-resolution it
  already has the latent's size (8 x 8 for 32 px images), which is the paper's LDM-SR setup
  (the low-resolution image is concatenated as it is); other combinations resize it
  to the latent grid. 3 extra channels.
- Semantic synthesis: the part map, one-hot, downsampled to the latent grid: the share of
  each part in each latent cell (the paper concatenates downsampled semantic maps, Sec.
  4.3.2). One extra channel per part. A map larger than the training images asks for a
  larger image: the convolutional UNet samples it, the map giving it its global layout.

Masks are float (B, 1, R, R) with 1 where the image is to be generated and 0 where it is
kept; :func:`random_masks` draws the shapes used in training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from minildm.diffusion import Denoiser

MASK_SHAPES = ("box", "half", "ellipse", "band")


def extra_input_channels(kind: str, latent_channels: int, parts: int = 0) -> int:
    """The input channels a conditioning ``kind`` adds to the UNet: c + 1 for inpainting (the
    masked image's latent and the mask), 3 for super-resolution (the low-resolution image),
    one per part for semantic synthesis (``parts`` classes), none for the other kinds."""
    return {"inpaint": latent_channels + 1, "superres": 3, "semantic": parts}.get(kind, 0)


def concat_conditioning(unet: Callable[[Tensor, Tensor], Tensor], condition: Tensor) -> Denoiser:
    """The denoiser of a concat-conditioned model (LDM Sec. 3.3, the "concat" mode of the
    paper's code): the UNet reads the noisy latent z_t (B, c, h, w) and the condition
    (B, k, h, w) stacked along the channels, (B, c + k, h, w)."""
    return lambda z_t, t: unet(torch.cat([z_t, condition], dim=1), t)


def mask_of_shape(shape: str, n: int, resolution: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` random masks (n, 1, R, R) of one shape:

    - ``box``: a rectangle, each side 25-60% of the image, anywhere;
    - ``half``: the left, right, top or bottom half;
    - ``ellipse``: an ellipse with radii 15-35% of the image;
    - ``band``: a horizontal stripe 20-35% high (over the eyes or the mouth of a face).
    """
    if shape not in MASK_SHAPES:
        raise ValueError(f"unknown mask shape {shape!r}: choose one of {', '.join(MASK_SHAPES)}")
    centres = (torch.arange(resolution) + 0.5) / resolution  # pixel centres in [0, 1]
    x, y = centres.view(1, 1, -1), centres.view(1, -1, 1)  # (1, 1, R), (1, R, 1)

    def uniform(low: float, high: float) -> Tensor:
        return (low + (high - low) * torch.rand(n, generator=generator)).view(n, 1, 1)

    if shape == "box":
        width, height = uniform(0.25, 0.6), uniform(0.25, 0.6)
        left, top = uniform(0, 1) * (1 - width), uniform(0, 1) * (1 - height)
        inside = (x >= left) & (x < left + width) & (y >= top) & (y < top + height)
    elif shape == "half":
        side = torch.randint(0, 4, (n, 1, 1), generator=generator)  # left, right, top, bottom
        coordinate = torch.where(side < 2, x, y)  # (n, R, R)
        inside = torch.where(side % 2 == 0, coordinate < 0.5, coordinate >= 0.5)
    elif shape == "ellipse":
        rx, ry = uniform(0.15, 0.35), uniform(0.15, 0.35)
        cx, cy = uniform(0.25, 0.75), uniform(0.25, 0.75)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    else:
        height = uniform(0.2, 0.35)
        top = uniform(0.25, 0.85) - height / 2
        inside = (y >= top) & (y < top + height) & (x >= 0)
    return inside.float().unsqueeze(1)  # (n, 1, R, R)


def random_masks(n: int, resolution: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` masks (n, 1, R, R), each of a shape drawn uniformly from :data:`MASK_SHAPES`."""
    kinds = torch.randint(0, len(MASK_SHAPES), (n,), generator=generator)
    masks = torch.stack([mask_of_shape(shape, n, resolution, generator) for shape in MASK_SHAPES])  # (S, n, 1, R, R)
    return masks[kinds, torch.arange(n)]


def inpainting_condition(encode: Callable[[Tensor], Tensor], images: Tensor, masks: Tensor) -> Tensor:
    """The UNet's extra input for inpainting: (B, c + 1, h, w) = the latent of the image with
    the masked region set to 0, and the fraction of each latent cell that is masked."""
    # Exercise 08.1: encode the masked images, shrink the masks to the latent's size, concatenate
    ### BEGIN SOLUTION
    latents = encode(images * (1 - masks))  # (B, c, h, w)
    small_masks = F.adaptive_avg_pool2d(masks, latents.shape[-2:]).to(latents)  # (B, 1, h, w)
    return torch.cat([latents, small_masks], dim=1)
    ### END SOLUTION


def downsample(images: Tensor, factor: int) -> Tensor:
    """The low-resolution input of super-resolution: (B, 3, R, R) -> (B, 3, R/factor, R/factor),
    each output pixel the mean of a factor x factor block (no aliasing)."""
    if images.shape[-1] % factor:
        raise ValueError(f"image side {images.shape[-1]} is not a multiple of the factor {factor}")
    return F.avg_pool2d(images, factor)


def superres_condition(low_resolution: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """The UNet's extra input for super-resolution: the low-resolution image on the latent
    grid (B, 3, h, w); unchanged when it already has that size."""
    if tuple(low_resolution.shape[-2:]) == tuple(latent_size):
        return low_resolution
    return F.interpolate(low_resolution, size=latent_size, mode="bicubic", align_corners=False).clamp(-1, 1)


def bicubic_upsample(low_resolution: Tensor, factor: int) -> Tensor:
    """The baseline super-resolution: bicubic interpolation, clamped to [-1, 1]."""
    return F.interpolate(low_resolution, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def semantic_condition(part_maps: Tensor, parts: int, latent_size: tuple[int, int]) -> Tensor:
    """Part maps, integer (B, H, W) of indices below ``parts`` -> the UNet's extra input
    (B, parts, h, w): the share of each part in each latent cell (a one-hot map, averaged)."""
    if part_maps.dim() != 3 or int(part_maps.max()) >= parts or int(part_maps.min()) < 0:
        raise ValueError(f"part maps must be (B, H, W) of indices 0 to {parts - 1}")
    # Exercise 10.1: one-hot the map (a channel per part), then average it over each latent cell
    ### BEGIN SOLUTION
    one_hot = F.one_hot(part_maps.long(), parts).permute(0, 3, 1, 2).float()  # (B, P, H, W)
    return F.adaptive_avg_pool2d(one_hot, latent_size)
    ### END SOLUTION


def mask_from_image(image: Tensor) -> Tensor:
    """A mask (B, 1, R, R), 1 = fill, from a mask image (B, 3, R, R) in [-1, 1]: 1 where it is
    lighter than mid-grey (the white strokes a person paints)."""
    return (image.mean(dim=1, keepdim=True) > 0).float()


def paste(generated: Tensor, images: Tensor, masks: Tensor) -> Tensor:
    """Keep the known pixels: ``masks * generated + (1 - masks) * images``."""
    return masks * generated + (1 - masks) * images
