"""The expected answers of the exercises tagged "depends on the profile" that a trained run
folder can check in seconds: each line prints the exercise, what was measured and what its
notebook tells the student to expect.

Reads the run folders the notebooks wrote (``--runs``, default ``runs/cpu``: notebooks 01,
02 and 05 run in the ``cpu`` profile) and, for exercise 00.4, the CelebA attributes
(``MINILDM_CELEBA_DIR``). The exercises that need a training run of their own are not here;
docs/teaching.md ("The end-of-notebook exercises and their expected answers") lists which were
checked and how.

    MINILDM_CELEBA_DIR=../shared/data/celeba-8k .venv/bin/python benchmarks/exercise_checks.py
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from minildm import data
from minildm.autoencoder_training import load_autoencoder
from minildm.conditioning import layout_tensor
from minildm.config import PROFILES, celeba_dir
from minildm.data.images import float_to_uint8, uint8_to_float
from minildm.data.sources import read_celeba_attributes
from minildm.data.toyface_parts import PARTS, generate_parts
from minildm.diffusion import Diffusion
from minildm.evaluation.judge import ToyFaceFeatures, load_judge
from minildm.evaluation.metrics import feature_distances, frechet_distance, psnr
from minildm.evaluation.part_scores import box_agreement, map_agreement, presence_agreement, shuffled
from minildm.evaluation.quality import saturation
from minildm.evaluation.scores import region_psnr, sample_in_batches
from minildm.evaluation.segmenter import class_iou, load_segmenter
from minildm.image_conditions import MASK_SHAPES, downsample, mask_of_shape
from minildm.ldm_training import load_ldm
from minildm.recipes import condition_tensor
from minildm.sampling import ddim_invert, ddim_sample, ddim_step, ddim_timesteps
from minildm.unet import UNet, UNetConfig, forward_flops, parameter_count

HELD_OUT = PROFILES["cpu"].n_images  # the held-out toy faces start after the training ones

# each network is read from disk once, however many checks use it
trained = functools.cache(load_ldm)
judge_network = functools.cache(lambda: load_judge(progress=False))
segmenter_network = functools.cache(lambda: load_segmenter(progress=False))


def faces(n: int, start: int = HELD_OUT) -> torch.Tensor:
    return uint8_to_float(data.load_images("toyfaces", 32, n, start=start).pixels)


def db(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean PSNR of images in [-1, 1] against the reference."""
    return psnr(reference, images.clamp(-1, 1)).mean().item()


def rarest_celeba_attribute() -> str:
    folder = celeba_dir()
    if folder is None:
        return "skipped: MINILDM_CELEBA_DIR is not set"
    rows = list(read_celeba_attributes(folder / "list_attr_celeba.txt").values())
    rates = {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}
    name, rate = min(rates.items(), key=lambda item: item[1])
    return f"{name}, {rate:.2%} of {len(rows)} photos: {rate * PROFILES['cpu'].n_images:.0f} of 10,000 images"


def vq_noise(runs: Path) -> str:
    vq = load_autoencoder(runs / "ae-vq-f4-toyfaces")
    with torch.no_grad():
        z = vq.encode(faces(256))
        noisy = z + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
        codes, noisy_codes = vq.quantizer.quantize(z)[1], vq.quantizer.quantize(noisy)[1]
        change = db(vq.decode(noisy), vq.decode(z))
    return (f"latent std {z.std():.2f}; {(codes == noisy_codes).float().mean():.1%} of positions keep their code; "
            f"decode(z + 0.3 noise) against decode(z): {change:.1f} dB")


def first_batch_scale(runs: Path) -> str:
    autoencoder = load_autoencoder(runs / "ae-kl-f4-toyfaces")
    with torch.no_grad():
        estimate = 1 / autoencoder.encode(faces(16, start=0)).std().item()
    stored = autoencoder.scale_factor.item()
    return (f"first 16 faces 1/std {estimate:.4f}, stored {stored:.4f}; the log SNR curve moves by "
            f"2 log(ratio) = {2 * math.log(estimate / stored):+.3f}")


