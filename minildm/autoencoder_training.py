"""Stage 1 of a latent diffusion model: train the autoencoder, and load it back.

The run folder this writes is everything later stages need: ``config.json`` (the
autoencoder's configuration, the loss, the perceptual network and the data it saw),
``weights.safetensors`` (with the latent scale factor measured on the training images) and
``figures/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from minildm import checkpoint as ckpt
from minildm import losses
from minildm.perceptual import PerceptualLoss
from minildm.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder, measure_scale_factor
from minildm.config import Profile
from minildm.data import random_flip
from minildm.data.images import uint8_to_float
from minildm.nn import set_gradient_checkpointing
from minildm.trainer import TrainConfig, Trainer

RUN_CONFIG_KEYS = ("stage", "autoencoder", "loss", "learning_rate", "data", "perceptual", "start_from")  # config.json


@dataclass
class AutoencoderTraining:
    """How :func:`train_autoencoder` trains, besides the autoencoder's configuration.

    Attributes:
        profile: the device, and the learning rate, batch size, steps, GAN start and L2 weight
            of ``profile.autoencoder``.
        steps: optimiser steps (None: the profile's).
        seed: seeds the weights, the batches and the random flips.
        perceptual: the LPIPS-style network (:func:`minildm.perceptual.perceptual_for`), or None to
            train without the perceptual term; ``config.json`` records which, so a run folder
            refuses to resume with another.
        data_description: the images, recorded in ``config.json`` for the command line.
        progress: show a progress bar.
        accumulate: micro-batches whose gradients are averaged into one optimiser step.
        gradient_checkpointing: recompute activations in the backward pass
            (:func:`minildm.nn.set_gradient_checkpointing`): less memory, the same weights, more
            time per step (README).
        precision: the forward passes' dtype, ``auto`` (bf16 where the device computes it
            natively), ``bf16`` or ``fp32`` (:func:`minildm.trainer.autocast_dtype`).
        start_from: a finished run folder whose autoencoder weights this run starts from
            (fine-tuning; the discriminator starts fresh).
        disc_start: the step at which the patch GAN switches on (None: the profile's).
        kl_weight: weight of the KL term (:class:`~minildm.losses.LossConfig`; the paper: 1e-6).
    """

    profile: Profile
    steps: int | None = None
    seed: int = 0
    perceptual: PerceptualLoss | None = None
    data_description: dict | None = None
    progress: bool = True
    accumulate: int = 1
    gradient_checkpointing: bool = False
    precision: str = "auto"
    start_from: str | Path | None = None
    disc_start: int | None = None
    kl_weight: float = losses.LossConfig.kl_weight  # one default, the objective's


def train_autoencoder(run_dir: str | Path, pixels: torch.Tensor, *, config: AutoencoderConfig,
                      training: AutoencoderTraining) -> Autoencoder:
    """Train (or resume) an autoencoder on uint8 images (N, 3, R, R); returns it with its
    scale factor set (KL: 1 / std of the latents; VQ: 1).

    The objective is the paper's (:class:`~minildm.losses.AutoencoderLoss`): L1 + perceptual
    distance under a learned variance, the KL or VQ term, and a patch GAN from
    ``training.disc_start`` on. Two Adam optimisers with betas (0.5, 0.9), as in the paper.
    """
    preset, device = training.profile.autoencoder, torch.device(training.profile.device)
    torch.manual_seed(training.seed)
    autoencoder = build_autoencoder(config).to(device)
    set_gradient_checkpointing(autoencoder, training.gradient_checkpointing)
    if training.start_from is not None:
        autoencoder.load_state_dict(load_autoencoder(training.start_from, device).state_dict())
        autoencoder.scale_factor.fill_(autoencoder.initial_scale_factor)  # measured again below, on the new weights
    disc_start = preset.disc_start if training.disc_start is None else training.disc_start
    loss_config = losses.LossConfig.from_autoencoder(config, disc_start=disc_start, l2_weight=preset.l2_weight,
                                                     kl_weight=training.kl_weight)
    objective = losses.AutoencoderLoss(loss_config, training.perceptual).to(device)
    optimizers = {
        "autoencoder": torch.optim.Adam([*autoencoder.parameters(), *objective.generator_parameters()],
                                        lr=preset.learning_rate, betas=(0.5, 0.9)),
        "discriminator": torch.optim.Adam(objective.discriminator_parameters(),
                                          lr=preset.learning_rate, betas=(0.5, 0.9)),
    }

    steps = training.steps or preset.steps
    train_config = TrainConfig(steps=steps, batch_size=preset.batch_size, accumulate=training.accumulate,
                               seed=training.seed, cosine_decay=True, precision=training.precision,
                               checkpoint_every=max(1, steps // 5),
                               figure_every=max(1, steps // 5))
    trainer = Trainer(run_dir, {"autoencoder": autoencoder, "loss": objective}, optimizers=optimizers,
                      loss_fn=training_losses(autoencoder, objective), data={"pixels": pixels}, config=train_config,
                      run_config=recorded_run_config(config, loss_config, training),
                      figure_fn=reconstruction_figure(uint8_to_float(pixels[:8]).to(device)),
                      progress=training.progress)
    trainer.fit()
    if not autoencoder.scale_factor_measured:  # KL only (VQ: 1); a finished run has it
        autoencoder.scale_factor.fill_(measure_scale_factor(autoencoder, uint8_to_float(pixels[:2048]).to(device)))
        trainer.save_checkpoint()
    autoencoder.eval()
    return autoencoder


def recorded_run_config(config: AutoencoderConfig, loss_config: losses.LossConfig,
                        training: AutoencoderTraining) -> dict:
    """What ``config.json`` records of a run (:data:`RUN_CONFIG_KEYS`): enough to rebuild the
    autoencoder and to refuse resuming the run with another configuration."""
    perceptual, start_from = training.perceptual, training.start_from
    return {"stage": "autoencoder", "autoencoder": config.to_dict(), "loss": loss_config.to_dict(),
            "learning_rate": training.profile.autoencoder.learning_rate, "data": training.data_description or {},
            "perceptual": perceptual.description if perceptual is not None else None,
            "start_from": str(start_from) if start_from is not None else None}


def training_losses(autoencoder: Autoencoder, objective: losses.AutoencoderLoss):
    """The trainer's loss function: a batch of uint8 images, flipped at random, gives the
    autoencoder's loss and, once the GAN is on, the discriminator's."""

    def loss_fn(batch, step):
        images = random_flip(uint8_to_float(batch["pixels"]))  # (B, 3, R, R) in [-1, 1]
        reconstruction, extras = autoencoder(images)
        loss, logs = objective.generator_loss(images, reconstruction, extras, step,
                                              autoencoder.last_layer_weight)
        step_losses = {"autoencoder": loss}
        if objective.gan_active(step):
            step_losses["discriminator"], disc_logs = objective.discriminator_loss(images, reconstruction, step)
            logs.update(disc_logs)
        return step_losses, logs

    return loss_fn


def reconstruction_figure(shown: torch.Tensor):
    """The trainer's figure: images (8, 3, R, R) in [-1, 1] above their reconstructions."""

    def figure_fn(modules, step):
        module = modules["autoencoder"]
        module.eval()
        reconstruction = module(shown)[0]
        module.train()
        return torch.cat([shown, reconstruction.clamp(-1, 1)])  # top row: input, bottom: output

    return figure_fn


def load_autoencoder(run_dir: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """The trained autoencoder of a run folder written by :func:`train_autoencoder`."""
    run_dir = Path(run_dir)
    run_config = ckpt.read_run_config(run_dir, "autoencoder", "an autoencoder", RUN_CONFIG_KEYS)
    try:
        losses.LossConfig.from_dict(run_config["loss"], "loss")
        autoencoder = build_autoencoder(AutoencoderConfig.from_dict(run_config["autoencoder"], "autoencoder"))
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as error:  # sizes no model can have
        raise ckpt.CheckpointError(f"{run_dir / 'config.json'} does not describe an autoencoder this version can "
                                   f"build: {error}") from None
    tensors, _ = ckpt.load(run_dir / "weights.safetensors")
    ckpt.load_weights(autoencoder, ckpt.strip_prefix("autoencoder", tensors), str(run_dir / "weights.safetensors"))
    return autoencoder.to(device).eval()
