"""The expected answers of five exercises tagged "depends on the profile" that need a training
run of their own, checked with the ``cpu`` preset against the notebooks' run folders.

- 01.1 and 01.2: the KL autoencoder trained with ``kl_weight`` 1e-2 and 0 against notebook 01's
  (1e-6): PSNR, KL per latent value and latent std on 1,000 held-out faces;
- 02.1: the VQ autoencoder without code revival against notebook 02's: perplexity and codes used;
- 05.1: notebook 05's UNet trained on to twice its steps: the judge's KID before and after;
- 05.2: the same UNet trained to predict eps: the std of its predicted clean latents at the
  first DDIM steps, against the v model's.

Each training takes 2 to 4 minutes on 2 cores; the run folders go to ``--out``.

    .venv/bin/python benchmarks/exercise_trainings.py [--runs runs/cpu] [--out runs/exercise-checks]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import torch

from minildm import data
from minildm.autoencoder_training import AutoencoderTraining, load_autoencoder, train_autoencoder
from minildm.config import get_profile
from minildm.data.images import uint8_to_float
from minildm.evaluation.judge import ToyFaceFeatures, load_judge
from minildm.evaluation.metrics import feature_distances
from minildm.evaluation.scores import evaluate_autoencoder
from minildm.ldm_training import LDMTraining, load_ldm, train_ldm
from minildm.recipes import autoencoder_config

PROFILE = get_profile("cpu")


def kl_row(name: str, autoencoder, held_out: torch.Tensor) -> str:
    with torch.no_grad():
        posterior = autoencoder.posterior(uint8_to_float(held_out))
        kl = posterior.kl().mean().item() / posterior.mode()[0].numel()
        std = posterior.mode().std().item()
    psnr = evaluate_autoencoder(autoencoder, held_out)["psnr"]
    return f"{name}: PSNR {psnr:.2f} dB, KL {kl:.3g} per latent value, latent std {std:.3f}"


def kl_weights(runs: Path, out: Path, train: torch.Tensor, held_out: torch.Tensor) -> list[str]:
    rows = [kl_row("kl_weight 1e-6 (notebook 01)", load_autoencoder(runs / "ae-kl-f4-toyfaces"), held_out)]
    for weight in (1e-2, 0.0):
        autoencoder = train_autoencoder(out / f"ae-kl-{weight:g}", train, config=autoencoder_config(PROFILE),
                                        training=AutoencoderTraining(profile=PROFILE, kl_weight=weight,
                                                                     progress=False))
        rows.append(kl_row(f"kl_weight {weight:g}", autoencoder, held_out))
    return rows


def no_revival(runs: Path, out: Path, train: torch.Tensor, held_out: torch.Tensor) -> list[str]:
    config = dataclasses.replace(autoencoder_config(PROFILE, reg="vq"), revive_after=10**9)
    rows = []
    for name, autoencoder in (("revival after 50 steps (notebook 02)", load_autoencoder(runs / "ae-vq-f4-toyfaces")),
                              ("no revival", train_autoencoder(out / "ae-vq-no-revival", train, config=config,
                                                               training=AutoencoderTraining(profile=PROFILE,
                                                                                            progress=False)))):
        with torch.no_grad():
            indices = autoencoder.quantizer.quantize(autoencoder.encode(uint8_to_float(held_out)))[1]
        scores = evaluate_autoencoder(autoencoder, held_out)
        rows.append(f"{name}: perplexity {scores['perplexity']:.0f} of {scores['codebook_size']}, "
                    f"{indices.unique().numel()} codes used on {len(held_out)} faces, PSNR {scores['psnr']:.2f} dB")
    return rows


def longer_training(runs: Path, out: Path, train: torch.Tensor, held_out: torch.Tensor) -> list[str]:
    features = ToyFaceFeatures(load_judge(progress=False))
    reference = features(held_out[:500])
    floor = feature_distances(reference, features(held_out[500:]))
    longer_dir = out / "ldm-toyfaces-2x"
    if not longer_dir.exists():
        shutil.copytree(runs / "ldm-toyfaces", longer_dir)  # train_ldm resumes the shorter run
    rows = [f"floor {floor['kid']:.4f} ± {floor['kid_std']:.4f} (500 against 500)"]
    longer = train_ldm(longer_dir, train, autoencoder_dir=runs / "ae-kl-f4-toyfaces",
                       training=LDMTraining(profile=PROFILE, steps=2 * PROFILE.ldm.steps, progress=False))
    for steps, model in ((PROFILE.ldm.steps, load_ldm(runs / "ldm-toyfaces")), (2 * PROFILE.ldm.steps, longer)):
        samples = model.sample(500, PROFILE.resolution, generator=torch.Generator().manual_seed(0))
        kid = feature_distances(reference, features(samples))
        rows.append(f"{steps} steps: judge KID {kid['kid']:.4f} ± {kid['kid_std']:.4f}")
    return rows


def eps_prediction(runs: Path, out: Path, train: torch.Tensor) -> list[str]:
    rows, v_model = [], load_ldm(runs / "ldm-toyfaces")
    noise = torch.randn(64, *v_model.latent_shape(PROFILE.resolution), generator=torch.Generator().manual_seed(0))
    for name, model in (("v (notebook 05)", v_model),
                        ("eps", train_ldm(out / "ldm-toyfaces-eps", train, autoencoder_dir=runs / "ae-kl-f4-toyfaces",
                                          training=LDMTraining(profile=PROFILE, prediction="eps", progress=False)))):
        _, trajectory = model.sample_trajectory(64, PROFILE.resolution, noise=noise)
        stds = [f"{prediction.std():.2f}" for prediction in trajectory.predictions[:3]]
        rows.append(f"{name}: std of the predicted clean latents at the first three of 50 steps {', '.join(stds)}; "
                    f"at the last {trajectory.predictions[-1].std():.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--out", type=Path, default=Path("runs/exercise-checks"))
    args = parser.parse_args()
    runs = args.runs.resolve()  # notebook 05's run records its autoencoder's absolute path
    train = data.load_images("toyfaces", PROFILE.resolution, PROFILE.n_images).pixels
    held_out = data.load_images("toyfaces", PROFILE.resolution, 1000, start=PROFILE.n_images).pixels
    for exercise, rows in (("01.1, 01.2", kl_weights(runs, args.out, train, held_out)),
                           ("02.1", no_revival(runs, args.out, train, held_out)),
                           ("05.1", longer_training(runs, args.out, train, held_out)),
                           ("05.2", eps_prediction(runs, args.out, train))):
        print(exercise + "\n" + "\n".join(f"  {row}" for row in rows), flush=True)


if __name__ == "__main__":
    main()
