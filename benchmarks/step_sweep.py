"""How many training steps the `cpu` profile's models need, measured fast on a GPU: the
quality of samples does not depend on the device that trained the model, only on its steps.

Trains, with the `cpu` preset's sizes on ``--device``:
- CelebA at 32 px (notebook 05's real-face path): the preset's autoencoder, then UNets of
  ``--celeba-steps`` steps each with the preset's min-SNR-5 weighting, and one of the first
  budget without it;
- the pixel-space model of notebook 09 on toy faces, ``--pixel-steps`` steps each.
Each run draws 200 samples (DDIM 50, the same seed) into ``OUT/samples.safetensors`` (uint8),
with its steps and seconds in ``OUT/runs.json``. ``--score`` then scores that file here:
Inception KID on CelebA against 200 held-out photos (007001-007200) with its floor, and the
judge's KID on toy faces, printed as one table per data set.

    python benchmarks/step_sweep.py --device cuda --out /tmp/sweep     # on the GPU
    python benchmarks/step_sweep.py --score /tmp/sweep                 # here, on the CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minildm import data
from minildm.autoencoder_training import AutoencoderTraining, train_autoencoder
from minildm.config import PROFILES
from minildm.data.faces import load_faces
from minildm.data.images import float_to_uint8
from minildm.ldm_training import LDMTraining, train_ldm
from minildm.recipes import autoencoder_config

N_SAMPLES = 200


def train_runs(out: Path, device: str, celeba_steps: list[int], pixel_steps: list[int],
               autoencoder_steps: int | None = None) -> None:
    """Train every run, saving the samples after each one (a run cut short keeps the others')."""
    profile = dataclasses.replace(PROFILES["cpu"], device=device)
    samples, runs = {}, {}

    def record(name: str, model, started: float, steps: int) -> None:
        drawn = model.sample(N_SAMPLES, profile.resolution, generator=torch.Generator().manual_seed(1))
        samples[name] = float_to_uint8(drawn.cpu()).contiguous()
        runs[name] = {"steps": steps, "seconds": round(time.perf_counter() - started, 1)}
        save_file(samples, str(out / "samples.safetensors"))
        (out / "runs.json").write_text(json.dumps(runs, indent=1))
        print(name, runs[name], flush=True)

    if celeba_steps:
        train_celeba(out, profile, celeba_steps, autoencoder_steps, record, runs)
    toy = data.load_images("toyfaces", profile.resolution, profile.n_images)
    for steps in pixel_steps:
        started = time.perf_counter()
        model = train_ldm(out / f"pixel-{steps}", toy.pixels, autoencoder_dir=None,
                          training=LDMTraining(profile=profile, steps=steps, progress=False))
        record(f"pixel-{steps}", model, started, steps)


def train_celeba(out: Path, profile, celeba_steps: list[int], autoencoder_steps: int | None, record, runs: dict) -> None:
    """Stage 1 on CelebA at 32 px, then one UNet per budget (and one without min-SNR)."""
    unweighted = dataclasses.replace(profile, ldm=dataclasses.replace(profile.ldm, min_snr_gamma=None))
    faces = load_faces(profile.resolution, profile.n_images, 1000)
    started = time.perf_counter()
    train_autoencoder(out / "ae-celeba", faces.train.pixels, config=autoencoder_config(profile),
                      training=AutoencoderTraining(profile=profile, steps=autoencoder_steps, progress=False))
    runs["autoencoder"] = {"steps": autoencoder_steps or profile.autoencoder.steps, "seconds": round(time.perf_counter() - started, 1)}
    plans = [("celeba-unweighted", celeba_steps[0], unweighted)]
    plans += [(f"celeba-{steps}", steps, profile) for steps in celeba_steps]
    for name, steps, chosen in plans:
        started = time.perf_counter()
        model = train_ldm(out / name, faces.train.pixels, autoencoder_dir=out / "ae-celeba",
                          training=LDMTraining(profile=chosen, steps=steps, progress=False))
        record(name, model, started, steps)


def score(out: Path) -> None:
    """Print the KID of each run's samples beside the real-against-real floor."""
    from minildm.evaluation.judge import ToyFaceFeatures, load_judge
    from minildm.evaluation.metrics import InceptionFeatures, kernel_distance

    samples, runs = load_file(str(out / "samples.safetensors")), json.loads((out / "runs.json").read_text())
    profile = PROFILES["cpu"]
    held_out = load_faces(profile.resolution, profile.n_images, 1000).held_out.pixels
    toy = data.load_images("toyfaces", profile.resolution, 2 * N_SAMPLES, start=profile.n_images).pixels
    tables = {"celeba": (InceptionFeatures(), held_out), "pixel": (ToyFaceFeatures(load_judge(progress=False)), toy)}
    for prefix, (features, real) in tables.items():
        reference = features(real[:N_SAMPLES])  # once per table: Inception scores about 6 images/s here

        def kid(images):
            return kernel_distance(reference, features(images))
        floor = kid(real[N_SAMPLES:2 * N_SAMPLES])
        print(f"\n{prefix}: KID of {N_SAMPLES} samples against {N_SAMPLES} held-out images ({features.description})")
        print("| run | steps | GPU seconds | KID |\n|---|---:|---:|---|")
        print(f"| floor: other held-out images | | | {floor[0]:.3f} ± {floor[1]:.3f} |")
        for name, images in samples.items():
            if name.startswith(prefix):
                value = kid(images)
                print(f"| {name} | {runs[name]['steps']} | {runs[name]['seconds']} | {value[0]:.3f} ± {value[1]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--celeba-steps", default="1400,2800,5600")
    parser.add_argument("--pixel-steps", default="1000,3000,8000")
    parser.add_argument("--autoencoder-steps", type=int, help="the preset's when left out")
    parser.add_argument("--score", type=Path, help="score the samples of an earlier run's folder")
    args = parser.parse_args()
    if args.score:
        score(args.score)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    train_runs(args.out, args.device, [int(s) for s in args.celeba_steps.split(",") if s],
               [int(s) for s in args.pixel_steps.split(",")], args.autoencoder_steps)


if __name__ == "__main__":
    main()
