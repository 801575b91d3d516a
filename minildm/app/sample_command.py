"""``python -m minildm sample``: draw images from a trained model into a PNG grid, with the
input each kind of model needs: a prompt, attributes or a class (cross-attention), an image
and a mask to inpaint, an image to enlarge, a part map (``--map``) or a layout (``--layout``)
of toy faces; ``--scale`` draws at a multiple of the training size (Sec. 4.3.2)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from minildm import checkpoint as ckpt
from minildm.app.options import (check_memory, command, guidance_scale, image_bytes, png_file, positive_integer,
                                 requested_condition, unit_interval)
from minildm.app.part_inputs import read_layout, read_part_map
from minildm.config import MinildmError, Profile
from minildm.data.images import UNREADABLE_ERRORS, NotRegularFile, image_size, read_image
from minildm.image_conditions import mask_from_image
from minildm.ldm import DEFAULT_GUIDANCE, LatentDiffusion
from minildm.ldm_training import load_ldm
from minildm.sampling import SamplerOptions
from minildm.viz import part_map_image, save_grid


def add_sample(commands) -> None:
    from minildm.sampling import SAMPLERS, SPACINGS  # here: only this command's options use them

    parser = command(commands, "sample", "draw images from a trained model into a PNG grid", run_sample)
    parser.add_argument("--ldm", type=Path, required=True, help="a latent diffusion run folder")
    parser.add_argument("--n", type=positive_integer, default=64, help="number of images (default 64)")
    parser.add_argument("--sampler", default="ddim", choices=list(SAMPLERS),
                        help="default ddim; dpm++2m (DPM-Solver++) needs fewer steps, e.g. 20")
    parser.add_argument("--steps", type=positive_integer, default=50,
                        help="DDIM or DPM-Solver++ steps (default 50; DDPM uses all)")
    parser.add_argument("--eta", type=unit_interval, default=0.0, help="DDIM noise: 0 deterministic, 1 like DDPM")
    parser.add_argument("--spacing", default="linspace", choices=list(SPACINGS),
                        help="DDIM and DPM-Solver++ time steps: linspace from T-1 to 0 (default), or leading, "
                        "multiples of T // steps as an exported diffusers pipeline takes")
    parser.add_argument("--prompt", help="text model: the caption to draw")
    parser.add_argument("--attributes", help="attribute model: comma-separated attributes to draw, e.g. "
                        "Smiling,Eyeglasses (the others absent)")
    parser.add_argument("--label", help="class model: the name of the class to draw")
    parser.add_argument("--guidance", type=guidance_scale, default=DEFAULT_GUIDANCE,
                        help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE}; 1 = none)")
    parser.add_argument("--inpaint", type=Path, help="inpainting model: the image to complete")
    parser.add_argument("--mask", type=Path, help="with --inpaint: an image, white where to generate")
    parser.add_argument("--upscale", type=Path, help="super-resolution model: the image to enlarge")
    parser.add_argument("--map", type=Path, help="semantic model: a grayscale PNG of part indices, the size to draw")
    parser.add_argument("--layout", help="layout model: JSON (inline or a file), part name -> [x0, y0, x1, y1] in "
                        "[0, 1]")
    parser.add_argument("--scale", type=positive_integer, default=1,
                        help=f"draw at this multiple of the training size, 1 to {MAX_SCALE} (default 1; not for "
                        "inpainting and super-resolution)")
    parser.add_argument("--out", type=png_file, required=True, help="PNG file for the grid")


MAX_SCALE = 4


def run_sample(args: argparse.Namespace, profile: Profile) -> None:
    model = load_ldm(args.ldm, profile.device)
    if args.scale > MAX_SCALE or (args.scale > 1 and model.kind in ("inpaint", "superres")):
        raise MinildmError(f"--scale must be 1 to {MAX_SCALE}, and 1 for inpainting and super-resolution models "
                           "(their input sets the size)")
    resolution = ckpt.read_training_data(args.ldm)["resolution"] * args.scale
    check_memory(_sampling_bytes(model, args.n, resolution), f"sampling {args.n:,} images of {resolution} px",
                 profile.device)
    started = time.perf_counter()
    try:
        shown, images = _draw(args, model, resolution)
    except ValueError as error:
        raise MinildmError(str(error)) from None
    seconds = time.perf_counter() - started
    print(f"{args.n} samples in {seconds:.1f} s ({args.sampler}, "
          f"{model.diffusion.timesteps if args.sampler == 'ddpm' else args.steps} steps): "
          f"{save_grid(torch.cat([shown, images.cpu()]), args.out, scale=2)}")


def _sampling_bytes(model: LatentDiffusion, n: int, resolution: int) -> int:
    """Memory of one sampling batch of ``n``, float32: its latents four times over (x_t, x_0 and
    the UNet's outputs for the conditioned and the null batch) and its decoded images; the
    networks' activations come on top, so this is a lower bound."""
    channels, height, width = model.latent_shape(resolution)
    return 4 * n * channels * height * width * 4 + image_bytes(n, resolution, bytes_per_value=4)


def _draw(args: argparse.Namespace, model: LatentDiffusion, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``sample`` asks of the model: (the input to show first in the grid, the samples)."""
    generator = torch.Generator().manual_seed(args.seed)
    options = SamplerOptions(sampler=args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing, progress=True)
    n = args.n
    if model.kind == "inpaint":
        image = _read_image(args.inpaint, "--inpaint", resolution)
        mask = mask_from_image(_read_image(args.mask, "--mask", resolution))
        _check_same_size(args.inpaint, args.mask)
        if mask.sum() == 0:
            raise MinildmError(f"the mask {args.mask} is black everywhere: paint white where to generate")
        filled = model.inpaint(image.expand(n, -1, -1, -1), mask.expand(n, -1, -1, -1), options, generator=generator)
        return image * (1 - mask), filled  # first: what the model sees
    if model.kind == "superres":
        factor = model.config.conditioning.superres_factor
        low = _read_image(args.upscale, "--upscale", resolution // factor)
        shown = torch.nn.functional.interpolate(low, scale_factor=factor, mode="nearest")
        return shown, model.upscale(low.expand(n, -1, -1, -1), options, generator=generator)
    condition = _requested(args, model, resolution)
    if model.kind == "semantic":
        if condition is None:
            raise MinildmError("this model does semantic synthesis: give --map FILE (a PNG of part indices)")
        parts = len(model.config.conditioning.class_names)
        return part_map_image(condition, parts), model.synthesize(condition.expand(n, -1, -1), options,
                                                                  generator=generator)
    if condition is not None:
        condition = condition.expand(n, *condition.shape[1:])  # the same for every sample
    images = model.sample(n, resolution, options, condition=condition, guidance=args.guidance, generator=generator)
    return torch.empty(0, 3, resolution, resolution), images


OPTION_OF_KIND = {"text": "--prompt", "attributes": "--attributes", "class": "--label", "layout": "--layout",
                  "semantic": "--map"}


def _requested(args: argparse.Namespace, model: LatentDiffusion, resolution: int) -> torch.Tensor | None:
    """The one condition (1, ...) that ``--prompt``, ``--attributes``, ``--label``, ``--layout``
    or ``--map`` asks for (a map of ``resolution`` px); None (the null condition) when none is given."""
    given = {option: value for option, value in (("--prompt", args.prompt), ("--attributes", args.attributes),
                                                 ("--label", args.label), ("--layout", args.layout),
                                                 ("--map", args.map)) if value is not None}
    expected = OPTION_OF_KIND.get(model.kind)
    wrong = sorted(set(given) - {expected})
    if wrong:
        raise MinildmError(f"{', '.join(wrong)} does not apply to a model conditioned on {model.kind}"
                           + (f": use {expected}" if expected else ""))
    if expected not in given:
        return None
    names = model.config.conditioning.class_names
    if model.kind == "semantic":
        return read_part_map(given[expected], names, resolution)
    if model.kind == "layout":
        return read_layout(given[expected], names)
    return requested_condition(model.config.conditioning, given[expected])


def _check_same_size(image: Path, mask: Path) -> None:
    """A mask must cover its image pixel for pixel: a mask of another size would be stretched."""
    sizes = [image_size(path) for path in (image, mask)]
    if sizes[0] != sizes[1]:
        raise MinildmError(f"the mask {mask} is {sizes[1][0]} x {sizes[1][1]} px and the image {image} "
                           f"{sizes[0][0]} x {sizes[0][1]} px: give a mask of the image's size")


def _read_image(path: Path | None, option: str, resolution: int) -> torch.Tensor:
    """The image file an option names, (1, 3, R, R) in [-1, 1], or one line saying why not."""
    if path is None:
        raise MinildmError(f"this model needs {option} IMAGE")
    try:
        return read_image(path, resolution)
    except FileNotFoundError:
        raise MinildmError(f"{option}: no such file: {path}") from None
    except NotRegularFile:
        raise MinildmError(f"{option}: {path} is not a regular file (a folder, FIFO or device): "
                           "give an image file") from None
    except UNREADABLE_ERRORS as error:
        raise MinildmError(f"{option}: cannot read {path} as an image ({type(error).__name__})") from None
