"""The two ways the paper regularises the latent (Rombach et al. 2022, Sec. 3.1).

- :class:`DiagonalGaussian`: the KL-regularised latent. The encoder predicts a mean and a
  log-variance; training samples z with the reparameterisation trick, and a tiny KL penalty
  pulls q(z|x) towards N(0, I) (notebook 01, section 2).
- :class:`VectorQuantizer`: the VQ-regularised latent. Each latent vector snaps to the nearest
  row of a learned codebook; the straight-through estimator carries gradients past the lookup,
  and the codebook and commitment losses train the codebook and the encoder (notebook 02).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class DiagonalGaussian:
    """The posterior q(z|x) = N(mean, diag(exp(logvar))) predicted by the KL encoder.

    Args:
        parameters: (B, 2C, H, W), the mean and the log-variance stacked along channels.
    """

    def __init__(self, parameters: Tensor) -> None:
        self.mean, logvar = parameters.float().chunk(2, dim=1)  # (B, C, H, W) each, float32
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.var = self.logvar.exp()
        self.std = (0.5 * self.logvar).exp()

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation trick)."""
        # Exercise 01.1: draw eps with `generator` (on the mean's device, in its dtype) and return z
        ### BEGIN SOLUTION
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps
        ### END SOLUTION

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar), summed over C, H, W and
        averaged over the batch: a scalar."""
        # Exercise 01.2: the KL divergence to N(0, I), summed per image, averaged over the batch
        ### BEGIN SOLUTION
        return (0.5 * (self.mean**2 + self.var - 1.0 - self.logvar)).sum(dim=(1, 2, 3)).mean()
        ### END SOLUTION


class VectorQuantizer(nn.Module):
    """Nearest-neighbour lookup in a learned codebook (VQ-VAE, van den Oord et al. 2017).

    Loss: ``||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2`` (codebook + commitment; ``sg`` stops
    the gradient), averaged over elements. The lookup has no gradient, so the straight-through
    estimator ``z_q = z_e + sg[e - z_e]`` copies the decoder's gradient to the encoder.

    Dead codes: a buffer counts the training steps since each code was last chosen. A code
    unused for ``revive_after`` steps is moved onto a random encoder output of the current batch.
    The count starts at ``revive_after``, so the first training step initialises the whole
    codebook from encoder outputs. Nothing changes in eval mode.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, revive_after: int = 50) -> None:
        super().__init__()
        self.codebook_size, self.beta, self.revive_after = codebook_size, beta, revive_after
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("steps_since_used", torch.full((codebook_size,), revive_after))

    def nearest_code(self, flat: Tensor) -> Tensor:
        """Indices (N,) of the codebook rows closest to ``flat`` (N, dim).

        The argmin of the Euclidean distance is that of the squared distance; computing it in
        float32 keeps the choice accurate under bf16 autocast."""
        # Exercise 02.1: the index of the nearest codebook row for every row of `flat`, without gradient
        ### BEGIN SOLUTION
        with torch.no_grad():
            return torch.cdist(flat.float(), self.codebook.weight.float()).argmin(dim=1)  # (N, K) -> (N,)
        ### END SOLUTION

    def lookup(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes for ``z_e`` (B, dim, H, W): codes (B, dim, H, W), indices (B, H, W)."""
        height, width = z_e.shape[-2:]
        indices = self.nearest_code(rearrange(z_e, "b d h w -> (b h w) d"))  # (BHW,)
        indices = rearrange(indices, "(b h w) -> b h w", h=height, w=width)
        return rearrange(self.codebook(indices), "b h w d -> b d h w"), indices

    @staticmethod
    def straight_through(z_e: Tensor, codes: Tensor) -> Tensor:
        """z_q with the value of ``codes`` and the gradient of ``z_e`` (the straight-through
        estimator): the decoder's gradient reaches the encoder as if there were no lookup."""
        # Exercise 02.2: the straight-through estimator
        ### BEGIN SOLUTION
        return z_e + (codes - z_e).detach()
        ### END SOLUTION

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Snap ``z_e`` to the codebook, no side effects: (z_q straight-through, indices)."""
        codes, indices = self.lookup(z_e)
        return self.straight_through(z_e, codes), indices

    def loss(self, z_e: Tensor, codes: Tensor) -> Tensor:
        """Codebook loss ``||sg[z_e] - e||^2`` plus ``beta`` times the commitment loss
        ``||z_e - sg[e]||^2``, each the mean over elements (VQ-VAE eq. 3)."""
        # Exercise 02.3: the codebook and commitment losses, with the gradient stopped where `sg` says
        ### BEGIN SOLUTION
        return F.mse_loss(codes, z_e.detach()) + self.beta * F.mse_loss(z_e, codes.detach())
        ### END SOLUTION

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(z_q, loss, indices)``; in training mode also tracks and revives dead codes."""
        if self.training:
            self.revive_dead_codes(rearrange(z_e, "b d h w -> (b h w) d"))
        codes, indices = self.lookup(z_e)  # (B, dim, H, W), (B, H, W)
        if self.training:
            self.steps_since_used += 1
            self.steps_since_used[indices.unique()] = 0
        return self.straight_through(z_e, codes), self.loss(z_e, codes), indices

    @torch.no_grad()
    def revive_dead_codes(self, flat: Tensor) -> None:
        """Move codes unused for ``revive_after`` steps onto random rows of ``flat`` (N, dim)."""
        dead = (self.steps_since_used >= self.revive_after).nonzero().squeeze(1)
        if len(dead) == 0:
            return
        chosen = torch.randint(len(flat), (len(dead),), device=flat.device)
        self.codebook.weight[dead] = flat[chosen].to(self.codebook.weight.dtype)
        self.steps_since_used[dead] = 0

    def perplexity(self, indices: Tensor) -> Tensor:
        """exp(entropy of code usage): K when all K codes are used equally often, 1 for one code."""
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        probabilities = counts / counts.sum()
        entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum()
        return entropy.exp()
