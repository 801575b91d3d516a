"""The one training loop, used by every stage of the course (autoencoder, diffusion).

A stage hands the :class:`Trainer` its modules, one optimiser per group of parameters
and a function that turns a batch into one loss per optimiser. The trainer does the rest:

- batches drawn from a seeded permutation per epoch, so step ``s`` always sees the same data;
- gradient accumulation, optional gradient clipping, learning-rate warm-up and cosine decay,
  bf16 autocast on a GPU and on a CPU with bf16 instructions (:func:`autocast_dtype`);
- an exponential moving average (EMA) of one module's weights, used for figures and the
  exported weights only; the optimiser never sees it;
- a progress bar with the losses, figures every ``figure_every`` steps;
- on a CPU, torch's threads fitted to the cores other processes leave free (:mod:`minildm.threads`);
- checkpoints (weights, EMA, optimiser states, random-number generators, loss history) in
  one safetensors file written atomically, every ``checkpoint_every`` steps or
  ``checkpoint_minutes`` minutes, so a run resumes exactly where it stopped, even after
  ``kill -9``;
- Ctrl-C finishes the current step, saves, and stops; a NaN or infinite loss stops with a
  message naming the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from minildm import checkpoint as ckpt
from minildm import distributed
from minildm.threads import ThreadFitter
from minildm.config import MinildmError
from minildm.viz import save_grid

Batch = dict[str, torch.Tensor]
LossFunction = Callable[[Batch, int], tuple[dict[str, torch.Tensor], dict[str, float]]]


PRECISIONS = ("auto", "bf16", "fp32")


def cpu_supports_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype of the forward passes under autocast, or None for fp32 throughout. ``auto``:
    bf16 on a GPU that supports it and on a CPU with bf16 instructions, else fp32; ``bf16``
    asks for it anywhere; the weights, their gradients and the optimiser stay fp32."""
    if precision not in PRECISIONS:
        raise MinildmError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
    return torch.bfloat16 if supported else None


class TrainingError(MinildmError):
    """Training cannot go on: a loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """How long and how to train; the stage decides what is trained. A checkpoint is saved
    every ``checkpoint_every`` steps or ``checkpoint_minutes`` minutes, whichever comes first,
    so a killed run loses at most that much work. ``precision``: the forward passes' dtype
    (:func:`autocast_dtype`)."""

    steps: int
    batch_size: int
    accumulate: int = 1
    ema_decay: float | None = None
    max_grad_norm: float | None = None
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    figure_every: int = 0
    seed: int = 0
    warmup_steps: int = 0
    cosine_decay: bool = False
    precision: str = "auto"

    def learning_rate_scale(self, step: int) -> float:
        """Factor on every optimiser's learning rate at ``step``: a linear warm-up over
        ``warmup_steps``, then constant, or with ``cosine_decay`` a half cosine down to zero
        at ``steps`` (Loshchilov & Hutter 2017)."""
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.cosine_decay:
            scale *= 0.5 * (1 + math.cos(math.pi * step / self.steps))
        return scale


class EMA:
    """Exponential moving average of a module's weights (Polyak averaging):
    ``shadow <- d * shadow + (1 - d) * weights`` after every optimiser step, with the decay
    warming up as ``d = min(decay, (1 + step) / (10 + step))`` so that short runs are not
    dominated by the random initial weights."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        for shadow, current in zip(self.module.state_dict().values(), module.state_dict().values()):
            if shadow.dtype.is_floating_point:
                shadow.lerp_(current, 1 - decay)
            else:
                shadow.copy_(current)


