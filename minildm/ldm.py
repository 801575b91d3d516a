"""The latent diffusion model: a frozen autoencoder, a scale factor, and a UNet between them
(Rombach et al. 2022, Sec. 3.2; stage 2 of the course).

Training never touches pixels: the training images are encoded once (and their mirror images,
for augmentation), the latents are cached in the run folder, multiplied by the autoencoder's
scale factor so they have unit variance, and the UNet learns to denoise them (LDM eq. 2).
Sampling runs DDPM or DDIM in latent space and decodes once at the end.

A conditional model (Sec. 3.3) adds a condition y: tokens from an encoder tau_theta
(:mod:`minildm.conditioning`) that the UNet reads by cross-attention, sampled with
classifier-free guidance; or an image (:mod:`minildm.image_conditions`) concatenated to the
UNet's input, for inpainting and super-resolution.

A run folder written by :func:`train_ldm` holds everything :func:`load_ldm` needs: the
configuration (``config.json``) and, in ``weights.safetensors``, the EMA weights of the UNet
(and of the condition encoder) together with a copy of the autoencoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from minildm import checkpoint as ckpt
from minildm.autoencoder import Autoencoder, AutoencoderConfig, PixelSpace, build_autoencoder
from minildm.autoencoder_training import load_autoencoder
from minildm.conditioning import CONCAT_KINDS, TOKEN_KINDS, ConditioningConfig, build_encoder, pad
from minildm.config import MinildmError, Profile
from minildm.diffusion import Diffusion, Trajectory
from minildm.image_conditions import (downsample, inpainting_condition, paste, random_masks,
                                      superres_condition)
from minildm.images import float_to_uint8, uint8_to_float
from minildm.metrics import InceptionFeatures, feature_distances
from minildm.train import Trainer, TrainConfig
from minildm.unet import UNet, UNetConfig

SAMPLERS = ("ddim", "ddpm")
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale for token-conditioned sampling (figures, CLI)


@dataclass
class DiffusionConfig:
    """The noise schedule and what the UNet predicts (see :class:`minildm.diffusion.Diffusion`)."""

    schedule: str = "linear"
    timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction: str = "eps"
    min_snr_gamma: float | None = None

    def build(self) -> Diffusion:
        return Diffusion(self.schedule, self.timesteps, self.beta_start, self.beta_end,
                         self.prediction, self.min_snr_gamma)


@dataclass
class LDMConfig:
    """Everything that defines a latent diffusion model, saved as the run's ``config.json``.

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

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "diffusion": vars(self.diffusion).copy(),
                "autoencoder": self.autoencoder.to_dict(), "use_scale_factor": self.use_scale_factor,
                "conditioning": self.conditioning.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> LDMConfig:
        return cls(UNetConfig.from_dict(values["unet"]), DiffusionConfig(**values["diffusion"]),
                   AutoencoderConfig.from_dict(values["autoencoder"]), values["use_scale_factor"],
                   ConditioningConfig(**values.get("conditioning", {})))


