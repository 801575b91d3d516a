"""The latent diffusion model: a frozen autoencoder, a scale factor, and a UNet between them
(Rombach et al. 2022, Sec. 3.2; stage 2 of the course).

Training never touches pixels: the training images are encoded once (and their mirror images,
for augmentation), the latents are cached in the run folder, multiplied by the autoencoder's
scale factor so they have unit variance, and the UNet learns to denoise them (LDM eq. 2).
Sampling runs DDPM or DDIM in latent space and decodes once at the end.

A run folder written by :func:`train_ldm` holds everything :func:`load_ldm` needs: the
configuration (``config.json``) and, in ``weights.safetensors``, the UNet's EMA weights
together with a copy of the autoencoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from minildm import checkpoint as ckpt
from minildm.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder
from minildm.autoencoder_training import load_autoencoder
from minildm.config import Profile
from minildm.diffusion import Diffusion, Trajectory
from minildm.images import float_to_uint8, uint8_to_float
from minildm.metrics import InceptionFeatures, frechet_distance, kernel_distance
from minildm.train import Trainer, TrainConfig
from minildm.unet import UNet, UNetConfig

SAMPLERS = ("ddim", "ddpm")


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
    """

    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    use_scale_factor: bool = True

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "diffusion": vars(self.diffusion).copy(),
                "autoencoder": self.autoencoder.to_dict(), "use_scale_factor": self.use_scale_factor}

    @classmethod
    def from_dict(cls, values: dict) -> LDMConfig:
        return cls(UNetConfig.from_dict(values["unet"]), DiffusionConfig(**values["diffusion"]),
                   AutoencoderConfig.from_dict(values["autoencoder"]), values["use_scale_factor"])


