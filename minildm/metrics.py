"""Image-quality metrics: PSNR and SSIM between images in [-1, 1].

Both are computed on images mapped to [0, 1], per image, then averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped (a decoder may overshoot)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def psnr(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 log10(1 / MSE) on [0, 1] pixels.

    Args:
        reference, test: (B, C, H, W) in [-1, 1].
    Returns:
        (B,) PSNR values.
    """
    error = (to_unit_range(reference) - to_unit_range(test)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / error.clamp_min(1e-10))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian window (size, size), the one of Wang et al. (2004)."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-offsets**2 / (2 * sigma**2))
    line = line / line.sum()
    return torch.outer(line, line)


def ssim(reference: torch.Tensor, test: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004, eq. 13) per image.

    SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    with local statistics under a Gaussian window, C1 = (0.01)^2, C2 = (0.03)^2 for pixels
    in [0, 1]; averaged over the valid window positions and the channels.
    """
    x, y = to_unit_range(reference), to_unit_range(test)  # (B, C, H, W)
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma).to(x)[None, None].repeat(channels, 1, 1, 1)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    similarity = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return similarity.mean(dim=(1, 2, 3))
