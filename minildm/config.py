"""Profiles: one switch that sizes every experiment in the course.

The same notebooks and commands run on three kinds of machine:

- ``tiny``: continuous integration and ``pytest --nbval``; toy faces at 32 px, small
  models, a few steps, about a minute per notebook on 2 CPU cores.
- ``cpu``: a laptop without a GPU; results a person would call good in minutes.
- ``gpu``: one GPU; real faces or scenes at 64 to 256 px, the paper's recipes scaled down.
- ``celebahq256`` and ``churches256``: one-GPU recipes for the paper's CelebA-HQ (LDM-4) and
  LSUN churches (LDM-8) models at 256 px; README's "Training on one GPU" gives the commands.

The profile is chosen by ``--profile`` on the command line or the ``MINILDM_PROFILE``
environment variable; without either, ``gpu`` when CUDA is available, else ``cpu``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

PROFILE_ENV = "MINILDM_PROFILE"
DATA_DIR_ENV = "MINILDM_DATA_DIR"
CELEBA_DIR_ENV = "MINILDM_CELEBA_DIR"


class MinildmError(Exception):
    """An error caused by the user's input; the command line prints it as one line."""


@dataclass(frozen=True)
class AutoencoderPreset:
    """How big an autoencoder each profile trains, and for how long.

    Attributes:
        base_channels: channels at full resolution (the paper: 128).
        res_blocks: ResBlocks per level (the paper: 2).
        attention: self-attention in the middle blocks.
        steps, batch_size, learning_rate: the optimisation (Adam, betas (0.5, 0.9)).
        disc_start: step at which the patch GAN switches on (beyond ``steps``: never).
        codebook_size: entries of the VQ codebook (the paper's VQ-f4: 8192).
        l2_weight: weight of a squared-error term in the reconstruction loss (the paper: none;
            see :class:`minildm.losses.LossConfig`).
    """

    base_channels: int
    res_blocks: int
    attention: bool
    steps: int
    batch_size: int
    learning_rate: float
    disc_start: int
    codebook_size: int
    l2_weight: float = 0.0


@dataclass(frozen=True)
class DiffusionPreset:
    """How big a UNet each profile trains in latent space, and for how long (stage 2).

    Attributes:
        base_channels, channel_mult, res_blocks, attention_levels: the UNet
            (:class:`minildm.unet.UNetConfig`; the paper's CelebA-HQ model: 224, (1, 2, 3, 4),
            2, attention at 32, 16 and 8 px).
        cross_attention_levels: the attention levels of a model conditioned through
            cross-attention (more of them: each is a place where the UNet reads the condition).
        steps, batch_size, learning_rate: the optimisation (AdamW, warm-up then cosine decay).
        ema_decay: decay of the weights' moving average used for sampling (the paper: 0.9999).
        prediction: what the UNet predicts: ``eps`` (the paper) or ``v``. Short CPU runs use
            ``v``: an eps-model's estimate of the clean latent at the noisiest steps multiplies
            its error by 1/sqrt(abar) (about 80), and DDIM then drifts off the data.
        demo_autoencoder_steps: autoencoder steps in ``minildm demo`` (shorter than stage 1's).
        fid_images: samples and held-out images for FID/KID in ``evaluate`` and the notebooks
            (the demo uses a third); the Inception network scores ~3 images/s on a 2-core CPU.
    """

    base_channels: int
    channel_mult: tuple[int, ...]
    res_blocks: int
    attention_levels: tuple[int, ...]
    cross_attention_levels: tuple[int, ...]
    steps: int
    batch_size: int
    learning_rate: float
    ema_decay: float
    prediction: str
    demo_autoencoder_steps: int
    fid_images: int


