"""``python -m minildm evaluate``: one JSON object of metrics on held-out images, for an
autoencoder run (PSNR, SSIM) or a latent diffusion run (FID and KID with their floor, the
quality report of :mod:`minildm.evaluation.quality`, or the conditional scores)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from minildm import checkpoint as ckpt
from minildm import data
from minildm.app.options import check_memory, command, floor_images, image_bytes, load_seen, positive_integer
from minildm.autoencoder_training import load_autoencoder
from minildm.config import MinildmError, Profile
from minildm.data.sources import DataError
from minildm.evaluation import scores
from minildm.evaluation.judge import ToyFaceFeatures, load_judge
from minildm.evaluation.metrics import InceptionFeatures
from minildm.evaluation.quality import quality_report, quality_table
from minildm.ldm_training import load_ldm


def add_evaluate(commands) -> None:
    parser = command(commands, "evaluate", "print one JSON object of metrics on held-out images", run_evaluate)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--ae", type=Path, help="an autoencoder run folder")
    target.add_argument("--ldm", type=Path, help="a latent diffusion run folder")
    parser.add_argument("--n", type=positive_integer, help="held-out images, and as many samples for an LDM "
                        "(default: the profile's)")


def run_evaluate(args: argparse.Namespace, profile: Profile) -> None:
    run_dir = args.ae or args.ldm
    model = load_autoencoder(run_dir, profile.device) if args.ae else load_ldm(run_dir, profile.device)
    seen = ckpt.read_training_data(run_dir)  # loading first: a wrong folder gets the model's own message
    n = args.n or (profile.n_holdout if args.ae else profile.fid_images)
    # the held-out images (uint8) and as many samples, which the conditional scores keep as float32
    check_memory(image_bytes(n, seen["resolution"], bytes_per_value=1 + 4),
                 f"evaluating on {n:,} images of {seen['resolution']} px")
    try:
        held_out = load_seen(seen, n, seen["start"] + seen["n"])
    except DataError:
        raise MinildmError(f"no held-out images in {seen['dataset']} after the {seen['n']} that {run_dir} "
                           "trained on: train on fewer with --n") from None
    toy_faces = seen["dataset"] == "toyfaces"
    judge = load_judge() if toy_faces and not args.ae else None  # read once, for every score below
    if args.ae:
        results = scores.evaluate_autoencoder(model, held_out.pixels)
    elif model.kind == "none":
        floor = floor_images(seen, held_out)
        results = scores.evaluate_ldm(model, held_out.pixels, generator=torch.Generator().manual_seed(args.seed),
                                      extra_features={"toyface": ToyFaceFeatures(judge)} if judge is not None else None,
                                      floor_reference=floor)
        results["quality"] = _quality(model, seen, held_out, floor, judge, args, profile)
    else:
        results = scores.evaluate_conditional(model, held_out, judge, args.seed)
    results["data"] = (f"{len(held_out)} held-out images of {seen['dataset']} from index "
                       f"{seen['start'] + seen['n']}, center crop, bicubic resize to {seen['resolution']} px")
    print(json.dumps(results))


def _quality(model, seen: dict, held_out: data.ImageDataset, floor: torch.Tensor | None, judge,
             args: argparse.Namespace, profile: Profile) -> dict | None:
    """The quality report (:mod:`minildm.evaluation.quality`), its table on stderr: on toy faces
    with the ``judge``'s features, at the profile's held-out count (cheap); else on Inception
    features with the FID's images and floor (None without a floor)."""
    if seen["dataset"] == "toyfaces":
        n = args.n or profile.n_holdout
        reference = load_seen(seen, 2 * n, seen["start"] + seen["n"]).pixels
        features, (reference, others) = ToyFaceFeatures(judge), reference.chunk(2)
    elif floor is None:
        return None
    else:
        features, reference, others = InceptionFeatures(profile.device), held_out.pixels, floor
    report = quality_report(model, reference, others, features=features, judge=judge,
                            generator=torch.Generator().manual_seed(args.seed))
    print(quality_table(report), file=sys.stderr)
    return report