class LatentDiffusion(nn.Module):
    """Autoencoder (frozen) + scale factor + UNet (+ condition encoder tau_theta);
    ``sample`` turns noise (and a condition) into images."""

    def __init__(self, config: LDMConfig, autoencoder: Autoencoder | None = None):
        super().__init__()
        self.config = config
        self.autoencoder = (autoencoder or build_autoencoder(config.autoencoder)).eval().requires_grad_(False)
        self.unet = UNet(config.unet)
        self.encoder = build_encoder(config.conditioning)
        self.diffusion = config.diffusion.build()

    @property
    def kind(self) -> str:
        """What the model is conditioned on: none, class, attributes, text, inpaint, superres."""
        return self.config.conditioning.kind

    def networks(self) -> nn.ModuleDict:
        """The trained networks: the UNet, and the condition encoder if there is one."""
        return nn.ModuleDict({"unet": self.unet, **({"encoder": self.encoder} if self.encoder else {})})

    @property
    def scale(self) -> float:
        """The factor latents are multiplied by before diffusion (1/std of the latents)."""
        return self.autoencoder.scale_factor.item() if self.config.use_scale_factor else 1.0

    @property
    def device(self) -> torch.device:
        return self.autoencoder.scale_factor.device

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape(resolution)

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Images (N, 3, R, R) in [-1, 1] -> scaled latents (N, c, R/f, R/f), in batches."""
        latents = [self.autoencoder.encode(batch.to(self.device)) for batch in images.split(batch_size)]
        return torch.cat(latents) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return self.autoencoder.decode(latents / self.scale).clamp(-1, 1)

    def denoise(self, z_t: Tensor, t: Tensor) -> Tensor:
        """The UNet's output for noisy latents at time steps ``t``, without a condition."""
        return self.denoiser(batch_size=len(z_t))(z_t, t)

    def denoiser(self, condition: Tensor | None = None, guidance: float = 1.0, batch_size: int | None = None,
                 networks: nn.ModuleDict | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The function ``(z_t, t) -> UNet output`` that the samplers call.

        ``condition``: class indices, attributes or caption ids for a token model (None: the
        null condition, i.e. unconditional, for ``batch_size`` samples); the extra input
        channels (B, k, h, w) for a concat model. ``guidance`` s > 1 is classifier-free
        guidance (Ho & Salimans 2022): ``out(null) + s * (out(y) - out(null))``, both halves in
        one batch. For eps this is their eq. 6; for x0 and v it is the same combination,
        since each is a fixed linear function of eps and z_t.
        ``networks``: other weights of the same model (the trainer's EMA copies).
        """
        networks = networks if networks is not None else self.networks()
        unet = networks["unet"]
        if self.kind == "none":
            return unet
        if condition is None and self.kind in CONCAT_KINDS:
            raise ValueError(f"this model does {self.kind}: it needs its input image as the condition")
        if self.kind in CONCAT_KINDS:
            return lambda z_t, t: unet(torch.cat([z_t, condition], dim=1), t)
        encoder = networks["encoder"]
        tokens, mask = encoder(condition) if condition is not None else encoder.null(batch_size)
        if guidance == 1.0:
            return lambda z_t, t: unet(z_t, t, tokens, mask)
        null_tokens, null_mask = pad(*encoder.null(len(tokens)), tokens.shape[1])
        both_tokens, both_mask = torch.cat([tokens, null_tokens]), torch.cat([mask, null_mask])

        def guided(z_t: Tensor, t: Tensor) -> Tensor:
            conditional, unconditional = unet(torch.cat([z_t, z_t]), torch.cat([t, t]), both_tokens,
                                              both_mask).chunk(2)
            return unconditional + guidance * (conditional - unconditional)

        return guided

    def loss(self, latents: Tensor, generator: torch.Generator | None = None,
             condition: Tensor | None = None) -> Tensor:
        """LDM eq. 2 on a batch of scaled latents (and their conditions); a token condition is
        replaced by the null sequence with probability ``drop_probability`` (for guidance)."""
        if self.kind not in TOKEN_KINDS:
            return self.diffusion.loss(self.denoiser(condition), latents, generator)
        drop = torch.rand(len(latents), generator=generator) < self.config.conditioning.drop_probability
        tokens, mask = self.encoder(condition, drop.to(latents.device))
        return self.diffusion.loss(lambda z_t, t: self.unet(z_t, t, tokens, mask), latents, generator)

    @torch.no_grad()
    def sample(self, n: int, resolution: int, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
               generator: torch.Generator | None = None, noise: Tensor | None = None,
               return_trajectory: bool = False, progress: bool = False, condition: Tensor | None = None,
               guidance: float = 1.0) -> Tensor | tuple[Tensor, Trajectory]:
        """``n`` images (n, 3, R, R) in [-1, 1]: noise -> DDIM/DDPM in latent space -> decoder.

        ``noise`` fixes the starting latents (n, c, R/f, R/f); otherwise they are drawn with
        ``generator``. With ``return_trajectory``, also the sampler's latent trajectory.
        ``condition`` (n rows) and ``guidance``: see :meth:`denoiser`.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if condition is not None and len(condition) != n:
            raise ValueError(f"{len(condition)} conditions for {n} samples")
        if noise is None:
            noise = torch.randn((n, *self.latent_shape(resolution)), generator=generator)
        noise = noise.to(self.device)
        was_training = self.unet.training
        self.networks().eval()
        denoise = self.denoiser(None if condition is None else condition.to(self.device), guidance, n)
        if sampler == "ddim":
            result = self.diffusion.ddim_sample(denoise, noise, steps, eta, generator=generator,
                                                return_trajectory=return_trajectory, progress=progress)
        else:
            result = self.diffusion.ddpm_sample(denoise, noise, generator=generator,
                                                return_trajectory=return_trajectory, progress=progress)
        self.networks().train(was_training)
        if return_trajectory:
            latents, trajectory = result
            return self.decode(latents), trajectory
        return self.decode(result)

    def inpainting_condition(self, images: Tensor, masks: Tensor) -> Tensor:
        """Images (B, 3, R, R) in [-1, 1] and masks (B, 1, R, R), 1 = fill -> the UNet's
        extra input (B, c + 1, R/f, R/f)."""
        return inpainting_condition(self.encode, images.to(self.device), masks.to(self.device))

    @torch.no_grad()
    def inpaint(self, images: Tensor, masks: Tensor, steps: int = 50, generator: torch.Generator | None = None,
                keep_known: bool = True) -> Tensor:
        """Fill the masked regions (masks (B, 1, R, R), 1 = fill) of images in [-1, 1]. With
        ``keep_known`` the known pixels are pasted back: the decoder reproduces them only up
        to the autoencoder's error."""
        if self.kind != "inpaint":
            raise ValueError(f"this model does {self.kind}, not inpainting")
        condition = self.inpainting_condition(images, masks)
        generated = self.sample(len(images), images.shape[-1], "ddim", steps, generator=generator,
                                condition=condition).cpu()
        return paste(generated, images.cpu(), masks.cpu()) if keep_known else generated

    @torch.no_grad()
    def upscale(self, low_resolution: Tensor, steps: int = 50, generator: torch.Generator | None = None) -> Tensor:
        """Super-resolution: images (B, 3, r, r) in [-1, 1] -> (B, 3, r * factor, r * factor)."""
        if self.kind != "superres":
            raise ValueError(f"this model does {self.kind}, not super-resolution")
        resolution = low_resolution.shape[-1] * self.config.conditioning.superres_factor
        condition = superres_condition(low_resolution.to(self.device), self.latent_shape(resolution)[1:])
        return self.sample(len(low_resolution), resolution, "ddim", steps, generator=generator,
                           condition=condition).cpu()


def ldm_config(profile: Profile, autoencoder: Autoencoder, use_scale_factor: bool = True,
               prediction: str | None = None, conditioning: ConditioningConfig | None = None) -> LDMConfig:
    """The profile's UNet on the latents of ``autoencoder``; ``prediction`` overrides the
    profile's target (eps, x0 or v). Token conditioning adds cross-attention, concat
    conditioning input channels (c + 1 for inpainting, 3 for super-resolution)."""
    preset, conditioning = profile.diffusion, conditioning or ConditioningConfig()
    channels = autoencoder.config.latent_channels
    extra = {"inpaint": channels + 1, "superres": 3}.get(conditioning.kind, 0)
    context = conditioning.channels if conditioning.kind in TOKEN_KINDS else None
    unet = UNetConfig(in_channels=channels + extra, out_channels=channels, base_channels=preset.base_channels,
                      channel_mult=preset.channel_mult, res_blocks=preset.res_blocks,
                      attention_levels=preset.cross_attention_levels if context else preset.attention_levels,
                      context_channels=context)
    return LDMConfig(unet, DiffusionConfig(prediction=prediction or preset.prediction), autoencoder.config,
                     use_scale_factor, conditioning)


def cached_latents(run_dir: Path, model: LatentDiffusion, pixels: Tensor) -> Tensor:
    """Scaled latents of the images and of their mirror images (2N, c, h, w), encoded once
    and kept in the run folder as ``latents.safetensors``."""
    path = run_dir / "latents.safetensors"
    if path.exists():
        tensors, metadata = ckpt.load(path)
        if metadata.get("n_images") == len(pixels) and metadata.get("scale") == model.scale:
            return tensors["latents"]
    images = uint8_to_float(pixels)  # (N, 3, R, R)
    latents = model.encode(torch.cat([images, images.flip(-1)])).cpu()  # (2N, c, h, w)
    ckpt.save_atomic({"latents": latents}, path, {"n_images": len(pixels), "scale": model.scale})
    return latents


def training_conditions(run_dir: Path, model: LatentDiffusion, pixels: Tensor, conditions: Tensor | None,
                        seed: int = 0) -> Tensor | None:
    """The condition of each row of :func:`cached_latents` (images, then mirror images).

    Token conditions (N, ...) are repeated for the mirror images. Inpainting draws one random
    mask per row and encodes the masked images, super-resolution downsamples the images;
    both are kept in the run folder as ``conditions.safetensors``.
    """
    if model.kind == "none":
        return None
    if model.kind in TOKEN_KINDS:
        if conditions is None or len(conditions) != len(pixels):
            raise MinildmError(f"a {model.kind}-conditioned model needs one condition per training image")
        return torch.cat([conditions, conditions])
    path = run_dir / "conditions.safetensors"
    if path.exists():
        tensors, metadata = ckpt.load(path)
        if metadata.get("n_images") == len(pixels) and metadata.get("kind") == model.kind:
            return tensors["conditions"]
    images = uint8_to_float(pixels)
    images = torch.cat([images, images.flip(-1)])  # (2N, 3, R, R)
    if model.kind == "inpaint":
        masks = random_masks(len(images), images.shape[-1], torch.Generator().manual_seed(seed))
        result = torch.cat([model.inpainting_condition(batch, mask).cpu()
                            for batch, mask in zip(images.split(256), masks.split(256))])
    else:
        low = downsample(images, model.config.conditioning.superres_factor)
        result = superres_condition(low, model.latent_shape(images.shape[-1])[1:])
    ckpt.save_atomic({"conditions": result}, path, {"n_images": len(pixels), "kind": model.kind})
    return result


def train_ldm(run_dir: str | Path, autoencoder_dir: str | Path | None, pixels: Tensor, profile: Profile,
              steps: int | None = None, seed: int = 0, use_scale_factor: bool = True,
              prediction: str | None = None, data_description: dict | None = None,
              progress: bool = True, conditioning: ConditioningConfig | None = None,
              conditions: Tensor | None = None) -> LatentDiffusion:
    """Train (or resume) a UNet on the latents of uint8 images (N, 3, R, R); returns the model
    with its EMA weights loaded, ready to sample. ``autoencoder_dir`` None trains on the
    pixels themselves (:class:`minildm.autoencoder.PixelSpace`, the paper's LDM-1).

    ``conditioning`` makes a conditional model; token kinds need ``conditions``, one per
    image (:func:`minildm.conditioning.condition_tensor`), concat kinds make theirs from the
    images. AdamW with a short warm-up and a cosine decay; EMA of the weights for sampling.
    """
    run_dir, preset = Path(run_dir), profile.diffusion
    device = torch.device(profile.device)
    autoencoder = PixelSpace() if autoencoder_dir is None else load_autoencoder(autoencoder_dir, device)
    torch.manual_seed(seed)
    config = ldm_config(profile, autoencoder, use_scale_factor, prediction, conditioning)
    model = LatentDiffusion(config, autoencoder).to(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"latents": cached_latents(run_dir, model, pixels)}
    train_conditions = training_conditions(run_dir, model, pixels, conditions, seed)
    if train_conditions is not None:
        data["conditions"] = train_conditions
    networks = model.networks()
    optimizer = torch.optim.AdamW(networks.parameters(), lr=preset.learning_rate, weight_decay=0.0)

    def loss_fn(batch, step):
        loss = model.loss(batch["latents"], condition=batch.get("conditions"))
        return {"networks": loss}, {"loss": loss.item()}

    figure_noise = torch.randn((16, *model.latent_shape(pixels.shape[-1])),
                               generator=torch.Generator().manual_seed(seed)).to(device)
    figure_conditions = None if train_conditions is None else train_conditions[:16].to(device)

    def figure_fn(modules, step):
        averaged = nn.ModuleDict({name: modules[name] for name in networks})
        denoise = model.denoiser(figure_conditions, DEFAULT_GUIDANCE if model.kind in TOKEN_KINDS else 1.0,
                                 len(figure_noise), averaged)
        return model.decode(model.diffusion.ddim_sample(denoise, figure_noise, steps=25))

    steps = steps or preset.steps
    train_config = TrainConfig(steps=steps, batch_size=preset.batch_size, ema_decay=preset.ema_decay, seed=seed,
                               warmup_steps=min(100, steps // 10), cosine_decay=True,
                               checkpoint_every=max(1, steps // 5), figure_every=max(1, steps // 5))
    run_config = {"stage": "ldm", "model": model.config.to_dict(), "learning_rate": preset.learning_rate,
                  "autoencoder_dir": autoencoder_dir and str(autoencoder_dir), "data": data_description or {}}
    trainer = Trainer(run_dir, {**networks, "autoencoder": model.autoencoder}, {"networks": optimizer},
                      loss_fn, data, train_config, run_config, ema_of=list(networks), figure_fn=figure_fn,
                      progress=progress)
    trainer.fit()
    for name, network in networks.items():
        network.load_state_dict(trainer.sampling_module(name).state_dict())
    return model.eval()


def load_ldm(run_dir: str | Path, device: str | torch.device = "cpu") -> LatentDiffusion:
    """The model of a run folder written by :func:`train_ldm`, with its EMA weights."""
    run_dir = Path(run_dir)
    run_config = ckpt.read_run_config(run_dir, "ldm", "a latent diffusion model")
    try:
        model = LatentDiffusion(LDMConfig.from_dict(run_config["model"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ckpt.CheckpointError(f"{run_dir / 'config.json'} does not describe a model this version can build: "
                                   f"{error}") from None
    weights_path = run_dir / "weights.safetensors"
    tensors, _ = ckpt.load(weights_path)
    for name, network in model.networks().items():
        ckpt.load_weights(network, ckpt.strip_prefix(name, tensors), str(weights_path))
    ckpt.load_weights(model.autoencoder, ckpt.strip_prefix("autoencoder", tensors), str(weights_path))
    return model.to(device).eval()


@torch.no_grad()
def evaluate_ldm(model: LatentDiffusion, reference: Tensor, n_samples: int | None = None, steps: int = 50,
                 generator: torch.Generator | None = None, features=None, batch_size: int = 250,
                 extra_features: dict | None = None) -> dict:
    """Sample quality against uint8 reference images (N, 3, R, R): FID and KID (with its std
    over subsets) on Inception features, the sample counts and the sampling speed.

    ``features``: a feature extractor (uint8 images -> (N, D)); default the FID Inception.
    ``extra_features``: more extractors by name (e.g. ``{"toyface": ToyFaceFeatures(judge)}``),
    scored on the same samples and reported as ``{name}_fid``, ``{name}_kid``, ...
    """
    features = features or InceptionFeatures(model.device)
    n_samples = n_samples or len(reference)
    resolution = reference.shape[-1]
    started = time.perf_counter()
    samples = torch.cat([float_to_uint8(model.sample(len(chunk), resolution, "ddim", steps, generator=generator).cpu())
                         for chunk in torch.arange(n_samples).split(batch_size)])
    seconds = time.perf_counter() - started
    results = {**feature_distances(features(reference), features(samples)), "n_samples": n_samples,
               "n_reference": len(reference), "sampler": f"DDIM {steps} steps, eta 0",
               "features": getattr(features, "description", type(features).__name__),
               "sample_images_per_s": round(n_samples / seconds, 1)}
    for name, extractor in (extra_features or {}).items():
        distances = feature_distances(extractor(reference), extractor(samples))
        results.update({f"{name}_{key}": value for key, value in distances.items()})
        results[f"{name}_features"] = extractor.description
    return results
