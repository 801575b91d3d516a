"""How many bits an image set needs for a given error: the Gaussian rate-distortion curve.

The LDM paper's Fig. 2 argues that most of an image's bits describe imperceptible detail:
at high rates, many bits buy little distortion (*perceptual compression*, the autoencoder's
job), while the first few bits carry the layout (*semantic compression*, the diffusion
model's). The paper measures it on a trained pixel diffusion model; this module shows the same
shape from the data alone.

Model: the images, less their mean image, are a stationary Gaussian source. Each coefficient of
the orthonormal 2-D Fourier transform is then an independent Gaussian whose variance ``S`` is
the power spectrum. (The coefficients of a real image come in conjugate pairs; with the
orthonormal transform, each coefficient stands for one real degree of freedom of variance
``S``.) Reverse water-filling (Cover and Thomas, Thm. 10.3.3) gives, for a water level
``theta``, the distortion ``D = mean(min(theta, S))`` per pixel value and the rate
``R = mean(max(0, log2(S / theta) / 2))`` bits per pixel value. No code reaches a lower
distortion at that rate on this Gaussian model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minildm.evaluation.metrics import to_unit_range


def fourier(images: Tensor, mean: Tensor | float = 0.0) -> Tensor:
    """Orthonormal 2-D Fourier coefficients (N, C, H, W), complex, of images in [-1, 1] taken
    to the [0, 1] scale that PSNR uses, less ``mean``."""
    return torch.fft.fft2(to_unit_range(images).double() - mean, norm="ortho")


def power_spectrum(images: Tensor) -> tuple[Tensor, Tensor]:
    """Mean image and power spectrum ``S = E|FFT(x - mean)|^2`` of images (N, C, H, W) in
    [-1, 1], on the [0, 1] scale; both (C, H, W)."""
    mean = to_unit_range(images).double().mean(dim=0)
    return mean, fourier(images, mean).abs().square().mean(dim=0)


def water_filling(spectrum: Tensor, theta: float) -> tuple[float, float]:
    """(rate in bits per pixel value, RMSE) of the Gaussian source ``spectrum`` at water level
    ``theta``: the rate-distortion function at one point."""
    distortion = spectrum.clamp(max=theta).mean()
    rate = (0.5 * torch.log2(spectrum.clamp(min=theta) / theta)).mean()
    return rate.item(), distortion.sqrt().item()


def rate_distortion_curve(spectrum: Tensor, rmse_levels: Tensor) -> list[tuple[float, float]]:
    """(rate, RMSE) pairs at water levels ``theta = rmse**2`` (``rmse_levels`` on [0, 1] pixels)."""
    return [water_filling(spectrum, float(level) ** 2) for level in rmse_levels]


def water_level(spectrum: Tensor, rmse: float, iterations: int = 60) -> float:
    """The water level ``theta`` at which the code's RMSE is ``rmse`` (bisection; the
    distortion grows with ``theta``)."""
    low, high = 0.0, spectrum.max().item()
    for _ in range(iterations):
        theta = (low + high) / 2
        low, high = (theta, high) if water_filling(spectrum, theta)[1] < rmse else (low, theta)
    return low


def rate_for_rmse(spectrum: Tensor, rmse: float) -> float:
    """Bits per pixel value the Gaussian model needs to reach ``rmse``; 0 when the mean image
    alone is that close."""
    return water_filling(spectrum, water_level(spectrum, rmse))[0]


def shrunk_images(images: Tensor, mean: Tensor, spectrum: Tensor, theta: float) -> Tensor:
    """The images as the water-filling code at level ``theta`` keeps them: each Fourier
    coefficient scaled by ``max(0, 1 - theta / S)`` (its share above the water), so components
    below the water are gone. Returns (N, C, H, W) in [-1, 1]."""
    kept = (1 - theta / spectrum).clamp(min=0)  # (C, H, W), symmetric like the spectrum
    pixels = torch.fft.ifft2(fourier(images, mean) * kept, norm="ortho").real + mean
    return (pixels * 2 - 1).clamp(-1, 1).float()


def high_frequency_ratio(reference: Tensor, test: Tensor, cutoff: float = 0.25) -> float:
    """Energy of ``test`` above ``cutoff`` cycles per pixel (the top half of the frequencies up
    to Nyquist's 0.5), divided by that of ``reference``: 1 when the images hold as much fine
    detail as the reference, below 1 when they are smoother. Both (N, C, H, W) in [-1, 1]."""
    height, width = reference.shape[-2:]
    radius = torch.hypot(*torch.meshgrid(torch.fft.fftfreq(height), torch.fft.fftfreq(width), indexing="ij"))
    high = radius > cutoff  # (H, W)

    def energy(images: Tensor) -> Tensor:
        return fourier(images).abs().square()[..., high].sum()

    return (energy(test) / energy(reference)).item()
