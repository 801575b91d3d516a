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

from minildm import autoencoder_training, bench, data, evaluation, images, ldm, losses, unet, viz
from minildm.conditioning import KINDS, TOKEN_KINDS, WordTokenizer, condition_tensor, conditioning_config
from minildm.config import PROFILES, MinildmError, Profile, get_profile
from minildm.judge import ToyFaceFeatures, load_judge


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
    train_ae.add_argument("--base-channels", type=positive_integer,
                          help="channels at full resolution (default: the profile's); fewer make a higher "
                               "resolution affordable")
    train_ae.add_argument("--patch-size", type=int, default=1, choices=[1, 2, 4],
                          help="fold p x p pixel patches into channels before the first convolution "
                               "(default 1: none); 2 trains f = 8 at 64 px about three times faster")
    train_ae.add_argument("--out", type=Path, required=True, help="run folder (resumed if it exists)")

    train_ldm = _command(commands, "train-ldm", "train the latent diffusion model (stage 2)", run_train_ldm)
    train_ldm.add_argument("--ae", type=Path, required=True, help="the autoencoder run folder (stage 1)")
    train_ldm.add_argument("--cond", default="none", choices=list(KINDS),
                           help="conditioning: none (unconditional), class, attributes, text (cross-attention), "
                           "inpaint or superres (concatenated input)")
    train_ldm.add_argument("--attributes", help="with --cond attributes: comma-separated names to condition on "
                           "(default: all of the data set's)")
    train_ldm.add_argument("--n", type=int, help="training images (default: those the autoencoder saw)")
    train_ldm.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    train_ldm.add_argument("--out", type=Path, required=True, help="run folder (resumed if it exists)")

    sample = _command(commands, "sample", "draw images from a trained model into a PNG grid", run_sample)
    sample.add_argument("--ldm", type=Path, required=True, help="a latent diffusion run folder")
    sample.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    sample.add_argument("--sampler", default="ddim", choices=list(ldm.SAMPLERS), help="default ddim")
    sample.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50; DDPM uses all)")
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 like DDPM")
    sample.add_argument("--prompt", help="text model: the caption to draw")
    sample.add_argument("--attributes", help="attribute model: comma-separated attributes to draw, e.g. "
                        "Smiling,Eyeglasses (the others absent)")
    sample.add_argument("--label", help="class model: the name of the class to draw")
    sample.add_argument("--guidance", type=float, default=ldm.DEFAULT_GUIDANCE,
                        help=f"classifier-free guidance scale (default {ldm.DEFAULT_GUIDANCE}; 1 = none)")
    sample.add_argument("--inpaint", type=Path, help="inpainting model: the image to complete")
    sample.add_argument("--mask", type=Path, help="with --inpaint: an image, white where to generate")
    sample.add_argument("--upscale", type=Path, help="super-resolution model: the image to enlarge")
    sample.add_argument("--out", type=Path, required=True, help="PNG file for the grid")

    evaluate = _command(commands, "evaluate", "print one JSON object of metrics on held-out images",
                        run_evaluate)
    target = evaluate.add_mutually_exclusive_group(required=True)
    target.add_argument("--ae", type=Path, help="an autoencoder run folder")
    target.add_argument("--ldm", type=Path, help="a latent diffusion run folder")
    evaluate.add_argument("--n", type=int, help="held-out images, and as many samples for an LDM "
                          "(default: the profile's)")

    bench_parser = _command(commands, "bench", "training and sampling speed and memory: pixel DM vs LDM-4/8",
                            run_bench)
    bench_parser.add_argument("--resolutions", type=integer_list, default=(32, 64, 128, 256),
                              help="image sides in pixels, comma-separated (default 32,64,128,256)")
    bench_parser.add_argument("--factors", type=integer_list, default=(1, 4, 8),
                              help="1 = pixel space, 4 and 8 = LDM-4 and LDM-8 (default 1,4,8)")
    bench_parser.add_argument("--batch", type=int, default=16, help="batch size of every case (default 16)")
    bench_parser.add_argument("--repeats", type=int, default=5, help="timed runs; medians are reported (default 5)")
    bench_parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    bench_parser.add_argument("--steps", type=int, default=50, help="DDIM steps per sample (default 50)")
    bench_parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    bench_parser.add_argument("--out", type=Path, default=Path("runs/bench"),
                              help="folder for bench.md, bench.json and bench.png (default runs/bench)")

    demo = _command(commands, "demo", "the embedded default end to end (toy faces)", run_demo)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the results")
    return parser


