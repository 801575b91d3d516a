"""Gaussian diffusion: the noise schedule, the forward noising process and the training loss.

The forward process adds noise in ``T`` small steps, ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t)
x_{t-1}, beta_t I)``. Its marginal has a closed form (DDPM, Ho et al. 2020, eq. 4)::

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s <= t} (1 - beta_s)

so training draws ``t`` and ``eps`` and asks a network to undo the noise in one shot
(DDPM eq. 14; LDM, Rombach et al. 2022, eq. 1 in pixels and eq. 2 in the autoencoder's latent
space). Sampling runs the learned reverse chain, with the posterior of DDPM eq. 7 that this
module provides; the samplers themselves are in :mod:`minildm.sampling`.

The network's output can be read three ways (``prediction``): the noise ``eps`` (DDPM, LDM),
the clean sample ``x0``, or the velocity ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans
& Ho 2022). Samplers only need the pair (x0, eps) that each of them implies.

Notation, code name against the papers' symbol:

================================  ==================================  ========================
code                              paper                               where
================================  ==================================  ========================
``t`` (0-based: 0 .. T - 1)       t (1-based: 1 .. T)                 DDPM Sec. 2
``timesteps``                     T                                   DDPM Sec. 2
``betas[t]``                      beta_t                              DDPM eq. 2
``alphas[t]``                     alpha_t = 1 - beta_t                DDPM Sec. 2
``alpha_bars[t]``                 alpha-bar_t = prod alpha_s          DDPM eq. 4
``alpha_bars_prev[t]``            alpha-bar_{t-1} (1 before t = 0)    DDPM eq. 7
``snr[t]``                        alpha-bar_t / (1 - alpha-bar_t)     Kingma et al. 2021
``posterior_variance[t]``         beta-tilde_t                        DDPM eq. 7
``x0``, ``x_t``, ``noise``/eps    x_0, x_t, epsilon                   DDPM eqs. 4, 14
``q_sample``                      sample of q(x_t | x_0)              DDPM eq. 4
``q_posterior``                   q(x_{t-1} | x_t, x_0)               DDPM eqs. 6-7
``loss``                          L_LDM                               LDM eqs. 1-2
================================  ==================================  ========================

In a latent diffusion model x is the scaled latent z of the autoencoder (LDM Sec. 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from minildm.config import SavedConfig

# denoise(x_t, t) -> the network's output for noisy x_t (B, C, H, W) at time steps t (B,)
Denoiser = Callable[[Tensor, Tensor], Tensor]

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")

# The default schedule, the paper's (LDM, Rombach et al. 2022, CelebA-HQ config): linear in
# sqrt(beta) from 0.0015 to 0.0195 over T = 1000 steps. make_betas, DiffusionConfig and Diffusion read these.
SCHEDULE, TIMESTEPS, BETA_START, BETA_END = "linear", 1000, 0.0015, 0.0195


def make_betas(schedule: str = SCHEDULE, timesteps: int = TIMESTEPS, beta_start: float = BETA_START,
               beta_end: float = BETA_END) -> Tensor:
    """The noise added at each step, float64 of shape (T,).

    - ``linear``: the LDM schedule, linear in sqrt(beta) from ``beta_start`` to ``beta_end``
      (default: the paper's, :data:`BETA_START` to :data:`BETA_END`).
    - ``cosine``: abar_t = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008 (Nichol & Dhariwal 2021),
      betas clipped at 0.999.
    """
    if schedule == "linear":
        # Exercise 03.1: the LDM schedule, float64
        ### BEGIN SOLUTION
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        ### END SOLUTION
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


@dataclass
class DiffusionConfig(SavedConfig):
    """The noise schedule and what the network predicts; :meth:`build` makes the
    :class:`Diffusion`. Defaults: the paper's schedule (:data:`SCHEDULE`) and eps."""

    schedule: str = SCHEDULE
    timesteps: int = TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END
    prediction: str = "eps"
    min_snr_gamma: float | None = None

    def build(self) -> Diffusion:
        return Diffusion(self.schedule, timesteps=self.timesteps, beta_start=self.beta_start,
                         beta_end=self.beta_end, prediction=self.prediction, min_snr_gamma=self.min_snr_gamma)


class Diffusion:
    """A noise schedule with everything derived from it, and the loss.

    Args:
        schedule, timesteps, beta_start, beta_end: see :func:`make_betas`.
        prediction: what the network predicts: ``eps``, ``x0`` or ``v``.
        min_snr_gamma: if set, weight the loss by the min-SNR-gamma rule (Hang et al. 2023),
            which stops the easy low-noise steps from dominating training.
    """

    def __init__(self, schedule: str = SCHEDULE, *, timesteps: int = TIMESTEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END, prediction: str = "eps", min_snr_gamma: float | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        self.prediction, self.min_snr_gamma = prediction, min_snr_gamma
        self.timesteps = timesteps
        # float64 tables of shape (T,); read with at() in the samples' dtype
        self.betas = make_betas(schedule, timesteps, beta_start, beta_end)
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.snr = self.alpha_bars / (1 - self.alpha_bars)
        # posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, variance) (DDPM eq. 7)
        self.posterior_variance = self.betas * (1 - self.alpha_bars_prev) / (1 - self.alpha_bars)
        self.posterior_coef_x0 = self.betas * self.alpha_bars_prev.sqrt() / (1 - self.alpha_bars)
        self.posterior_coef_xt = (1 - self.alpha_bars_prev) * self.alphas.sqrt() / (1 - self.alpha_bars)

    @staticmethod
    def at(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` shaped (B, 1, 1, 1) to broadcast over samples like ``like``."""
        values = table[t.cpu()].to(device=like.device, dtype=like.dtype)  # float64 stays on the CPU
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    # forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, a sample of q(x_t | x0) (DDPM eq. 4)."""
        # Exercise 03.2: x_t from x0 and the noise in one jump (read abar_t with self.at)
        ### BEGIN SOLUTION
        alpha_bar = self.at(self.alpha_bars, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        ### END SOLUTION

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7)."""
        # Exercise 06.1: the posterior's mean and variance from the tables set up in __init__
        ### BEGIN SOLUTION
        mean = self.at(self.posterior_coef_x0, t, x_t) * x0 + self.at(self.posterior_coef_xt, t, x_t) * x_t
        return mean, self.at(self.posterior_variance, t, x_t)
        ### END SOLUTION

    # what the network predicts
    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target for ``prediction``: eps, x0 or v."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        # Exercise 05.1: the v-target (Salimans & Ho 2022)
        ### BEGIN SOLUTION
        alpha_bar = self.at(self.alpha_bars, t, x0)
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        ### END SOLUTION

    def split_prediction(self, output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The (x0, eps) pair a network output implies, given x_t = sqrt(abar) x0 + sqrt(1-abar) eps."""
        alpha_bar = self.at(self.alpha_bars, t, x_t)
        signal, noise_level = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction == "eps":
            return (x_t - noise_level * output) / signal, output
        if self.prediction == "x0":
            return output, (x_t - signal * output) / noise_level
        # Exercise 05.1: the (x0, eps) that a v-prediction `output` implies
        ### BEGIN SOLUTION
        return signal * x_t - noise_level * output, noise_level * x_t + signal * output
        ### END SOLUTION

    def loss(self, denoise: Denoiser, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """LDM eqs. 1-2: E_{x0, eps, t} ||target - network(x_t, t)||^2, t uniform over the T steps.

        With ``min_snr_gamma``, each sample's error is weighted by min(SNR_t, gamma) / SNR_t
        (for eps; x0: min(SNR_t, gamma); v: min(SNR_t, gamma) / (SNR_t + 1)).
        """
        # Exercise 05.2: draw t, then the noise, with `generator`; weight each image's mean squared error
        ### BEGIN SOLUTION
        t = torch.randint(0, self.timesteps, (len(x0),), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        output = denoise(self.q_sample(x0, t, noise), t)
        errors = (output.float() - self.target(x0, noise, t)).pow(2).mean(dim=(1, 2, 3))  # (B,)
        return (errors * self.loss_weights(t).to(errors.device)).mean()
        ### END SOLUTION

    def loss_weights(self, t: Tensor) -> Tensor:
        """Per-sample loss weights (B,): ones, or the min-SNR-gamma weights."""
        if self.min_snr_gamma is None:
            return torch.ones(len(t))
        snr = self.snr[t.cpu()]
        clipped = snr.clamp(max=self.min_snr_gamma)
        denominator = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.prediction]
        return (clipped / denominator).float()

    def predict(self, denoise: Denoiser, x: Tensor, t: Tensor, clip: float | None = None) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) from the network at x_t = ``x``; with ``clip``, x0 is clamped to
        [-clip, clip] and eps recomputed from it (what the samplers of :mod:`minildm.sampling` use)."""
        x0, eps = self.split_prediction(denoise(x, t).float(), x, t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            alpha_bar = self.at(self.alpha_bars, t, x)
            eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        return x0, eps
