"""How much of this CPU a training step uses: the UNet and autoencoder steps against a matmul peak.

For the ``cpu`` profile's UNet (on the 4 x 8 x 8 latents of its f = 4 autoencoder, batch 128)
and its autoencoder (32 px images, the profile's batch), this script times one optimiser step
(forward, loss, backward, Adam) in each precision the CPU supports (fp32 and, where
:func:`minildm.trainer.cpu_supports_bf16` says so, bf16 autocast) and memory layout
(contiguous, channels-last). It counts the step's floating-point operations with PyTorch's
FlopCounterMode (a multiply-add is 2) and prints, per case, the median step time, the
images per second, the GFLOP/s achieved and that as a fraction of the peak of a large square
matmul in the same dtype, measured first in the same run.

Usage::

    .venv/bin/python benchmarks/cpu_speed.py [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from minildm.autoencoder import build_autoencoder
from minildm.autoencoder_training import training_losses
from minildm.config import get_profile
from minildm.diffusion import Diffusion
from minildm.losses import AutoencoderLoss, LossConfig
from minildm.recipes import autoencoder_config, ldm_config
from minildm.trainer import cpu_supports_bf16
from minildm.unet import UNet

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a (size x size) @ (size x size) matmul in ``dtype``: 2 size^3 operations."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def unet_step(precision: str, channels_last: bool) -> tuple[Callable[[], None], int]:
    """One AdamW step of the diffusion loss for the cpu profile's UNet; and its batch size."""
    profile = get_profile("cpu")
    autoencoder = build_autoencoder(autoencoder_config(profile))
    unet = UNet(ldm_config(profile, autoencoder).unet)
    batch = profile.ldm.batch_size
    latents = torch.randn(batch, 4, 8, 8)
    if channels_last:
        unet, latents = unet.to(memory_format=torch.channels_last), latents.to(memory_format=torch.channels_last)
    diffusion, optimizer = Diffusion(), torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", DTYPES[precision], enabled=precision == "bf16"):
            loss = diffusion.loss(unet, latents)
        loss.backward()
        optimizer.step()
    return step, batch


def autoencoder_step(precision: str, channels_last: bool) -> tuple[Callable[[], None], int]:
    """One Adam step of the cpu profile's autoencoder loss (L1 + L2 + KL, no GAN yet)."""
    profile = get_profile("cpu")
    config = autoencoder_config(profile)
    autoencoder = build_autoencoder(config)
    objective = AutoencoderLoss(LossConfig.from_autoencoder(config, disc_start=10**9,
                                                            l2_weight=profile.autoencoder.l2_weight))
    batch = profile.autoencoder.batch_size
    pixels = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    if channels_last:
        autoencoder = autoencoder.to(memory_format=torch.channels_last)
    loss_fn = training_losses(autoencoder, objective)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", DTYPES[precision], enabled=precision == "bf16"):
            losses, _ = loss_fn({"pixels": pixels}, 0)
        losses["autoencoder"].backward()
        optimizer.step()
    return step, batch


def step_flops(step: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    peaks = {precision: matmul_peak(DTYPES[precision]) for precision in precisions}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak (2048 x 2048): "
          + ", ".join(f"{precision} {peak:.0f} GFLOP/s" for precision, peak in peaks.items()))
    print("| step | precision | layout | batch | ms per step | images/s | GFLOP/s | of the matmul peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, make in (("UNet", unet_step), ("autoencoder", autoencoder_step)):
        for precision in precisions:
            for channels_last in (False, True):
                step, batch = make(precision, channels_last)
                flops = step_flops(step)
                seconds = median_seconds(step, args.repeats)
                achieved = flops / seconds / 1e9
                print(f"| {name} | {precision} | {'channels-last' if channels_last else 'contiguous'} | {batch} | "
                      f"{seconds * 1e3:.1f} | {batch / seconds:.0f} | {achieved:.0f} | "
                      f"{achieved / peaks[precision]:.0%} |")


if __name__ == "__main__":
    main()
