"""PSNR and SSIM against independent computations."""

import math

import torch

from minildm.metrics import gaussian_window, psnr, ssim


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
