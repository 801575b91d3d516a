"""Training-step time and peak memory of a one-GPU recipe's two stages, as the package trains them.

For a profile (``celebahq256`` or ``churches256``), this script trains the profile's KL
autoencoder and then its UNet on that autoencoder's latents, each for a few steps, through
the package's own :func:`~minildm.autoencoder_training.train_autoencoder` and
:func:`~minildm.ldm_training.train_ldm` (bf16 autocast, the profile's batch sizes, EMA,
checkpoints and figures as in a real run). It wraps :meth:`minildm.trainer.Trainer.train_step`
with a timer that waits for the GPU before and after each step, and resets the peak-memory
counter before each step, so what it reports is the step alone: median seconds, images per
second and the largest ``torch.cuda.max_memory_allocated`` of any timed step. The first
``--warmup`` steps of each stage (cuDNN's autotuning, allocator growth) are left out.

The autoencoder's patch GAN switches on half-way, so both of its step kinds are timed. The
perceptual network is VGG16 with random weights: its cost does not depend on them, and the
machines this runs on may not reach the weights' download. The images only need the recipe's
size; content does not change a step's time. Projected GPU hours multiply the medians by the
recipe's step counts.

Usage::

    python benchmarks/gpu_recipes.py --images FOLDER [--profile celebahq256] [--steps 24] [--out report.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minildm import data
from minildm.autoencoder_training import AutoencoderTraining, train_autoencoder
from minildm.config import get_profile
from minildm.ldm_training import LDMTraining, train_ldm
from minildm.perceptual import PerceptualLoss, VGG16Features
from minildm.recipes import autoencoder_config
from minildm.trainer import Trainer

FACTORS = {"celebahq256": 4, "churches256": 8}


class StepTimer:
    """Replaces ``Trainer.train_step`` with a timed copy; ``records`` holds (step, seconds, bytes)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, float, int]] = []
        self.original = Trainer.train_step

    def __enter__(self) -> StepTimer:
        timer = self

        def timed_step(trainer: Trainer) -> dict[str, float]:
            step = trainer.step
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            logs = timer.original(trainer)
            torch.cuda.synchronize()
            timer.records.append((step, time.perf_counter() - started, torch.cuda.max_memory_allocated()))
            return logs

        Trainer.train_step = timed_step
        return self

    def __exit__(self, *exc: object) -> None:
        Trainer.train_step = self.original


def summary(records: list[tuple[int, float, int]], batch: int) -> tuple[float, float, float]:
    """Median seconds a step, images a second, and the peak GiB of the steps given."""
    median = statistics.median(seconds for _, seconds, _ in records)
    return median, batch / median, max(peak for _, _, peak in records) / 2**30


def measure(profile_name: str, images: str, steps: int, warmup: int, work: Path) -> list[str]:
    profile = get_profile(profile_name)
    factor = FACTORS[profile_name]
    pixels = data.load_images(images, profile.resolution, 4 * profile.ldm.batch_size, progress=False).pixels
    rows = []
    with StepTimer() as timer:
        training = AutoencoderTraining(profile=profile, steps=steps, perceptual=PerceptualLoss(VGG16Features()).eval(),
                                       disc_start=steps // 2, progress=False)
        train_autoencoder(work / "ae", pixels, config=autoencoder_config(profile, factor=factor), training=training)
    autoencoder_steps = timer.records
    with StepTimer() as timer:
        train_ldm(work / "ldm", pixels, autoencoder_dir=work / "ae", training=LDMTraining(profile=profile, steps=steps,
                                                                                         progress=False))
    parts = [
        ("autoencoder, GAN off", [r for r in autoencoder_steps if warmup <= r[0] < steps // 2],
         profile.autoencoder.batch_size, profile.autoencoder.disc_start),
        ("autoencoder, GAN on", [r for r in autoencoder_steps if r[0] >= steps // 2 + warmup],
         profile.autoencoder.batch_size, profile.autoencoder.steps - profile.autoencoder.disc_start),
        ("UNet (LDM), with EMA", [r for r in timer.records if r[0] >= warmup],
         profile.ldm.batch_size, profile.ldm.steps),
    ]
    for name, records, batch, recipe_steps in parts:
        median, rate, peak = summary(records, batch)
        rows.append(f"| {profile_name} | {name} | {batch} | {len(records)} | {median:.3f} | {rate:.1f} | {peak:.1f} "
                    f"| {recipe_steps:,} | {recipe_steps * median / 3600:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="an image folder (any size; resized to the recipe's)")
    parser.add_argument("--profile", action="append", choices=sorted(FACTORS), help="recipe(s); default both")
    parser.add_argument("--steps", type=int, default=24, help="steps per stage, half of them with the GAN")
    parser.add_argument("--warmup", type=int, default=3, help="steps of each kind left out of the medians")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_recipes.py times the one-GPU recipes: it needs a CUDA device")
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast; "
             f"{args.steps} steps per stage, the first {args.warmup} of each kind left out",
             "",
             "| recipe | step | batch | steps timed | median s/step | images/s | peak GiB | recipe steps | GPU hours |",
             "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for name in args.profile or sorted(FACTORS):
            lines += measure(name, args.images, args.steps, args.warmup, Path(work) / name)
            print("\n".join(lines), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
