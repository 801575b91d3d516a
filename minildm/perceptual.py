"""A perceptual distance that needs no download: LPIPS features from the FID Inception-v3.

The paper's perceptual loss (Rombach et al. 2022, App. G, after VQGAN) is LPIPS (Zhang et
al. 2018): distances between the features of an ImageNet VGG16, whose weights come from
download.pytorch.org. Offline, :func:`minildm.losses.load_perceptual` falls back to
:class:`EarlyInceptionFeatures`: the first layers of the FID Inception-v3 (Szegedy et al.
2016, with the TensorFlow weights of the FID code, Heusel et al. 2017), which the ``fid``
extra already installs as a TorchScript file for :mod:`minildm.evaluation.metrics`.

Zhang et al. found that deep features agree with human judgements of image similarity
whichever the network (AlexNet, SqueezeNet, VGG); LPIPS compares early-to-middle layers,
where edges and textures live. So we take four maps from the Inception's stem and its first
Inception blocks: ``conv_2`` (64 channels), ``conv_4`` (192), ``mixed`` (256) and
``mixed_2`` (288), and leave the deep layers to FID, which compares what they say about
the content of whole image sets.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minildm.evaluation.metrics import inception_weights_path

# The Inception's layers up to the last compared map, in order (children of ``net.layers``).
STEM_AND_BLOCKS = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2")
COMPARED_LAYERS = ("conv_2", "conv_4", "mixed", "mixed_2")
# The stem's unpadded stride-2 convolutions and poolings shrink a 32 px image to 1 x 1 at ``mixed``;
# upsampled to 128 px, the four maps are 61, 28, 13 and 13 px wide.
MIN_SIDE = 128


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
    ``COMPARED_LAYERS`` for :class:`minildm.losses.PerceptualLoss`.

    The weights are frozen and are not part of this module: the TorchScript layers sit in a
    plain tuple, so no ``state_dict`` (and no checkpoint of the training loss) holds them and
    no optimiser sees them. Gradients still flow through them to the images. They follow the
    images to their device on first use (``.to(device)`` on this module does not move them).
    """

    description = f"FID Inception-v3 early layers ({', '.join(COMPARED_LAYERS)})"

    def __init__(self, path: str | Path | None = None) -> None:
        """``path``: the TorchScript file (default: :func:`minildm.evaluation.metrics.inception_weights_path`,
        which raises a MinildmError when the ``fid`` extra is not installed)."""
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
