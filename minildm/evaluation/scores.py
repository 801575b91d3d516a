"""Scores: how good is a trained model, measured on held-out images?

- Autoencoder: PSNR and SSIM of the reconstructions (and the VQ codebook's perplexity).
- Unconditional LDM: FID and KID of samples against held-out images, on Inception features
  (and any other feature extractor, e.g. the toy-face judge's).
- Token conditions (class, attributes, text): sample once per held-out condition and let a
  classifier (the toy-face judge, :mod:`minildm.evaluation.judge`) read the attributes back; report how
  often it agrees with the request, raw and balanced, per attribute and overall, next to the
  same samples against shuffled requests and the judge's own score on the real held-out
  images (:mod:`minildm.evaluation.agreement`).
- Inpainting: PSNR in the known region of the raw decoder output (does the model respect
  the context?), PSNR of the filled region against the truth next to a mean-colour fill,
  and how many completed images the judge calls faces.
- Super-resolution: PSNR against the truth next to bicubic upsampling.

Every result carries its sample counts and settings, so a number is never quoted alone.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from minildm.autoencoder import Autoencoder
from minildm.config import MinildmError
from minildm.data import ImageDataset, toyfaces
from minildm.data.images import float_to_uint8, uint8_to_float
from minildm.evaluation.judge import ToyFaceJudge
from minildm.evaluation.metrics import InceptionFeatures, feature_distances, psnr, ssim
from minildm.evaluation.part_scores import evaluate_parts
from minildm.image_conditions import bicubic_upsample, downsample, paste, random_masks
from minildm.ldm import DEFAULT_GUIDANCE, LatentDiffusion, evaluating
from minildm.recipes import condition_tensor
from minildm.sampling import SamplerOptions

NO_BEARD = toyfaces.ATTRIBUTES.index("No_Beard")
FLOOR_LABEL = "real vs real (floor)"
# What two results of evaluate_ldm must share for their numbers to be compared
COMPARABLE_KEYS = ("n_samples", "n_reference", "n_floor", "features", "kid_floor", "fid_floor")


@torch.no_grad()
def evaluate_autoencoder(autoencoder: Autoencoder, pixels: Tensor, batch_size: int = 128) -> dict:
    """Reconstruction quality on uint8 images (N, 3, R, R): PSNR (dB) and SSIM averaged over
    images, the latent shape, the scale factor, and for VQ the codebook perplexity."""
    device = autoencoder.scale_factor.device
    psnrs, ssims, codes = [], [], []
    for batch in pixels.split(batch_size):
        images = uint8_to_float(batch).to(device)
        reconstruction, extras = autoencoder(images) if autoencoder.config.reg == "vq" else \
            (autoencoder.decode(autoencoder.encode(images)), {})
        psnrs.append(psnr(images, reconstruction))
        ssims.append(ssim(images, reconstruction))
        if "indices" in extras:
            codes.append(extras["indices"].flatten())
    results = {
        "psnr": round(torch.cat(psnrs).mean().item(), 3),
        "ssim": round(torch.cat(ssims).mean().item(), 4),
        "latent_shape": list(autoencoder.latent_shape(pixels.shape[-1])),
        "scale_factor": round(autoencoder.scale_factor.item(), 5),
        "n_images": len(pixels),
    }
    if codes:
        perplexity = autoencoder.quantizer.perplexity(torch.cat(codes)).item()
        results.update(perplexity=round(perplexity, 1), codebook_size=autoencoder.config.codebook_size,
                       codebook_usage=round(perplexity / autoencoder.config.codebook_size, 3))
    return results


@torch.no_grad()
def evaluate_ldm(model: LatentDiffusion, reference: Tensor, *, n_samples: int | None = None,
                 options: SamplerOptions | None = None,
                 generator: torch.Generator | None = None, features=None, batch_size: int = 250,
                 extra_features: dict | None = None, floor_reference: Tensor | None = None) -> dict:
    """Sample quality against uint8 reference images (N, 3, R, R): KID (with its std over
    subsets) and FID on Inception features, the sample counts and the sampling speed.

    ``options``: the sampler (default DDIM, 50 steps, eta 0).
    ``features``: a feature extractor (uint8 images -> (N, D)); default the FID Inception.
    ``extra_features``: more extractors by name (e.g. ``{"toyface": ToyFaceFeatures(judge)}``),
    scored on the same samples and reported as ``{name}_kid``, ``{name}_fid``, ...
    ``floor_reference``: other real images, as many as ``reference``, from the same source and
    preparation; the distances between the two real sets are the floor, what a perfect model
    would score at this n, reported as ``kid_floor``, ``fid_floor``, ... (FID is biased upwards
    at small n, so a number without its floor cannot be read). KID comes first: it is unbiased,
    which makes it the one to read when n is small.
    """
    features = features or InceptionFeatures(model.device)
    n_samples = n_samples or len(reference)
    resolution = reference.shape[-1]
    started = time.perf_counter()
    options = options or SamplerOptions()
    samples = torch.cat([float_to_uint8(model.sample(len(chunk), resolution, options, generator=generator).cpu())
                         for chunk in torch.arange(n_samples).split(batch_size)])
    seconds = time.perf_counter() - started
    results = {}
    extractors = {"": features, **{f"{name}_": extractor for name, extractor in (extra_features or {}).items()}}
    for prefix, extractor in extractors.items():
        real = extractor(reference)
        distances = feature_distances(real, extractor(samples))
        results.update({f"{prefix}{key}": value for key, value in _kid_first(distances)})
        if floor_reference is not None:
            floor = feature_distances(real, extractor(floor_reference))
            results.update({f"{prefix}{key}_floor": value for key, value in _kid_first(floor)})
        results[f"{prefix}features"] = getattr(extractor, "description", type(extractor).__name__)
    return {**results, "n_samples": n_samples, "n_reference": len(reference),
            "n_floor": None if floor_reference is None else len(floor_reference),
            "sampler": options.description, "sample_images_per_s": round(n_samples / seconds, 1)}


def _kid_first(distances: dict) -> list[tuple[str, float]]:
    """KID and its std, then FID."""
    return [(key, distances[key]) for key in ("kid", "kid_std", "fid")]


def score_table(named_scores: dict[str, dict]) -> str:
    """Results of :func:`evaluate_ldm` as a table: a header with the counts and the features,
    the floor (real against real at the same n) when there is one, then one row per model with
    KID ± its std over subsets, and FID. Results scored on other counts, features or reference
    images (:data:`COMPARABLE_KEYS`) are refused: their numbers cannot be compared."""
    if not named_scores:
        raise MinildmError("no scores to tabulate")
    (first_name, first), *_ = named_scores.items()
    for name, scores in named_scores.items():
        differing = [key for key in COMPARABLE_KEYS if scores.get(key) != first.get(key)]
        if differing:
            raise MinildmError(f"{name!r} was scored with another {', '.join(differing)} than {first_name!r}, "
                               "so their numbers cannot be compared")
    width = max(len(name) for name in [*named_scores, FLOOR_LABEL])
    floor = f", floor: {first['n_floor']} other held-out images" if first.get("n_floor") else ""
    lines = [f"{first['n_samples']} samples against {first['n_reference']} held-out images{floor}; "
             f"features: {first['features']}",
             f"{'':{width}}  {'KID':>9}   {'std':<8}{'FID':>10}"]
    rows = [(FLOOR_LABEL, first, "_floor")] if first.get("n_floor") else []
    for name, scores, suffix in rows + [(name, scores, "") for name, scores in named_scores.items()]:
        lines.append(f"{name:{width}}  {scores['kid' + suffix]:9.4f} ± {scores['kid_std' + suffix]:<8.4f}"
                     f"{scores['fid' + suffix]:10.2f}")
    return "\n".join(lines)


def kid_difference(first: dict, second: dict) -> dict:
    """KID of ``first`` minus KID of ``second`` (results of :func:`evaluate_ldm`), and a rough
    spread for it: the two KID stds over subsets combined as for independent estimates
    (subsets of half the samples vary more than the full set, so the spread errs on the wide
    side). ``within_spread``: the difference is no larger than that spread."""
    difference = first["kid"] - second["kid"]
    spread = math.hypot(first["kid_std"], second["kid_std"])
    return {"difference": round(difference, 5), "spread": round(spread, 5), "within_spread": abs(difference) <= spread}


@torch.no_grad()
def heldout_loss(model: LatentDiffusion, latents: Tensor, *, seed: int = 0, repeats: int = 4,
                 chunk: int = 32) -> Tensor:
    """The training loss (LDM eq. 2) of an unconditional model on scaled latents (N, c, h, w)
    it never trained on: one value per chunk of ``chunk`` latents in each of ``repeats``
    passes, (repeats * ceil(N / chunk),); their mean is the held-out loss.

    Time steps and noise come from one generator seeded with ``seed``, so two models scored
    with the same latents and seed meet the same t and noise: the difference of their values
    is paired, and its mean over chunks with its standard error says which loss is lower.
    """
    if model.kind != "none":
        raise MinildmError(f"the held-out loss is for unconditional models, not a {model.kind!r} model")
    generator = torch.Generator().manual_seed(seed)
    with evaluating(model.networks()):
        values = [model.loss(batch.to(model.device), generator)
                  for _ in range(repeats) for batch in latents.split(chunk)]
    return torch.stack(values).float().cpu()


def evaluate_conditional(model: LatentDiffusion, held_out: ImageDataset, judge: ToyFaceJudge | None,
                         seed: int = 0) -> dict:
    """The score of a conditional model on held-out images: judge agreement for token models
    (toy faces only: ``judge``), raw and balanced, beside three reference points: the same
    samples against shuffled requests, the model's own null condition (an unconditional model)
    against the requests, and the judge on the real held-out images; PSNRs against baselines for
    inpainting and super-resolution; the segmenter's agreement for semantic and layout models
    (:func:`~minildm.evaluation.part_scores.evaluate_parts`)."""
    if model.kind == "inpaint":
        return evaluate_inpainting(model, held_out.pixels, judge, seed=seed)
    if model.kind == "superres":
        return evaluate_superres(model, held_out.pixels, seed=seed)
    if model.kind in ("semantic", "layout"):
        return evaluate_parts(model, held_out, seed=seed)
    if judge is None:
        raise MinildmError("conditional samples are scored by the toy-face judge, so only toy-face models; "
                           "notebook 07 scores CelebA attributes with a classifier trained on CelebA")
    conditions = condition_tensor(model.config.conditioning, held_out)
    result = judge_token_model(model, judge, conditions=conditions, attributes=held_out.attributes,
                               resolution=held_out.resolution, guidance=DEFAULT_GUIDANCE, seed=seed)
    scored = scored_attributes(model.kind, held_out.attributes)
    null_samples = sample_in_batches(model, None, n=len(held_out), resolution=held_out.resolution, seed=seed)
    ignoring = judge.agreement(null_samples, held_out.attributes, mask=scored, seed=seed)
    result["accuracy_unconditional"] = ignoring["accuracy"]
    result["balanced_agreement_unconditional"] = ignoring["balanced_agreement"]
    on_real = judge.agreement(held_out.images(), held_out.attributes, mask=scored)
    result["judge_balanced_accuracy_on_real"] = on_real["balanced_agreement"]
    result["judge_per_attribute_on_real"] = {name: row.get("balanced", row["agreement"])
                                             for name, row in on_real["per_attribute_rates"].items()}
    return result


def mentioned_attributes(attributes: Tensor) -> Tensor:
    """Which toy-face attributes a caption (:func:`minildm.data.toyfaces.caption`) names, bool
    (N, 10): every attribute that is present ("smiling", "blond hair", ...) except No_Beard,
    which the caption names when it is absent ("a beard")."""
    mentioned = attributes.bool().clone()
    mentioned[:, NO_BEARD] = ~mentioned[:, NO_BEARD]
    return mentioned


@torch.no_grad()
def sample_in_batches(model: LatentDiffusion, conditions: Tensor | None, *, resolution: int, guidance: float = 1.0,
                      n: int | None = None, steps: int = 50, seed: int = 0, batch_size: int = 128) -> Tensor:
    """One DDIM sample per condition row, (N, 3, R, R) in [-1, 1], seeded. ``conditions`` None
    draws ``n`` samples of the null condition: the unconditional model that classifier-free
    guidance trains alongside the conditional one (Ho & Salimans 2022). Scored against
    requests, it is the baseline of a model that ignores them."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(len(conditions) if conditions is not None else n)
    return torch.cat([model.sample(len(chunk), resolution, SamplerOptions(steps=steps), generator=generator,
                                   guidance=guidance, condition=None if conditions is None else conditions[chunk]).cpu()
                      for chunk in rows.split(batch_size)])