class Trainer:
    """Runs :class:`TrainConfig` on a stage and keeps its run folder.

    Args:
        run_dir: folder for ``config.json``, ``checkpoint.safetensors``, ``weights.safetensors``
            (the weights to sample with: EMA where there is one) and ``figures/``.
        modules: everything to save, by name, e.g. {"autoencoder": ..., "loss": ...}.
        optimizers: by name; ``loss_fn`` returns one loss per name.
        loss_fn: (batch, step) -> ({optimizer name: scalar loss}, {log name: float}).
        data: tensors with the same first dimension; a batch takes the same rows of each.
        config: the training settings.
        run_config: everything that defines the models (saved as ``config.json``; a run
            folder with a different one is refused rather than resumed).
        ema_of: names of the modules to average (one name or several), if
            ``config.ema_decay`` is set.
        figure_fn: (the modules to show, by name, EMA where there is one; step) -> images
            (B, 3, H, W) in [-1, 1].
    """

    def __init__(self, run_dir: str | Path, modules: dict[str, nn.Module], *,
                 optimizers: dict[str, torch.optim.Optimizer], loss_fn: LossFunction,
                 data: Batch, config: TrainConfig, run_config: dict, ema_of: str | Sequence[str] = (),
                 figure_fn: Callable[[dict[str, nn.Module], int], torch.Tensor] | None = None,
                 progress: bool = True):
        self.run_dir = Path(run_dir)
        self.modules, self.optimizers, self.loss_fn = modules, optimizers, loss_fn
        self.data, self.config, self.run_config = data, config, run_config
        self.figure_fn, self.progress = figure_fn, progress
        self.size = len(next(iter(data.values())))
        averaged = [ema_of] if isinstance(ema_of, str) else list(ema_of)
        self.ema = {name: EMA(modules[name], config.ema_decay) for name in averaged} if config.ema_decay else {}
        self.world = distributed.current()
        self.autocast = autocast_dtype(self.device, config.precision)  # None: fp32 throughout
        self.step = 0
        self.saved_step: int | None = None  # step of the checkpoint on disk, if any
        self.saved_at = time.monotonic()
        self.history: list[dict[str, float]] = []
        self.stop_requested = False
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])

    @property
    def micro_batches(self) -> int:
        """Micro-batches in one optimiser step: accumulated ones times processes."""
        return self.config.accumulate * self.world.size

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.safetensors"

    @property
    def device(self) -> torch.device:
        first_module = next(iter(self.modules.values()))
        return next(first_module.parameters()).device

    def fit(self, resume: bool = True) -> list[dict[str, float]]:
        """Train until ``config.steps``, resuming from the run folder's checkpoint if any."""
        if self.world.is_main:
            ckpt.write_run_config(self.run_dir, self.run_config)
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            if self.step > self.config.steps:  # returning it would pass a longer-trained model off as this one
                raise TrainingError(f"{self.run_dir} already holds a run trained for {self.step} steps, more than "
                                    f"the {self.config.steps} asked for: ask for {self.step} or more, or train "
                                    "into another folder")
        first_step = self.step
        show = self.progress and self.world.is_main
        if show:
            print(batch_summary(self.config, self.world))
        with tqdm(total=self.config.steps, initial=self.step, desc="training", disable=not show) as bar, \
                ctrl_c_finishes_the_step(self):  # the bar is closed before any error is printed
            threads = ThreadFitter(self.device)
            while self.step < self.config.steps:
                logs = self.train_step()
                threads.update()
                bar.update()
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(logs.items())[:4]})
                self._after_step()
                if distributed.any_rank(self.stop_requested, self.device):  # every process stops together
                    self.save_checkpoint()
                    raise KeyboardInterrupt(f"interrupted: saved step {self.step} to {self.checkpoint_path}")
        if self.step > first_step or not self.checkpoint_path.exists():  # a finished run's files stay untouched
            self.save_checkpoint()
        return self.history

    def train_step(self) -> dict[str, float]:
        """One optimiser step for every optimiser, over ``accumulate`` micro-batches of this
        process; under torchrun the gradients are then averaged over the processes. Each
        micro-batch draws its random numbers from its own seed, so however the micro-batches
        are shared out, the step is the same (:mod:`minildm.distributed`)."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        accumulate = self.config.accumulate
        for micro in range(self.world.rank * accumulate, (self.world.rank + 1) * accumulate):
            torch.manual_seed(((self.config.seed * 1_000_003 + self.step) * 1_009 + micro) % 2**64)  # torch's range
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                losses, logs = self.loss_fn(self.batch(self.step, micro), self.step)
            self._check_finite(losses)
            names = list(losses)
            for name in names:
                parameters = [p for group in self.optimizers[name].param_groups for p in group["params"]]
                (losses[name] / self.config.accumulate).backward(
                    inputs=parameters, retain_graph=name != names[-1])
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value / self.config.accumulate
        totals = distributed.average_values(totals, self.device)
        lr_scale = self.config.learning_rate_scale(self.step)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_scale
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            distributed.average_gradients(parameters)
            if self.config.max_grad_norm:
                nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
            optimizer.step()
        for name, ema in self.ema.items():
            ema.update(self.modules[name], self.step)
        self.history.append({"step": self.step, **totals})
        self.step += 1
        return totals

    def batch(self, step: int, micro: int = 0) -> Batch:
        """Rows for micro-batch ``micro`` of a step (counted over every process): positions in
        an endless stream of seeded epoch permutations."""
        size = self.config.batch_size
        first = (step * self.micro_batches + micro) * size
        positions = torch.arange(first, first + size)
        epochs, offsets = positions // self.size, positions % self.size
        rows = torch.empty(size, dtype=torch.int64)
        for epoch in epochs.unique().tolist():
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(
                (self.config.seed * 1_000_003 + epoch) % 2**64))
            chosen = epochs == epoch
            rows[chosen] = order[offsets[chosen]]
        return {name: values[rows].to(self.device) for name, values in self.data.items()}

    def sampling_module(self, name: str) -> nn.Module:
        """The weights to evaluate with: the EMA copy of ``name`` when there is one."""
        return self.ema[name].module if name in self.ema else self.modules[name]

    def _after_step(self) -> None:  # every process: only rank 0 writes, all keep the step
        minutes = (time.monotonic() - self.saved_at) / 60
        if self.step % self.config.checkpoint_every == 0 or minutes >= self.config.checkpoint_minutes:
            self.save_checkpoint()
        if self.figure_fn and self.config.figure_every and self.step % self.config.figure_every == 0 \
                and self.world.is_main:
            self.save_figure()

    def save_figure(self) -> Path:
        """A figure of the modules at this step. It draws its own random numbers, so the
        training after it is the same whether or not figures are made (and after a resume)."""
        shown = {name: self.sampling_module(name) for name in self.modules}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            images = self.figure_fn(shown, self.step)
        return save_grid(images, self.run_dir / "figures" / f"step{self.step:07d}.png")

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        bad = [name for name, loss in losses.items() if not torch.isfinite(loss).all()]
        if not distributed.any_rank(bool(bad), self.device):  # under torchrun, all processes stop together
            return
        last = (f"the last good checkpoint is {self.checkpoint_path} (step {self.saved_step})"
                if self.saved_step is not None else "no checkpoint was saved yet")
        what = f"the {bad[0]} loss became {losses[bad[0]].item()}" if bad else "a loss became NaN on another process"
        raise TrainingError(f"{what} at step {self.step}; {last}. Lower the learning rate or check the data")

    def save_checkpoint(self) -> Path:
        """Everything needed to resume exactly, in one file, plus the weights to sample with.
        Under torchrun only rank 0 writes; every process notes the step."""
        if self.world.is_main:
            metadata = {"step": self.step, "history": self.history, "train_config": asdict(self.config)}
            ckpt.save_training_state(self.checkpoint_path, modules=self.modules, averages=self._averages(),
                                     optimizers=self.optimizers, metadata=metadata)
            self.export_weights()
        self.saved_step, self.saved_at = self.step, time.monotonic()
        return self.checkpoint_path

    def export_weights(self) -> Path:
        """``weights.safetensors``: every module, with the EMA weights where there are some."""
        tensors = {}
        for name in self.modules:
            tensors.update(ckpt.with_prefix(name, self.sampling_module(name).state_dict()))
        return ckpt.save_atomic(tensors, self.run_dir / "weights.safetensors", {"step": self.step})

    def load_checkpoint(self) -> None:
        metadata = ckpt.load_training_state(self.checkpoint_path, modules=self.modules, averages=self._averages(),
                                            optimizers=self.optimizers)
        self.step, self.history = metadata["step"], metadata["history"]
        self.saved_step = self.step

    def _averages(self) -> dict[str, nn.Module]:
        return {name: ema.module for name, ema in self.ema.items()}


@contextlib.contextmanager
def ctrl_c_finishes_the_step(trainer: Trainer):
    """While training, a first Ctrl-C asks the trainer to save and stop after the current
    step; a second one stops at once."""

    def request_stop(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, request_stop) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        trainer.stop_requested = False


def batch_summary(config: TrainConfig, world: distributed.World) -> str:
    """The global batch, and what happens to the learning rate (printed when training starts)."""
    total = config.batch_size * world.size * config.accumulate
    return (f"batch: {config.batch_size} per device x {world.size} device(s) x {config.accumulate} accumulated = "
            f"{total} images per step; learning rate as the profile sets it, not scaled with the global batch "
            f"(the LDM code's scale_lr would multiply it by {world.size * config.accumulate})")


def smoothed(history: list[dict[str, float]], key: str, window: int = 50) -> list[float]:
    """Running mean over the last ``window`` steps of one logged value, for loss curves."""
    values = [entry[key] for entry in history if key in entry]
    means = []
    for end in range(1, len(values) + 1):
        recent = values[max(0, end - window):end]
        means.append(sum(recent) / len(recent))
    return means


def load_history(run_dir: str | Path) -> list[dict[str, float]]:
    """The logged values of every step so far, from a run folder's checkpoint."""
    return ckpt.load(Path(run_dir) / "checkpoint.safetensors")[1]["history"]
