"""Training on several devices: ``torchrun --nproc_per_node N -m minildm train-ae ...``.

torchrun starts N copies of the same command, one per device, and tells each its rank (0 to
N-1) through environment variables. Every copy builds the same model from the same seed and
trains on its own part of every global batch; before each optimiser step the gradients are
averaged across the copies with one all-reduce, so every copy takes the same step and the
weights stay identical. This is data parallelism, what PyTorch's ``DistributedDataParallel``
does; DDP also overlaps the all-reduce with the backward pass, minildm keeps one explicit call
that is easier to read.

- The global batch is (batch per device) x (devices) x (gradient accumulation). Rank r takes
  micro-batches r * accumulate ... (r + 1) * accumulate - 1 of every step (a distributed
  sampler over one seeded permutation), and each micro-batch draws its random numbers from a
  seed made of (seed, step, micro-batch). N processes therefore run the same training as one
  process with ``--accumulate N``, up to the order in which floating-point sums are taken.
- Only rank 0 prints, shows progress bars and writes files; every rank reads the same checkpoint.
- NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started (one of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> World:
    """The world torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
    return World(rank=int(os.environ.get("RANK", 0)), size=int(os.environ.get("WORLD_SIZE", 1)),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def start(device_type: str) -> World:
    """Join the process group when torchrun started several processes: NCCL between GPUs
    (each process on the GPU of its local rank), gloo between CPU processes."""
    world = current()
    if world.size > 1 and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return world


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the processes: one all-reduce of all of them."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients or not dist.is_initialized():
        return
    flat = torch.cat([g.reshape(-1) for g in gradients])  # one message instead of one per tensor
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for gradient, mean in zip(gradients, flat.split([g.numel() for g in gradients])):
        gradient.copy_(mean.view_as(gradient))


def average_values(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Logged numbers averaged over the processes, so rank 0 logs the whole global batch."""
    if not values or not dist.is_initialized():
        return values
    numbers = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(numbers)
    return dict(zip(values, (numbers / dist.get_world_size()).tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on one (a Ctrl-C, a NaN loss): all stop together
    instead of some waiting forever in the next all-reduce."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def my_rows(n: int, world: World) -> slice:
    """This process's part of ``n`` rows (parts differ by at most one row)."""
    return slice(world.rank * n // world.size, (world.rank + 1) * n // world.size)


def gather_rows(part: Tensor, n: int, world: World) -> Tensor:
    """Every process's part (:func:`my_rows`) joined into all ``n`` rows, on every process."""
    if world.size == 1:
        return part
    largest = -(-n // world.size)
    padded = torch.cat([part, part.new_zeros(largest - len(part), *part.shape[1:])])
    gathered = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(gathered, padded)
    sizes = [len(range(n)[my_rows(n, World(rank, world.size))]) for rank in range(world.size)]
    return torch.cat([rows[:size] for rows, size in zip(gathered, sizes)])