def judge_token_model(model: LatentDiffusion, judge: ToyFaceJudge, *, conditions: Tensor, attributes: Tensor,
                      resolution: int, guidance: float, steps: int = 50, seed: int = 0) -> dict:
    """Sample one image per held-out condition and score it with the judge.

    ``conditions``: what the model reads (class indices, attributes or caption ids);
    ``attributes`` bool (N, 10): the toy-face attributes they describe. For a class model
    only the hair options are scored, for a text model the attributes its captions name
    (:func:`mentioned_attributes`), for an attribute model all of them.
    """
    samples = sample_in_batches(model, conditions, resolution=resolution, guidance=guidance, steps=steps, seed=seed)
    result = judge.agreement(samples, attributes, mask=scored_attributes(model.kind, attributes), seed=seed)
    result.update({"n_samples": len(samples), "guidance": guidance, "sampler": SamplerOptions(steps=steps).description})
    return result


def scored_attributes(kind: str, attributes: Tensor) -> Tensor:
    """Which (sample, attribute) pairs a model of this kind is scored on, bool (N, 10): the hair
    options for a class model, what the captions name for a text model, all for an attribute model."""
    if kind == "class":
        scored = torch.zeros_like(attributes, dtype=torch.bool)
        scored[:, :len(toyfaces.HAIR_OPTIONS)] = True
        return scored
    if kind == "text":
        return mentioned_attributes(attributes)
    return torch.ones_like(attributes, dtype=torch.bool)


