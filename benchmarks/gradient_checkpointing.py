"""Gradient checkpointing (Chen et al. 2016) in numbers: the memory it saves, the time it costs.

With ``--gradient-checkpointing`` (``train-ae``, ``train-ldm``) each block of the UNet and of
the autoencoder keeps only its inputs for the backward pass and runs its forward once more
there to get its activations back (:func:`minildm.nn.checkpointed`). For the UNet and the KL
f = 4 autoencoder of the ``cpu`` and ``gpu`` profiles (:data:`minildm.config.PROFILES`) at the
profile's resolution (the UNet on that autoencoder's latents), in float32 on the CPU, this
script prints a markdown table, for batches of 8 and 32, of:

- the MiB kept for the backward pass without and with checkpointing: the tensors autograd saves
  (caught by ``torch.autograd.graph.saved_tensors_hooks``) and, with checkpointing, the block
  inputs that ``torch.utils.checkpoint`` holds for the recomputation (which those hooks do not
  see); each storage counted once, the weights left out;
- the median time of a training step (forward, mean-square loss, backward; the optimiser step,
  which checkpointing does not change, is left out) with checkpointing over without, over
  ``--repeats`` steps of each, alternating between the two so that other work on the machine
  hits both alike, after one untimed step of each. A case whose step would take longer than
  ``--max-seconds`` (three times its faster forward pass of the two above) is not timed.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gradient_checkpointing.py [--repeats 3] [--max-seconds 20] \
        [--profiles cpu,gpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import minildm.nn
from minildm.autoencoder import build_autoencoder
from minildm.config import PROFILES
from minildm.nn import set_gradient_checkpointing
from minildm.recipes import autoencoder_config, ldm_config
from minildm.unet import UNet

BATCH_SIZES = (8, 32)
Forward = Callable[[], Tensor]


def models(profile_name: str) -> list[tuple[str, nn.Module, Callable[[int], Forward]]]:
    """(name, model in train mode, batch size -> its forward pass on random inputs) for the
    profile's UNet and autoencoder."""
    profile = PROFILES[profile_name]
    side = profile.resolution
    autoencoder = build_autoencoder(autoencoder_config(profile)).train()
    unet = UNet(ldm_config(profile, autoencoder).unet).train()
    latent_shape = autoencoder.latent_shape(side)

    def unet_forward(batch_size: int) -> Forward:
        latents = torch.randn(batch_size, *latent_shape)  # (B, c, h, w)
        t = torch.randint(0, 1000, (batch_size,))
        return lambda: unet(latents, t)

    def autoencoder_forward(batch_size: int) -> Forward:
        images = torch.rand(batch_size, 3, side, side) * 2 - 1  # (B, 3, R, R)
        return lambda: autoencoder(images)[0]

    return [(f"UNet on {'x'.join(map(str, latent_shape))}", unet, unet_forward),
            (f"autoencoder KL f=4, {side} px", autoencoder, autoencoder_forward)]


def kept_bytes(forward: Forward) -> tuple[int, float]:
    """Bytes kept for the backward pass while ``forward()`` builds its graph (the saved
    tensors and the inputs of checkpointed blocks, each storage once, no weights), and the
    seconds the forward pass took."""
    storages: dict[int, int] = {}

    def keep(tensor: Tensor) -> Tensor:
        if isinstance(tensor, Tensor) and not isinstance(tensor, nn.Parameter):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def checkpoint_keeping_inputs(function, *inputs, **options):
        for tensor in inputs:
            keep(tensor)
        return checkpoint(function, *inputs, **options)

    started = time.perf_counter()
    with (torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor),
          mock.patch.object(minildm.nn, "checkpoint", checkpoint_keeping_inputs)):
        forward()
    return sum(storages.values()), time.perf_counter() - started


def step_seconds(model: nn.Module, forward: Forward, repeats: int) -> dict[bool, float]:
    """Median seconds of a step (forward, mean-square loss, backward) without (False) and
    with (True) checkpointing, alternating between the two, after one untimed step of each."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(1 + repeats):
        for enabled in (False, True):
            set_gradient_checkpointing(model, enabled)
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            forward().square().mean().backward()
            times[enabled].append(time.perf_counter() - started)
    return {enabled: statistics.median(seconds[1:]) for enabled, seconds in times.items()}


def table_row(profile_name: str, name: str, model: nn.Module, forward: Forward, batch_size: int,
              repeats: int, max_seconds: float) -> str:
    """One line of the table: memory without and with checkpointing, and the step times."""
    set_gradient_checkpointing(model, False)
    without, first_seconds = kept_bytes(forward)
    set_gradient_checkpointing(model, True)
    with_checkpointing, second_seconds = kept_bytes(forward)
    forward_seconds = min(first_seconds, second_seconds)  # the first pass also warms up
    memory = f"{without / 2**20:,.1f} | {with_checkpointing / 2**20:,.1f} | {with_checkpointing / without:.2f}"
    if 3 * forward_seconds > max_seconds:
        timing = f"not timed: about {3 * forward_seconds:.0f} s per step | -"
    else:
        seconds = step_seconds(model, forward, repeats)
        timing = f"{seconds[False]:.3f} | {seconds[True] / seconds[False]:.2f}"
    return f"| {profile_name} | {name} | {batch_size} | {memory} | {timing} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each kind (default 3)")
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="do not time a case whose step would take longer (default 20)")
    parser.add_argument("--profiles", type=lambda names: names.split(","), default=["cpu", "gpu"],
                        help="comma-separated profiles (default cpu,gpu)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; float32; "
          f"step = forward + mean-square loss + backward, medians of {args.repeats}\n")
    print("| profile | model | batch | kept for backward (MiB) | with checkpointing (MiB) | ratio | "
          "step without (s) | step time with / without |")
    print("|---|---|---|---|---|---|---|---|")
    for profile_name in args.profiles:
        for name, model, make_forward in models(profile_name):
            for batch_size in BATCH_SIZES:
                print(table_row(profile_name, name, model, make_forward(batch_size), batch_size, args.repeats,
                                args.max_seconds), flush=True)


if __name__ == "__main__":
    main()
