"""Training speed of minildm's UNet against diffusers' ``UNet2DModel`` of the same shape.

Both networks are the ADM-style UNet (Dhariwal & Nichol 2021): a sinusoidal time embedding
and an MLP, ResBlocks that scale and shift their features by it, self-attention at chosen
levels, a middle block (ResBlock, attention, ResBlock) and an up path with concatenated skip
connections. :func:`build_diffusers_unet` configures ``UNet2DModel`` level by level from a
:class:`minildm.unet.UNetConfig` (:func:`minildm.interop.diffusers_unet.diffusers_unet_config`,
which ``minildm export`` uses too): the layers match one for one (tests/test_compare_unet.py
copies diffusers' weights into minildm's UNet and gets the same outputs), so the parameter
counts and FLOPs are equal. What still differs is how the layers run:

- attention: minildm computes q, k, v with one 1x1 convolution and splits the heads with a
  strided view, so on CPU ``scaled_dot_product_attention`` takes its math path (bmm, softmax);
  diffusers applies three Linear layers to (B, HW, C) tokens and reaches the fused kernel;
- initialisation: minildm starts the last conv of each ResBlock, the attention output and the
  output layer at zero; diffusers keeps PyTorch's default (no effect on speed);
- minildm takes gcd(32, channels) GroupNorm groups per layer and narrows attention heads
  below ``head_channels`` where a level has fewer channels; diffusers takes one group count
  for all layers and cannot narrow heads, so configurations where these matter are refused.

One training step is: forward on random latents and random integer time steps in
[0, 1000), MSE to a random noise target, backward, AdamW step. After ``--warmup`` untimed
steps each, the script times ``--repeats`` steps per model with ``time.perf_counter``,
alternating between the two models (A, B, A, B, ...) so that noise from other work on the
machine hits both equally, and prints the median in a markdown table.

The defaults are the ``cpu`` profile's latent UNet (:data:`minildm.config.PROFILES`) on its
f = 4 latents (32 px images -> 4 x 8 x 8) at its training batch size::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_unet.py --repeats 10
    .venv/bin/python benchmarks/compare_unet.py --device cuda --bf16 --channels 128 --mult 1,2,3,4 \
        --res-blocks 2 --attention 1,2,3 --resolution 16 --batch 64
"""

from __future__ import annotations

import argparse
import statistics

import diffusers
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from minildm.evaluation.bench import elapsed_seconds
from minildm.app.options import integer_list
from minildm.config import PROFILES
from minildm.interop.diffusers_unet import diffusers_unet_config
from minildm.unet import UNet, UNetConfig, parameter_count

CPU_PROFILE = PROFILES["cpu"]
LATENT_FACTOR = 4  # the cpu profile's autoencoder: 32 px images -> 8 x 8 latents
TIMESTEPS = 1000


class DiffusersUNet(nn.Module):
    """``UNet2DModel`` with minildm's call signature: ``forward(x, t)`` -> a tensor."""

    def __init__(self, model: diffusers.UNet2DModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t, return_dict=False)[0]


def build_diffusers_unet(config: UNetConfig) -> DiffusersUNet:
    """``UNet2DModel`` set up layer for layer as ``UNet(config)`` (:mod:`minildm.interop.diffusers_unet`)."""
    return DiffusersUNet(diffusers.UNet2DModel(**diffusers_unet_config(config)))


def attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of PyTorch's fused CPU attention kernel, which its FLOP counter does not know:
    the same as the GPU kernels'. diffusers' attention reaches it on CPU; minildm's strided
    heads take the math path, which the counter sees as bmm."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_flops(model: nn.Module, x: Tensor, t: Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts as 2)."""
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        model(x, t)
    return counter.get_total_flops()


def random_batch(batch: int, shape: tuple[int, int, int], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Latents (B, C, H, W), time steps (B,) and a noise target (B, C, H, W)."""
    x = torch.randn(batch, *shape, device=device)
    t = torch.randint(0, TIMESTEPS, (batch,), device=device)
    return x, t, torch.randn_like(x)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, t: Tensor, target: Tensor,
                  bf16: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = F.mse_loss(model(x, t).float(), target)
    loss.backward()
    optimizer.step()


def time_training_steps(models: dict[str, nn.Module], batch: int, shape: tuple[int, int, int], repeats: int,
                        warmup: int, bf16: bool = False) -> dict[str, float]:
    """Median seconds per training step of each model, the models taking turns step by step."""
    device = next(next(iter(models.values())).parameters()).device
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    seconds = {name: [] for name in models}
    for step in range(warmup + repeats):
        x, t, target = random_batch(batch, shape, device)
        for name, model in models.items():
            elapsed = elapsed_seconds(lambda: training_step(model, optimizers[name], x, t, target, bf16), device)
            if step >= warmup:
                seconds[name].append(elapsed)
    return {name: statistics.median(times) for name, times in seconds.items()}


def markdown_table(parameters: dict[str, int], flops: dict[str, int], medians: dict[str, float],
                   batch: int) -> str:
    rows = ["| model | parameters | forward MFLOPs/image | median ms/step | images/s |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name, median in medians.items():
        rows.append(f"| {name} | {parameters[name]:,} | {flops[name] / batch / 1e6:.1f} "
                    f"| {median * 1e3:.1f} | {batch / median:.0f} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    preset = CPU_PROFILE.ldm
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--channels", type=int, default=preset.base_channels, help="base channels")
    parser.add_argument("--mult", type=integer_list, default=preset.channel_mult, help="channel multipliers, e.g. 1,2,2")
    parser.add_argument("--res-blocks", type=int, default=preset.res_blocks, help="ResBlocks per level going down")
    parser.add_argument("--attention", type=integer_list, default=preset.attention_levels,
                        help="levels with self-attention, e.g. 1,2 (0 = full resolution)")
    parser.add_argument("--resolution", type=int, default=CPU_PROFILE.resolution // LATENT_FACTOR,
                        help="latent side")
    parser.add_argument("--in-channels", type=int, default=4, help="latent channels")
    parser.add_argument("--batch", type=int, default=preset.batch_size, help="latents per training step")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; None keeps torch's")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = UNetConfig(in_channels=args.in_channels, out_channels=args.in_channels, base_channels=args.channels,
                        channel_mult=args.mult, res_blocks=args.res_blocks, attention_levels=args.attention)
    models = {"minildm UNet": UNet(config).to(device),
              "diffusers UNet2DModel": build_diffusers_unet(config).to(device)}
    shape = (args.in_channels, args.resolution, args.resolution)

    parameters = {name: parameter_count(model) for name, model in models.items()}
    x, t, _ = random_batch(args.batch, shape, device)
    flops = {name: forward_flops(model, x, t) for name, model in models.items()}
    medians = time_training_steps(models, args.batch, shape, args.repeats, args.warmup, args.bf16)

    ours, theirs = medians.values()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}, bf16 {args.bf16}")
    print(f"UNet: {config}; latents {args.batch} x {shape}; {args.warmup} warm-up + {args.repeats} timed "
          f"steps each, interleaved\n")
    print(markdown_table(parameters, flops, medians, args.batch))
    print(f"\nratio diffusers / minildm median: {theirs / ours:.2f} (> 1: minildm is faster)")
    difference = parameters["diffusers UNet2DModel"] - parameters["minildm UNet"]
    print(f"parameters, diffusers - minildm: {difference:+,} (the layers match one for one; minildm's "
          f"1x1-conv qkv holds diffusers' to_q, to_k and to_v)")


if __name__ == "__main__":
    main()
