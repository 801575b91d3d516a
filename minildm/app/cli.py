"""The command line: ``python -m minildm COMMAND [options]``; it parses and dispatches.

Every command takes ``--profile`` (tiny, cpu, gpu, ...) and ``--seed``. On bad input a
command exits non-zero after printing one line that says what is wrong, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

from minildm import checkpoint as ckpt
from minildm import data, distributed, perceptual
from minildm.autoencoder import build_autoencoder
from minildm.autoencoder_training import AutoencoderTraining, load_autoencoder, train_autoencoder
from minildm.conditioning import KINDS, TOKEN_KINDS
from minildm.config import MinildmError, Profile, get_profile
from minildm.app.course_commands import add_course
from minildm.app.demo import run_demo
from minildm.evaluation import bench
from minildm.app.evaluate_command import add_evaluate
from minildm.app.sample_command import add_sample
from minildm.app.interop_commands import add_export, add_import_ae
from minildm.ldm_training import LDMTraining, train_ldm
from minildm.app.options import (Parser, attribute_list, check_memory, command, data_options, image_bytes,
                                 integer_list, load_data, load_seen, load_training_data, non_negative_integer,
                                 output_folder, png_file, positive_integer, training_bytes)
from minildm.recipes import autoencoder_config, condition_tensor, conditioning_config
from minildm.trainer import PRECISIONS
from minildm.unet import forward_flops, parameter_count
from minildm.viz import save_grid


DESCRIPTION = ("minildm: latent diffusion (Rombach et al. 2022), taught from scratch. In order: data, train-ae "
               "(stage 1), train-ldm (stage 2), then sample and evaluate; demo runs them all on toy faces.")
ACCUMULATE_HELP = ("micro-batches per step, their gradients averaged (default 1; the learning rate is not scaled). "
                   "Under torchrun, N processes are the same run as --accumulate N")
CHECKPOINTING_HELP = ("recompute each block's activations in the backward pass instead of keeping them: "
                      "less memory, 1.15 to 1.8 times the time per step (README)")
PRECISION_HELP = ("the forward passes' dtype: auto (default) is bf16 on a GPU and on a CPU with bf16 instructions "
                  "(AVX512-BF16, AMX), else fp32; the weights stay fp32")


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = build_parser().parse_args(argv)
    errors, name = sys.stderr, "minildm"
    try:
        profile = get_profile(args.profile)
        world = distributed.start(profile.device)  # several processes under torchrun
        if not world.is_main:
            name = f"minildm (rank {world.rank})"
        with only_rank_zero_prints(world):
            torch.manual_seed(args.seed)
            args.run(args, profile)
    except MinildmError as error:
        print(f"{name}: error: {error}", file=errors)
        return 1
    except OSError as error:  # a folder that cannot be written, a full disk, ...
        print(f"{name}: error: {error.strerror or error}" + (f": {error.filename}" if error.filename else ""),
              file=errors)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=errors)
        return 130
    finally:
        distributed.stop()
    return 0


@contextlib.contextmanager
def only_rank_zero_prints(world: distributed.World):
    """Under torchrun, the other processes' output and progress bars go nowhere."""
    if world.is_main:
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), contextlib.redirect_stderr(nowhere):
        yield


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minildm", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (add_data, add_train_ae, add_train_ldm, add_sample, add_evaluate, add_bench, add_demo,
                        add_course, add_export, add_import_ae):
        add_command(commands)
    return parser


# data
def add_data(commands) -> None:
    parser = command(commands, "data", "prepare and cache a data set, print a summary", run_data)
    data_options(parser)
    parser.add_argument("--grid", type=png_file, help="also write a grid of the first 64 images to this PNG")


def run_data(args: argparse.Namespace, profile: Profile) -> None:
    started = time.perf_counter()
    prepared = load_data(args, profile)
    seconds = time.perf_counter() - started
    print(data.describe(prepared))
    print(f"took {seconds:.2f} s ({len(prepared) / seconds:,.0f} images/s)")
    if args.grid:
        print(f"grid written to {save_grid(prepared.images()[:64], args.grid, scale=2)}")


