"""Pieces every command line module shares: registering a command with the common options
(``--profile``, ``--seed``), the data options, argument types, and a condition asked for in words.

:mod:`minildm.app.cli` holds the commands of the two stages; :mod:`minildm.app.course_commands` and
:mod:`minildm.app.interop_commands` hold the course kit's and the model exchange's.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from minildm import data
from minildm.conditioning import ConditioningConfig, WordTokenizer
from minildm.config import PROFILES, MinildmError, Profile
from minildm.data.faces import default_dataset
from minildm.data.sources import DataError


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command line
    (argparse's own print the whole usage first); its sub-commands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command(commands, name: str, help_text: str, run) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--profile", choices=list(PROFILES),
                        help="sizes for this machine (default: MINILDM_PROFILE, else gpu if CUDA else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(run=run)
    return parser


def data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="toyfaces, celeba-hq, celeba, lsun-churches, lsun-bedrooms, "
                        "hub:OWNER/NAME, or a local folder (default: the profile's)")
    parser.add_argument("--resolution", type=positive_integer, help="image side in pixels (default: the profile's)")
    parser.add_argument("--n", type=positive_integer, help="number of images (default: the profile's)")
    parser.add_argument("--start", type=non_negative_integer, default=0, help="index of the first image (default 0)")
    parser.add_argument("--split", default="train", help="split of a hub or datasets source")
    parser.add_argument("--attributes", type=Path, help="CelebA-format attribute file for an image folder")
    parser.add_argument("--refresh", action="store_true", help="prepare again, ignoring the cache")


def load_data(args: argparse.Namespace, profile: Profile) -> data.ImageDataset:
    args.dataset = args.dataset or default_dataset(profile)
    return data.load_images(args.dataset, args.resolution or profile.resolution,
                            args.n or profile.n_images, start=args.start, split=args.split, seed=args.seed,
                            attributes_file=args.attributes, refresh=args.refresh)


def integer_list(text: str) -> tuple[int, ...]:
    """An argparse type: "32,64" -> (32, 64)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def non_negative_integer(text: str) -> int:
    """An argparse type: an integer of 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer of 0 or more, got {text!r}")
    return int(text)


def unit_interval(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def guidance_scale(text: str) -> float:
    """An argparse type: a classifier-free guidance scale, a finite number of 0 or more."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"guidance must be 0 or more (1 = no guidance), got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def output_folder(text: str) -> Path:
    """An argparse type: a folder to write into (made later if it is missing); refused at once
    when it is a file or lies where nothing may be written."""
    path = Path(text)
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{path} is a file: give a folder")
    _check_writable(path)
    return path


def png_file(text: str) -> Path:
    """An argparse type: a PNG file to write, in a folder where it can be written."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must name a .png file, got {text!r}")
    _check_writable(path.parent)
    return path


def _check_writable(path: Path) -> None:
    """Try a file in ``path``, or in the nearest folder above it that exists."""
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write in {existing}: {error.strerror or error}") from None


def positive_integer(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def load_training_data(args: argparse.Namespace, profile: Profile) -> data.ImageDataset:
    """:func:`load_data` for training. A local folder with fewer usable images than the profile
    asks for (and no ``--n``) keeps its last tenth out of training, so that ``evaluate`` finds
    held-out images after the training part."""
    train = load_data(args, profile)
    ran_out = args.n is None and len(train) < profile.n_images and Path(args.dataset).expanduser().is_dir()
    if not ran_out:
        return train
    if len(train) < 2:
        raise MinildmError(f"{args.dataset} has 1 usable image: training needs at least 2, one of them held out "
                           "for evaluate")
    held_out = max(1, len(train) // 10)
    args.n = len(train) - held_out
    print(f"{args.dataset} has {len(train)} usable images, fewer than the profile's {profile.n_images}: "
          f"training on the first {args.n}, holding out the last {held_out} for evaluate (--n sets the split)")
    return load_data(args, profile)


def requested_condition(config: ConditioningConfig, request: str) -> Tensor:
    """The condition (1, ...) that a person asks for in words: a caption (text), a class name
    (class) or comma-separated attribute names, the others absent (attributes)."""
    if not request.strip():
        raise MinildmError("empty request: name what to draw, or leave the option out for unconditional samples")
    if config.kind == "text":
        return WordTokenizer(config.vocabulary).encode([request], config.max_length)
    if config.kind == "class":
        if request not in config.class_names:
            raise MinildmError(f"unknown class {request!r}; this model knows: {', '.join(config.class_names)}")
        return torch.tensor([config.class_names.index(request)])
    if config.kind != "attributes":
        raise ValueError(f"a {config.kind!r} model is not conditioned on words")
    known = config.attribute_names
    wanted = [name.strip() for name in request.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise MinildmError(f"unknown attribute(s) {', '.join(unknown)}; this model knows: {', '.join(known)}")
    return torch.tensor([[name in wanted for name in known]])


def load_seen(seen: dict, n: int, start: int) -> data.ImageDataset:
    """``n`` images from ``start`` of the source a run folder records (its ``data``)."""
    return data.load_images(seen["dataset"], seen["resolution"], n, start=start, split=seen["split"],
                            seed=seen["seed"])


def floor_images(seen: dict, held_out: data.ImageDataset) -> torch.Tensor | None:
    """As many further held-out images as ``held_out``, for the real-against-real floor of FID
    and KID; None (the floor is left out) when the source has too few."""
    start = seen["start"] + seen["n"] + len(held_out)
    try:
        floor = load_seen(seen, len(held_out), start)
    except DataError:
        return None
    return floor.pixels if len(floor) == len(held_out) else None
