"""Image-quality metrics.

- PSNR and SSIM between two images in [-1, 1] (reconstruction quality), computed on images
  mapped to [0, 1], per image.
- FID and KID between two sets of images (sample quality): distances between the feature
  distributions of a network, by default the standard FID Inception-v3 (2048-d pool
  features, Heusel et al. 2017; Binkowski et al. 2018). Small sets bias FID upwards; KID is
  unbiased, so it is reported with its spread over subsets.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from minildm.perceptual import inception_weights_path


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


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (the FID formula):
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), which is symmetric, so symmetric eigensolvers suffice.
    """
    # Exercise 09.1: the Frechet distance in float64, as a float
    ### BEGIN SOLUTION
    a, b = features_a.double(), features_b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T  # S_a^(1/2)
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0)
    trace = cov_a.trace() + cov_b.trace() - 2 * middle.sqrt().sum()
    return ((mean_a - mean_b).square().sum() + trace).item()
    ### END SOLUTION


def kernel_distance(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased squared MMD with the cubic kernel k(x, y) = (x.y / D + 1)^3, averaged
    over random subsets of both sets (size: at most the smaller set); returns (mean, std)."""
    a, b = features_a.double(), features_b.double()
    size = min(subset_size, len(a), len(b))
    generator = torch.Generator().manual_seed(seed)
    dimension = a.shape[1]
    estimates = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:size]]
        y = b[torch.randperm(len(b), generator=generator)[:size]]
        k_xx, k_yy = (x @ x.T / dimension + 1) ** 3, (y @ y.T / dimension + 1) ** 3
        k_xy = (x @ y.T / dimension + 1) ** 3
        # Exercise 09.2: the unbiased squared MMD of this pair of subsets, appended to `estimates`
        ### BEGIN SOLUTION
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (size * (size - 1))
        estimates.append((within - 2 * k_xy.mean()).item())
        ### END SOLUTION
    values = torch.tensor(estimates)
    return values.mean().item(), values.std().item() if subsets > 1 else 0.0


def feature_distances(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """FID and KID between two feature sets (N, D), KID with its std over 100 subsets of half
    the smaller set (so the std says how much KID would vary between such sets)."""
    kid, kid_std = kernel_distance(real, fake, subset_size=min(1000, len(real), len(fake)) // 2)
    return {"fid": round(frechet_distance(real, fake), 3), "kid": round(kid, 5), "kid_std": round(kid_std, 5)}


def relative_feature_distance(features_a: torch.Tensor, features_b: torch.Tensor, seed: int = 0) -> float:
    """Mean squared feature distance between pairs (a_i, b_i), e.g. images and their
    reconstructions, divided by that between a_i and another image a_j of the same set: 0 for
    identical features, about 1 when b_i is no closer to a_i than a random other image is."""
    order = torch.randperm(len(features_a), generator=torch.Generator().manual_seed(seed))
    order = torch.where(order == torch.arange(len(order)), order.roll(1), order)  # never pair an image with itself
    paired = (features_a - features_b).square().sum(dim=1).mean()
    unrelated = (features_a - features_a[order]).square().sum(dim=1).mean()
    return (paired / unrelated).item()


def relative_spread(features: torch.Tensor, reference_features: torch.Tensor) -> float:
    """Total variance (trace of the covariance) of ``features`` (N, D) over that of
    ``reference_features`` (M, D): 1 when samples vary as much as the real images, below 1
    when they are less diverse (e.g. under strong guidance)."""
    return (features.double().var(dim=0).sum() / reference_features.double().var(dim=0).sum()).item()


def within_group_spread(features: torch.Tensor, groups: torch.Tensor, reference_features: torch.Tensor) -> float:
    """Mean over groups of :func:`relative_spread` within a group: ``features`` (N, D) of
    samples drawn for the same request share a label in ``groups`` (N,). It measures how
    varied the samples of one request are, the diversity that guidance trades (Ho & Salimans
    2022); the spread over many requests measures mostly the requests."""
    spreads = [relative_spread(features[groups == group], reference_features) for group in groups.unique()]
    return sum(spreads) / len(spreads)


class InceptionFeatures:
    """The standard FID feature extractor: Inception-v3 with the 2015-12-05 TensorFlow weights
    (as in the original FID code, StyleGAN3 and clean-fid), 2048-d pool features.

    Preprocessing: uint8 pixels, bilinear resize to 299 x 299, then pixel / 128 - 1.
    """

    description = "Inception-v3 pool3 (2048-d, TF 2015-12-05 weights), bilinear resize to 299 px"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        with warnings.catch_warnings():  # torch.jit.load is deprecated, and the only way to read this file
            warnings.simplefilter("ignore", DeprecationWarning)
            self.network = torch.jit.load(str(inception_weights_path()), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> features (N, 2048)."""
        features = []
        for batch in pixels.split(batch_size):
            x = F.interpolate(batch.to(self.device).float(), size=(299, 299), mode="bilinear", align_corners=False)
            features.append(self.network(x / 128 - 1).float().cpu())
        return torch.cat(features)