def latent_range_and_fd(runs: Path) -> tuple[str, str]:
    model = trained(runs / "ldm-toyfaces")
    latents = model.encode(faces(1000)).flatten(1)  # (1000, 256), scaled
    outside = {bound: (latents.abs() > bound).float().mean().item() for bound in (3, 4)}
    clip = (f"scaled latents std {latents.std():.3f}; beyond |3|: {outside[3]:.3%}, beyond |4|: {outside[4]:.4%} "
            "of the values")
    fd = {n: frechet_distance(latents[:n], latents[n:2 * n]) for n in (256, 500)}
    return clip, f"real against real, {latents.shape[1]} dimensions: n = 256 FD {fd[256]:.2f}, n = 500 FD {fd[500]:.2f}"


def inversion(runs: Path) -> str:
    model = trained(runs / "ldm-toyfaces")
    images = faces(16)
    latents = model.encode(images)
    denoise = model.denoiser()
    readings = []
    for steps in (10, 50, 200):
        noise = ddim_invert(model.diffusion, denoise, latents, steps=steps)
        back = model.decode(ddim_sample(model.diffusion, denoise, noise, steps=steps))
        readings.append(f"{steps} steps {db(back, images):.1f} dB")
    ceiling = db(model.decode(latents), images)
    return ", ".join(readings) + f" (the autoencoder alone: {ceiling:.1f} dB)"


def attention_cost() -> str:
    preset = PROFILES["cpu"].ldm
    base = UNetConfig(in_channels=4, out_channels=4, base_channels=preset.base_channels,
                      channel_mult=preset.channel_mult, res_blocks=preset.res_blocks, attention_levels=())
    with torch.device("meta"):
        none = UNet(base)
        per_level = {level: UNet(dataclasses.replace(base, attention_levels=(level,)))
                     for level in range(len(preset.channel_mult))}
    baseline = forward_flops(none, (4, 8, 8))
    flops = {level: forward_flops(unet, (4, 8, 8)) - baseline for level, unet in per_level.items()}
    params = {level: parameter_count(unet) - parameter_count(none) for level, unet in per_level.items()}
    return "attention at level " + ", ".join(f"{level}: +{flops[level] / 1e6:.1f} MFLOPs, +{params[level]:,} parameters"
                                             for level in per_level)


def judge_kid(features, real: torch.Tensor, model, latents: torch.Tensor) -> str:
    distances = feature_distances(real, features(model.decode(latents)))
    return f"{distances['kid']:.4f} ± {distances['kid_std']:.4f}"


def quadratic_timesteps(steps: int, timesteps: int = 1000) -> list[int]:
    """DDIM's quadratic spacing (Song et al. 2021, App. D.2): more steps near t = 0."""
    return sorted({round(((timesteps - 1) ** 0.5 * i / (steps - 1)) ** 2) for i in range(steps)}, reverse=True)


def sampler_settings(runs: Path) -> tuple[str, str]:
    """06.1 (eta at 50 and 200 steps) and 06.2 (quadratic spacing at 10 steps): judge KID of
    256 samples from the same noise against 256 held-out faces, as in notebook 06, section 4."""
    model, features = trained(runs / "ldm-toyfaces"), ToyFaceFeatures(judge_network())
    held_out = data.load_images("toyfaces", 32, 512, start=HELD_OUT).pixels
    real = features(held_out[:256])
    floor = feature_distances(real, features(held_out[256:]))
    noise = torch.randn(256, *model.latent_shape(32), generator=torch.Generator().manual_seed(4))
    denoise = model.denoiser()
    etas = []
    for steps in (50, 200):
        for eta in (0.0, 0.5, 1.0):
            latents = ddim_sample(model.diffusion, denoise, noise, steps=steps, eta=eta,
                                  generator=torch.Generator().manual_seed(5))
            etas.append(f"{steps} steps eta {eta:g}: {judge_kid(features, real, model, latents)}")
    spacings = []
    for name, schedule in (("even", ddim_timesteps(model.diffusion, 10)), ("quadratic", quadratic_timesteps(10))):
        x = noise
        with torch.no_grad():
            for index, step in enumerate(schedule):
                x, _ = ddim_step(model.diffusion, denoise, x, step, schedule[index + 1] if index + 1 < len(schedule)
                                 else None)
        spacings.append(f"{name} {judge_kid(features, real, model, x)}")
    floor_text = f"floor {floor['kid']:.4f} ± {floor['kid_std']:.4f}, n = 256"
    return "; ".join(etas) + f"; {floor_text}", "10 steps: " + ", ".join(spacings) + f"; {floor_text}"


