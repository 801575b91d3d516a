"""The whole pipeline on one screen: ``python -m minildm demo`` (``make demo``).

Toy faces -> stage 1, an f = 4 KL autoencoder -> stage 2, a UNet trained on the cached latents
-> 64 samples (DPM-Solver++(2M), 6 steps: :data:`DEMO_SAMPLER`) -> metrics on held-out faces:
the autoencoder's PSNR and SSIM, the samples' FID and KID on Inception features, and the quality report of
:mod:`minildm.evaluation.quality` on the toy-face judge's (floor, stage 1's ceiling, samples;
precision and recall, saturation, attribute rates), with a reading of its numbers. Everything
lands in one folder: ``data.png``, ``samples.png``, ``metrics.json`` and the run folders
``autoencoder/`` and ``ldm/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from minildm import data
from minildm.autoencoder_training import AutoencoderTraining, train_autoencoder
from minildm.config import MinildmError, Profile
from minildm.evaluation.judge import ToyFaceFeatures, load_judge
from minildm.evaluation.quality import quality_reading, quality_report, quality_table
from minildm.evaluation.scores import evaluate_autoencoder, evaluate_ldm
from minildm.ldm_training import LDMTraining, train_ldm
from minildm.recipes import autoencoder_config
from minildm.sampling import SamplerOptions
from minildm.viz import save_grid

# The demo's sampler, chosen by benchmarks/demo_sampler.py on the cpu demo's model (1,000 samples,
# 3 seeds): DPM-Solver++(2M) at 6 steps scored toy-face FID 2.67 and 97.7% judged faces,
# against 3.88 and 85.1% for DDIM at 50 steps, in a third of the time (docs/measurements.md,
# "Which sampler the demo draws with").
DEMO_SAMPLER = SamplerOptions(sampler="dpm++2m", steps=6)


def run_demo(out: Path, profile: Profile, seed: int = 0) -> dict:
    """Run the demo into the folder ``out``; returns the metrics it also writes."""
    started = time.perf_counter()
    print(f"minildm demo, profile {profile.name!r} on {profile.device}; results in {out}")
    train = data.load_images("toyfaces", profile.resolution, profile.n_images, seed=seed)
    # twice the profile's held-out faces: the reference, and as many others for the floor and ceiling
    held_out = data.load_images("toyfaces", profile.resolution, 2 * profile.n_holdout, start=profile.n_images,
                                seed=seed)
    reference, others = held_out.pixels.chunk(2)
    print(data.describe(train).splitlines()[0])
    save_grid(train.images()[:64], out / "data.png", scale=2)
    description = {"dataset": "toyfaces", "resolution": profile.resolution, "start": 0, "n": len(train),
                   "split": "train", "seed": seed}

    print(f"stage 1: the autoencoder ({stage_one_loss(profile)})")
    autoencoder = train_autoencoder(out / "autoencoder", train.pixels, config=autoencoder_config(profile),
                                    training=AutoencoderTraining(profile=profile, steps=profile.demo_autoencoder_steps,
                                                                 seed=seed, data_description=description))
    metrics = {"autoencoder": evaluate_autoencoder(autoencoder, reference)}
    print(f"autoencoder: {metrics['autoencoder']['psnr']:.1f} dB PSNR on {len(reference)} held-out faces")

    print("stage 2: the latent diffusion model")
    model = train_ldm(out / "ldm", train.pixels, autoencoder_dir=out / "autoencoder",
                      training=LDMTraining(profile=profile, seed=seed, data_description=description))

    generator = torch.Generator().manual_seed(seed)
    grid = save_grid(model.sample(64, profile.resolution, DEMO_SAMPLER, generator=generator), out / "samples.png",
                     scale=2)
    print(f"64 samples ({DEMO_SAMPLER.description}): {grid}")
    try:
        n = profile.fid_images // 3
        metrics["ldm"] = evaluate_ldm(model, held_out.pixels[:n], options=DEMO_SAMPLER, generator=generator,
                                      floor_reference=held_out.pixels[n:2 * n] if len(held_out) >= 2 * n else None)
    except MinildmError as error:  # no Inception network: the samples are still there
        metrics["ldm"] = {"skipped": str(error)}
    judge = load_judge()
    metrics["quality"] = quality_report(model, reference, others, features=ToyFaceFeatures(judge), judge=judge,
                                        options=DEMO_SAMPLER, generator=generator)
    metrics["minutes"] = round((time.perf_counter() - started) / 60, 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"Inception features: {json.dumps(metrics['ldm'])}")
    print(quality_table(metrics["quality"]))
    print(quality_reading(metrics["quality"]))
    print(f"done in {metrics['minutes']:.1f} min; metrics: {out / 'metrics.json'}")
    return metrics


def stage_one_loss(profile: Profile) -> str:
    """The terms of the demo autoencoder's loss, as :func:`train_autoencoder` sets them for the
    profile's preset; the demo never adds the perceptual term, to stay fast."""
    preset = profile.autoencoder
    terms = ["L1", f"{preset.l2_weight:g} x L2" if preset.l2_weight else None, "KL",
             "patch GAN" if preset.disc_start < profile.demo_autoencoder_steps else None]
    return " + ".join(term for term in terms if term) + ", no perceptual loss, to stay fast"
