"""Stage 2 of a latent diffusion model: train the UNet on cached latents, and load it back.

Training never touches pixels: the training images are encoded once (and their mirror images,
for augmentation), and the latents are cached in the run folder, already multiplied by the
autoencoder's scale factor (:func:`cached_latents`). The paper's own code encodes every batch
instead; encoding once is only a saving for small runs, where the autoencoder costs as much as
the UNet. A conditional model's conditions are made and cached the same way
(:func:`training_conditions`).

A run folder written by :func:`train_ldm` holds everything :func:`load_ldm` needs: the
configuration (``config.json``) and, in ``weights.safetensors``, the EMA weights of the UNet
(and of the condition encoder) together with a copy of the autoencoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from minildm import checkpoint as ckpt
from minildm import distributed
from minildm.autoencoder import PixelSpace
from minildm.autoencoder_training import load_autoencoder
from minildm.conditioning import TOKEN_KINDS, ConditioningConfig, mirror_layout
from minildm.config import MinildmError, Profile
from minildm.data.images import uint8_to_float
from minildm.image_conditions import downsample, random_masks, semantic_condition, superres_condition
from minildm.ldm import DEFAULT_GUIDANCE, LatentDiffusion, LDMConfig
from minildm.nn import set_gradient_checkpointing
from minildm.recipes import ldm_config
from minildm.sampling import ddim_sample
from minildm.trainer import TrainConfig, Trainer

RUN_CONFIG_KEYS = ("stage", "model", "learning_rate", "autoencoder_dir", "data")  # an LDM run's config.json



def cached_latents(run_dir: Path, model: LatentDiffusion, pixels: Tensor) -> Tensor:
    """Scaled latents of the images and of their mirror images (2N, c, h, w), encoded once
    and kept in the run folder as ``latents.safetensors``."""
    path = run_dir / "latents.safetensors"
    tensors, metadata = _read_cache(path)
    if metadata.get("n_images") == len(pixels) and metadata.get("scale_factor") == model.scale_factor:
        return tensors["latents"]
    world = distributed.current()  # under torchrun each process encodes its part
    rows = range(2 * len(pixels))[distributed.my_rows(2 * len(pixels), world)]
    part = torch.cat([model.encode(images).cpu() for images in mirrored_batches(pixels, rows)])
    latents = distributed.gather_rows(part, 2 * len(pixels), world)  # (2N, c, h, w) on every process
    if world.is_main:
        ckpt.save_atomic({"latents": latents}, path, {"n_images": len(pixels), "scale_factor": model.scale_factor})
    return latents


def mirrored_batches(pixels: Tensor, rows: range, batch_size: int = 256) -> Iterator[Tensor]:
    """Rows ``rows`` of the images followed by their mirror images (2N rows in all), as float
    batches (B, 3, R, R) in [-1, 1]. Only one batch is ever converted to float: a large data
    set stays uint8, and memory-mapped (:mod:`minildm.data.cache`)."""
    for start in range(rows.start, rows.stop, batch_size):
        index = torch.arange(start, min(start + batch_size, rows.stop))  # (B,)
        images = uint8_to_float(pixels[index % len(pixels)])  # (B, 3, R, R)
        mirrored = index >= len(pixels)
        images[mirrored] = images[mirrored].flip(-1)
        yield images


def _read_cache(path: Path) -> tuple[dict[str, Tensor], dict]:
    """A cache file of the run folder, or nothing when it is missing or damaged (then it is
    computed again)."""
    try:
        return ckpt.load(path) if path.exists() else ({}, {})
    except ckpt.CheckpointError:
        return {}, {}


def training_conditions(run_dir: Path, model: LatentDiffusion, pixels: Tensor, conditions: Tensor | None,
                        seed: int = 0) -> Tensor | None:
    """The condition of each row of :func:`cached_latents` (images, then mirror images).

    Token conditions (N, ...) are repeated for the mirror images (a layout mirrored with
    them); part maps (N, R, R) of a semantic model become the UNet's extra input, mirrored
    for the mirror images. Inpainting draws one random mask per row and encodes the masked
    images, super-resolution downsamples the images; both are kept in the run folder as
    ``conditions.safetensors``.
    """
    if model.kind == "none":
        return None
    if model.kind in (*TOKEN_KINDS, "semantic"):
        if conditions is None or len(conditions) != len(pixels):
            raise MinildmError(f"a {model.kind}-conditioned model needs one condition per training image")
        if model.kind == "semantic":
            return semantic_conditions(model, conditions, pixels.shape[-1])
        return torch.cat([conditions, mirror_layout(conditions) if model.kind == "layout" else conditions])
    path = run_dir / "conditions.safetensors"
    tensors, metadata = _read_cache(path)
    if metadata.get("n_images") == len(pixels) and metadata.get("kind") == model.kind:
        return tensors["conditions"]
    generator, resolution = torch.Generator().manual_seed(seed), pixels.shape[-1]
    parts = []
    for images in mirrored_batches(pixels, range(2 * len(pixels))):
        if model.kind == "inpaint":
            parts.append(model.inpainting_condition(images, random_masks(len(images), resolution, generator)).cpu())
        else:
            low = downsample(images, model.config.conditioning.superres_factor)
            parts.append(superres_condition(low, model.latent_shape(resolution)[1:]))
    result = torch.cat(parts)  # (2N, ...)
    ckpt.save_atomic({"conditions": result}, path, {"n_images": len(pixels), "kind": model.kind})
    return result


def semantic_conditions(model: LatentDiffusion, part_maps: Tensor, resolution: int) -> Tensor:
    """Part maps (N, R, R) -> the extra input of the images and of their mirror images (2N, P, h, w)."""
    if part_maps.shape[1:] != (resolution, resolution):
        raise MinildmError(f"part maps of shape {tuple(part_maps.shape[1:])} for {resolution} px images")
    parts, size = len(model.config.conditioning.class_names), model.latent_shape(resolution)[1:]
    return torch.cat([semantic_condition(part_maps, parts, size), semantic_condition(part_maps.flip(-1), parts, size)])


@dataclass
class LDMTraining:
    """How :func:`train_ldm` trains, and the choices it makes in the profile's model.

    Attributes:
        profile: the device, and the UNet's sizes, learning rate, batch size, steps, EMA decay
            and target of ``profile.ldm``.
        steps: optimiser steps (None: the profile's).
        seed: seeds the weights, the batches, the noise and the inpainting masks.
        prediction: what the UNet predicts, eps, x0 or v (None: the profile's).
        use_scale_factor: multiply the latents by the autoencoder's scale factor (see :class:`LDMConfig`).
        conditioning: makes a conditional model (None: unconditional).
        data_description: the images, recorded in ``config.json`` for the command line.
        progress: show a progress bar.
        accumulate: micro-batches whose gradients are averaged into one optimiser step.
        gradient_checkpointing: recompute the UNet's activations in the backward pass
            (:func:`minildm.nn.set_gradient_checkpointing`): less memory, the same weights, more
            time per step (README).
        precision: the forward passes' dtype, ``auto`` (bf16 where the device computes it
            natively), ``bf16`` or ``fp32`` (:func:`minildm.trainer.autocast_dtype`).
    """

    profile: Profile
    steps: int | None = None
    seed: int = 0
    prediction: str | None = None
    use_scale_factor: bool = True
    conditioning: ConditioningConfig | None = None
    data_description: dict | None = None
    progress: bool = True
    accumulate: int = 1
    gradient_checkpointing: bool = False
    precision: str = "auto"


def train_ldm(run_dir: str | Path, pixels: Tensor, *, autoencoder_dir: str | Path | None, training: LDMTraining,
              conditions: Tensor | None = None) -> LatentDiffusion:
    """Train (or resume) a UNet on the latents of uint8 images (N, 3, R, R); returns the model
    with its EMA weights loaded, ready to sample. ``autoencoder_dir`` None trains on the
    pixels themselves (:class:`minildm.autoencoder.PixelSpace`, the paper's LDM-1).

    The model is the profile's (:func:`minildm.recipes.ldm_config`) with the choices of
    ``training``; token kinds of conditioning need ``conditions``, one per image
    (:func:`minildm.recipes.condition_tensor`), concat kinds make theirs from the images.
    AdamW with a short warm-up and a cosine decay; EMA of the weights for sampling.
    """
    run_dir, preset, device = Path(run_dir), training.profile.ldm, torch.device(training.profile.device)
    autoencoder = PixelSpace() if autoencoder_dir is None else load_autoencoder(autoencoder_dir, device)
    torch.manual_seed(training.seed)
    config = ldm_config(training.profile, autoencoder, use_scale_factor=training.use_scale_factor,
                        prediction=training.prediction, conditioning=training.conditioning)
    model = LatentDiffusion(config, autoencoder).to(device)
    run_config = {"stage": "ldm", "model": model.config.to_dict(), "learning_rate": preset.learning_rate,
                  "autoencoder_dir": autoencoder_dir and str(autoencoder_dir), "data": training.data_description or {}}
    ckpt.write_run_config(run_dir, run_config)  # a folder of another run is refused before anything is written
    data = {"latents": cached_latents(run_dir, model, pixels)}
    train_conditions = training_conditions(run_dir, model, pixels, conditions, training.seed)
    if train_conditions is not None:
        data["conditions"] = train_conditions
    networks = model.networks()
    set_gradient_checkpointing(networks, training.gradient_checkpointing)
    optimizer = torch.optim.AdamW(networks.parameters(), lr=preset.learning_rate, weight_decay=0.0)

    def loss_fn(batch, step):
        loss = model.loss(batch["latents"], condition=batch.get("conditions"))
        return {"networks": loss}, {"loss": loss.item()}

    steps = training.steps or preset.steps
    train_config = TrainConfig(steps=steps, batch_size=preset.batch_size, accumulate=training.accumulate,
                               ema_decay=preset.ema_decay, seed=training.seed,
                               warmup_steps=min(100, steps // 10), cosine_decay=True, precision=training.precision,
                               checkpoint_every=max(1, steps // 5), figure_every=max(1, steps // 5))
    trainer = Trainer(run_dir, {**networks, "autoencoder": model.autoencoder}, optimizers={"networks": optimizer},
                      loss_fn=loss_fn, data=data, config=train_config, run_config=run_config, ema_of=list(networks),
                      figure_fn=sample_figure(model, networks, train_conditions, pixels.shape[-1], training.seed),
                      progress=training.progress)
    trainer.fit()
    for name, network in networks.items():
        network.load_state_dict(trainer.sampling_module(name).state_dict())
    return model.eval()


def sample_figure(model: LatentDiffusion, networks: nn.ModuleDict, conditions: Tensor | None, resolution: int,
                  seed: int):
    """The trainer's figure: 16 samples (DDIM, 25 steps) from fixed noise and the first 16
    training conditions, drawn with the weights the trainer hands over (its EMA copies)."""
    noise = torch.randn((16, *model.latent_shape(resolution)), generator=torch.Generator().manual_seed(seed))
    noise = noise.to(model.device)
    shown = None if conditions is None else conditions[:16].to(model.device)
    guidance = DEFAULT_GUIDANCE if model.kind in TOKEN_KINDS else 1.0

    def figure_fn(modules, step):
        averaged = nn.ModuleDict({name: modules[name] for name in networks})
        denoise = model.denoiser(shown, guidance, len(noise), averaged)
        return model.decode(ddim_sample(model.diffusion, denoise, noise, steps=25))

    return figure_fn


def load_ldm(run_dir: str | Path, device: str | torch.device = "cpu") -> LatentDiffusion:
    """The model of a run folder written by :func:`train_ldm`, with its EMA weights."""
    run_dir = Path(run_dir)
    run_config = ckpt.read_run_config(run_dir, "ldm", "a latent diffusion model", RUN_CONFIG_KEYS)
    try:
        model = LatentDiffusion(LDMConfig.from_dict(run_config["model"], "model"))
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as error:  # sizes no model can have
        raise ckpt.CheckpointError(f"{run_dir / 'config.json'} does not describe a model this version can build: "
                                   f"{error}") from None
    weights_path = run_dir / "weights.safetensors"
    tensors, _ = ckpt.load(weights_path)
    for name, network in model.networks().items():
        ckpt.load_weights(network, ckpt.strip_prefix(name, tensors), str(weights_path))
    ckpt.load_weights(model.autoencoder, ckpt.strip_prefix("autoencoder", tensors), str(weights_path))
    return model.to(device).eval()
