"""The autoencoder's training objective (Rombach et al., CVPR 2022, Sec. 3.1 and App. G).

A plain L2 autoencoder gives blurry images. The paper follows VQGAN (Esser et al. 2021,
"Taming Transformers", Sec. 3.1) and trains with

    L = L_rec + L_reg + lambda * L_GAN,   L_rec = |x - D(E(x))| + LPIPS(x, D(E(x)))

- a perceptual loss, :class:`~minildm.perceptual.PerceptualLoss`: distances between VGG16
  features (LPIPS, Zhang et al. 2018), which keeps textures sharp; offline, between the
  features of the FID Inception-v3's early layers instead (:mod:`minildm.perceptual` holds
  the networks, their weight files and the choice for a profile);
- a patch discriminator, :class:`PatchDiscriminator` (pix2pix, Isola et al. 2017), trained
  with the hinge loss and switched on only after ``disc_start`` steps;
- an adaptive weight ``lambda`` (:func:`adaptive_weight`, logged as ``gan_weight``) that balances the GAN gradient
  against the reconstruction gradient at the decoder's last layer;
- the regulariser: ``kl_weight * KL`` for KL autoencoders, the codebook loss for VQ;
- for KL, the reconstruction error is read as a Laplace likelihood whose scale exp(logvar)
  is learned: ``nll = L_rec / exp(logvar) + logvar``.

Two optimisers, both Adam with betas (0.5, 0.9): one for the autoencoder plus
:meth:`AutoencoderLoss.generator_parameters`, one for :meth:`AutoencoderLoss.discriminator_parameters`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minildm.autoencoder import AutoencoderConfig
from minildm.config import SavedConfig
from minildm.nn import norm_groups, normalization
from minildm.perceptual import PerceptualLoss

class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix, Isola et al. 2017): one real/fake logit per overlapping image patch.

    conv4x4 stride 2 + LeakyReLU, then ``n_layers`` conv4x4 (stride 2, the last stride 1) with
    normalisation + LeakyReLU, then a conv4x4 to one channel. We use GroupNorm instead of the
    original BatchNorm: each image is judged on its own, the same in train and eval mode.
    A 32 px image gives 2x2 logits, a 256 px image 30x30.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        widths = [channels * min(2**layer, 8) for layer in range(1, n_layers + 1)]
        groups, width = norm_groups(*widths), channels
        for layer, new_width in enumerate(widths, start=1):
            stride = 2 if layer < n_layers else 1
            layers += [nn.Conv2d(width, new_width, 4, stride, 1, bias=False),
                       normalization(new_width, groups), nn.LeakyReLU(0.2)]
            width = new_width
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)  # (B, 3, H, W) -> (B, 1, h, w) logits


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    # Exercise 01.3: the hinge loss of the discriminator
    ### BEGIN SOLUTION
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())
    ### END SOLUTION


def generator_adversarial_loss(logits_fake: Tensor) -> Tensor:
    """The generator wants high logits on its images: -mean(logits_fake)."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer_weight: Tensor) -> Tensor:
    """||grad rec_loss|| / (||grad g_loss|| + 1e-4) at ``last_layer_weight``, in [0, 1e4], detached
    (VQGAN, Esser et al. 2021, Eq. 7): the GAN gradient gets the size of the reconstruction's."""
    # Exercise 01.4: the adaptive weight; keep both graphs (retain_graph) for the backward pass after it
    ### BEGIN SOLUTION
    rec_grad, = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
    ### END SOLUTION


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` without recording gradients for its parameters (they stay trainable)."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


@dataclass
class LossConfig(SavedConfig):
    """Weights of the autoencoder objective (defaults: the paper's KL recipe, App. G).

    Attributes:
        perceptual_weight: weight of LPIPS in the reconstruction loss.
        l2_weight: weight of a squared-error term added to the reconstruction loss. The paper
            has none (L1 + LPIPS); short CPU runs use it: PSNR is a squared-error measure.
        disc_start: step at which the GAN loss switches on (the paper's KL configs: 50001).
        disc_weight: factor on the adaptive GAN weight.
        kl_weight: weight of the KL term (KL autoencoders; the paper: 1e-6).
        learned_logvar: learn the scale of the reconstruction likelihood (``logvar``).
        disc_layers: strided layers of the patch discriminator.
    """

    perceptual_weight: float = 1.0
    l2_weight: float = 0.0
    disc_start: int = 5000
    disc_weight: float = 0.5
    kl_weight: float = 1e-6
    learned_logvar: bool = True
    disc_layers: int = 3

    @classmethod
    def from_autoencoder(cls, autoencoder_config: AutoencoderConfig, **overrides) -> LossConfig:
        """The loss for an :class:`~minildm.autoencoder.AutoencoderConfig`: VQ turns off the learned
        logvar, like the paper's VQ loss (taming), so the codebook loss keeps its weight."""
        return cls(**{"learned_logvar": autoencoder_config.reg == "kl", **overrides})


class AutoencoderLoss(nn.Module):
    """Generator and discriminator losses of the autoencoder, holding the discriminator and logvar.

    Normalisation: the paper's code sums the per-pixel loss over pixels; we average it, and
    divide the KL (a sum over latent elements per image) by the same number of pixel values
    C*H*W. The whole objective is the paper's divided by a constant, which does not change
    Adam's updates (up to its epsilon), and the logged numbers are per pixel.
    """

    def __init__(self, config: LossConfig, perceptual: PerceptualLoss | None = None,
                 image_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        self.perceptual = perceptual
        self.discriminator = PatchDiscriminator(image_channels, n_layers=config.disc_layers)
        self.logvar = nn.Parameter(torch.zeros(()), requires_grad=config.learned_logvar)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Trained with the autoencoder: the likelihood's logvar (empty when it is fixed)."""
        return [self.logvar] if self.config.learned_logvar else []

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def gan_active(self, step: int) -> bool:
        return step >= self.config.disc_start

    def generator_loss(self, x: Tensor, reconstruction: Tensor, extras: dict[str, Tensor], step: int,
                       last_layer_weight: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Loss for the autoencoder (and logvar); ``extras`` from the autoencoder's forward."""
        error = x - reconstruction  # (B, C, H, W)
        l1, l2 = error.abs().mean(), error.square().mean()
        perceptual = torch.zeros((), device=x.device)
        if self.perceptual is not None and self.config.perceptual_weight > 0:
            perceptual = self.perceptual(x, reconstruction).mean()
        rec = l1 + self.config.l2_weight * l2 + self.config.perceptual_weight * perceptual
        nll = rec / self.logvar.exp() + self.logvar
        logs = {"l1": l1.item(), "l2": l2.item(), "perceptual": perceptual.item(), "rec": rec.item(),
                "nll": nll.item(), "logvar": self.logvar.item()}
        if "kl" in extras:
            regulariser = self.config.kl_weight * extras["kl"] / x[0].numel()
            logs["kl"] = extras["kl"].item()
        else:
            regulariser = extras["vq_loss"]
            logs.update(vq=regulariser.item(), perplexity=extras["perplexity"].item())
        loss = nll + regulariser
        if self.gan_active(step):
            with frozen(self.discriminator):
                g_loss = generator_adversarial_loss(self.discriminator(reconstruction))
            gan_weight = torch.zeros((), device=x.device)  # lambda, Rombach et al. eq. 25
            if torch.is_grad_enabled():  # no gradients to balance during evaluation
                gan_weight = self.config.disc_weight * adaptive_weight(nll, g_loss, last_layer_weight)
            loss = loss + gan_weight * g_loss
            logs.update(g_loss=g_loss.item(), gan_weight=gan_weight.item())
        logs["total"] = loss.item()
        return loss, logs

    def discriminator_loss(self, x: Tensor, reconstruction: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        """Hinge loss of the discriminator on real ``x`` and (detached) reconstructions.
        Before ``disc_start`` it is a zero leaf tensor: ``backward()`` on it is a harmless no-op."""
        if not self.gan_active(step):
            return torch.zeros((), device=x.device, requires_grad=True), {"d_loss": 0.0}
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        logs = {"d_loss": loss.item(), "logits_real": logits_real.mean().item(),
                "logits_fake": logits_fake.mean().item()}
        return loss, logs
