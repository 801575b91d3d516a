"""Which sampler the demo should draw with: the quality table's sample row for each sampler,
on one trained demo model, over several seeds.

Loads the UNet of a demo run folder (``make demo`` writes ``runs/demo``), draws as many
samples as the demo's quality report does (1,000 with the ``cpu`` profile) with each sampler
and seed, and prints, per sampler, the mean and the spread (min to max over the seeds) of
the toy-face judge's FID, precision, recall and face rate, the largest gap between an
attribute's rate in the samples and in the data, the samples' saturation against the
data's, and the seconds it took.

Usage::

    .venv/bin/python benchmarks/demo_sampler.py [--run runs/demo] [--seeds 3] \\
        [--samplers ddim:50 dpm++2m:5 dpm++2m:10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from minildm import data
from minildm.config import get_profile
from minildm.evaluation.judge import ToyFaceFeatures, load_judge
from minildm.evaluation.quality import quality_report
from minildm.ldm_training import load_ldm
from minildm.sampling import SamplerOptions

DEFAULT_SAMPLERS = ("ddim:50", "ddim:10", "dpm++2m:4", "dpm++2m:5", "dpm++2m:6", "dpm++2m:8", "dpm++2m:10",
                    "dpm++2m:20")
COLUMNS = ("fid", "precision", "recall", "face", "worst attribute gap", "saturation", "seconds")


def sampler_options(spec: str) -> SamplerOptions:
    """``ddim:50`` -> DDIM with 50 steps; ``dpm++2m:5`` -> DPM-Solver++(2M) with 5."""
    name, _, steps = spec.partition(":")
    return SamplerOptions(sampler=name, steps=int(steps or 50))


def sample_row(report: dict) -> dict[str, float]:
    """The numbers this benchmark compares, from one quality report."""
    row, data_attributes = report["rows"]["samples"], report["data"]["attributes"]
    gaps = [abs(rate - data_attributes[name]) for name, rate in row["attributes"].items() if name != "face"]
    return {"fid": row["fid"], "precision": row["precision"], "recall": row["recall"],
            "face": row["attributes"]["face"], "worst attribute gap": max(gaps), "saturation": row["saturation"]}


def summary(values: list[float]) -> str:
    """``mean (min-max)`` over the seeds."""
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS)
    args = parser.parse_args()
    profile = get_profile("cpu")
    held_out = data.load_images("toyfaces", profile.resolution, 2 * profile.n_holdout, start=profile.n_images)
    reference, others = held_out.pixels.chunk(2)
    model, judge = load_ldm(args.run / "ldm"), load_judge()
    data_saturation = None
    print(f"{len(reference)} samples against {len(reference)} held-out faces, seeds 0 to {args.seeds - 1}; "
          "mean (min-max) over the seeds")
    print(" | ".join(("sampler",) + COLUMNS))
    for spec in args.samplers:
        rows = []
        for seed in range(args.seeds):
            started = time.perf_counter()
            report = quality_report(model, reference, others, features=ToyFaceFeatures(judge), judge=judge,
                                    options=sampler_options(spec), generator=torch.Generator().manual_seed(seed))
            rows.append({**sample_row(report), "seconds": time.perf_counter() - started})
            data_saturation = report["data"]["saturation"]
        print(" | ".join([spec] + [summary([row[column] for row in rows]) for column in COLUMNS]), flush=True)
    print(f"data: saturation {data_saturation:.3f}; the real faces' own face rate is the floor row of the "
          "demo's quality table")


if __name__ == "__main__":
    main()
