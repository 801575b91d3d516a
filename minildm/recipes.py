"""What the profiles and data sets make: the configs of each stage.

A profile (:mod:`minildm.config`) holds sizes; these functions turn it into the configuration
of a network: the autoencoder of stage 1 (LDM Sec. 3.1), the UNet on its latents (Sec. 3.2),
and, from a data set, the conditioning of Sec. 3.3 and each image's condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from minildm.autoencoder import Autoencoder, AutoencoderConfig
from minildm.conditioning import MIN_TEXT_LENGTH, TOKEN_KINDS, ConditioningConfig, WordTokenizer, layout_tensor
from minildm.config import MinildmError, Profile
from minildm.data.images import float_to_uint8
from minildm.data.toyface_parts import PARTS, generate_parts
from minildm.diffusion import DiffusionConfig
from minildm.image_conditions import extra_input_channels
from minildm.ldm import LDMConfig
from minildm.unet import UNetConfig


def autoencoder_config(profile: Profile, *, factor: int = 4, reg: str = "kl",
                       base_channels: int | None = None, patch_size: int = 1) -> AutoencoderConfig:
    """The profile's autoencoder for a factor and regularisation (VQ: 3 latent channels, the
    paper's VQ-f4; KL: 4, the paper's KL-f8); ``base_channels`` replaces the profile's, and
    ``patch_size`` folds pixel patches into channels first (see :class:`AutoencoderConfig`)."""
    preset = profile.autoencoder
    return AutoencoderConfig(reg=reg, factor=factor, base_channels=base_channels or preset.base_channels,
                             res_blocks=preset.res_blocks, attention=preset.attention,
                             latent_channels=4 if reg == "kl" else 3, codebook_size=preset.codebook_size,
                             patch_size=patch_size)


def ldm_config(profile: Profile, autoencoder: Autoencoder, *, use_scale_factor: bool = True,
               prediction: str | None = None, conditioning: ConditioningConfig | None = None) -> LDMConfig:
    """The profile's UNet on the latents of ``autoencoder``; ``prediction`` overrides the
    profile's target (eps, x0 or v). Token conditioning adds cross-attention, concat
    conditioning input channels (:func:`~minildm.image_conditions.extra_input_channels`)."""
    preset, conditioning = profile.ldm, conditioning or ConditioningConfig()
    channels = autoencoder.config.latent_channels
    extra = extra_input_channels(conditioning.kind, channels, parts=len(conditioning.class_names))
    context = conditioning.channels if conditioning.kind in TOKEN_KINDS else None
    unet = UNetConfig(in_channels=channels + extra, out_channels=channels, base_channels=preset.base_channels,
                      channel_mult=preset.channel_mult, res_blocks=preset.res_blocks,
                      attention_levels=preset.cross_attention_levels if context else preset.attention_levels,
                      context_channels=context)
    diffusion = DiffusionConfig(prediction=prediction or preset.prediction, min_snr_gamma=preset.min_snr_gamma)
    return LDMConfig(unet=unet, diffusion=diffusion,
                     autoencoder=autoencoder.config, use_scale_factor=use_scale_factor, conditioning=conditioning)


def conditioning_config(kind: str, dataset, attributes: Sequence[str] | None = None,
                        **settings) -> ConditioningConfig:
    """The conditioning ``kind`` for a data set (:class:`minildm.data.ImageDataset`): class
    names, attribute names (all, or those named in ``attributes``) or the captions'
    vocabulary; ``settings`` override the other fields."""
    if kind == "class":
        if dataset.labels is None:
            raise MinildmError("this data set has no class labels: condition on attributes instead")
        names = dataset.label_names or [str(i) for i in range(int(dataset.labels.max()) + 1)]
        return ConditioningConfig(kind, class_names=list(names), **settings)
    if kind == "attributes":
        if dataset.attributes is None:
            raise MinildmError("this data set has no attributes (a CelebA folder needs list_attr_celeba.txt)")
        names = list(attributes or dataset.attribute_names)
        missing = [name for name in names if name not in dataset.attribute_names]
        if missing:
            raise MinildmError(f"unknown attribute(s) {', '.join(missing)}; the data set has: "
                               f"{', '.join(dataset.attribute_names)}")
        return ConditioningConfig(kind, attribute_names=names, **settings)
    if kind == "text":
        if dataset.captions is None:
            raise MinildmError("this data set has no captions: condition on attributes instead")
        vocabulary = WordTokenizer.from_captions(dataset.captions).vocabulary
        longest = max(len(WordTokenizer.words(text)) for text in dataset.captions)
        # room for prompts longer than the training captions: at least 31 words
        return ConditioningConfig(kind, vocabulary=vocabulary, max_length=max(MIN_TEXT_LENGTH, longest + 1), **settings)
    if kind in ("semantic", "layout"):
        if dataset.info.get("source") != "toyfaces":
            raise MinildmError(f"{kind} conditioning needs part labels, which only --dataset toyfaces has")
        return ConditioningConfig(kind, class_names=list(PARTS), **settings)
    return ConditioningConfig(kind, **settings)


def condition_tensor(config: ConditioningConfig, dataset) -> Tensor:
    """Each image's condition as the model reads it: class indices (N,), attributes bool
    (N, A) in the order of ``config.attribute_names``, caption ids (N, max_length), part maps
    uint8 (N, R, R) or layouts (N, P, 5) of toy faces (drawn again with their labels)."""
    if config.kind == "class":
        return dataset.labels.long()
    if config.kind == "attributes":
        columns = [dataset.attribute_names.index(name) for name in config.attribute_names]
        return dataset.attributes[:, columns].bool()
    if config.kind == "text":
        return WordTokenizer(config.vocabulary).encode(dataset.captions, config.max_length)
    if config.kind in ("semantic", "layout"):
        maps, boxes, present = toyface_labels(dataset)
        return maps if config.kind == "semantic" else layout_tensor(boxes, present)
    raise ValueError(f"{config.kind!r} conditions are images, made by minildm.image_conditions")


def toyface_labels(dataset) -> tuple[Tensor, Tensor, Tensor]:
    """The part maps, boxes and flags of a toy-face data set, drawn again from its seed and
    start (:func:`~minildm.data.toyface_parts.generate_parts`), checked against its images."""
    info, resolution = dataset.info, dataset.pixels.shape[-1]
    images, _, maps, boxes, present = generate_parts(len(dataset), resolution, info["seed"], info["start"])
    if not torch.equal(float_to_uint8(images), dataset.pixels):
        raise MinildmError("the toy faces could not be drawn again with their labels: prepare the data again")
    return maps, boxes, present
