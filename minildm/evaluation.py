"""Scores for conditional models: does the sample show what was asked for?

- Token conditions (class, attributes, text): sample once per held-out condition and let a
  classifier (the toy-face judge, :mod:`minildm.judge`) read the attributes back; report how
  often it agrees with the request, per attribute and overall.
- Inpainting: PSNR in the known region of the raw decoder output (does the model respect
  the context?), PSNR of the filled region against the truth next to a mean-colour fill,
  and how many completed images the judge calls faces.
- Super-resolution: PSNR against the truth next to bicubic upsampling.

Every result carries its sample counts and settings, so a number is never quoted alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minildm import toyfaces
from minildm.image_conditions import bicubic_upsample, downsample, paste, random_masks
from minildm.images import uint8_to_float
from minildm.metrics import psnr

NO_BEARD = toyfaces.ATTRIBUTES.index("No_Beard")


def mentioned_attributes(attributes: Tensor) -> Tensor:
    """Which toy-face attributes a caption (:func:`minildm.toyfaces.caption`) names, bool
    (N, 10): every attribute that is present ("smiling", "blond hair", ...) except No_Beard,
    which the caption names when it is absent ("a beard")."""
    mentioned = attributes.bool().clone()
    mentioned[:, NO_BEARD] = ~mentioned[:, NO_BEARD]
    return mentioned


@torch.no_grad()
def sample_in_batches(model, conditions: Tensor, resolution: int, guidance: float, steps: int = 50,
                      seed: int = 0, batch_size: int = 128) -> Tensor:
    """One DDIM sample per condition row, (N, 3, R, R) in [-1, 1], seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([model.sample(len(chunk), resolution, "ddim", steps, generator=generator, condition=chunk,
                                   guidance=guidance).cpu() for chunk in conditions.split(batch_size)])


def judge_token_model(model, judge, conditions: Tensor, attributes: Tensor, resolution: int,
                      guidance: float, steps: int = 50, seed: int = 0) -> dict:
    """Sample one image per held-out condition and score it with the judge.

    ``conditions``: what the model reads (class indices, attributes or caption ids);
    ``attributes`` bool (N, 10): the toy-face attributes they describe. For a class model
    only the hair options are scored, for a text model the attributes its captions name
    (:func:`mentioned_attributes`), for an attribute model all of them.
    """
    samples = sample_in_batches(model, conditions, resolution, guidance, steps, seed)
    scored = torch.ones_like(attributes, dtype=torch.bool)
    if model.kind == "class":
        scored[:, len(toyfaces.HAIR_OPTIONS):] = False
    elif model.kind == "text":
        scored = mentioned_attributes(attributes)
    result = judge.agreement(samples, attributes, mask=scored)
    result.update({"n_samples": len(samples), "guidance": guidance, "sampler": f"DDIM {steps} steps, eta 0"})
    return result


@torch.no_grad()
def evaluate_inpainting(model, pixels: Tensor, judge=None, steps: int = 50, seed: int = 0) -> dict:
    """Inpaint held-out uint8 images (N, 3, R, R) under random masks (one per image)."""
    images = uint8_to_float(pixels)
    generator = torch.Generator().manual_seed(seed)
    masks = random_masks(len(images), images.shape[-1], generator)
    raw = torch.cat([model.inpaint(batch, mask, steps, generator, keep_known=False)
                     for batch, mask in zip(images.split(128), masks.split(128))])
    completed = paste(raw, images, masks)
    known_mean = (images * (1 - masks)).sum(dim=(2, 3), keepdim=True) / (1 - masks).sum(dim=(2, 3), keepdim=True)
    mean_fill = paste(known_mean.expand_as(images), images, masks)
    result = {"psnr_known_region_raw": region_psnr(raw, images, 1 - masks),
              "psnr_filled_region": region_psnr(completed, images, masks),
              "psnr_filled_region_mean_fill": region_psnr(mean_fill, images, masks),
              "masked_fraction": round(masks.mean().item(), 3), "n_images": len(images),
              "sampler": f"DDIM {steps} steps, eta 0", "known_pixels": "pasted back after decoding"}
    if judge is not None:
        result["face_rate"] = judge.predict(completed)[1].float().mean().item()
        result["face_rate_mean_fill"] = judge.predict(mean_fill)[1].float().mean().item()
    return result


def region_psnr(images: Tensor, reference: Tensor, region: Tensor) -> float:
    """PSNR (dB, images in [-1, 1] as 2 units of range) over the pixels where ``region``
    (B, 1, R, R) is 1, pooled over the whole batch."""
    weights = region.expand_as(images)
    mse = ((images - reference) ** 2 * weights).sum() / weights.sum() / 4  # in [0, 1] units
    return round(-10 * torch.log10(mse).item(), 2)


@torch.no_grad()
def evaluate_superres(model, pixels: Tensor, steps: int = 50, seed: int = 0) -> dict:
    """Super-resolve downsampled held-out uint8 images; PSNR against the originals, next to
    bicubic upsampling of the same low-resolution inputs."""
    images = uint8_to_float(pixels)
    factor = model.config.conditioning.superres_factor
    low = downsample(images, factor)
    generator = torch.Generator().manual_seed(seed)
    upscaled = torch.cat([model.upscale(batch, steps, generator) for batch in low.split(128)])
    return {"psnr": round(psnr(upscaled, images).mean().item(), 2),
            "psnr_bicubic": round(psnr(bicubic_upsample(low, factor), images).mean().item(), 2),
            "factor": factor, "n_images": len(images), "sampler": f"DDIM {steps} steps, eta 0"}