# train-ae
def add_train_ae(commands) -> None:
    parser = command(commands, "train-ae", "train the autoencoder (stage 1)", run_train_ae)
    data_options(parser)
    parser.add_argument("--factor", type=int, default=4, choices=[4, 8, 16], help="downsampling factor f")
    parser.add_argument("--reg", default="kl", choices=["kl", "vq"], help="latent regularisation")
    parser.add_argument("--steps", type=positive_integer, help="training steps (default: the profile's)")
    parser.add_argument("--accumulate", type=positive_integer, default=1, help=ACCUMULATE_HELP)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=CHECKPOINTING_HELP)
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS), help=PRECISION_HELP)
    parser.add_argument("--base-channels", type=positive_integer,
                        help="channels at full resolution (default: the profile's); fewer make a higher "
                             "resolution affordable")
    parser.add_argument("--patch-size", type=int, default=1, choices=[1, 2, 4],
                        help="fold p x p pixel patches into channels before the first convolution "
                             "(default 1: none); 2 trains f = 8 at 64 px about three times faster")
    parser.add_argument("--out", type=output_folder, required=True, help="run folder (resumed if it exists)")


def run_train_ae(args: argparse.Namespace, profile: Profile) -> None:
    resolution = args.resolution or profile.resolution
    if resolution % args.factor:
        raise MinildmError(f"resolution {resolution} is not a multiple of the factor {args.factor}: "
                           f"the autoencoder halves the image {args.factor.bit_length() - 1} times")
    try:
        config = autoencoder_config(profile, factor=args.factor, reg=args.reg, base_channels=args.base_channels,
                                    patch_size=args.patch_size)
    except ValueError as error:
        raise MinildmError(str(error)) from None
    check_memory(training_bytes(lambda: build_autoencoder(config)),
                 f"training an autoencoder of {config.base_channels} base channels", profile.device)
    train = load_training_data(args, profile)
    print(data.describe(train).splitlines()[0])
    description = {"dataset": args.dataset, "resolution": train.resolution,
                   "start": args.start, "n": len(train), "split": args.split, "seed": args.seed}
    started = time.perf_counter()
    training = AutoencoderTraining(profile=profile, steps=args.steps, seed=args.seed,
                                   perceptual=perceptual.perceptual_for(profile), data_description=description,
                                   accumulate=args.accumulate, gradient_checkpointing=args.gradient_checkpointing,
                                   precision=args.precision)
    autoencoder = train_autoencoder(args.out, train.pixels, config=config, training=training)
    minutes = (time.perf_counter() - started) / 60
    print(f"trained in {minutes:.1f} min; latent {autoencoder.latent_shape(train.resolution)}, "
          f"scale factor {autoencoder.scale_factor.item():.4f}; run folder {args.out}")


# train-ldm
def add_train_ldm(commands) -> None:
    parser = command(commands, "train-ldm", "train the latent diffusion model (stage 2)", run_train_ldm)
    parser.add_argument("--ae", type=Path, required=True, help="the autoencoder run folder (stage 1)")
    parser.add_argument("--cond", default="none", choices=list(KINDS),
                        help="conditioning: none (unconditional), class, attributes, text, layout (cross-attention), "
                        "inpaint, superres or semantic (concatenated input); layout and semantic: toy faces only")
    parser.add_argument("--attributes", help="with --cond attributes: comma-separated names to condition on "
                        "(default: all of the data set's)")
    parser.add_argument("--n", type=positive_integer, help="training images (default: those the autoencoder saw)")
    parser.add_argument("--steps", type=positive_integer, help="training steps (default: the profile's)")
    parser.add_argument("--accumulate", type=positive_integer, default=1, help=ACCUMULATE_HELP)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=CHECKPOINTING_HELP)
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS), help=PRECISION_HELP)
    parser.add_argument("--out", type=output_folder, required=True, help="run folder (resumed if it exists)")


