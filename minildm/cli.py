"""The command line: ``python -m minildm COMMAND [options]``.

Every command takes ``--profile`` (tiny, cpu, gpu) and ``--seed``. On bad input a command
exits non-zero after printing one line that says what is wrong, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from minildm import autoencoder_training, data, losses, viz
from minildm.config import MinildmError, Profile, get_profile


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        profile = get_profile(args.profile)
        torch.manual_seed(args.seed)
        args.run(args, profile)
    except MinildmError as error:
        print(f"minildm: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minildm: interrupted", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minildm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = _command(commands, "data", "prepare and cache a data set, print a summary", run_data)
    _data_options(prepare)
    prepare.add_argument("--grid", type=Path, help="also write a grid of the first 64 images to this PNG")

    train_ae = _command(commands, "train-ae", "train the autoencoder (stage 1)", run_train_ae)
    _data_options(train_ae)
    train_ae.add_argument("--factor", type=int, default=4, choices=[4, 8, 16], help="downsampling factor f")
    train_ae.add_argument("--reg", default="kl", choices=["kl", "vq"], help="latent regularisation")
    train_ae.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    train_ae.add_argument("--out", type=Path, required=True, help="run folder (resumed if it exists)")

    evaluate = _command(commands, "evaluate", "print one JSON object of metrics on held-out images",
                        run_evaluate)
    evaluate.add_argument("--ae", type=Path, required=True, help="an autoencoder run folder")
    evaluate.add_argument("--n", type=int, help="held-out images (default: the profile's)")

    demo = _command(commands, "demo", "the embedded default end to end (toy faces)", run_demo)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the results")
    return parser


def _command(commands, name: str, help_text: str, run) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--profile", choices=["tiny", "cpu", "gpu"],
                        help="sizes for this machine (default: MINILDM_PROFILE, else gpu if CUDA else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(run=run)
    return parser


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="toyfaces, celeba-hq, celeba, lsun-churches, lsun-bedrooms, "
                        "hub:OWNER/NAME, or a local folder (default: the profile's)")
    parser.add_argument("--resolution", type=int, help="image side in pixels (default: the profile's)")
    parser.add_argument("--n", type=int, help="number of images (default: the profile's)")
    parser.add_argument("--start", type=int, default=0, help="index of the first image (default 0)")
    parser.add_argument("--split", default="train", help="split of a hub or datasets source")
    parser.add_argument("--attributes", type=Path, help="CelebA-format attribute file for an image folder")
    parser.add_argument("--refresh", action="store_true", help="prepare again, ignoring the cache")


def _load(args: argparse.Namespace, profile: Profile) -> data.ImageDataset:
    return data.load_images(
        args.dataset or profile.dataset,
        args.resolution or profile.resolution,
        args.n or profile.n_images,
        start=args.start,
        split=args.split,
        seed=args.seed,
        attributes_file=args.attributes,
        refresh=args.refresh,
    )


def run_data(args: argparse.Namespace, profile: Profile) -> None:
    started = time.perf_counter()
    prepared = _load(args, profile)
    seconds = time.perf_counter() - started
    print(data.describe(prepared))
    print(f"took {seconds:.2f} s ({len(prepared) / seconds:,.0f} images/s)")
    if args.grid:
        print(f"grid written to {viz.save_grid(prepared.images()[:64], args.grid, scale=2)}")


def run_train_ae(args: argparse.Namespace, profile: Profile) -> None:
    resolution = args.resolution or profile.resolution
    if resolution % args.factor:
        raise MinildmError(f"resolution {resolution} is not a multiple of the factor {args.factor}: "
                           f"the autoencoder halves the image {args.factor.bit_length() - 1} times")
    train = _load(args, profile)
    print(data.describe(train).splitlines()[0])
    config = autoencoder_training.autoencoder_config(profile, args.factor, args.reg)
    description = {"dataset": args.dataset or profile.dataset, "resolution": train.resolution,
                   "start": args.start, "n": len(train), "split": args.split, "seed": args.seed}
    started = time.perf_counter()
    autoencoder = autoencoder_training.train_autoencoder(
        args.out, train.pixels, config, profile, steps=args.steps, seed=args.seed,
        data_description=description, perceptual=losses.load_perceptual())
    minutes = (time.perf_counter() - started) / 60
    print(f"trained in {minutes:.1f} min; latent {autoencoder.latent_shape(train.resolution)}, "
          f"scale factor {autoencoder.scale_factor.item():.4f}; run folder {args.out}")


def run_evaluate(args: argparse.Namespace, profile: Profile) -> None:
    autoencoder = autoencoder_training.load_autoencoder(args.ae, profile.device)
    seen = json.loads((args.ae / "config.json").read_text())["data"]
    held_out = data.load_images(seen["dataset"], seen["resolution"], args.n or profile.n_holdout,
                                start=seen["start"] + seen["n"], split=seen["split"], seed=seen["seed"])
    results = autoencoder_training.evaluate_autoencoder(autoencoder, held_out.pixels)
    results["data"] = (f"{len(held_out)} held-out images of {seen['dataset']} from index "
                       f"{seen['start'] + seen['n']}, center crop, bicubic resize to {seen['resolution']} px")
    print(json.dumps(results))


def run_demo(args: argparse.Namespace, profile: Profile) -> None:
    print(f"minildm demo, profile {profile.name!r} on {profile.device}")
    prepared = data.load_images("toyfaces", profile.resolution, profile.n_images, seed=args.seed)
    print(data.describe(prepared))
    grid = viz.save_grid(prepared.images()[:64], args.out / "data.png", scale=2)
    print(f"a grid of training images: {grid}")
