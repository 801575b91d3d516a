"""PSNR, SSIM, FID and KID against independent computations."""

import math

import numpy as np
import pytest
import torch

from minildm import perceptual
from minildm.config import MinildmError
from minildm.evaluation import metrics
from minildm.evaluation.metrics import gaussian_window, psnr, ssim


def test_psnr_matches_the_formula():
    reference = torch.zeros(2, 3, 8, 8)  # mid gray in [-1, 1]
    test = reference.clone()
    test[0] += 0.2  # 0.1 in [0, 1] units everywhere: MSE 0.01 -> 20 dB
    test[1, :, :4] -= 0.4  # half the pixels off by 0.2: MSE 0.02
    values = psnr(reference, test)
    assert math.isclose(values[0].item(), 20.0, rel_tol=1e-5)
    assert math.isclose(values[1].item(), 10 * math.log10(1 / 0.02), rel_tol=1e-5)


def naive_ssim(x, y, window):
    """SSIM by explicit loops over window positions (one channel, [0, 1] pixels)."""
    size = window.shape[0]
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            px, py = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            mx, my = (window * px).sum(), (window * py).sum()
            vx = (window * (px - mx) ** 2).sum()
            vy = (window * (py - my) ** 2).sum()
            cxy = (window * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return torch.stack(values).mean()


def test_ssim_matches_a_loop_implementation():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 16, generator=generator) * 2 - 1
    y = (x + 0.3 * torch.randn(1, 1, 16, 16, generator=generator)).clamp(-1, 1)
    expected = naive_ssim((x[0, 0] + 1) / 2, (y[0, 0] + 1) / 2, gaussian_window().double())
    assert torch.allclose(ssim(x, y)[0].double(), expected, atol=1e-4)


def test_ssim_properties():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 24, generator=generator) * 2 - 1
    noisy = (x + 0.5 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert torch.allclose(ssim(x, noisy), ssim(noisy, x), atol=1e-6)
    assert (ssim(x, noisy) < 0.9).all()
    assert math.isclose(gaussian_window().sum().item(), 1.0, rel_tol=1e-6)


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 3, generator=generator) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 1.0, 0.0])
    b = torch.randn(20_000, 3, generator=generator) * torch.tensor([1.5, 1.0, 0.5])
    # ||mu_a - mu_b||^2 + sum (s_a + s_b - 2 sqrt(s_a s_b)) with variances s, estimated from the samples
    var_a, var_b = a.double().var(0), b.double().var(0)
    expected = (a.double().mean(0) - b.double().mean(0)).square().sum() + (var_a + var_b - 2 * (var_a * var_b).sqrt()).sum()
    covariance_terms = torch.cov(a.double().T) - torch.diag(var_a), torch.cov(b.double().T) - torch.diag(var_b)
    assert all(term.abs().max() < 0.05 for term in covariance_terms)  # nearly diagonal
    assert metrics.frechet_distance(a, b) == pytest.approx(expected.item(), rel=0.02)


def test_frechet_distance_matches_the_matrix_square_root_by_eigendecomposition():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(500, 6, generator=generator) @ torch.randn(6, 6, generator=generator)
    b = torch.randn(400, 6, generator=generator) @ torch.randn(6, 6, generator=generator) + 0.3
    cov_a, cov_b = np.cov(a.double().numpy().T), np.cov(b.double().numpy().T)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)  # Tr sqrt(A B) = sum of sqrt of eig(A B), all >= 0
    trace_root = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    mean_term = ((a.double().mean(0) - b.double().mean(0)) ** 2).sum().item()
    expected = mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kernel_distance_is_the_unbiased_mmd_with_the_cubic_kernel():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(30, 4, generator=generator), torch.randn(30, 4, generator=generator) + 0.5

    def kernel(x, y):
        return (float(x @ y) / 4 + 1) ** 3

    n = len(a)
    within = sum(kernel(a[i], a[j]) + kernel(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(kernel(a[i], b[j]) for i in range(n) for j in range(n)) / n ** 2
    mean, std = metrics.kernel_distance(a, b, subsets=3, subset_size=30)  # whole sets: every subset is the same
    assert mean == pytest.approx(within - 2 * across, rel=1e-6) and std == pytest.approx(0.0, abs=1e-9)

    same, _ = metrics.kernel_distance(torch.randn(400, 4, generator=generator), torch.randn(400, 4, generator=generator),
                                      subsets=20, subset_size=200)
    shifted, _ = metrics.kernel_distance(torch.randn(400, 4, generator=generator),
                                         torch.randn(400, 4, generator=generator) + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 0.01 < shifted


def test_inception_features_are_the_standard_2048_d_pool_features():
    try:
        features = metrics.InceptionFeatures()
    except MinildmError as error:
        pytest.fail(f"the dev install provides the FID Inception network: {error}")
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    values = features(pixels)
    assert values.shape == (4, 2048) and (values >= 0).all()  # pool of ReLU outputs
    assert torch.allclose(features(pixels[:2]), values[:2], atol=1e-4)


def test_missing_inception_weights_give_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(perceptual.INCEPTION_ENV, str(tmp_path / "none.pt"))
    with pytest.raises(MinildmError, match="MINILDM_INCEPTION_WEIGHTS names .* which is not a file"):
        metrics.InceptionFeatures()


def test_relative_spread_is_the_ratio_of_total_variances():
    reference = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    assert metrics.relative_spread(reference, reference) == pytest.approx(1.0)
    assert metrics.relative_spread(0.5 * reference + 3.0, reference) == pytest.approx(0.25)  # a shift changes nothing
    collapsed = reference[:1].repeat(400, 1)  # one sample drawn 400 times
    assert metrics.relative_spread(collapsed, reference) == 0.0


def test_within_group_spread_sees_only_the_variation_inside_each_group():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(4000, 8, generator=generator)
    groups = torch.arange(4).repeat_interleave(1000)
    centres = 10 * torch.randn(4, 8, generator=generator)  # far apart: the spread across groups is large
    noise = torch.randn(4000, 8, generator=generator)
    samples = centres[groups] + 0.5 * noise
    assert metrics.relative_spread(samples, reference) > 20
    assert metrics.within_group_spread(samples, groups, reference) == pytest.approx(0.25, rel=0.1)
    assert metrics.within_group_spread(centres[groups], groups, reference) == 0.0  # one image per request