@torch.no_grad()
def evaluate_inpainting(model: LatentDiffusion, pixels: Tensor, judge: ToyFaceJudge | None = None, *,
                        steps: int = 50, seed: int = 0) -> dict:
    """Inpaint held-out uint8 images (N, 3, R, R) under random masks (one per image)."""
    images = uint8_to_float(pixels)
    generator = torch.Generator().manual_seed(seed)
    options = SamplerOptions(steps=steps)
    masks = random_masks(len(images), images.shape[-1], generator)
    raw = torch.cat([model.inpaint(batch, mask, options, generator=generator, keep_known=False)
                     for batch, mask in zip(images.split(128), masks.split(128))])
    completed = paste(raw, images, masks)
    known_mean = (images * (1 - masks)).sum(dim=(2, 3), keepdim=True) / (1 - masks).sum(dim=(2, 3), keepdim=True)
    mean_fill = paste(known_mean.expand_as(images), images, masks)
    result = {"psnr_known_region_raw": region_psnr(raw, images, 1 - masks),
              "psnr_filled_region": region_psnr(completed, images, masks),
              "psnr_filled_region_mean_fill": region_psnr(mean_fill, images, masks),
              "masked_fraction": round(masks.mean().item(), 3), "n_images": len(images),
              "sampler": options.description, "known_pixels": "pasted back after decoding"}
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
def evaluate_superres(model: LatentDiffusion, pixels: Tensor, *, steps: int = 50, seed: int = 0) -> dict:
    """Super-resolve downsampled held-out uint8 images; PSNR against the originals, next to
    bicubic upsampling of the same low-resolution inputs."""
    images = uint8_to_float(pixels)
    factor = model.config.conditioning.superres_factor
    low = downsample(images, factor)
    generator = torch.Generator().manual_seed(seed)
    options = SamplerOptions(steps=steps)
    upscaled = torch.cat([model.upscale(batch, options, generator=generator) for batch in low.split(128)])
    return {"psnr": round(psnr(upscaled, images).mean().item(), 2),
            "psnr_bicubic": round(psnr(bicubic_upsample(low, factor), images).mean().item(), 2),
            "factor": factor, "n_images": len(images), "sampler": options.description}
