"""Export an unconditional latent diffusion run as a diffusers ``LDMPipeline`` folder.

The folder (``pipeline.save_pretrained``, safetensors weights) is what
``DiffusionPipeline.from_pretrained(folder)`` loads::

    model_index.json   LDMPipeline and its three parts
    vqvae/             the autoencoder: AutoencoderKL (KL) or VQModel (VQ)
    unet/              UNet2DModel, the UNet's EMA weights (what minildm samples with)
    scheduler/         DDIMScheduler, set up as :func:`ddim_scheduler_config` explains

The latent scale factor: minildm's UNet works on latents multiplied by the autoencoder's scale
factor (LDM Sec. 4.3.2), and :meth:`minildm.ldm.LatentDiffusion.decode` divides by it before
decoding. ``LDMPipeline`` does the same with ``vqvae.config.scaling_factor`` (diffusers 0.42,
``pipeline_latent_diffusion_uncond.py``: ``latents / self.vqvae.config.scaling_factor``), so
the factor goes into the saved autoencoder configuration and no weight changes. It must be
written for VQ too: diffusers' default is Stable Diffusion's 0.18215, minildm's VQ models keep 1.

``pipeline(num_inference_steps=n)`` then returns the images minildm samples with
``ddim_sample(..., steps=n, spacing="leading")`` from the same noise (:func:`ddim_scheduler_config`).
Two remarks: diffusers' encoder pads its downsampling on the right and bottom only, so unless
the autoencoder does too (``downsample_padding="right_bottom"``, as an imported one does),
``vqvae.encode`` in diffusers is not minildm's encoder (:mod:`~minildm.interop.diffusers_autoencoder`;
sampling never encodes, and the decoder is the same); and ``LDMPipeline`` is typed for a
``VQModel``, so loading one with an ``AutoencoderKL`` logs "Expected types for vqvae" (it only
calls ``decode`` and reads ``scaling_factor``, which both classes have).
"""

from __future__ import annotations

from pathlib import Path

from minildm import checkpoint as ckpt
from minildm.diffusion import DiffusionConfig
from minildm.interop.diffusers_autoencoder import autoencoder_to_diffusers
from minildm.interop.diffusers_unet import check_unet_exportable, unet_to_diffusers
from minildm.interop.layers import InteropError, require_diffusers
from minildm.ldm import LatentDiffusion
from minildm.ldm_training import load_ldm

BETA_SCHEDULES = {"linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}  # minildm -> DDIMScheduler
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def ddim_scheduler_config(diffusion: DiffusionConfig) -> dict:
    """``DDIMScheduler`` keyword arguments for minildm's DDIM (:func:`minildm.sampling.ddim_sample`
    with ``spacing="leading"``).

    - Schedule: minildm's ``linear`` is LDM's, linear in sqrt(beta) (:func:`minildm.diffusion.make_betas`),
      which diffusers calls ``scaled_linear``; ``cosine`` (Nichol & Dhariwal 2021, betas
      capped at 0.999) is ``squaredcos_cap_v2``. Same T, beta_start and beta_end.
    - Prediction: eps, x0, v -> ``epsilon``, ``sample``, ``v_prediction``.
    - ``clip_sample=False``: minildm does not clamp the predicted clean latent (latents have
      no fixed range).
    - ``timestep_spacing="leading"``, ``steps_offset=0``: time steps (n-1) T//n, ..., T//n, 0,
      minildm's :func:`~minildm.sampling.ddim_timesteps` with ``spacing="leading"``.
      ``DDIMScheduler.step`` does not read the next time step from its list, it always jumps
      from t to t - T // n (diffusers issue #12633): only on this grid is that jump the next
      time step, so only here do the two chains agree at every step count n. On minildm's
      default ``linspace`` grid (from T-1, gaps (T-1)/(n-1) rounded) the next time step is up
      to one training step away from where diffusers lands, and the chains agree only at
      n = T; sample with ``spacing="leading"`` (``minildm sample --spacing leading``) to compare.
    - ``set_alpha_to_one=True``: the last step, from t = 0, lands on abar = 1, the clean
      latent, as minildm's last step does.
    """
    return dict(num_train_timesteps=diffusion.timesteps, beta_start=diffusion.beta_start,
                beta_end=diffusion.beta_end, beta_schedule=BETA_SCHEDULES[diffusion.schedule],
                prediction_type=PREDICTION_TYPES[diffusion.prediction], clip_sample=False, thresholding=False,
                timestep_spacing="leading", set_alpha_to_one=True, steps_offset=0)


def check_exportable(model: LatentDiffusion) -> None:
    """Raise an :class:`InteropError` naming what ``LDMPipeline`` cannot express, if anything."""
    if model.kind != "none":
        raise InteropError(f"a {model.kind}-conditioned model is not exported: diffusers' LDMPipeline samples "
                           f"unconditionally (no condition tokens, no extra input channels)")
    check_unet_exportable(model.config.unet)


def ldm_pipeline(model: LatentDiffusion, resolution: int):
    """The ``LDMPipeline`` that samples what ``model`` samples at ``resolution`` px."""
    diffusers = require_diffusers()
    check_exportable(model)
    try:
        _, latent_side, _ = model.latent_shape(resolution)
    except ValueError as error:
        raise InteropError(str(error)) from None
    if latent_side % model.unet.downsampling:
        raise InteropError(f"latents of {latent_side} px at {resolution} px do not suit the UNet, which halves "
                           f"them {model.unet.downsampling.bit_length() - 1} times")
    vqvae = autoencoder_to_diffusers(model.autoencoder, scaling_factor=model.scale_factor, sample_size=resolution)
    unet = unet_to_diffusers(model.unet, sample_size=latent_side)
    scheduler = diffusers.DDIMScheduler(**ddim_scheduler_config(model.config.diffusion))
    return diffusers.LDMPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler)


def export_ldm(run_dir: str | Path, out_dir: str | Path, *, resolution: int | None = None) -> Path:
    """Write the LDM run folder ``run_dir`` (:func:`minildm.ldm_training.load_ldm`: the EMA
    weights) as an ``LDMPipeline`` folder ``out_dir``. ``resolution``: the image side the
    pipeline samples at by default; None takes the one the run was trained at."""
    return save_pipeline(load_ldm(run_dir), run_dir, out_dir, resolution=resolution)


def save_pipeline(model: LatentDiffusion, run_dir: str | Path, out_dir: str | Path, *,
                  resolution: int | None = None) -> Path:
    """:func:`export_ldm` of ``model``, loaded from the run folder ``run_dir``."""
    if resolution is None:
        resolution = recorded_resolution(Path(run_dir))
    ldm_pipeline(model, resolution).save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def encoder_matches(model: LatentDiffusion) -> bool:
    """Whether the exported ``vqvae.encode`` computes what minildm's encoder computes: only when
    the autoencoder pads its downsampling the diffusers way (``downsample_padding="right_bottom"``);
    the decoder always does."""
    return model.autoencoder.config.downsample_padding == "right_bottom"


def recorded_resolution(run_dir: Path) -> int:
    """The image side a run folder records in its ``data``; a damaged ``data`` is refused as it is."""
    try:
        return ckpt.read_training_data(run_dir)["resolution"]
    except ckpt.UnrecordedData:
        raise InteropError(f"{run_dir} does not record the resolution it was trained at (a run trained from "
                           f"Python): give one") from None