@dataclass(frozen=True)
class Profile:
    """Sizes for one kind of machine.

    Attributes:
        name: ``tiny``, ``cpu`` or ``gpu``.
        dataset: the data set used when none is named.
        resolution: image side in pixels.
        n_images: how many training images to prepare.
        n_holdout: how many held-out images to prepare for evaluation.
        device: ``cuda`` or ``cpu``.
        autoencoder: the autoencoder's size and training (stage 1).
        diffusion: the UNet's size and training (stage 2).
    """

    name: str
    dataset: str
    resolution: int
    n_images: int
    n_holdout: int
    device: str
    autoencoder: AutoencoderPreset
    diffusion: DiffusionPreset


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", "toyfaces", 32, 512, 128, "cpu",
                    autoencoder=AutoencoderPreset(16, 1, False, 20, 8, 2e-3, 10, 64, l2_weight=4.0),
                    diffusion=DiffusionPreset(32, (1, 2), 1, (1,), (1,), 30, 16, 1e-3, 0.9, "v", 20, 16)),
    "cpu": Profile("cpu", "toyfaces", 32, 10_000, 1_000, "cpu",
                   autoencoder=AutoencoderPreset(16, 1, False, 2200, 16, 2e-3, 10**9, 1024, l2_weight=4.0),
                   diffusion=DiffusionPreset(32, (1, 2, 2), 1, (2,), (1, 2), 700, 128, 1e-3, 0.999, "v", 700, 200)),
    "gpu": Profile("gpu", "toyfaces", 64, 30_000, 2_000, "cuda",
                   autoencoder=AutoencoderPreset(128, 2, True, 50_000, 16, 4.5e-5, 25_000, 8192),
                   diffusion=DiffusionPreset(128, (1, 2, 3, 4), 2, (1, 2, 3), (1, 2, 3), 100_000, 64, 1e-4, 0.9999,
                                             "eps", 20_000, 2000)),
    # One-GPU recipes after the paper's 256 px models (Table 1), scaled to one GPU and days, not weeks:
    # CelebA-HQ with LDM-4 (train-ae --factor 4) and LSUN churches with LDM-8 (train-ae --factor 8).
    "celebahq256": Profile("celebahq256", "celeba-hq", 256, 26_000, 2_000, "cuda",
                           autoencoder=AutoencoderPreset(128, 2, True, 60_000, 12, 4.5e-5, 30_000, 8192),
                           diffusion=DiffusionPreset(192, (1, 2, 3, 4), 2, (1, 2, 3), (1, 2, 3), 150_000, 48, 9.6e-5,
                                                     0.9999, "eps", 20_000, 5000)),
    "churches256": Profile("churches256", "lsun-churches", 256, 50_000, 2_000, "cuda",
                           autoencoder=AutoencoderPreset(128, 2, True, 60_000, 12, 4.5e-5, 30_000, 8192),
                           diffusion=DiffusionPreset(192, (1, 2, 2, 4), 2, (0, 1, 2, 3), (0, 1, 2, 3), 150_000, 64,
                                                     5e-5, 0.9999, "eps", 20_000, 5000)),
}


def default_profile_name() -> str:
    """``MINILDM_PROFILE`` if set, else ``gpu`` when CUDA is available, else ``cpu``."""
    name = os.environ.get(PROFILE_ENV, "").strip()
    if name:
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name`` (default: :func:`default_profile_name`)."""
    name = name or default_profile_name()
    if name not in PROFILES:
        raise MinildmError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise MinildmError(f"profile {name!r} needs CUDA, and no GPU is visible: use --profile cpu")
    return profile


def repo_root() -> Path:
    """The folder that holds the ``minildm`` package (the repository in a checkout)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Where prepared data is cached: ``MINILDM_DATA_DIR`` or the repository's ``data/``."""
    return Path(os.environ.get(DATA_DIR_ENV) or repo_root() / "data")


def celeba_dir() -> Path | None:
    """The local CelebA folder named by ``MINILDM_CELEBA_DIR``, if it exists."""
    path = os.environ.get(CELEBA_DIR_ENV)
    return Path(path) if path and Path(path).is_dir() else None


def runs_dir() -> Path:
    """Where notebooks keep their run folders: ``MINILDM_RUNS_DIR`` or the repository's ``runs/``."""
    return Path(os.environ.get("MINILDM_RUNS_DIR") or repo_root() / "runs")
