"""Pieces every command line module shares: registering a command with the common options
(``--profile``, ``--seed``), the data options, and argument types.

:mod:`minildm.cli` holds the commands of the two stages; :mod:`minildm.course.commands` and
:mod:`minildm.interop.commands` hold the course kit's and the model exchange's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minildm import data
from minildm.config import PROFILES, MinildmError, Profile
from minildm.data.faces import default_dataset


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
    parser.add_argument("--resolution", type=int, help="image side in pixels (default: the profile's)")
    parser.add_argument("--n", type=int, help="number of images (default: the profile's)")
    parser.add_argument("--start", type=int, default=0, help="index of the first image (default 0)")
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
