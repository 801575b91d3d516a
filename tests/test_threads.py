"""Threads fitted to the free cores (minildm.threads)."""

import pytest
import torch

from minildm import threads
from minildm.threads import ThreadFitter, fitted_threads


@pytest.mark.parametrize("cores, busy, own, most, expected", [
    (2, 2.0, 2.0, 2, 2),  # alone: all the cores this process may use
    (2, 2.0, 1.0, 2, 1),  # another process keeps one core busy: one thread
    (2, 2.0, 0.1, 2, 1),  # the other keeps both busy: still one thread, never none
    (8, 3.0, 1.0, 4, 4),  # two cores busy elsewhere, six free, but torch's own choice is the cap
    (8, 6.4, 1.0, 4, 3),  # 5.4 busy elsewhere: 2.6 free rounds to 3
])
def test_fitted_threads_are_the_free_cores_between_one_and_the_cap(cores, busy, own, most, expected):
    assert fitted_threads(cores, busy, own, most) == expected


class FakeProcess:
    def __init__(self, percent):
        self.percent = percent

    def cpu_percent(self):
        return self.percent


def test_the_fitter_sets_torch_threads_from_the_measured_use(monkeypatch):
    monkeypatch.delenv(threads.PINNED_ENV, raising=False)
    monkeypatch.setattr(threads.psutil, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.psutil, "Process", lambda: FakeProcess(100.0))  # this process: one core
    monkeypatch.setattr(threads.psutil, "cpu_percent", lambda: 100.0)  # both cores busy: the other has one
    set_to = []
    monkeypatch.setattr(threads.torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)
    fitter = ThreadFitter(torch.device("cpu"), every_seconds=0.0)
    assert fitter.update() == 1 and set_to == [1]


def test_a_chosen_thread_count_and_a_gpu_are_left_alone(monkeypatch):
    monkeypatch.setenv(threads.PINNED_ENV, "2")
    assert ThreadFitter(torch.device("cpu"), every_seconds=0.0).update() is None
    monkeypatch.delenv(threads.PINNED_ENV)
    assert ThreadFitter(torch.device("cuda"), every_seconds=0.0).update() is None


def test_between_measurements_nothing_is_measured(monkeypatch):
    monkeypatch.delenv(threads.PINNED_ENV, raising=False)
    fitter = ThreadFitter(torch.device("cpu"), every_seconds=3600.0)
    assert fitter.update() is None