def guidance_beyond_five(runs: Path) -> str:
    """07.1: balanced agreement and saturation of the attribute model at guidance 3 to 12."""
    model, judge = trained(runs / "ldm-toyfaces-attributes"), judge_network()
    held_out = data.load_images("toyfaces", 32, 256, start=HELD_OUT)
    requested = condition_tensor(model.config.conditioning, held_out)
    readings = []
    for scale in (3.0, 5.0, 8.0, 12.0):
        samples = sample_in_batches(model, requested, resolution=32, guidance=scale)
        agreement = judge.agreement(samples, held_out.attributes)
        readings.append(f"guidance {scale:g}: balanced {agreement['balanced_agreement']:.3f}, "
                        f"saturation {saturation(float_to_uint8(samples)).mean():.3f}")
    return "; ".join(readings) + f" (data saturation {saturation(held_out.pixels).mean():.3f}, n = 256)"


def superres_samples(runs: Path) -> tuple[str, str]:
    """08.3 (where 8 samples of one input disagree) and 08.4 (their average against one sample)."""
    model = trained(runs / "ldm-toyfaces-superres")
    images = faces(64)
    low = downsample(images, model.config.conditioning.superres_factor)
    draws = torch.stack([model.upscale(low, generator=torch.Generator().manual_seed(seed)) for seed in range(8)])
    spread = draws.std(dim=0).mean(dim=1)  # (64, R, R)
    edges = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().amax(dim=1)[:, :, 1:] > 0.2  # (64, R-1, R-1)
    inner = spread[:, 1:, 1:]
    disagreement = (f"pixel std over 8 samples: {inner[edges].mean():.3f} at edges ({edges.float().mean():.0%} of "
                    f"pixels), {inner[~edges].mean():.3f} elsewhere")
    single, averaged = db(draws[0], images), db(draws.mean(dim=0), images)
    return disagreement, f"one sample {single:.2f} dB, the average of 8 {averaged:.2f} dB (n = 64)"


def semantic_maps(runs: Path) -> tuple[str, str]:
    """10.2 (maps coarsened to 8 x 8: per-part IoU) and 10.5 (canvases of 1, 4, 9 and 16 faces: the
    mIoU of each face, cut out of its canvas and read by the segmenter at the training size)."""
    model, segmenter = trained(runs / "ldm-semantic-toyfaces"), segmenter_network()
    _, _, maps, _, _ = generate_parts(256, 32, seed=0, start=HELD_OUT)
    coarse = F.interpolate(F.interpolate(maps[:, None].float(), size=8, mode="nearest"), size=32, mode="nearest")
    per_part = {}
    for name, asked in (("full", maps), ("8 x 8", coarse[:, 0].to(torch.uint8))):
        drawn = model.synthesize(asked, generator=torch.Generator().manual_seed(0))
        per_part[name] = class_iou(segmenter.segment(drawn), maps, len(PARTS))
    parts = ", ".join(f"{part} {per_part['full'][i]:.2f} -> {per_part['8 x 8'][i]:.2f}" for i, part in enumerate(PARTS))
    sizes = []
    for side in (1, 2, 3, 4):
        canvas = rearrange(maps[:side * side * 8], "(n a b) h w -> n (a h) (b w)", a=side, b=side)
        drawn = model.synthesize(canvas, generator=torch.Generator().manual_seed(side))
        tiles = rearrange(drawn, "n c (a h) (b w) -> (n a b) c h w", a=side, b=side)  # one face each, read at 32 px
        sizes.append(f"{side}x: {map_agreement(segmenter, tiles, maps[:side * side * 8]):.3f}")
    return (f"per-part IoU against the full maps, full -> 8 x 8 maps: {parts}",
            "mIoU of each face on canvases of 1, 4, 9 and 16 faces (8 canvases each), against the real faces' "
            f"{map_agreement(segmenter, faces(256), maps):.3f}: " + ", ".join(sizes))


