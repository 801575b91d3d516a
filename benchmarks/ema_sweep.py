"""What the EMA decay does to the demo's samples: the demo's UNet trained again with other
decays on the same autoencoder, data, seed and steps, each scored by the demo's quality report.

The trainer's EMA warms up as ``min(decay, (1 + step) / (10 + step))`` (CompVis' LitEma), so a
decay d only takes effect from step ``(10 d - 1) / (1 - d)``: 80 for 0.9, 440 for 0.98, 890
for 0.99, 8,990 for 0.999. Under the ``cpu`` preset's 1,400 steps every decay from 0.994 up
gives the same weights, and the table prints the last training weights (no EMA) beside them.

    .venv/bin/python benchmarks/ema_sweep.py --demo runs/demo --out runs/ema-sweep [--decays 0.9 0.98 0.99 0.999]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from demo_sampler import sample_row  # benchmarks/, the folder of this script
from minildm import checkpoint, data
from minildm.app.demo import DEMO_SAMPLER
from minildm.config import get_profile
from minildm.evaluation.judge import ToyFaceFeatures, load_judge
from minildm.evaluation.quality import quality_report
from minildm.ldm_training import LDMTraining, load_ldm, train_ldm

COLUMNS = ("fid", "precision", "recall", "face", "saturation")


def scored(model, reference, others, judge, seed: int) -> dict[str, float]:
    """The demo's quality report for ``model``, reduced to the sampler table's columns."""
    return sample_row(quality_report(model, reference, others, features=ToyFaceFeatures(judge), judge=judge,
                                     options=DEMO_SAMPLER, generator=torch.Generator().manual_seed(seed)))


def with_training_weights(model, run_dir: Path):
    """The model with the last optimiser step's UNet weights in place of the EMA's."""
    tensors, _ = checkpoint.load(run_dir / "checkpoint.safetensors")
    model.unet.load_state_dict(checkpoint.strip_prefix("model.unet", tensors))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a demo run folder (its autoencoder)")
    parser.add_argument("--out", type=Path, default=Path("runs/ema-sweep"))
    parser.add_argument("--decays", type=float, nargs="+", default=[0.9, 0.98, 0.99, 0.999])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    profile = get_profile("cpu")
    train = data.load_images("toyfaces", profile.resolution, profile.n_images)
    held_out = data.load_images("toyfaces", profile.resolution, 2 * profile.n_holdout, start=profile.n_images)
    reference, others = held_out.pixels.chunk(2)
    judge = load_judge()
    print(f"{len(reference)} samples ({DEMO_SAMPLER.description}) against {len(reference)} held-out faces, "
          f"seeds 0 to {args.seeds - 1}, mean of the seeds")
    print(" | ".join(("weights", "train s") + COLUMNS))
    for decay in args.decays:
        run_dir = args.out / f"ema-{decay:g}"
        started = time.perf_counter()
        model = train_ldm(run_dir, train.pixels, autoencoder_dir=args.demo / "autoencoder", training=LDMTraining(
            profile=dataclasses.replace(profile, ldm=dataclasses.replace(profile.ldm, ema_decay=decay)),
            progress=False))
        seconds = time.perf_counter() - started
        weights = {f"EMA {decay:g}": model}
        if decay == args.decays[-1]:
            weights["training weights (no EMA)"] = with_training_weights(load_ldm(run_dir), run_dir)
        for name, network in weights.items():
            rows = [scored(network, reference, others, judge, seed) for seed in range(args.seeds)]
            means = [sum(row[column] for row in rows) / len(rows) for column in COLUMNS]
            print(" | ".join([name, f"{seconds:.0f}"] + [f"{value:.3f}" for value in means]), flush=True)


if __name__ == "__main__":
    main()