def _command(commands, name: str, help_text: str, run) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--profile", choices=list(PROFILES),
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
    try:
        config = autoencoder_training.autoencoder_config(profile, args.factor, args.reg, args.base_channels,
                                                         args.patch_size)
    except ValueError as error:
        raise MinildmError(str(error)) from None
    description = {"dataset": args.dataset or profile.dataset, "resolution": train.resolution,
                   "start": args.start, "n": len(train), "split": args.split, "seed": args.seed}
    started = time.perf_counter()
    autoencoder = autoencoder_training.train_autoencoder(
        args.out, train.pixels, config, profile, steps=args.steps, seed=args.seed,
        data_description=description, perceptual=losses.load_perceptual())
    minutes = (time.perf_counter() - started) / 60
    print(f"trained in {minutes:.1f} min; latent {autoencoder.latent_shape(train.resolution)}, "
          f"scale factor {autoencoder.scale_factor.item():.4f}; run folder {args.out}")


def run_train_ldm(args: argparse.Namespace, profile: Profile) -> None:
    if args.attributes and args.cond != "attributes":
        raise MinildmError("--attributes applies to --cond attributes only")
    autoencoder_training.load_autoencoder(args.ae)  # a clear error now rather than after loading data
    seen = _training_data(args.ae)
    train = data.load_images(seen["dataset"], seen["resolution"], args.n or seen["n"], start=seen["start"],
                             split=seen["split"], seed=seen["seed"])
    print(data.describe(train).splitlines()[0])
    conditioning, conditions = None, None
    if args.cond != "none":
        names = args.attributes.split(",") if args.attributes else None
        conditioning = conditioning_config(args.cond, train, attributes=names)
        if args.cond in TOKEN_KINDS:
            conditions = condition_tensor(conditioning, train)
    description = {**seen, "n": len(train)}
    started = time.perf_counter()
    model = ldm.train_ldm(args.out, args.ae, train.pixels, profile, steps=args.steps, seed=args.seed,
                          data_description=description, conditioning=conditioning, conditions=conditions)
    minutes = (time.perf_counter() - started) / 60
    latent_shape = model.latent_shape(train.resolution)
    print(f"trained in {minutes:.1f} min; UNet {unet.parameter_count(model.unet) / 1e6:.2f} M parameters, "
          f"{unet.forward_flops(model.unet, latent_shape) / 1e6:.0f} MFLOPs per forward pass on latents "
          f"{latent_shape}; run folder {args.out}")


