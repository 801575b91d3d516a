"""The model exchange's commands: ``python -m minildm export`` (an LDM run -> a diffusers
``LDMPipeline`` folder) and ``python -m minildm import-ae`` (a diffusers ``AutoencoderKL`` -> an
autoencoder run folder that ``train-ldm --ae`` takes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from minildm import data
from minildm.config import MinildmError, Profile
from minildm.interop.diffusers_autoencoder import autoencoder_from_diffusers
from minildm.interop.export import encoder_matches, recorded_resolution, save_pipeline
from minildm.interop.import_ae import MEASURED_IMAGES, read_diffusers_autoencoder, write_autoencoder_run
from minildm.interop.layers import InteropError
from minildm.ldm_training import load_ldm
from minildm.app.options import command, data_options, load_data, output_folder, positive_integer


def add_export(commands) -> None:
    parser = command(commands, "export", "write an unconditional latent diffusion run as a diffusers LDMPipeline "
                     "folder", run_export)
    parser.add_argument("--ldm", type=Path, required=True, help="a latent diffusion run folder")
    parser.add_argument("--resolution", type=positive_integer,
                        help="image side the pipeline samples at (default: the run's)")
    parser.add_argument("--out", type=output_folder, required=True,
                        help="folder for model_index.json, vqvae/, unet/ and scheduler/")


MAX_UPSCALE = 8  # a pipeline may sample at most 8 times the side the run was trained at


def run_export(args: argparse.Namespace, profile: Profile) -> None:
    model = load_ldm(args.ldm)
    if args.resolution is not None:
        _check_resolution(args.ldm, args.resolution)
    out = save_pipeline(model, args.ldm, args.out, resolution=args.resolution)
    encoder = ("its encoder too (it pads its downsampling the diffusers way)" if encoder_matches(model)
               else "its encoder downsamples the diffusers way, not minildm's")
    print(f"LDMPipeline written to {out}; load it with diffusers.DiffusionPipeline.from_pretrained({str(out)!r}). "
          f"Its vqvae decodes as minildm does; {encoder}. It samples what minildm's sample --spacing leading "
          f"does with the same noise")


def _check_resolution(run_dir: Path, resolution: int) -> None:
    """Refuse a pipeline resolution beyond :data:`MAX_UPSCALE` times the one the run was trained
    at, when the run folder records it."""
    try:
        trained = recorded_resolution(run_dir)
    except InteropError:  # a run trained from Python: nothing to compare with
        return
    if resolution > MAX_UPSCALE * trained:
        raise MinildmError(f"--resolution {resolution} is more than {MAX_UPSCALE} times the {trained} px "
                           f"{run_dir} was trained at: give at most {MAX_UPSCALE * trained}")


def add_import_ae(commands) -> None:
    parser = command(commands, "import-ae", "turn a diffusers AutoencoderKL into an autoencoder run folder "
                     "(stage 1), its scale factor measured on the data", run_import_ae)
    parser.add_argument("--diffusers", required=True, metavar="DIR_OR_HUB_ID",
                        help="a folder with a saved AutoencoderKL (or a pipeline folder with vae/), or a hub id "
                        "OWNER/NAME")
    data_options(parser)  # the images the scale factor is measured on, and that train-ldm --ae trains on
    parser.add_argument("--out", type=output_folder, required=True, help="the new run folder")


def run_import_ae(args: argparse.Namespace, profile: Profile) -> None:
    autoencoder = autoencoder_from_diffusers(read_diffusers_autoencoder(args.diffusers))  # fails before the data
    images = load_data(args, profile)
    print(data.describe(images).splitlines()[0])
    description = {"dataset": args.dataset, "resolution": images.resolution, "start": args.start,
                   "n": len(images), "split": args.split, "seed": args.seed}
    write_autoencoder_run(autoencoder.to(profile.device), args.out, images.pixels, source=args.diffusers,
                          data_description=description)
    measured_on = min(len(images), MEASURED_IMAGES)
    print(f"imported {args.diffusers}: KL, f = {autoencoder.config.factor}, latent "
          f"{autoencoder.latent_shape(images.resolution)}, scale factor {autoencoder.scale_factor.item():.4f} "
          f"(measured on {measured_on} images); run folder {args.out}")