def masks_by_shape(runs: Path) -> str:
    """08.1: inpainting scored per mask shape: the judge's face rate and the filled region's PSNR."""
    model, judge = trained(runs / "ldm-toyfaces-inpaint"), judge_network()
    images = faces(256)
    readings = []
    for shape in MASK_SHAPES:
        masks = mask_of_shape(shape, len(images), 32, torch.Generator().manual_seed(1))
        completed = model.inpaint(images, masks, generator=torch.Generator().manual_seed(2))
        face_rate = judge.predict(completed)[1].float().mean().item()
        readings.append(f"{shape} (masks {masks.mean():.0%} of the image): faces {face_rate:.2f}, "
                        f"filled region {region_psnr(completed, images, masks):.1f} dB")
    return "; ".join(readings) + " (256 faces each)"


def layout_guidance(runs: Path) -> str:
    """10.1: box IoU and presence accuracy of the layout model against the guidance scale."""
    model, segmenter = trained(runs / "ldm-layout-toyfaces"), segmenter_network()
    _, _, _, boxes, present = generate_parts(256, 32, seed=0, start=HELD_OUT)
    layouts = layout_tensor(boxes, present)
    readings = []
    for scale in (1.0, 2.0, 3.0, 5.0, 8.0):
        drawn = model.sample(len(layouts), 32, condition=layouts, guidance=scale,
                             generator=torch.Generator().manual_seed(0)).cpu()
        readings.append(f"{scale:g}: box IoU {box_agreement(segmenter, drawn, layouts):.3f} "
                        f"(shuffled {box_agreement(segmenter, drawn, shuffled(layouts)):.3f}), presence "
                        f"{presence_agreement(segmenter, drawn, layouts):.3f} "
                        f"(shuffled {presence_agreement(segmenter, drawn, shuffled(layouts)):.3f})")
    return "guidance " + "; ".join(readings) + " (256 samples each)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/cpu"))
    runs = parser.parse_args().runs
    clip, fd = latent_range_and_fd(runs)
    eta, spacing = sampler_settings(runs)
    disagreement, average = superres_samples(runs)
    coarse, canvas = semantic_maps(runs)
    checks = [
        ("00.4", rarest_celeba_attribute(), "the rarest attribute's rate times 10,000: a few hundred images"),
        ("02.4", vq_noise(runs), "nearly identical outputs: the noisy latent snaps back to the same codes"),
        ("03.5", first_batch_scale(runs), "the first-batch estimate beside the stored factor"),
        ("04.3", attention_cost(), "attention at the finest level costs most"),
        ("05.2", f"1 / sqrt(alpha_bar_T) = {1 / math.sqrt(Diffusion().alpha_bars[-1]):.1f}",
         "an eps error multiplied by about 80 at the first steps"),
        ("06.3", inversion(runs), "PSNR rising with the steps, never perfect, below the autoencoder's"),
        ("06.4", clip, "unit std; a clip of 3 to 4 cuts only rare outliers"),
        ("06.1", eta, "eta 0 best with few steps, the gap closing with many"),
        ("06.2", spacing, "quadratic helps or is no worse at 10 steps"),
        ("06.6", fd, "far above 0 at n = 256, falling as n grows"),
        ("07.1", guidance_beyond_five(runs), "agreement levels off (or drops) beyond 5 while colours saturate"),
        ("08.3", disagreement, "a std map bright at edges, eyes and hair, dark on flat skin and background"),
        ("08.1", masks_by_shape(runs), "the largest masks fail most often: little context is left"),
        ("08.4", average, "the average beats a single sample in PSNR"),
        ("10.1", layout_guidance(runs), "both scores rise from guidance 1 and level off or fall at the largest"),
        ("10.2", coarse, "large parts keep their IoU, small ones (eyes, mouth, nose) drop"),
        ("10.5", canvas, "mIoU at each size beside the real faces' (the ceiling)"),
    ]
    for exercise, measured, expected in checks:
        print(f"{exercise}: {measured}\n      expected: {expected}")


if __name__ == "__main__":
    main()
