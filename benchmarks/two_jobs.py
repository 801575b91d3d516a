"""Two trainings on one laptop: how much two torch processes slow each other, and why.

Each job is a fresh Python process that times ``--steps`` training steps of the ``cpu``
profile's UNet (batch 128, as :mod:`benchmarks.cpu_speed` builds it) after two untimed ones,
and prints its steps per second. The script runs one job alone, then two at once, under each
OpenMP wait policy:

- ``active``: OpenMP's worker threads spin while they wait for the next parallel region (the
  default of GNU OpenMP for a while after each region), which keeps a core busy;
- ``passive``: they sleep, and give the core to whoever else needs it.

minildm sets ``OMP_WAIT_POLICY=PASSIVE`` when it is imported before torch (``minildm/__init__.py``);
this script sets the policy of each job explicitly.

Usage::

    .venv/bin/python benchmarks/two_jobs.py [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

JOB = """
import sys, time
sys.path.insert(0, "benchmarks")
from cpu_speed import unet_step
import os, torch
from minildm.threads import ThreadFitter
step, batch = unet_step("fp32", False)
fitter = ThreadFitter(torch.device("cpu"), every_seconds=1.0) if os.environ.get("FIT_THREADS") else None
step(); step()
started = time.perf_counter()
for _ in range({steps}):
    step()
    if fitter:
        fitter.update()
print({steps} / (time.perf_counter() - started))
"""


POLICIES = {"active": {"OMP_WAIT_POLICY": "ACTIVE"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
            "one thread each": {"OMP_NUM_THREADS": "1"}, "fitted (minildm.threads)": {"FIT_THREADS": "1"}}


def run_jobs(count: int, policy: str, steps: int) -> list[float]:
    """Start ``count`` jobs at once under an OpenMP wait ``policy``; their steps per second."""
    environment = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "FIT_THREADS")}
    environment.update(POLICIES[policy])
    jobs = [subprocess.Popen([sys.executable, "-c", JOB.format(steps=steps)], env=environment,
                             stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [float(job.communicate()[0].strip().splitlines()[-1]) for job in jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; UNet training steps per second of each job ({args.steps} steps, fp32)")
    print("| OpenMP wait policy | one job alone | each of two jobs at once | slow-down |")
    print("|---|---:|---:|---:|")
    for policy in POLICIES:
        alone = run_jobs(1, policy, args.steps)[0]
        together = run_jobs(2, policy, args.steps)
        mean = sum(together) / len(together)
        print(f"| {policy} | {alone:.2f} | {' and '.join(f'{value:.2f}' for value in together)} | "
              f"{alone / mean:.1f}x |")


if __name__ == "__main__":
    main()
