"""Fixtures shared by the unit tests."""

import pytest
import torch

from minildm.autoencoder_training import AutoencoderTraining, train_autoencoder
from minildm.data import toyfaces
from minildm.config import get_profile
from minildm.data.images import float_to_uint8
from minildm.recipes import autoencoder_config


@pytest.fixture
def one_thread():
    """One torch thread and a fixed seed: on two shared cores, OpenMP threads of small
    convolutions can wait on each other for longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def toy_pixels(n: int, seed: int) -> torch.Tensor:
    """``n`` toy faces of data set ``seed`` at 32 px, uint8 (n, 3, 32, 32)."""
    return float_to_uint8(toyfaces.generate(n, resolution=32, seed=seed)[0])


def train_tiny_autoencoder(run_dir, pixels):
    """A KL f = 4 autoencoder trained on ``pixels`` in the tiny profile; returns it."""
    profile = get_profile("tiny")
    config = autoencoder_config(profile, factor=4, reg="kl")
    return train_autoencoder(run_dir, pixels, config=config,
                             training=AutoencoderTraining(profile=profile, progress=False))