def run_train_ldm(args: argparse.Namespace, profile: Profile) -> None:
    if args.attributes and args.cond != "attributes":
        raise MinildmError("--attributes applies to --cond attributes only")
    load_autoencoder(args.ae)  # a clear error now rather than after loading data
    seen = ckpt.read_training_data(args.ae)
    train = load_seen(seen, args.n or seen["n"], seen["start"])
    print(data.describe(train).splitlines()[0])
    conditioning, conditions = None, None
    if args.cond != "none":
        names = attribute_list(args.attributes) if args.attributes else None
        conditioning = conditioning_config(args.cond, train, attributes=names)
        if args.cond in (*TOKEN_KINDS, "semantic"):
            conditions = condition_tensor(conditioning, train)
    started = time.perf_counter()
    training = LDMTraining(profile=profile, steps=args.steps, seed=args.seed, conditioning=conditioning,
                           data_description={**seen, "n": len(train)}, accumulate=args.accumulate,
                           gradient_checkpointing=args.gradient_checkpointing, precision=args.precision)
    model = train_ldm(args.out, train.pixels, autoencoder_dir=args.ae, training=training, conditions=conditions)
    minutes = (time.perf_counter() - started) / 60
    latent_shape = model.latent_shape(train.resolution)
    print(f"trained in {minutes:.1f} min; UNet {parameter_count(model.unet) / 1e6:.2f} M parameters, "
          f"{forward_flops(model.unet, latent_shape) / 1e6:.0f} MFLOPs per forward pass on latents "
          f"{latent_shape}; run folder {args.out}")


# bench
def add_bench(commands) -> None:
    parser = command(commands, "bench", "training and sampling speed and memory: pixel DM vs LDM-4/8", run_bench)
    parser.add_argument("--resolutions", type=integer_list, default=(32, 64, 128, 256),
                        help="image sides in pixels, comma-separated (default 32,64,128,256)")
    parser.add_argument("--factors", type=integer_list, default=(1, 4, 8),
                        help="1 = pixel space, 4 and 8 = LDM-4 and LDM-8 (default 1,4,8)")
    parser.add_argument("--batch", type=positive_integer, default=16, help="batch size of every case (default 16)")
    parser.add_argument("--repeats", type=positive_integer, default=5,
                        help="timed runs; medians are reported (default 5)")
    parser.add_argument("--warmup", type=non_negative_integer, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--steps", type=positive_integer, default=50, help="DDIM steps per sample (default 50)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--out", type=output_folder, default=Path("runs/bench"),
                        help="folder for bench.md, bench.json and bench.png (default runs/bench)")


def run_bench(args: argparse.Namespace, profile: Profile) -> None:
    """Print the markdown table of :mod:`minildm.evaluation.bench` and keep it, its numbers and a plot."""
    if min(args.batch, args.repeats, args.steps) < 1 or args.warmup < 0:
        raise MinildmError("--batch, --repeats and --steps must be at least 1, --warmup at least 0")
    bench.check_sizes(args.resolutions, args.factors, profile)
    largest = max(args.resolutions)  # each case makes a batch of random float32 images and latents (f = 1: as large)
    check_memory(2 * image_bytes(args.batch, largest, bytes_per_value=4),
                 f"a batch of {args.batch:,} images of {largest} px", profile.device)
    header = bench.report_header(profile, args.batch, args.repeats)
    print(header)
    results = bench.run_bench(profile, args.resolutions, args.factors, progress=print, batch_size=args.batch,
                              repeats=args.repeats, warmup=args.warmup, sampling_steps=args.steps,
                              compile=args.compile)
    table = bench.markdown_table(results, args.steps)
    print(table)
    bench.save_report(results, header, table, args.out)
    print(f"table, numbers and plot: {args.out}")


# demo
def add_demo(commands) -> None:
    parser = command(commands, "demo", "the embedded default end to end (toy faces)",
                      lambda args, profile: run_demo(args.out, profile, args.seed))
    parser.add_argument("--out", type=output_folder, default=Path("runs/demo"), help="folder for the results")
