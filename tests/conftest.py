"""Fixtures shared by the unit tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread and a fixed seed: on two shared cores, OpenMP threads of small
    convolutions can wait on each other for longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
