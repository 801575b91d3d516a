"""Import a diffusers ``AutoencoderKL`` as a minildm stage-1 run folder.

The run folder is the one :func:`minildm.autoencoder_training.train_autoencoder` writes, so
``load_autoencoder``, ``evaluate --ae`` and ``train-ldm --ae`` take it as they take a trained one:
``config.json`` (the :class:`~minildm.autoencoder.AutoencoderConfig`, the loss minildm would
train it with, no learning rate, perceptual network or start, and the images below as ``data``)
and ``weights.safetensors`` (the weights under ``autoencoder.``; its metadata names where they
came from).

The latent scale factor is measured, not copied: 1 / std of the latents of the training images,
as minildm measures its own (:func:`minildm.autoencoder.measure_scale_factor`; LDM Sec. 4.3.2).
diffusers' ``scaling_factor`` was measured on other images, and with a ``post_quant_conv``
minildm's latent is moved by a constant (:mod:`~minildm.interop.diffusers_autoencoder`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from minildm import checkpoint as ckpt
from minildm.autoencoder import Autoencoder, measure_scale_factor
from minildm.data.images import uint8_to_float
from minildm.data.sources import DataError, check_hub_reachable
from minildm.interop.diffusers_autoencoder import autoencoder_from_diffusers
from minildm.interop.layers import InteropError, require_diffusers
from minildm.losses import LossConfig

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
PIPELINE_SUBFOLDERS = ("vae", "vqvae")  # where a pipeline folder keeps its autoencoder
MEASURED_IMAGES = 2048  # images the scale factor is measured on, as train_autoencoder does


def read_diffusers_autoencoder(source: str):
    """The ``AutoencoderKL`` of a local folder (its own, or a pipeline's ``vae/`` or ``vqvae/``)
    or of a Hugging Face hub id ``OWNER/NAME``; one line when it cannot be read."""
    diffusers = require_diffusers()
    path = Path(source)
    if path.is_dir():
        location = model_folder(path)
    elif path.exists() or not HUB_ID.fullmatch(source):
        raise InteropError(f"{source} is neither a folder nor a Hugging Face hub id OWNER/NAME")
    else:
        location = source
        try:
            check_hub_reachable(source)
        except DataError:
            raise InteropError(f"{source!r} is not a local folder and the Hugging Face hub cannot be reached: "
                               f"give the folder of a saved AutoencoderKL") from None
    try:
        return diffusers.AutoencoderKL.from_pretrained(location)
    except Exception as error:  # diffusers and the hub raise many types; the user needs one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InteropError(f"cannot load an AutoencoderKL from {source}: {first_line}") from None


def model_folder(path: Path) -> Path:
    """``path`` when it holds a saved AutoencoderKL, else the ``vae/`` or ``vqvae/`` of a
    pipeline folder; an :class:`InteropError` when it holds another model or none."""
    folder = next((folder for folder in (path, *(path / sub for sub in PIPELINE_SUBFOLDERS))
                   if (folder / "config.json").is_file()), None)
    if folder is None:
        raise InteropError(f"{path} holds no diffusers model (no config.json, nor a vae/ or vqvae/ with one)")
    try:
        class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (ValueError, AttributeError):
        raise InteropError(f"{folder / 'config.json'} is not a diffusers configuration") from None
    if class_name != "AutoencoderKL":
        raise InteropError(f"{folder} holds a {class_name}, not an AutoencoderKL")
    return folder


def write_autoencoder_run(autoencoder: Autoencoder, out_dir: str | Path, pixels: torch.Tensor, *,
                          source: str, data_description: dict | None = None) -> Autoencoder:
    """Measure ``autoencoder``'s scale factor on uint8 images (N, 3, R, R) and write it as a
    stage-1 run folder; ``data_description`` records the images for the command line."""
    out_dir, config = Path(out_dir), autoencoder.config
    if pixels.shape[1] != config.image_channels:
        raise InteropError(f"the autoencoder takes {config.image_channels}-channel images, the data has "
                           f"{pixels.shape[1]} channels")
    try:
        autoencoder.latent_shape(pixels.shape[-1])
    except ValueError as error:
        raise InteropError(str(error)) from None
    device = autoencoder.scale_factor.device
    images = uint8_to_float(pixels[:MEASURED_IMAGES]).to(device)
    autoencoder.scale_factor.fill_(measure_scale_factor(autoencoder, images))
    run_config = {"stage": "autoencoder", "autoencoder": config.to_dict(),
                  "loss": LossConfig.from_autoencoder(config).to_dict(),  # what minildm would train it with
                  "learning_rate": None, "data": data_description or {}, "perceptual": None, "start_from": None}
    ckpt.write_run_config(out_dir, run_config)
    ckpt.save_atomic(ckpt.with_prefix("autoencoder", autoencoder.state_dict()), out_dir / "weights.safetensors",
                     {"step": 0, "imported_from": source})
    return autoencoder


def import_autoencoder(source: str, out_dir: str | Path, *, pixels: torch.Tensor, data_description: dict | None = None,
                       device: str | torch.device = "cpu") -> Autoencoder:
    """Read the diffusers ``AutoencoderKL`` ``source`` (:func:`read_diffusers_autoencoder`),
    carry it into minildm's autoencoder and write a stage-1 run folder ``out_dir`` with the
    scale factor measured on ``pixels`` (:func:`write_autoencoder_run`); returns the autoencoder."""
    autoencoder = autoencoder_from_diffusers(read_diffusers_autoencoder(source)).to(device)
    return write_autoencoder_run(autoencoder, out_dir, pixels, source=str(source), data_description=data_description)
