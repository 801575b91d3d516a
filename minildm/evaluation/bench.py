"""What latent diffusion saves: training and sampling cost of pixel-space vs latent models.

The paper's central claim (Rombach et al. 2022, Sec. 4.1 and Table 6) is that a UNet on the
latent of an f = 4 or f = 8 autoencoder trains and samples far faster than the same UNet on
pixels (f = 1, "LDM-1"), because every layer works on f^2 times fewer positions and the
attention layers on f^4 times fewer pairs. This module measures that on the current device:

- training: one AdamW step of the diffusion loss (LDM eq. 2) on a batch of latents, as
  :func:`minildm.ldm_training.train_ldm` does it (latents are encoded once and cached, so the
  autoencoder is not part of a step; its one-off cost is the ``encode`` column);
- sampling: ``steps`` UNet evaluations (DDIM) plus one decoder pass per batch;
- memory: on CUDA the peak allocated during a training step; on CPU an estimate of the same,
  the weights, gradients and AdamW state plus the activations autograd keeps for backward
  (measured on one image, times the batch). A CPU case whose estimate exceeds the memory
  available is skipped, and a CUDA case that runs out of memory is reported as such, so a
  laptop gets a table with a note instead of a process killed by the system.

Every case uses the same UNet (the profile's widths, depth and attention levels). Times are
medians over ``repeats`` timed runs after ``warmup`` untimed ones. On CUDA the step runs under
bf16 autocast with channels-last tensors; attention goes through PyTorch's SDPA (flash
attention where the GPU has it); ``compile`` adds ``torch.compile``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from matplotlib.figure import Figure
from torch import Tensor

from minildm.autoencoder import PixelSpace, build_autoencoder
from minildm.config import MinildmError, Profile
from minildm.diffusion import Diffusion
from minildm.recipes import autoencoder_config
from minildm.unet import UNet, UNetConfig, parameter_count

MODEL_NAMES = {1: "pixel DM (f=1)", 4: "LDM-4", 8: "LDM-8"}


@dataclass
class BenchResult:
    """One row of the table: a model at one resolution."""

    model: str
    factor: int
    resolution: int
    unet_input: str
    parameters: int
    train_images_per_s: float
    sample_images_per_s: float
    encode_images_per_s: float | None
    memory_mb: float
    note: str = ""


def elapsed_seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``run()``; on CUDA, queued GPU work is waited for on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def median_seconds(run: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    return statistics.median(elapsed_seconds(run, device) for _ in range(repeats))


def saved_activation_bytes(run: Callable[[], Tensor], weights: Iterable[Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``run()`` builds its graph
    (each storage counted once), leaving out ``weights``: a convolution saves its weight too,
    and the weights are there once, whatever the batch."""
    left_out = {weight.untyped_storage().data_ptr() for weight in weights}
    storages: dict[int, int] = {}

    def keep(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in left_out:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        run()
    return sum(storages.values())


@dataclass
class Case:
    """One model set up for timing. ``train_step`` runs an AdamW step on the batch,
    ``one_image_loss`` builds the loss graph of one image (for the memory estimate),
    ``denoise`` is one UNet evaluation of the batch, ``decode`` and ``encode`` one pass of the
    autoencoder (``encode`` is None in pixel space)."""

    name: str
    unet_input: str
    unet: UNet
    device: torch.device
    train_step: Callable[[], None]
    one_image_loss: Callable[[], Tensor]
    denoise: Callable[[], Tensor]
    decode: Callable[[], Tensor]
    encode: Callable[[], Tensor] | None


def prepare_case(factor: int, resolution: int, profile: Profile, batch_size: int, compile: bool = False) -> Case:
    """The profile's UNet on pixels (``factor`` 1) or on the latents of the profile's KL
    autoencoder with that factor, at ``resolution`` px, with random data of ``batch_size``."""
    device = torch.device(profile.device)
    preset = profile.ldm
    autoencoder = PixelSpace() if factor == 1 else build_autoencoder(autoencoder_config(profile, factor=factor))
    autoencoder.to(device).eval().requires_grad_(False)
    channels, side, _ = autoencoder.latent_shape(resolution)
    unet = UNet(UNetConfig(in_channels=channels, out_channels=channels, base_channels=preset.base_channels,
                           channel_mult=preset.channel_mult, res_blocks=preset.res_blocks,
                           attention_levels=preset.attention_levels)).to(device)
    on_gpu = device.type == "cuda"
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    unet = unet.to(memory_format=memory_format)
    network = torch.compile(unet) if compile else unet
    diffusion = Diffusion()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    latents = torch.randn(batch_size, channels, side, side, device=device).to(memory_format=memory_format)
    images = torch.rand(batch_size, 3, resolution, resolution, device=device) * 2 - 1
    t = torch.full((batch_size,), diffusion.timesteps // 2, device=device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=on_gpu):
            loss = diffusion.loss(network, latents)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def denoise() -> Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=on_gpu):
            return network(latents, t)

    @torch.no_grad()
    def decode() -> Tensor:
        return autoencoder.decode(latents.float())

    @torch.no_grad()
    def encode() -> Tensor:
        return autoencoder.encode(images)

    return Case(MODEL_NAMES.get(factor, f"LDM-{factor}"), f"{channels}x{side}x{side}", unet, device, train_step,
                lambda: diffusion.loss(network, latents[:1]), denoise, decode, None if factor == 1 else encode)


def bench_case(factor: int, resolution: int, profile: Profile, batch_size: int = 16, repeats: int = 5,
               warmup: int = 2, sampling_steps: int = 50, compile: bool = False) -> BenchResult:
    """Measure one model of :func:`prepare_case`: training and sampling speed, memory."""
    case = prepare_case(factor, resolution, profile, batch_size, compile)
    device, parameters = case.device, parameter_count(case.unet)
    if device.type != "cuda":
        parameter_bytes = sum(p.numel() * p.element_size() for p in case.unet.parameters())
        memory = 4 * parameter_bytes + batch_size * saved_activation_bytes(case.one_image_loss, case.unet.parameters())
        available = psutil.virtual_memory().available
        if memory > available / 2:  # the math attention kernel also needs room for its temporaries
            return skipped(case, factor, resolution, parameters, memory,
                           f"skipped: needs about {memory / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
    try:
        train_seconds = median_seconds(case.train_step, repeats, warmup, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            case.train_step()
            memory = torch.cuda.max_memory_allocated(device)
        sample_seconds = (sampling_steps * median_seconds(case.denoise, repeats, warmup, device)
                          + median_seconds(case.decode, repeats, warmup, device))
        encode_rate = None if case.encode is None else batch_size / median_seconds(case.encode, repeats, warmup,
                                                                                    device)
    except torch.cuda.OutOfMemoryError:
        case.unet.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return skipped(case, factor, resolution, parameters, math.nan, "out of GPU memory")
    return BenchResult(case.name, factor, resolution, case.unet_input, parameters, batch_size / train_seconds,
                       batch_size / sample_seconds, encode_rate, memory / 2**20)


def skipped(case: Case, factor: int, resolution: int, parameters: int, memory: float, note: str) -> BenchResult:
    """A row for a case that was not timed, saying why."""
    return BenchResult(case.name, factor, resolution, case.unet_input, parameters, math.nan, math.nan, None,
                       memory / 2**20, note)


def steps_for_budget(factor: int, resolution: int, profile: Profile, seconds: float, multiple: int = 10) -> int:
    """Training steps (at the profile's batch size) that fit in ``seconds`` for the model of
    ``factor``, from a measured step time, rounded down to a ``multiple`` (at least one)."""
    case = prepare_case(factor, resolution, profile, profile.ldm.batch_size)
    steps = int(seconds / median_seconds(case.train_step, repeats=3, warmup=1, device=case.device))
    return max(multiple, steps // multiple * multiple)


def check_sizes(resolutions: tuple[int, ...], factors: tuple[int, ...], profile: Profile) -> None:
    """Refuse factors without an autoencoder and resolutions the models cannot take."""
    unet_downsampling = 2 ** (len(profile.ldm.channel_mult) - 1)
    for factor in factors:
        if factor not in MODEL_NAMES:
            raise MinildmError(f"factor {factor} has no model: choose among {', '.join(map(str, MODEL_NAMES))}")
        for resolution in resolutions:
            if resolution < 1 or resolution % (factor * unet_downsampling):
                raise MinildmError(f"resolution {resolution} does not suit f = {factor}: it must be a multiple "
                                   f"of {factor * unet_downsampling} (f times the UNet's {unet_downsampling}), "
                                   "above 0")


def run_bench(profile: Profile, resolutions: tuple[int, ...] = (32, 64, 128, 256),
              factors: tuple[int, ...] = (1, 4, 8), progress: Callable[[str], None] | None = None,
              **options) -> list[BenchResult]:
    """:func:`bench_case` for every factor at every resolution (``options``: its keywords)."""
    check_sizes(resolutions, factors, profile)
    results = []
    for resolution in resolutions:
        for factor in factors:
            result = bench_case(factor, resolution, profile, **options)
            if progress:
                progress(f"{result.model} at {resolution} px: "
                         + (result.note or f"{result.train_images_per_s:.1f} images/s"))
            results.append(result)
    return results


def speedups(results: list[BenchResult]) -> dict[tuple[int, int], float]:
    """Training images/s of each model divided by the pixel model's at the same resolution,
    keyed by (factor, resolution); left out where either was not measured."""
    pixel = {r.resolution: r.train_images_per_s for r in results if r.factor == 1 and not r.note}
    return {(r.factor, r.resolution): r.train_images_per_s / pixel[r.resolution]
            for r in results if r.resolution in pixel and not r.note}


def markdown_table(results: list[BenchResult], sampling_steps: int = 50) -> str:
    """The results as a markdown table, with the speed-up over the pixel model."""
    ratio = speedups(results)
    lines = [f"| model | resolution | UNet input | train images/s | speed-up vs pixel | "
             f"sample images/s (DDIM {sampling_steps}) | encode images/s | training memory (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        speedup = f"{ratio[(r.factor, r.resolution)]:.1f}x" if (r.factor, r.resolution) in ratio else "-"
        encode = "-" if r.encode_images_per_s is None else f"{r.encode_images_per_s:,.0f}"
        train, sample = (r.note, "-") if r.note else (f"{r.train_images_per_s:,.1f}", f"{r.sample_images_per_s:,.2f}")
        memory = "-" if math.isnan(r.memory_mb) else f"{r.memory_mb:,.0f}"
        lines.append(f"| {r.model} | {r.resolution} | {r.unet_input} | {train} | {speedup} | {sample} | {encode} | "
                     f"{memory} |")
    return "\n".join(lines)


def report_header(profile: Profile, batch_size: int, repeats: int) -> str:
    """One line that says what was measured where: profile, device, torch, UNet, batch."""
    device = torch.cuda.get_device_name() if profile.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    preset = profile.ldm
    return (f"minildm bench, profile {profile.name!r} on {device}, torch {torch.__version__}; UNet of the profile "
            f"(base {preset.base_channels}, multipliers {preset.channel_mult}, attention at levels "
            f"{preset.attention_levels}); batch {batch_size}, medians of {repeats} runs")


def save_report(results: list[BenchResult], header: str, table: str, out: Path) -> None:
    """``bench.md`` (the header and the table), ``bench.json`` (the numbers) and ``bench.png``
    (:func:`plot`) in the folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(f"{header}\n\n{table}\n")
    (out / "bench.json").write_text(json.dumps({"header": header, "results": [vars(r) for r in results]}, indent=2))
    plot(results).savefig(out / "bench.png", dpi=100)


def plot(results: list[BenchResult]) -> Figure:
    """Training images/s and memory against resolution, one line per model (log scales);
    cases that were not measured are left out."""
    figure = Figure(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    for factor in sorted({r.factor for r in results}):
        rows = [r for r in results if r.factor == factor]
        timed = [r for r in rows if not r.note]
        sized = [r for r in rows if not math.isnan(r.memory_mb)]
        for axis, points in ((axes[0], [(r.resolution, r.train_images_per_s) for r in timed]),
                             (axes[1], [(r.resolution, r.memory_mb) for r in sized])):
            if points:
                axis.plot(*zip(*points), "o-", label=rows[0].model)
    resolutions = sorted({r.resolution for r in results})
    for axis, label in zip(axes, ("training images/s", "training memory (MB)")):
        axis.set(xscale="log", xlabel="image resolution (px)", ylabel=label)
        axis.set_xticks(resolutions, [str(size) for size in resolutions])
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.set_yscale("log")
            axis.legend()
    figure.tight_layout()
    return figure