class LatentDiffusion(nn.Module):
    """Autoencoder (frozen) + scale factor + UNet; ``sample`` turns noise into images."""

    def __init__(self, config: LDMConfig, autoencoder: Autoencoder | None = None):
        super().__init__()
        self.config = config
        self.autoencoder = (autoencoder or build_autoencoder(config.autoencoder)).eval().requires_grad_(False)
        self.unet = UNet(config.unet)
        self.diffusion = config.diffusion.build()

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
        """The UNet's output for noisy latents at time steps ``t``."""
        return self.unet(z_t, t)

    def loss(self, latents: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """LDM eq. 2 on a batch of scaled latents."""
        return self.diffusion.loss(self.denoise, latents, generator)

    @torch.no_grad()
    def sample(self, n: int, resolution: int, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
               generator: torch.Generator | None = None, noise: Tensor | None = None,
               return_trajectory: bool = False, progress: bool = False) -> Tensor | tuple[Tensor, Trajectory]:
        """``n`` images (n, 3, R, R) in [-1, 1]: noise -> DDIM/DDPM in latent space -> decoder.

        ``noise`` fixes the starting latents (n, c, R/f, R/f); otherwise they are drawn with
        ``generator``. With ``return_trajectory``, also the sampler's latent trajectory.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if noise is None:
            noise = torch.randn((n, *self.latent_shape(resolution)), generator=generator)
        noise = noise.to(self.device)
        was_training = self.unet.training
        self.unet.eval()
        if sampler == "ddim":
            result = self.diffusion.ddim_sample(self.denoise, noise, steps, eta, generator=generator,
                                                return_trajectory=return_trajectory, progress=progress)
        else:
            result = self.diffusion.ddpm_sample(self.denoise, noise, generator=generator,
                                                return_trajectory=return_trajectory, progress=progress)
        self.unet.train(was_training)
        if return_trajectory:
            latents, trajectory = result
            return self.decode(latents), trajectory
        return self.decode(result)


def ldm_config(profile: Profile, autoencoder: Autoencoder, use_scale_factor: bool = True,
               prediction: str | None = None) -> LDMConfig:
    """The profile's UNet on the latents of ``autoencoder``; ``prediction`` overrides the
    profile's target (eps, x0 or v)."""
    preset = profile.diffusion
    channels = autoencoder.config.latent_channels
    unet = UNetConfig(in_channels=channels, out_channels=channels, base_channels=preset.base_channels,
                      channel_mult=preset.channel_mult, res_blocks=preset.res_blocks,
                      attention_levels=preset.attention_levels)
    return LDMConfig(unet, DiffusionConfig(prediction=prediction or preset.prediction), autoencoder.config,
                     use_scale_factor)


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


def train_ldm(run_dir: str | Path, autoencoder_dir: str | Path, pixels: Tensor, profile: Profile,
              steps: int | None = None, seed: int = 0, use_scale_factor: bool = True,
              prediction: str | None = None, data_description: dict | None = None,
              progress: bool = True) -> LatentDiffusion:
    """Train (or resume) a UNet on the latents of uint8 images (N, 3, R, R); returns the model
    with its EMA weights loaded, ready to sample.

    AdamW with a short warm-up and a cosine decay; EMA of the UNet's weights for sampling.
    """
    run_dir, preset = Path(run_dir), profile.diffusion
    device = torch.device(profile.device)
    autoencoder = load_autoencoder(autoencoder_dir, device)
    torch.manual_seed(seed)
    model = LatentDiffusion(ldm_config(profile, autoencoder, use_scale_factor, prediction), autoencoder).to(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    latents = cached_latents(run_dir, model, pixels)
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=preset.learning_rate, weight_decay=0.0)

    def loss_fn(batch, step):
        loss = model.loss(batch["latents"])
        return {"unet": loss}, {"loss": loss.item()}

    figure_noise = torch.randn((16, *model.latent_shape(pixels.shape[-1])),
                               generator=torch.Generator().manual_seed(seed)).to(device)

    def figure_fn(unet, step):
        latents = model.diffusion.ddim_sample(lambda z_t, t: unet(z_t, t), figure_noise, steps=25)
        return model.decode(latents)

    steps = steps or preset.steps
    train_config = TrainConfig(steps=steps, batch_size=preset.batch_size, ema_decay=preset.ema_decay, seed=seed,
                               warmup_steps=min(100, steps // 10), cosine_decay=True,
                               checkpoint_every=max(1, steps // 5), figure_every=max(1, steps // 5))
    run_config = {"stage": "ldm", "model": model.config.to_dict(), "learning_rate": preset.learning_rate,
                  "autoencoder_dir": str(autoencoder_dir), "data": data_description or {}}
    trainer = Trainer(run_dir, {"unet": model.unet, "autoencoder": model.autoencoder}, {"unet": optimizer},
                      loss_fn, {"latents": latents}, train_config, run_config, ema_of="unet",
                      figure_fn=figure_fn, progress=progress)
    trainer.fit()
    model.unet.load_state_dict(trainer.sampling_module("unet").state_dict())
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
    ckpt.load_weights(model.unet, ckpt.strip_prefix("unet", tensors), str(weights_path))
    ckpt.load_weights(model.autoencoder, ckpt.strip_prefix("autoencoder", tensors), str(weights_path))
    return model.to(device).eval()


@torch.no_grad()
def evaluate_ldm(model: LatentDiffusion, reference: Tensor, n_samples: int | None = None, steps: int = 50,
                 generator: torch.Generator | None = None, features=None, batch_size: int = 250) -> dict:
    """Sample quality against uint8 reference images (N, 3, R, R): FID and KID (with its std
    over subsets) on Inception features, the sample counts and the sampling speed.

    ``features``: a feature extractor (uint8 images -> (N, D)); default the FID Inception.
    """
    features = features or InceptionFeatures(model.device)
    n_samples = n_samples or len(reference)
    resolution = reference.shape[-1]
    started = time.perf_counter()
    samples = torch.cat([float_to_uint8(model.sample(len(chunk), resolution, "ddim", steps, generator=generator).cpu())
                         for chunk in torch.arange(n_samples).split(batch_size)])
    seconds = time.perf_counter() - started
    real, fake = features(reference), features(samples)
    # subsets of half the smaller set, so that their spread says how much KID would vary
    kid, kid_std = kernel_distance(real, fake, subset_size=min(1000, n_samples, len(reference)) // 2)
    return {"fid": round(frechet_distance(real, fake), 3), "kid": round(kid, 5), "kid_std": round(kid_std, 5),
            "n_samples": n_samples, "n_reference": len(reference), "sampler": f"DDIM {steps} steps, eta 0",
            "features": getattr(features, "description", type(features).__name__),
            "sample_images_per_s": round(n_samples / seconds, 1)}
