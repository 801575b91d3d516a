"""Pieces every command line module shares: registering a command with the common options
(``--profile``, ``--seed``), the data options, argument types, memory estimates that refuse a job too
large for the machine before it starts, and a condition asked for in words.

:mod:`minildm.app.cli` holds the commands of the two stages; :mod:`minildm.app.course_commands` and
:mod:`minildm.app.interop_commands` hold the course kit's and the model exchange's.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
from torch import Tensor, nn

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
    parser.add_argument("--seed", type=seed_value, default=0, help="random seed, 0 to 2**63 - 1 (default 0)")
    parser.set_defaults(run=run)
    return parser


def data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="toyfaces, celeba-hq, celeba, lsun-churches, lsun-bedrooms, "
                        "hub:OWNER/NAME, or a local folder (default: the profile's)")
    parser.add_argument("--resolution", type=positive_integer, help="image side in pixels (default: the profile's)")
    parser.add_argument("--n", type=positive_integer, help="number of images (default: the profile's)")
    parser.add_argument("--start", type=non_negative_integer, default=0,
                        help="usable images to pass over first (default 0)")
    parser.add_argument("--split", default="train", help="split of a hub or datasets source")
    parser.add_argument("--attributes", type=Path, help="CelebA-format attribute file for an image folder")
    parser.add_argument("--refresh", action="store_true", help="prepare again, ignoring the cache")


def load_data(args: argparse.Namespace, profile: Profile) -> data.ImageDataset:
    args.dataset = args.dataset or default_dataset(profile)
    _check_outputs_outside(args.dataset, [getattr(args, option, None) for option in ("out", "grid")])
    resolution, n = args.resolution or profile.resolution, args.n or profile.n_images
    _check_images_fit(args.dataset, resolution, n)
    return data.load_images(args.dataset, resolution, n, start=args.start, split=args.split, seed=args.seed,
                            attributes_file=args.attributes, refresh=args.refresh)


def _check_outputs_outside(dataset: str, outputs: list[Path | None]) -> None:
    """Refuse an output in (or equal to) a local data set's folder: a run's figures or grid
    would become training images the next time the folder is read."""
    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        return
    for output in outputs:
        if output is not None and output.resolve().is_relative_to(folder.resolve()):
            raise MinildmError(f"{output} is inside the data set's folder {dataset}: what is written there would "
                               "be read as training images; write somewhere else")


def _check_images_fit(dataset: str, resolution: int, n: int) -> None:
    """Toy faces are drawn in memory all at once, as float32 and then as uint8 (5 bytes per
    value); other sources stream to the cache file on disk a chunk at a time."""
    if dataset == "toyfaces":
        check_memory(image_bytes(n, resolution, bytes_per_value=5), f"drawing {n:,} toy faces of {resolution} px")


def image_bytes(n: int, resolution: int, bytes_per_value: int = 1) -> int:
    """Bytes of ``n`` RGB images (n, 3, R, R): 1 per value as uint8, 4 as float32."""
    return n * 3 * resolution * resolution * bytes_per_value


def training_bytes(build: Callable[[], nn.Module]) -> int:
    """Bytes to train the model ``build()`` makes: its float32 weights, their gradients and
    Adam's two moments, 4 x 4 bytes per parameter (activations come on top). The model is
    built on the meta device, which allocates nothing, to count its parameters."""
    with torch.device("meta"):
        parameters = sum(parameter.numel() for parameter in build().parameters())
    return 16 * parameters


def check_memory(bytes_needed: int, what: str, device: torch.device | str = "cpu") -> None:
    """Refuse in one line a job whose estimated memory exceeds what ``device`` has free (RAM
    for the CPU, GPU memory for CUDA), before it allocates anything."""
    device = torch.device(device)
    if device.type == "cuda":
        available, kind = torch.cuda.mem_get_info(device)[0], "GPU memory"
    else:
        available, kind = psutil.virtual_memory().available, "memory"
    if bytes_needed > available:
        raise MinildmError(f"{what} would need about {bytes_needed / 2**30:,.1f} GiB of {kind}, "
                           f"{available / 2**30:,.1f} GiB available")


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


def seed_value(text: str) -> int:
    """An argparse type: a random seed in the range ``torch.manual_seed`` takes, 0 to 2**63 - 1."""
    if not text.isdigit() or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**63 - 1, got {text!r}")
    return int(text)


def unit_interval(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


MAX_GUIDANCE = 50  # the paper samples at 1.5 to 10; far beyond, every pixel saturates to black or white


def guidance_scale(text: str) -> float:
    """An argparse type: a classifier-free guidance scale, a number from 0 to :data:`MAX_GUIDANCE`."""
    value = _number(text)
    if not 0 <= value <= MAX_GUIDANCE:
        raise argparse.ArgumentTypeError(f"guidance must be 0 or more and at most {MAX_GUIDANCE} "
                                         f"(1 = no guidance), got {text!r}")
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
        if not WordTokenizer.words(request):
            raise MinildmError(f"empty request: {request!r} has no words (letters a to z) to draw from")
        return WordTokenizer(config.vocabulary).encode([request], config.max_length)
    if config.kind == "class":
        if request not in config.class_names:
            raise MinildmError(f"unknown class {request!r}; this model knows: {', '.join(config.class_names)}")
        return torch.tensor([config.class_names.index(request)])
    if config.kind != "attributes":
        raise ValueError(f"a {config.kind!r} model is not conditioned on words")
    known = config.attribute_names
    wanted = attribute_list(request)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise MinildmError(f"unknown attribute(s) {', '.join(unknown)}; this model knows: {', '.join(known)}")
    return torch.tensor([[name in wanted for name in known]])


def attribute_list(text: str) -> list[str]:
    """Comma-separated attribute names -> the names, each once (a repeated one is refused)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MinildmError(f"attribute(s) {', '.join(repeated)} given more than once in {text!r}")
    return names


def load_seen(seen: dict, n: int, start: int) -> data.ImageDataset:
    """``n`` images from ``start`` of the source a run folder records (its ``data``)."""
    _check_images_fit(seen["dataset"], seen["resolution"], n)
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
