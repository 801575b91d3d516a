"""The autoencoder's training objective (Rombach et al., CVPR 2022, Sec. 3.1 and App. G).

A plain L2 autoencoder gives blurry images. The paper follows VQGAN (Esser et al. 2021,
"Taming Transformers", Sec. 3.1) and trains with

    L = L_rec + L_reg + lambda * L_GAN,   L_rec = |x - D(E(x))| + LPIPS(x, D(E(x)))

- a perceptual loss, :class:`PerceptualLoss`: distances between VGG16 features (LPIPS,
  Zhang et al. 2018), which keeps textures sharp; offline, between the features of the FID
  Inception-v3's early layers instead (:mod:`minildm.perceptual`);
- a patch discriminator, :class:`PatchDiscriminator` (pix2pix, Isola et al. 2017), trained
  with the hinge loss and switched on only after ``disc_start`` steps;
- an adaptive weight ``lambda`` (:func:`adaptive_weight`) that balances the GAN gradient
  against the reconstruction gradient at the decoder's last layer;
- the regulariser: ``kl_weight * KL`` for KL autoencoders, the codebook loss for VQ;
- for KL, the reconstruction error is read as a Laplace likelihood whose scale exp(logvar)
  is learned: ``nll = L_rec / exp(logvar) + logvar``.

Two optimisers, both Adam with betas (0.5, 0.9): one for the autoencoder plus
:meth:`AutoencoderLoss.generator_parameters`, one for :meth:`AutoencoderLoss.discriminator_parameters`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from minildm.autoencoder import AutoencoderConfig
from minildm.config import MinildmError, Profile, SavedConfig, data_dir
from minildm.nn import normalization
from minildm.perceptual import EarlyInceptionFeatures

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_WEIGHTS_ENV = "MINILDM_VGG16_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 10.0
# Output widths of VGG16's 13 convolutions, in 5 blocks separated by 2x2 max pooling.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg16_conv_names() -> list[str]:
    """``conv1_1`` ... ``conv5_3``, the names of the VGG paper (Simonyan & Zisserman 2015)."""
    return [f"conv{block}_{layer}" for block, widths in enumerate(VGG16_BLOCKS, 1)
            for layer in range(1, len(widths) + 1)]


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk, returning the five feature maps LPIPS compares:
    relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.

    The weights are frozen, so they are non-persistent buffers rather than parameters: they
    follow ``.to(device)``, no optimiser sees them, and checkpoints of the loss do not copy
    them. They are random (He initialisation) until :meth:`load_weights`.
    """

    description = "VGG16 (ImageNet), LPIPS lin-off"

    def __init__(self) -> None:
        super().__init__()
        in_channels = 3
        for name, out_channels in zip(vgg16_conv_names(), [w for ws in VGG16_BLOCKS for w in ws]):
            weight = torch.randn(out_channels, in_channels, 3, 3) * (2 / (9 * in_channels)) ** 0.5
            self.register_buffer(f"{name}_weight", weight, persistent=False)
            self.register_buffer(f"{name}_bias", torch.zeros(out_channels), persistent=False)
            in_channels = out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_weights(self, tensors: dict[str, Tensor]) -> None:
        """Copy weights named ``conv1_1.weight``, ``conv1_1.bias``, ... (see :func:`vgg16_from_torchvision`)."""
        expected = {f"{name}.{kind}" for name in vgg16_conv_names() for kind in ("weight", "bias")}
        if set(tensors) != expected:
            raise MinildmError(f"VGG16 weights must have exactly the keys {sorted(expected)}")
        for key, value in tensors.items():
            target = getattr(self, key.replace(".", "_"))
            if value.shape != target.shape:
                raise MinildmError(f"VGG16 weight {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            target.copy_(value)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> five feature maps, (B, 64, H, W) ... (B, 512, H/16, W/16)."""
        h = ((images + 1) / 2 - self.mean) / self.std  # ImageNet statistics, as LPIPS does
        features = []
        for block, widths in enumerate(VGG16_BLOCKS, 1):
            if block > 1:
                h = F.max_pool2d(h, 2)
            for layer in range(1, len(widths) + 1):
                name = f"conv{block}_{layer}"
                h = F.relu(F.conv2d(h, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"), padding=1))
            features.append(h)
        return features


def vgg16_from_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision's VGG16 weights (``features.0.weight`` ...) to ours (``conv1_1.weight``).

    torchvision numbers the layers of one ``nn.Sequential``: each conv is followed by a ReLU
    (2 indices), each block by a max pool (1 index). The classifier is dropped.
    """
    renamed, index = {}, 0
    for block, widths in enumerate(VGG16_BLOCKS, 1):
        for layer in range(1, len(widths) + 1):
            for kind in ("weight", "bias"):
                renamed[f"conv{block}_{layer}.{kind}"] = state_dict[f"features.{index}.{kind}"]
            index += 2
        index += 1
    return renamed


class PerceptualLoss(nn.Module):
    """LPIPS distance with uniform channel weights (the "lin off" baseline of Zhang et al. 2018):
    for each feature map of the ``network``, unit-normalise every pixel's feature vector, take
    the squared difference, sum over channels, average over pixels; then sum over the maps.
    Zero for identical images, symmetric, and differentiable in both images.

    ``network``: a frozen trunk that maps images in [-1, 1] to a list of feature maps and has a
    ``description``: :class:`VGG16Features` (the paper's) or
    :class:`~minildm.perceptual.EarlyInceptionFeatures` (offline).
    """

    def __init__(self, network: VGG16Features | EarlyInceptionFeatures) -> None:
        super().__init__()
        self.network = network

    @property
    def description(self) -> str:
        """Which network the distance compares features of (recorded in a run's ``config.json``)."""
        return self.network.description

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> distances (B,)."""
        features = self.network(torch.cat([x, y]))
        distance = torch.zeros(len(x), device=x.device)
        for both in features:
            f_x, f_y = F.normalize(both, dim=1, eps=1e-10).chunk(2)  # (B, C, h, w) each
            distance = distance + ((f_x - f_y) ** 2).sum(dim=1).mean(dim=(1, 2))
        return distance


def default_weights_path() -> Path:
    return data_dir() / "weights" / "vgg16.safetensors"


def find_local_weights(path: str | Path | None = None) -> Path | None:
    """The VGG16 safetensors file: ``path``, else ``$MINILDM_VGG16_WEIGHTS``, else
    ``<data dir>/weights/vgg16.safetensors`` if it exists, else None."""
    named = path or os.environ.get(VGG16_WEIGHTS_ENV)
    if not named:
        return default_weights_path() if default_weights_path().is_file() else None
    named = Path(named)
    if not named.is_file():
        raise MinildmError(f"no VGG16 weights at {named}")
    if named.suffix != ".safetensors":
        raise MinildmError(f"VGG16 weights must be a .safetensors file (never unpickled), got {named}")
    return named


def download_vgg16_weights(destination: Path) -> Path:
    """Fetch torchvision's ImageNet VGG16 once, keep the trunk as safetensors at ``destination``."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as folder:
        downloaded = Path(folder) / "vgg16.pth"
        with urllib.request.urlopen(VGG16_URL, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(downloaded, "wb") as file:
            print(f"downloading VGG16 weights (528 MB, once) from {VGG16_URL}", file=sys.stderr)
            shutil.copyfileobj(response, file)
        state_dict = torch.load(downloaded, map_location="cpu", weights_only=True)
        converted = Path(folder) / destination.name
        save_file({k: v.contiguous() for k, v in vgg16_from_torchvision(state_dict).items()}, str(converted))
        os.replace(converted, destination)
    return destination


def load_perceptual(path: str | Path | None = None) -> PerceptualLoss | None:
    """The perceptual loss with ImageNet VGG16 weights, the paper's, from a local file (see
    :func:`find_local_weights`) or a download. When both fail: after one warning line, the
    loss on the FID Inception-v3's early layers (:func:`offline_perceptual`), or None when the
    ``fid`` extra that ships that network is not installed either."""
    source = find_local_weights(path)
    if source is None:
        try:
            source = download_vgg16_weights(default_weights_path())
        except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as error:
            return offline_perceptual(error)
    vgg = VGG16Features()
    vgg.load_weights(load_file(str(source)))
    return PerceptualLoss(vgg).eval()


def offline_perceptual(error: Exception) -> PerceptualLoss | None:
    """The loss on :class:`~minildm.perceptual.EarlyInceptionFeatures` or, without the ``fid``
    extra, None; either way one warning line says why VGG16 is missing (``error``)."""
    folder = default_weights_path().parent
    try:
        network = EarlyInceptionFeatures()
    except MinildmError:
        print(f"warning: VGG16 weights unavailable (offline?): training without the perceptual loss; "
              f"put vgg16.safetensors in {folder} to enable it ({error})", file=sys.stderr)
        return None
    print(f"warning: VGG16 weights unavailable (offline?): the perceptual loss uses the FID Inception-v3's "
          f"early layers instead; put vgg16.safetensors in {folder} for the paper's VGG16 ({error})",
          file=sys.stderr)
    return PerceptualLoss(network).eval()


def perceptual_for(profile: Profile) -> PerceptualLoss | None:
    """:func:`load_perceptual` when the profile's stage 1 trains with the perceptual term
    (``profile.autoencoder.perceptual``), else None (``tiny`` and ``cpu``, for speed)."""
    return load_perceptual() if profile.autoencoder.perceptual else None


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
        width = channels
        for layer in range(1, n_layers + 1):
            new_width = channels * min(2**layer, 8)
            stride = 2 if layer < n_layers else 1
            layers += [nn.Conv2d(width, new_width, 4, stride, 1, bias=False),
                       normalization(new_width), nn.LeakyReLU(0.2)]
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
        kl_weight: weight of the KL term (copy the autoencoder config's, see ``from_autoencoder``).
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
        """Take ``kl_weight`` from an :class:`~minildm.autoencoder.AutoencoderConfig`; VQ turns off
        the learned logvar, like the paper's VQ loss (taming), so the codebook loss keeps its weight."""
        values = {"kl_weight": autoencoder_config.kl_weight, "learned_logvar": autoencoder_config.reg == "kl"}
        return cls(**{**values, **overrides})


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
            d_weight = torch.zeros((), device=x.device)
            if torch.is_grad_enabled():  # no gradients to balance during evaluation
                d_weight = self.config.disc_weight * adaptive_weight(nll, g_loss, last_layer_weight)
            loss = loss + d_weight * g_loss
            logs.update(g_loss=g_loss.item(), d_weight=d_weight.item())
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
