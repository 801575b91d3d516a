"""Where the demo loses its colours and its detail: the demo with other budgets, and the signal at t = T.

Runs ``minildm demo`` (:func:`minildm.app.demo.run_demo`) with the ``cpu`` profile, or with
its autoencoder steps (``--ae-steps``) and UNet steps (``--ldm-steps``) replaced, or the UNet's
loss weighted by min-SNR-gamma (``--min-snr``, Hang et al. 2023), and prints
its quality table (floor, stage 1's ceiling, samples). Then it measures what the noise
schedule leaves of the data at t = T (Lin et al. 2023, Sec. 3.1): DDIM from pure noise
against DDIM from x_T = sqrt(abar_T) z_0 + sqrt(1 - abar_T) eps of held-out latents z_0. If
the model had learned to use that leftover signal, the second would be closer to the data
(higher saturation, lower KID) than the first.

Usage::

    .venv/bin/python benchmarks/demo_quality.py --out runs/calibration/a [--ae-steps N] [--ldm-steps N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from minildm import data, ldm_training
from minildm.app.demo import run_demo
from minildm.config import get_profile
from minildm.data.images import float_to_uint8, uint8_to_float
from minildm.evaluation.judge import ToyFaceFeatures, load_judge
from minildm.evaluation.metrics import feature_distances
from minildm.evaluation.quality import saturation
from minildm.ldm_training import load_ldm
from minildm.recipes import ldm_config
from minildm.sampling import SamplerOptions


def terminal_signal(out: Path, n: int, seed: int = 0) -> dict:
    """Samples from pure noise against samples from noised held-out latents at t = T."""
    profile = get_profile("cpu")
    model = load_ldm(out / "ldm")
    held_out = data.load_images("toyfaces", profile.resolution, 2 * n, start=profile.n_images, seed=seed).pixels
    reference, others = held_out.chunk(2)
    latents = model.encode(uint8_to_float(others))  # (n, c, h, w), scaled
    abar_T = model.diffusion.alpha_bars[-1].item()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator)
    starts = {"pure noise": noise, "noised held-out latents": abar_T**0.5 * latents + (1 - abar_T)**0.5 * noise}
    features = ToyFaceFeatures(load_judge())
    real = features(reference)
    results = {"alpha_bar_T": abar_T, "n": n}
    for name, x_T in starts.items():
        samples = float_to_uint8(model.sample(n, profile.resolution, SamplerOptions(), noise=x_T))
        results[name] = {**feature_distances(real, features(samples)),
                         "saturation": round(saturation(samples).mean().item(), 4)}
    results["data saturation"] = round(saturation(reference).mean().item(), 4)
    return results


def with_min_snr(gamma: float) -> None:
    """Make every LDM that train_ldm builds weight its loss by min-SNR-gamma (a profile has no
    such setting, so this replaces the recipe function that train_ldm calls)."""
    def weighted_config(*args, **kwargs):
        config = ldm_config(*args, **kwargs)
        return dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, min_snr_gamma=gamma))
    ldm_training.ldm_config = weighted_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ae-steps", type=int)
    parser.add_argument("--ldm-steps", type=int)
    parser.add_argument("--min-snr", type=float, help="weight the UNet's loss by min-SNR-gamma with this gamma")
    parser.add_argument("--n", type=int, default=1000, help="samples for the signal at t = T")
    args = parser.parse_args()
    profile = get_profile("cpu")
    if args.ae_steps:
        profile = dataclasses.replace(profile, demo_autoencoder_steps=args.ae_steps)
    if args.ldm_steps:
        profile = dataclasses.replace(profile, ldm=dataclasses.replace(profile.ldm, steps=args.ldm_steps))
    if args.min_snr:
        with_min_snr(args.min_snr)
    run_demo(args.out, profile)
    print(json.dumps(terminal_signal(args.out, args.n), indent=1))


if __name__ == "__main__":
    main()
