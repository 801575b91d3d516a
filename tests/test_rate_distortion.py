"""The Gaussian rate-distortion curve against hand computations and known properties."""

import math

import pytest
import torch

from minildm.evaluation import rate_distortion as rd
from minildm.evaluation.metrics import relative_feature_distance


def test_water_filling_matches_a_hand_computation():
    spectrum = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    rate, rmse = rd.water_filling(spectrum, theta=0.5)
    # distortion: min(0.5, S) = 0.5, 0.5, 0.25; rate: log2(4 / 0.5) / 2 = 1.5, log2(2) / 2 = 0.5, 0
    assert math.isclose(rmse, math.sqrt((0.5 + 0.5 + 0.25) / 3))
    assert math.isclose(rate, (1.5 + 0.5 + 0.0) / 3)


def test_one_gaussian_follows_its_closed_form():
    spectrum = torch.tensor([2.0], dtype=torch.float64)
    for theta in (0.01, 0.1, 1.0):
        rate, rmse = rd.water_filling(spectrum, theta)
        assert math.isclose(rate, 0.5 * math.log2(spectrum.item() / rmse**2))  # R(D) = log2(sigma^2 / D) / 2


def test_rate_for_rmse_inverts_water_filling():
    spectrum = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 4
    for theta in (1e-4, 1e-2, 0.1):
        rate, rmse = rd.water_filling(spectrum, theta)
        assert math.isclose(rd.rate_for_rmse(spectrum, rmse), rate, rel_tol=1e-6)
    assert rd.rate_for_rmse(spectrum, rmse=10.0) == 0.0  # the mean image alone is that close


def gaussian_images(n=4000, size=8, seed=0):
    """Smooth random images: white noise blurred, so the spectrum falls with frequency."""
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    smooth = (noise + noise.roll(1, -1) + noise.roll(1, -2) + noise.roll((1, 1), (-2, -1))) / 4
    return (smooth * 0.3).clamp(-1, 1)


def test_power_spectrum_keeps_the_variance():
    images = gaussian_images()
    mean, spectrum = rd.power_spectrum(images)
    pixels = (images.double() + 1) / 2
    variance = (pixels - pixels.mean(dim=0)).square().mean(dim=0).sum()  # Parseval: same total energy
    assert torch.allclose(spectrum.sum(), variance)
    assert torch.allclose(mean, pixels.mean(dim=0))


def test_shrunk_images_have_the_predicted_error():
    images = gaussian_images()
    mean, spectrum = rd.power_spectrum(images)
    theta = spectrum.median().item()
    shrunk = rd.shrunk_images(images, mean, spectrum, theta)
    measured = ((shrunk.double() - images.double()) / 2).square().mean()
    predicted = torch.where(spectrum > theta, theta**2 / spectrum, spectrum).mean()  # kept share, dropped part
    assert math.isclose(measured.item(), predicted.item(), rel_tol=0.02)
    assert torch.allclose(rd.shrunk_images(images, mean, spectrum, 1e-12), images, atol=1e-5)
    everything_dropped = rd.shrunk_images(images, mean, spectrum, spectrum.max().item())
    assert torch.allclose(everything_dropped, (mean * 2 - 1).float().expand_as(images), atol=1e-5)


def test_high_frequency_ratio_sees_blur():
    images = gaussian_images(n=64, size=16)
    assert rd.high_frequency_ratio(images, images) == pytest.approx(1.0)
    blurred = (images + images.roll(1, -1) + images.roll(1, -2) + images.roll((1, 1), (-2, -1))) / 4
    assert rd.high_frequency_ratio(images, blurred) < 0.5
    sharpened = (2 * images - blurred).clamp(-1, 1)
    assert rd.high_frequency_ratio(images, sharpened) > 1.2


def test_relative_feature_distance_has_its_two_reference_points():
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    assert relative_feature_distance(features, features) == 0.0
    unrelated = torch.randn(500, 16, generator=torch.Generator().manual_seed(2))
    assert relative_feature_distance(features, unrelated) == pytest.approx(1.0, abs=0.1)
    assert relative_feature_distance(features, features + 0.1 * unrelated) == pytest.approx(0.005, abs=0.002)
