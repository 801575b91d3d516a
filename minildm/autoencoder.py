"""The autoencoder: perceptual compression (Rombach et al., CVPR 2022, Sec. 3.1).

An encoder ``E`` maps an image ``x`` of shape (3, H, W) to a latent ``z = E(x)`` of shape
(c, H/f, W/f), a decoder ``D`` maps it back, ``x ~ D(z)``. The factor ``f`` (4, 8 or 16) is
the number the paper's model names carry: LDM-4 diffuses in the latent of an f=4 autoencoder.
The latent must be small, but also well behaved, so the paper regularises it in one of two ways:

- KL-reg. (:class:`AutoencoderKL`): the encoder predicts a diagonal Gaussian ``q(z|x)`` and a
  tiny KL penalty (weight ~1e-6, ``kl_weight`` of :class:`minildm.losses.LossConfig`) pulls it
  towards N(0, I), as in a VAE. The latent stays continuous; its scale is fixed afterwards by
  :func:`measure_scale_factor`.
- VQ-reg. (:class:`AutoencoderVQ`): the latent is snapped to the nearest entry of a learned
  codebook (VQ-VAE, van den Oord et al. 2017), with the quantiser inside the decoder.

The two regularisers themselves are in :mod:`minildm.regularizers`.

Both share one interface: ``encode(x) -> z``, ``decode(z) -> x``, ``forward(x) ->
(reconstruction, extras)``; :func:`build_autoencoder` picks the class from the config. The
training objective (L1 + perceptual + patch GAN) lives in :mod:`minildm.losses`.

:class:`PixelSpace` is the baseline without compression (f = 1, the image is the latent): a
diffusion model on it is a pixel-space model, the one the paper calls LDM-1 (Sec. 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minildm.config import SavedConfig
from minildm.nn import (DOWNSAMPLE_PADDINGS, Downsample, ResBlock, SelfAttention2d, Upsample, checkpointed,
                        norm_groups, normalization)
from minildm.regularizers import DiagonalGaussian, VectorQuantizer

# Channel multiplier per resolution level; one downsampling between consecutive levels.
CHANNEL_MULTIPLIERS = {4: (1, 2, 4), 8: (1, 2, 4, 4), 16: (1, 1, 2, 2, 4)}
REGULARIZERS = ("kl", "vq")
PIXEL_SPACE = "pixel"  # the ``reg`` of :class:`PixelSpace` (no autoencoder), which has factor 1


@dataclass
class AutoencoderConfig(SavedConfig):
    """Sizes and regularisation of an autoencoder; saved in its run folder's ``config.json``.

    Attributes:
        reg: ``"kl"`` (Gaussian latent, KL penalty), ``"vq"`` (vector-quantised latent) or
            ``"pixel"`` (no autoencoder: :class:`PixelSpace`, see :func:`pixel_space_config`).
        factor: downsampling factor f: 4, 8 or 16 (log2(f) downsamplings).
        base_channels: channels at full resolution; deeper levels use multiples of it. Every
            GroupNorm of encoder and decoder has gcd(32, base_channels) groups
            (:func:`minildm.nn.norm_groups` of the widths).
        res_blocks: ResBlocks per level in the encoder (the decoder has one more, as in LDM).
        latent_channels: channels c of the latent.
        attention: self-attention in the middle blocks of encoder and decoder.
        codebook_size: VQ only: number of codebook entries.
        vq_beta: VQ only: weight of the commitment loss.
        revive_after: VQ only: training steps a code may go unused before it is re-initialised.
        image_channels: channels of the images.
        patch_size: side p of the pixel patches the encoder first folds into channels
            (space-to-depth, (3, H, W) -> (3p^2, H/p, W/p)) and the decoder unfolds at the end;
            p counts towards ``factor``. p = 2 halves the side of every convolution's input:
            f = 8 at 64 px then trains about three times faster (docs/measurements.md).
        downsample_padding: where the encoder's stride-2 convolutions pad
            (:class:`minildm.nn.Downsample`): ``"symmetric"`` (every side, minildm's own) or
            ``"right_bottom"`` (the CompVis / diffusers autoencoders', for imported weights).
    """

    reg: str = "kl"
    factor: int = 4
    base_channels: int = 64
    res_blocks: int = 1
    latent_channels: int = 4
    attention: bool = True
    codebook_size: int = 512
    vq_beta: float = 0.25
    revive_after: int = 50
    image_channels: int = 3
    patch_size: int = 1
    downsample_padding: str = "symmetric"

    def __post_init__(self) -> None:
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"unknown downsample padding {self.downsample_padding!r}: choose "
                             f"{' or '.join(map(repr, DOWNSAMPLE_PADDINGS))}")
        if self.reg == PIXEL_SPACE:
            if self.factor != 1 or self.latent_channels != self.image_channels:
                raise ValueError(f"pixel space (reg {PIXEL_SPACE!r}) has factor 1 and the image's channels")
            return
        if self.reg not in REGULARIZERS:
            raise ValueError(f"unknown autoencoder regularisation {self.reg!r}: choose 'kl' or 'vq'")
        if self.factor not in CHANNEL_MULTIPLIERS:
            raise ValueError(f"autoencoder factor must be 4, 8 or 16, got {self.factor}")
        if (self.patch_size < 1 or self.factor % self.patch_size
                or self.factor // self.patch_size not in CHANNEL_MULTIPLIERS):
            raise ValueError(f"patch size {self.patch_size} does not suit factor {self.factor}: the convolutions "
                             f"must downsample factor / patch size = 4, 8 or 16 times")

    @property
    def channel_multipliers(self) -> tuple[int, ...]:
        """One entry per level of the convolutional part, which downsamples f / patch_size."""
        return CHANNEL_MULTIPLIERS[self.factor // self.patch_size]

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each level: base_channels times its multiplier."""
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def folded_channels(self) -> int:
        """Channels of the image after space-to-depth: image_channels * patch_size^2."""
        return self.image_channels * self.patch_size**2


class Encoder(nn.Module):
    """Image (B, image_channels, H, W) -> features (B, out_channels, H/f, W/f).

    ``gradient_checkpointing`` (not part of the config) runs each layer of ``down`` and the
    middle block through :func:`minildm.nn.checkpointed`.
    """

    def __init__(self, config: AutoencoderConfig, out_channels: int) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.gradient_checkpointing = False
        widths = config.widths
        groups = norm_groups(*widths)
        self.conv_in = nn.Conv2d(config.folded_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        channels = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(channels, width, groups=groups))
                channels = width
            if level < len(widths) - 1:
                layers.append(Downsample(channels, config.downsample_padding))
        self.down = nn.Sequential(*layers)
        self.mid = middle_block(channels, config.attention, groups)
        self.norm_out = normalization(channels, groups)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        x = rearrange(x, "b c (h p) (w q) -> b (c p q) h w", p=p, q=p)  # (B, 3p^2, H/p, W/p)
        h = self.conv_in(x)  # (B, base_channels, H/p, W/p)
        for layer in self.down:  # down to (B, widths[-1], H/f, W/f)
            h = checkpointed(layer, h, enabled=self.gradient_checkpointing)
        h = checkpointed(self.mid, h, enabled=self.gradient_checkpointing)  # (B, widths[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, latent_channels, h, w) -> image (B, image_channels, f*h, f*w).

    ``gradient_checkpointing`` as in :class:`Encoder`, for the middle block and ``up``.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.gradient_checkpointing = False
        widths = config.widths
        groups = norm_groups(*widths)
        channels = widths[-1]
        self.conv_in = nn.Conv2d(config.latent_channels, channels, 3, padding=1)
        self.mid = middle_block(channels, config.attention, groups)
        layers: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            for _ in range(config.res_blocks + 1):
                layers.append(ResBlock(channels, widths[level], groups=groups))
                channels = widths[level]
            if level > 0:
                layers.append(Upsample(channels))
        self.up = nn.Sequential(*layers)
        self.norm_out = normalization(channels, groups)
        self.conv_out = nn.Conv2d(channels, config.folded_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = checkpointed(self.mid, self.conv_in(z), enabled=self.gradient_checkpointing)  # (B, widths[-1], h, w)
        for layer in self.up:  # up to (B, base_channels, H/p, W/p)
            h = checkpointed(layer, h, enabled=self.gradient_checkpointing)
        folded = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3p^2, H/p, W/p)
        p = self.patch_size
        return rearrange(folded, "b (c p q) h w -> b c (h p) (w q)", p=p, q=p)


def middle_block(channels: int, attention: bool, groups: int) -> nn.Sequential:
    """ResBlock, self-attention (optional), ResBlock, at the lowest resolution; ``groups`` in each GroupNorm."""
    attend = SelfAttention2d(channels, groups=groups) if attention else nn.Identity()
    return nn.Sequential(ResBlock(channels, channels, groups=groups), attend,
                         ResBlock(channels, channels, groups=groups))


class Autoencoder(nn.Module):
    """What both regularisations share: encoder, decoder, latent shape and scale factor.

    ``scale_factor`` (a buffer, saved with the weights) is the latent scale factor of the paper
    (Sec. 4.3.2): ``encode``/``decode`` work on unscaled latents and the diffusion model
    multiplies them by it. It starts at ``initial_scale_factor``: NaN, "not measured", for KL
    until :func:`measure_scale_factor` sets it from data (see :attr:`scale_factor_measured`).
    """

    initial_scale_factor = float("nan")  # not measured yet

    def __init__(self, config: AutoencoderConfig, encoder_channels: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, encoder_channels)
        self.decoder = Decoder(config)
        self.register_buffer("scale_factor", torch.tensor(self.initial_scale_factor))

    @property
    def scale_factor_measured(self) -> bool:
        """Whether ``scale_factor`` holds a value (always for VQ, whose factor is 1 by definition)."""
        return not torch.isnan(self.scale_factor).item()

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(latent_channels, image_size / f, image_size / f) for square images."""
        factor = self.config.factor
        if image_size % factor:
            raise ValueError(f"resolution {image_size} is not a multiple of the autoencoder's factor {factor}")
        return (self.config.latent_channels, image_size // factor, image_size // factor)

    @property
    def last_layer_weight(self) -> Tensor:
        """The decoder's final conv weight, where the GAN's adaptive weight is measured."""
        return self.decoder.conv_out.weight

    def check_resolution(self, x: Tensor) -> None:
        for size in x.shape[-2:]:
            self.latent_shape(size)

    def decode(self, z: Tensor) -> Tensor:
        """Latent (B, c, h, w) -> image (B, 3, f*h, f*w), values roughly in [-1, 1]."""
        return self.decoder(z)


class AutoencoderKL(Autoencoder):
    """KL-regularised autoencoder: the encoder predicts a :class:`DiagonalGaussian`."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config, encoder_channels=2 * config.latent_channels)

    def posterior(self, x: Tensor) -> DiagonalGaussian:
        self.check_resolution(x)
        return DiagonalGaussian(self.encoder(x))

    def encode(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Image (B, 3, H, W) -> latent (B, c, H/f, W/f): the posterior mode, or a sample."""
        posterior = self.posterior(x)
        return posterior.sample(generator) if sample else posterior.mode()

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruct from a posterior sample; extras: ``{"kl": KL per image}``."""
        posterior = self.posterior(x)
        return self.decode(posterior.sample()), {"kl": posterior.kl()}


class AutoencoderVQ(Autoencoder):
    """VQ-regularised autoencoder: latents are codebook entries. Its scale factor is 1 by
    definition: the paper diffuses VQ latents unscaled."""

    initial_scale_factor = 1.0

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config, encoder_channels=config.latent_channels)
        self.quantizer = VectorQuantizer(config.codebook_size, config.latent_channels,
                                         config.vq_beta, config.revive_after)

    def encode(self, x: Tensor) -> Tensor:
        """Image (B, 3, H, W) -> the encoder's latent (B, c, H/f, W/f) before quantisation, as
        in the paper's code (its VQ ``encode``; the diffusion model works on these latents and
        :meth:`decode` quantises). :meth:`quantized_codes` gives the codebook entries."""
        self.check_resolution(x)
        return self.encoder(x)

    def quantized_codes(self, x: Tensor) -> Tensor:
        """Image (B, 3, H, W) -> its latent snapped to the codebook (B, c, H/f, W/f)."""
        return self.quantizer.quantize(self.encode(x))[0]

    def decode(self, z: Tensor) -> Tensor:
        """Snap ``z`` to the codebook, then decode: the paper puts the quantiser in the decoder,
        so the diffusion model may produce any latent and still get a codebook image."""
        return self.decoder(self.quantizer.quantize(z)[0])

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Extras: ``vq_loss`` (codebook + commitment), ``perplexity``, ``indices`` (B, h, w)."""
        self.check_resolution(x)
        z_q, vq_loss, indices = self.quantizer(self.encoder(x))
        extras = {"vq_loss": vq_loss, "perplexity": self.quantizer.perplexity(indices), "indices": indices}
        return self.decoder(z_q), extras


class PixelSpace(nn.Module):
    """No autoencoder (f = 1): ``encode`` and ``decode`` return their input, so diffusion on
    these "latents" is diffusion on pixels. Same interface as :class:`Autoencoder`; the scale
    factor is 1 by definition: pixels in [-1, 1] are what the noise schedule was made for."""

    initial_scale_factor = 1.0
    scale_factor_measured = True

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or pixel_space_config()
        self.register_buffer("scale_factor", torch.tensor(self.initial_scale_factor))

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (self.config.image_channels, image_size, image_size)

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z


def pixel_space_config(image_channels: int = 3) -> AutoencoderConfig:
    """The configuration of :class:`PixelSpace`."""
    return AutoencoderConfig(reg=PIXEL_SPACE, factor=1, base_channels=0, latent_channels=image_channels,
                             attention=False, image_channels=image_channels)


def build_autoencoder(config: AutoencoderConfig) -> AutoencoderKL | AutoencoderVQ | PixelSpace:
    """The autoencoder class that ``config.reg`` names."""
    if config.reg == PIXEL_SPACE:
        return PixelSpace(config)
    return AutoencoderKL(config) if config.reg == "kl" else AutoencoderVQ(config)


@torch.no_grad()
def measure_scale_factor(autoencoder: Autoencoder, images: Tensor, batch_size: int = 256) -> float:
    """1 / std of the latents ``encode(images)`` over the whole set (images in [-1, 1]).

    Multiplying latents by this makes them unit variance, the scale the diffusion noise
    schedule assumes (paper Sec. 4.3.2 and App. D.1, which estimates it on the first batch).
    Stable Diffusion's famous 0.18215 is exactly this number measured for its KL-f8
    autoencoder. VQ latents keep 1 in the paper (their ``scale_factor`` starts there). Use it
    with ``autoencoder.scale_factor.fill_``.
    """
    was_training = autoencoder.training
    autoencoder.eval()
    device = autoencoder.scale_factor.device
    latents = [autoencoder.encode(batch.to(device)) for batch in images.split(batch_size)]
    autoencoder.train(was_training)
    # Exercise 01.5: the scale factor that gives `latents` (a list of batches) unit variance, as a float
    ### BEGIN SOLUTION
    return 1.0 / torch.cat(latents).float().std().item()
    ### END SOLUTION
