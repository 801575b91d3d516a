"""Semantic synthesis, layout-to-image and sampling at twice the training size, scored.

Trains a semantic (concat) and a layout (cross-attention) LDM on the latents of a trained toy-face
autoencoder, then prints one markdown table: the segmenter's ceiling, each task's score on
held-out maps and layouts, its shuffled and unconditional baselines, and semantic synthesis at
twice the training size against the same at 1x; then whether the layout model's samples have
glasses, a hat or a beard when their layout asks for one, and only then. Run from the
repository root (a second run with the same ``--out`` and steps reuses the trained models)::

    .venv/bin/python benchmarks/paper_tasks.py --ae RUN_FOLDER --profile cpu --steps 1400

``--ae`` must be a toy-face autoencoder run folder (``train-ae --dataset toyfaces``, or a
demo's ``autoencoder/``): its data are the training faces.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from minildm import checkpoint as ckpt
from minildm.conditioning import ConditioningConfig, layout_tensor
from minildm.config import get_profile
from minildm.data.images import float_to_uint8
from minildm.data.toyface_parts import PARTS, generate_parts
from minildm.evaluation.part_scores import box_agreement, map_agreement, presence_agreement, shuffled, tiled
from minildm.evaluation.segmenter import load_segmenter
from minildm.ldm_training import LDMTraining, train_ldm
from minildm.sampling import SamplerOptions


def train(kind: str, out: Path, args, pixels, conditions, seen) -> tuple[object, float]:
    started = time.perf_counter()
    training = LDMTraining(profile=get_profile(args.profile), steps=args.steps, seed=args.seed,
                           conditioning=ConditioningConfig(kind, class_names=list(PARTS)), data_description=seen,
                           progress=False)
    model = train_ldm(out / kind, pixels, autoencoder_dir=args.ae, training=training, conditions=conditions)
    return model, (time.perf_counter() - started) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae", type=Path, required=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="UNet steps (default: the profile's)")
    parser.add_argument("--n-eval", type=int, default=256)
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/paper_tasks"))
    args = parser.parse_args()
    seen = ckpt.read_training_data(args.ae)
    images, _, maps, boxes, present = generate_parts(seen["n"], seen["resolution"], seen["seed"], seen["start"])
    pixels, layouts = float_to_uint8(images), layout_tensor(boxes, present)
    start = seen["start"] + seen["n"]
    real, _, eval_maps, eval_boxes, eval_present = generate_parts(args.n_eval, seen["resolution"], seen["seed"], start)
    eval_layouts = layout_tensor(eval_boxes, eval_present)
    segmenter = load_segmenter()
    options = SamplerOptions(steps=args.sampling_steps)
    generator = torch.Generator().manual_seed(args.seed)

    semantic, semantic_minutes = train("semantic", args.out, args, pixels, maps, seen)
    layout, layout_minutes = train("layout", args.out, args, pixels, layouts, seen)
    drawn = semantic.synthesize(eval_maps, options, generator=generator)
    placed = layout.sample(args.n_eval, seen["resolution"], options, condition=eval_layouts, guidance=3.0,
                           generator=generator)
    free = layout.sample(args.n_eval, seen["resolution"], options, generator=generator)  # the null layout
    large_maps = tiled(eval_maps)
    large = semantic.synthesize(large_maps, options, generator=generator)
    rows = [
        ("segmenter on real faces (ceiling)", map_agreement(segmenter, real, eval_maps),
         box_agreement(segmenter, real, eval_layouts)),
        ("samples, asked maps / layouts", map_agreement(segmenter, drawn, eval_maps),
         box_agreement(segmenter, placed, eval_layouts)),
        ("samples against shuffled maps / layouts", map_agreement(segmenter, drawn, shuffled(eval_maps)),
         box_agreement(segmenter, placed, shuffled(eval_layouts))),
        ("unconditional samples (null layout)", map_agreement(segmenter, free, eval_maps),
         box_agreement(segmenter, free, eval_layouts)),
        (f"semantic at 2x ({len(large)} maps of four faces, 64 px)",
         map_agreement(segmenter, large, large_maps, resize=False), float("nan")),
    ]
    print(f"profile {args.profile}, UNet steps {args.steps or get_profile(args.profile).ldm.steps}, "
          f"{args.n_eval} held-out faces, DDIM {args.sampling_steps}; training: semantic {semantic_minutes:.1f} min, "
          f"layout {layout_minutes:.1f} min")
    print("| | mIoU (semantic) | box IoU (layout) |\n|---|---|---|")
    for name, semantic_score, layout_score in rows:
        print(f"| {name} | {semantic_score:.3f} | {layout_score:.3f} |")
    presence = {"asked": presence_agreement(segmenter, placed, eval_layouts),
                "shuffled": presence_agreement(segmenter, placed, shuffled(eval_layouts)),
                "unconditional": presence_agreement(segmenter, free, eval_layouts),
                "real faces": presence_agreement(segmenter, real, eval_layouts)}
    print("layout model, glasses, hat and beard there when asked and only then (balanced accuracy): "
          + ", ".join(f"{name} {value:.3f}" for name, value in presence.items()))


if __name__ == "__main__":
    main()