def run_sample(args: argparse.Namespace, profile: Profile) -> None:
    if args.n < 1:
        raise MinildmError(f"--n must be at least 1, got {args.n}")
    if args.out.suffix.lower() != ".png":
        raise MinildmError(f"--out must name a .png file, got {args.out}")
    model = ldm.load_ldm(args.ldm, profile.device)
    resolution = _training_data(args.ldm)["resolution"]
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    try:
        if model.kind == "inpaint":
            image, mask = _inpainting_inputs(args, resolution)
            shown = image * (1 - mask)  # the first image of the grid: what the model sees
            images = model.inpaint(image.expand(args.n, -1, -1, -1), mask.expand(args.n, -1, -1, -1), args.steps,
                                   generator)
        elif model.kind == "superres":
            factor = model.config.conditioning.superres_factor
            low = _read_image(args.upscale, "--upscale", resolution // factor)
            shown = torch.nn.functional.interpolate(low, scale_factor=factor, mode="nearest")
            images = model.upscale(low.expand(args.n, -1, -1, -1), args.steps, generator)
        else:
            shown = torch.empty(0, 3, resolution, resolution)
            condition = _token_condition(args, model)
            if condition is not None:
                condition = condition.expand(args.n, *condition.shape[1:])  # the same for every sample
            images = model.sample(args.n, resolution, args.sampler, args.steps, args.eta, generator=generator,
                                  progress=True, condition=condition, guidance=args.guidance)
    except ValueError as error:
        raise MinildmError(str(error)) from None
    seconds = time.perf_counter() - started
    print(f"{args.n} samples in {seconds:.1f} s ({args.sampler}, "
          f"{args.steps if args.sampler == 'ddim' else model.diffusion.timesteps} steps): "
          f"{viz.save_grid(torch.cat([shown, images.cpu()]), args.out, scale=2)}")


def _token_condition(args: argparse.Namespace, model: ldm.LatentDiffusion) -> torch.Tensor | None:
    """The one condition (1, ...) that ``--prompt``, ``--attributes`` or ``--label`` asks for;
    None (the null condition) when none is given."""
    given = {option: value for option, value in (("--prompt", args.prompt), ("--attributes", args.attributes),
                                                 ("--label", args.label)) if value is not None}
    expected = {"text": "--prompt", "attributes": "--attributes", "class": "--label"}.get(model.kind)
    wrong = sorted(set(given) - {expected})
    if wrong:
        raise MinildmError(f"{', '.join(wrong)} does not apply to a model conditioned on {model.kind}"
                           + (f": use {expected}" if expected else ""))
    if expected not in given:
        return None
    names = model.config.conditioning.names
    if model.kind == "text":
        return WordTokenizer(names).encode([args.prompt], model.config.conditioning.max_length)
    if model.kind == "class":
        if args.label not in names:
            raise MinildmError(f"unknown class {args.label!r}; this model knows: {', '.join(names)}")
        return torch.tensor([names.index(args.label)])
    wanted = [name.strip() for name in args.attributes.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise MinildmError(f"unknown attribute(s) {', '.join(unknown)}; this model knows: {', '.join(names)}")
    return torch.tensor([[name in wanted for name in names]])


def _read_image(path: Path | None, option: str, resolution: int) -> torch.Tensor:
    """An image file as (1, 3, R, R) in [-1, 1]: RGB, central square, resized."""
    if path is None:
        raise MinildmError(f"this model needs {option} IMAGE")
    try:
        return images.uint8_to_float(images.prepare(images.open_image(path), resolution))[None]
    except FileNotFoundError:
        raise MinildmError(f"{option}: no such file: {path}") from None
    except images.UNREADABLE_ERRORS as error:
        raise MinildmError(f"{option}: cannot read {path} as an image ({type(error).__name__})") from None


def _inpainting_inputs(args: argparse.Namespace, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The image (1, 3, R, R) and its mask (1, 1, R, R), 1 where the mask image is light."""
    image = _read_image(args.inpaint, "--inpaint", resolution)
    mask = (_read_image(args.mask, "--mask", resolution).mean(dim=1, keepdim=True) > 0).float()
    if mask.sum() == 0:
        raise MinildmError(f"the mask {args.mask} is black everywhere: paint white where to generate")
    return image, mask


def run_evaluate(args: argparse.Namespace, profile: Profile) -> None:
    if args.ae:  # loading first: a wrong folder gets the model's own message
        autoencoder = autoencoder_training.load_autoencoder(args.ae, profile.device)
    else:
        model = ldm.load_ldm(args.ldm, profile.device)
    seen = _training_data(args.ae or args.ldm)
    default_n = profile.n_holdout if args.ae else profile.diffusion.fid_images
    held_out = data.load_images(seen["dataset"], seen["resolution"], args.n or default_n,
                                start=seen["start"] + seen["n"], split=seen["split"], seed=seen["seed"])
    if args.ae:
        results = autoencoder_training.evaluate_autoencoder(autoencoder, held_out.pixels)
    elif model.kind == "none":
        toy_faces = {"toyface": ToyFaceFeatures(load_judge())} if seen["dataset"] == "toyfaces" else None
        results = ldm.evaluate_ldm(model, held_out.pixels, generator=torch.Generator().manual_seed(args.seed),
                                   extra_features=toy_faces)
    else:
        results = _evaluate_conditional(model, held_out, seen["dataset"] == "toyfaces", args.seed)
    results["data"] = (f"{len(held_out)} held-out images of {seen['dataset']} from index "
                       f"{seen['start'] + seen['n']}, center crop, bicubic resize to {seen['resolution']} px")
    print(json.dumps(results))


def _evaluate_conditional(model: ldm.LatentDiffusion, held_out: data.ImageDataset, toy_faces: bool,
                          seed: int) -> dict:
    """Judge agreement for token models (toy faces only), PSNRs for inpainting and super-resolution."""
    judge = load_judge() if toy_faces else None
    if model.kind == "inpaint":
        return evaluation.evaluate_inpainting(model, held_out.pixels, judge, seed=seed)
    if model.kind == "superres":
        return evaluation.evaluate_superres(model, held_out.pixels, seed=seed)
    if judge is None:
        raise MinildmError("conditional samples are scored by the toy-face judge, so only toy-face models; "
                           "notebook 07 scores CelebA attributes with a classifier trained on CelebA")
    conditions = condition_tensor(model.config.conditioning, held_out)
    return evaluation.judge_token_model(model, judge, conditions, held_out.attributes, held_out.resolution,
                                        ldm.DEFAULT_GUIDANCE, seed=seed)


def _training_data(run_dir: Path) -> dict:
    """What a run folder was trained on, from its ``config.json``."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise MinildmError(f"{run_dir} is not a run folder (no config.json)")
    seen = json.loads(path.read_text()).get("data", {})
    if "dataset" not in seen:
        raise MinildmError(f"{run_dir} does not record the data it was trained on (a run trained from Python "
                           f"without data_description, as the notebooks do); train it with the command line")
    return seen


def run_bench(args: argparse.Namespace, profile: Profile) -> None:
    """Print the markdown table of :mod:`minildm.bench` and keep it, its numbers and a plot."""
    if min(args.batch, args.repeats, args.steps) < 1 or args.warmup < 0:
        raise MinildmError("--batch, --repeats and --steps must be at least 1, --warmup at least 0")
    bench.check_sizes(args.resolutions, args.factors, profile)
    device = torch.cuda.get_device_name() if profile.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = (f"minildm bench, profile {profile.name!r} on {device}, torch {torch.__version__}; UNet of the profile "
              f"(base {profile.diffusion.base_channels}, multipliers {profile.diffusion.channel_mult}, attention at "
              f"levels {profile.diffusion.attention_levels}); batch {args.batch}, medians of {args.repeats} runs")
    print(header)
    results = bench.run_bench(profile, args.resolutions, args.factors, progress=print, batch_size=args.batch,
                              repeats=args.repeats, warmup=args.warmup, sampling_steps=args.steps,
                              compile=args.compile)
    table = bench.markdown_table(results, args.steps)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(f"{header}\n\n{table}\n")
    (args.out / "bench.json").write_text(json.dumps({"header": header, "results": [vars(r) for r in results]},
                                                    indent=2))
    bench.plot(results).savefig(args.out / "bench.png", dpi=100)
    print(f"table, numbers and plot: {args.out}")


def run_demo(args: argparse.Namespace, profile: Profile) -> None:
    """Toy faces -> autoencoder -> latent diffusion -> a grid of samples and a metrics file."""
    started = time.perf_counter()
    print(f"minildm demo, profile {profile.name!r} on {profile.device}; results in {args.out}")
    train = data.load_images("toyfaces", profile.resolution, profile.n_images, seed=args.seed)
    held_out = data.load_images("toyfaces", profile.resolution, profile.n_holdout, start=profile.n_images,
                                seed=args.seed)
    print(data.describe(train).splitlines()[0])
    viz.save_grid(train.images()[:64], args.out / "data.png", scale=2)
    description = {"dataset": "toyfaces", "resolution": profile.resolution, "start": 0, "n": len(train),
                   "split": "train", "seed": args.seed}

    print("stage 1: the autoencoder (L1 and KL only, no perceptual loss, to stay fast)")
    config = autoencoder_training.autoencoder_config(profile, factor=4, reg="kl")
    autoencoder = autoencoder_training.train_autoencoder(
        args.out / "autoencoder", train.pixels, config, profile, steps=profile.diffusion.demo_autoencoder_steps,
        seed=args.seed, data_description=description)
    metrics = {"autoencoder": autoencoder_training.evaluate_autoencoder(autoencoder, held_out.pixels)}
    print(f"autoencoder: {metrics['autoencoder']['psnr']:.1f} dB PSNR on {len(held_out)} held-out faces")

    print("stage 2: the latent diffusion model")
    model = ldm.train_ldm(args.out / "ldm", args.out / "autoencoder", train.pixels, profile, seed=args.seed,
                          data_description=description)
    generator = torch.Generator().manual_seed(args.seed)
    grid = viz.save_grid(model.sample(64, profile.resolution, generator=generator), args.out / "samples.png",
                         scale=2)
    print(f"64 samples (DDIM, 50 steps): {grid}")
    try:
        metrics["ldm"] = ldm.evaluate_ldm(model, held_out.pixels[:profile.diffusion.fid_images // 3],
                                          generator=generator)
    except MinildmError as error:  # no Inception network: the samples are still there
        metrics["ldm"] = {"skipped": str(error)}
    metrics["minutes"] = round((time.perf_counter() - started) / 60, 2)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics["ldm"]))
    print(f"done in {metrics['minutes']:.1f} min; metrics: {args.out / 'metrics.json'}")
