"""The latent diffusion model: a frozen autoencoder, a scale factor, and a UNet between them
(Rombach et al. 2022, Sec. 3.2; stage 2 of the course).

The UNet learns to denoise the autoencoder's latents, multiplied by the autoencoder's scale
factor so they have unit variance (LDM eq. 2). Sampling runs DDPM or DDIM in latent space and
decodes once at the end.

A conditional model (Sec. 3.3) adds a condition y: tokens from a condition encoder tau_theta
(:mod:`minildm.conditioning`) that the UNet reads by cross-attention, sampled with
classifier-free guidance; or an image (:mod:`minildm.image_conditions`) concatenated to the
UNet's input, for inpainting and super-resolution.

Training (the latent cache, :func:`~minildm.ldm_training.train_ldm`) and loading a run folder
(:func:`~minildm.ldm_training.load_ldm`) are in :mod:`minildm.ldm_training`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from minildm.attention import SpatialTransformer, capture_attention_maps
from minildm.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder
from minildm.conditioning import CONCAT_KINDS, TOKEN_KINDS, ConditioningConfig, build_encoder, pad
from minildm.config import MinildmError, SavedConfig
from minildm.diffusion import DiffusionConfig
from minildm.guidance import classifier_free_guidance
from minildm.image_conditions import (concat_conditioning, inpainting_condition, paste, semantic_condition,
                                      superres_condition)
from minildm.sampling import SamplerOptions, Step, Trajectory, final_state, sampler_steps
from minildm.unet import UNet, UNetConfig

DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale for token-conditioned sampling (figures, CLI)


@dataclass
class LDMConfig(SavedConfig):
    """Everything that defines a latent diffusion model, saved in the run's ``config.json``.

    Attributes:
        unet: the UNet's sizes.
        diffusion: schedule and prediction target.
        autoencoder: the frozen autoencoder's configuration.
        use_scale_factor: multiply latents by the autoencoder's scale factor (the paper's
            choice); False trains on raw latents, to see why it matters.
        conditioning: what the model is conditioned on (kind ``none``: nothing).
    """

    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    use_scale_factor: bool = True
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class LatentDiffusion(nn.Module):
    """Autoencoder (frozen) + scale factor + UNet (+ condition encoder tau_theta);
    ``sample`` turns noise (and a condition) into images."""

    def __init__(self, config: LDMConfig, autoencoder: Autoencoder | None = None):
        super().__init__()
        self.config = config
        self.autoencoder = (autoencoder or build_autoencoder(config.autoencoder)).eval().requires_grad_(False)
        self.unet = UNet(config.unet)
        self.condition_encoder = build_encoder(config.conditioning)  # tau_theta, None without tokens
        self.diffusion = config.diffusion.build()

    @property
    def kind(self) -> str:
        """What the model is conditioned on: none, class, attributes, text, inpaint, superres."""
        return self.config.conditioning.kind

    def networks(self) -> nn.ModuleDict:
        """The trained networks: the UNet, and the condition encoder if there is one."""
        encoder = {"condition_encoder": self.condition_encoder} if self.condition_encoder else {}
        return nn.ModuleDict({"unet": self.unet, **encoder})

    @property
    def scale_factor(self) -> float:
        """The factor latents are multiplied by before diffusion (1/std of the latents, Sec. 4.3.2):
        the autoencoder's, or 1 when ``use_scale_factor`` is off. A KL autoencoder whose factor
        was never measured is refused."""
        if not self.config.use_scale_factor:
            return 1.0
        if not self.autoencoder.scale_factor_measured:
            raise MinildmError("the autoencoder's latent scale factor was never measured: set it with "
                               "autoencoder.scale_factor.fill_(measure_scale_factor(autoencoder, images))")
        return self.autoencoder.scale_factor.item()

    @property
    def device(self) -> torch.device:
        return self.autoencoder.scale_factor.device

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape(resolution)

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Images (N, 3, R, R) in [-1, 1] -> scaled latents (N, c, R/f, R/f), in batches."""
        latents = [self.autoencoder.encode(batch.to(self.device)) for batch in images.split(batch_size)]
        return torch.cat(latents) * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return self.autoencoder.decode(latents / self.scale_factor).clamp(-1, 1)

    def denoiser(self, condition: Tensor | None = None, guidance: float = 1.0, batch_size: int | None = None,
                 networks: nn.ModuleDict | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The function ``(z_t, t) -> UNet output`` that the samplers call.

        ``condition``: class indices, attributes or caption ids for a token model (None: the
        null condition, i.e. unconditional, for ``batch_size`` samples); the extra input
        channels (B, k, h, w) for a concat model (:func:`~minildm.image_conditions.concat_conditioning`).
        ``guidance`` s > 1 is classifier-free guidance
        (:func:`~minildm.guidance.classifier_free_guidance`), both halves in one batch.
        ``networks``: other weights of the same model (the trainer's EMA copies).
        """
        networks = networks if networks is not None else self.networks()
        unet = networks["unet"]
        if self.kind == "none":
            return unet
        if condition is None and self.kind in CONCAT_KINDS:
            raise ValueError(f"this model does {self.kind}: it needs its input image as the condition")
        if self.kind in CONCAT_KINDS:
            return concat_conditioning(unet, condition)
        encoder = networks["condition_encoder"]
        tokens, mask = encoder(condition) if condition is not None else encoder.null(batch_size)
        if guidance == 1.0:
            return lambda z_t, t: unet(z_t, t, tokens, mask)
        null_tokens, null_mask = pad(*encoder.null(len(tokens)), tokens.shape[1])
        both_tokens, both_mask = torch.cat([tokens, null_tokens]), torch.cat([mask, null_mask])

        def guided(z_t: Tensor, t: Tensor) -> Tensor:
            conditional, unconditional = unet(torch.cat([z_t, z_t]), torch.cat([t, t]), both_tokens,
                                              both_mask).chunk(2)
            return classifier_free_guidance(conditional, unconditional, guidance)

        return guided

    def loss(self, latents: Tensor, generator: torch.Generator | None = None,
             condition: Tensor | None = None) -> Tensor:
        """LDM eq. 2 on a batch of scaled latents (and their conditions); a token condition is
        replaced by the null sequence with probability ``drop_probability`` (for guidance)."""
        if self.kind not in TOKEN_KINDS:
            return self.diffusion.loss(self.denoiser(condition), latents, generator)
        drop = torch.rand(len(latents), generator=generator) < self.config.conditioning.drop_probability
        tokens, mask = self.condition_encoder(condition, drop.to(latents.device))
        return self.diffusion.loss(lambda z_t, t: self.unet(z_t, t, tokens, mask), latents, generator)

    @torch.no_grad()
    def sample(self, n: int, resolution: int, options: SamplerOptions | None = None, *,
               condition: Tensor | None = None, guidance: float = 1.0, noise: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` images (n, 3, R, R) in [-1, 1]: noise -> DDIM/DDPM in latent space -> decoder.

        ``options``: the sampler and its settings (default: DDIM, 50 steps, eta 0).
        ``noise`` fixes the starting latents (n, c, R/f, R/f); otherwise they are drawn with
        ``generator``, which also draws the sampler's noise. ``condition`` (n rows) and
        ``guidance``: see :meth:`denoiser`.
        """
        with evaluating(self.networks()):
            latents = final_state(*self._reverse_chain(n, resolution, options, condition, guidance, noise, generator))
        return self.decode(latents)

    @torch.no_grad()
    def sample_trajectory(self, n: int, resolution: int, options: SamplerOptions | None = None, *,
                          condition: Tensor | None = None, guidance: float = 1.0, noise: Tensor | None = None,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Trajectory]:
        """:meth:`sample`, and the sampler's trajectory in latent space (states and predicted x0)."""
        with evaluating(self.networks()):
            trajectory = Trajectory.collect(*self._reverse_chain(n, resolution, options, condition, guidance, noise,
                                                                 generator))
        return self.decode(trajectory.result), trajectory

    def _reverse_chain(self, n: int, resolution: int, options: SamplerOptions | None, condition: Tensor | None,
                       guidance: float, noise: Tensor | None,
                       generator: torch.Generator | None) -> tuple[Tensor, Iterator[Step]]:
        """The starting noise x_T (n, c, R/f, R/f) of a sampling run, and the sampler's steps from it."""
        if condition is not None and len(condition) != n:
            raise ValueError(f"{len(condition)} conditions for {n} samples")
        if noise is None:
            noise = torch.randn((n, *self.latent_shape(resolution)), generator=generator)
        condition = None if condition is None else condition.to(self.device)
        denoise, x_T = self.denoiser(condition, guidance, n), noise.to(self.device)
        return x_T, sampler_steps(self.diffusion, denoise, x_T, options or SamplerOptions(), generator)

    def inpainting_condition(self, images: Tensor, masks: Tensor) -> Tensor:
        """Images (B, 3, R, R) in [-1, 1] and masks (B, 1, R, R), 1 = fill -> the UNet's
        extra input (B, c + 1, R/f, R/f)."""
        return inpainting_condition(self.encode, images.to(self.device), masks.to(self.device))

    @torch.no_grad()
    def inpaint(self, images: Tensor, masks: Tensor, options: SamplerOptions | None = None, *,
                generator: torch.Generator | None = None, keep_known: bool = True) -> Tensor:
        """Fill the masked regions (masks (B, 1, R, R), 1 = fill) of images in [-1, 1], sampled
        with ``options`` (:meth:`sample`). With ``keep_known`` the known pixels are pasted
        back: the decoder reproduces them only up to the autoencoder's error."""
        if self.kind != "inpaint":
            raise ValueError(f"this model does {self.kind}, not inpainting")
        condition = self.inpainting_condition(images, masks)
        generated = self.sample(len(images), images.shape[-1], options, condition=condition,
                                generator=generator).cpu()
        return paste(generated, images.cpu(), masks.cpu()) if keep_known else generated

    @torch.no_grad()
    def upscale(self, low_resolution: Tensor, options: SamplerOptions | None = None, *,
                generator: torch.Generator | None = None) -> Tensor:
        """Super-resolution: images (B, 3, r, r) in [-1, 1] -> (B, 3, r * factor, r * factor),
        sampled with ``options`` (:meth:`sample`)."""
        if self.kind != "superres":
            raise ValueError(f"this model does {self.kind}, not super-resolution")
        resolution = low_resolution.shape[-1] * self.config.conditioning.superres_factor
        condition = superres_condition(low_resolution.to(self.device), self.latent_shape(resolution)[1:])
        return self.sample(len(low_resolution), resolution, options, condition=condition, generator=generator).cpu()

    @torch.no_grad()
    def synthesize(self, part_maps: Tensor, options: SamplerOptions | None = None, *,
                   generator: torch.Generator | None = None) -> Tensor:
        """Semantic synthesis (Sec. 4.3.2): part maps, integer (B, H, H) -> images (B, 3, H, H),
        sampled with ``options`` (:meth:`sample`). A map larger than the training images gives
        a larger image, the map supplying the layout the UNet's receptive field cannot see."""
        if self.kind != "semantic":
            raise ValueError(f"this model does {self.kind}, not semantic synthesis")
        resolution = part_maps.shape[-1]
        if part_maps.shape[-2] != resolution:
            raise ValueError(f"part maps must be square, got {tuple(part_maps.shape[-2:])}")
        condition = semantic_condition(part_maps.to(self.device), len(self.config.conditioning.class_names),
                                       self.latent_shape(resolution)[1:])
        return self.sample(len(part_maps), resolution, options, condition=condition, generator=generator).cpu()


@torch.no_grad()
def token_attention(model: LatentDiffusion, condition: Tensor, resolution: int, options: SamplerOptions | None = None,
                    *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Samples of a token ``model`` for ``condition`` (guidance 1) and where they looked
    (Sec. 3.3): images (B, 3, R, R), and the cross-attention weight each latent pixel gave
    each token at the finest level with cross-attention, averaged over heads, blocks and
    sampling steps: (B, L, h, w). At every pixel the weights of the L tokens sum to 1."""
    if model.kind not in TOKEN_KINDS:
        raise ValueError(f"this model does {model.kind}: it has no condition tokens to attend to")
    records = []

    def keep(module: SpatialTransformer, inputs: tuple, output: Tensor) -> None:
        records.append(torch.stack(module.cross_attention_maps()).mean(dim=(0, 2)))  # (B, HW, L)

    handles = [m.register_forward_hook(keep) for m in model.unet.modules() if isinstance(m, SpatialTransformer)]
    capture_attention_maps(model.unet)
    try:
        images = model.sample(len(condition), resolution, options, condition=condition, generator=generator)
    finally:
        for handle in handles:
            handle.remove()
        capture_attention_maps(model.unet, enabled=False)
    finest = max(record.shape[1] for record in records)
    maps = torch.stack([record for record in records if record.shape[1] == finest]).mean(dim=0)  # (B, HW, L)
    return images, rearrange(maps, "b (h w) l -> b l h w", h=int(finest**0.5)).cpu()
