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
import math
from pathlib import Path

import torch

from minildm import data
from minildm.autoencoder_training import load_autoencoder
from minildm.config import PROFILES, celeba_dir
from minildm.data.images import uint8_to_float
from minildm.data.sources import read_celeba_attributes
from minildm.diffusion import Diffusion
from minildm.evaluation.metrics import frechet_distance, psnr
from minildm.ldm_training import load_ldm
from minildm.sampling import ddim_invert, ddim_sample
from minildm.unet import UNet, UNetConfig, forward_flops, parameter_count

HELD_OUT = PROFILES["cpu"].n_images  # the held-out toy faces start after the training ones


def faces(n: int, start: int = HELD_OUT) -> torch.Tensor:
    return uint8_to_float(data.load_images("toyfaces", 32, n, start=start).pixels)


def db(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean PSNR of images in [-1, 1] against the reference."""
    return psnr((reference.clamp(-1, 1) + 1) / 2, (images.clamp(-1, 1) + 1) / 2).mean().item()


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
    model = load_ldm(runs / "ldm-toyfaces")
    latents = model.encode(faces(1000)).flatten(1)  # (1000, 256), scaled
    outside = {bound: (latents.abs() > bound).float().mean().item() for bound in (3, 4)}
    clip = (f"scaled latents std {latents.std():.3f}; beyond |3|: {outside[3]:.3%}, beyond |4|: {outside[4]:.4%} "
            "of the values")
    fd = {n: frechet_distance(latents[:n], latents[n:2 * n]) for n in (256, 500)}
    return clip, f"real against real, {latents.shape[1]} dimensions: n = 256 FD {fd[256]:.2f}, n = 500 FD {fd[500]:.2f}"


def inversion(runs: Path) -> str:
    model = load_ldm(runs / "ldm-toyfaces")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/cpu"))
    runs = parser.parse_args().runs
    clip, fd = latent_range_and_fd(runs)
    checks = [
        ("00.4", rarest_celeba_attribute(), "the rarest attribute's rate times 10,000: a few hundred images"),
        ("02.4", vq_noise(runs), "nearly identical outputs: the noisy latent snaps back to the same codes"),
        ("03.5", first_batch_scale(runs), "the first-batch estimate beside the stored factor"),
        ("04.3", attention_cost(), "attention at the finest level costs most"),
        ("05.2", f"1 / sqrt(alpha_bar_T) = {1 / math.sqrt(Diffusion().alpha_bars[-1]):.1f}",
         "an eps error multiplied by about 80 at the first steps"),
        ("06.3", inversion(runs), "PSNR rising with the steps, never perfect, below the autoencoder's"),
        ("06.4", clip, "unit std; a clip of 3 to 4 cuts only rare outliers"),
        ("06.6", fd, "far above 0 at n = 256, falling as n grows"),
    ]
    for exercise, measured, expected in checks:
        print(f"{exercise}: {measured}\n      expected: {expected}")


if __name__ == "__main__":
    main()
