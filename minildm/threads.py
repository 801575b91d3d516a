"""CPU threads fitted to the free cores, so that two trainings on one laptop share it well.

PyTorch's OpenMP threads spin while they wait for the next parallel region. Alone that is the
fastest way to run the many small kernels of a training step; but when two torch processes
share a 2-core laptop, each one's spinning threads take the cores the other needs, and both
slow down several times over (``benchmarks/two_jobs.py``: 6.5 steps/s alone, 1.0 each for
two at once). One thread each lets both run at full speed.

:class:`ThreadFitter` therefore watches, every few seconds, how many cores other processes keep
busy, and gives this process's torch the rest (at least one thread). Nothing changes when the
user chose a thread count (``OMP_NUM_THREADS``), and nothing on a GPU.
"""

from __future__ import annotations

import os
import time

import psutil
import torch

PINNED_ENV = "OMP_NUM_THREADS"


def fitted_threads(cores: int, busy_cores: float, own_cores: float, most: int) -> int:
    """Threads for this process: the cores that other processes leave free, at least one and at
    most ``most`` (torch's own choice, one per physical core). ``busy_cores``: cores in use by
    everything (0 to ``cores``); ``own_cores``: by this process."""
    others = max(0.0, busy_cores - own_cores)
    return max(1, min(most, round(cores - others)))


class ThreadFitter:
    """Call :meth:`update` once per training step; every ``every_seconds`` it measures the
    machine's and this process's CPU use since the last measurement (psutil) and sets
    ``torch.set_num_threads`` to :func:`fitted_threads`."""

    def __init__(self, device: torch.device, every_seconds: float = 5.0):
        self.active = device.type == "cpu" and not os.environ.get(PINNED_ENV)
        self.cores = psutil.cpu_count() or 1
        self.most = torch.get_num_threads()
        self.every_seconds = every_seconds
        self.process = psutil.Process()
        self.last = time.monotonic()
        if self.active:  # the first calls only start psutil's counters
            psutil.cpu_percent()
            self.process.cpu_percent()

    def update(self) -> int | None:
        """The new thread count when it was measured, else None."""
        if not self.active or time.monotonic() - self.last < self.every_seconds:
            return None
        self.last = time.monotonic()
        busy = psutil.cpu_percent() / 100 * self.cores  # every core's use since the last call, summed
        own = self.process.cpu_percent() / 100  # this process's, in cores
        threads = fitted_threads(self.cores, busy, own, self.most)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads
