"""Sampling: the learned reverse chain, from noise x_T to a sample x_0 (notebook 06).

- DDPM's ancestral sampler (Ho et al. 2020, eq. 11, Algorithm 2): all T steps, each drawing
  x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat) of eq. 7 around the network's x0_hat;
- DDIM (Song et al. 2021, eq. 12): any subsequence of the steps; ``eta = 0`` is deterministic,
  so noise and samples correspond one to one (:func:`ddim_invert` goes back; :func:`slerp`
  moves between two noises along the sphere they live near);
- DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): DDIM's time steps, second order by reusing
  the previous step's x0_hat, so fewer steps suffice (deterministic, like DDIM with ``eta = 0``);
- measuring a trajectory: :func:`distance_to_result` and :func:`settling_step` (when the
  predicted x0 stops changing much).

Each sampler's loop is written once, as a generator of steps (:func:`ddpm_steps`,
:func:`ddim_steps`, :func:`dpm_solver_steps`); ``*_sample`` returns its last state, ``*_trajectory`` a
:class:`Trajectory` with every state and every predicted x0 along the way.
:class:`SamplerOptions` picks a sampler and its settings (:func:`sampler_steps`). ``denoise``
is any function ``(x_t, t) -> network output`` (:meth:`minildm.ldm.LatentDiffusion.denoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from minildm.diffusion import Denoiser, Diffusion

SAMPLERS = ("ddim", "ddpm", "dpm++2m")
SPACINGS = ("linspace", "leading")  # how ddim_timesteps spreads its steps
Step = tuple[int, Tensor, Tensor]  # (t, x after the step from t, x0_hat predicted at t)


@dataclass
class Trajectory:
    """What a sampler passed through, for plots: ``states[0]`` is the starting noise and
    ``states[i]`` (i >= 1) x after the step at ``timesteps[i - 1]``, whose network saw the
    clean sample ``predictions[i - 1]``; ``result`` is the last state."""

    timesteps: list[int]
    states: list[Tensor]
    predictions: list[Tensor]

    def record(self, step: int, state: Tensor, prediction: Tensor) -> None:
        self.timesteps.append(step)
        self.states.append(state)
        self.predictions.append(prediction)

    @property
    def result(self) -> Tensor:
        return self.states[-1]

    @classmethod
    def collect(cls, x_T: Tensor, steps: Iterable[Step]) -> Trajectory:
        """Every step a sampler takes from the noise ``x_T``."""
        trajectory = cls([], [x_T], [])
        for step, state, prediction in steps:
            trajectory.record(step, state, prediction)
        return trajectory


def final_state(x_T: Tensor, steps: Iterable[Step]) -> Tensor:
    """Run a sampler's ``steps`` from the noise ``x_T`` and keep only where they end."""
    x = x_T
    for _, x, _ in steps:  # each state replaces the one before
        pass
    return x


def ddpm_step(diffusion: Diffusion, denoise: Denoiser, x: Tensor, step: int,
              generator: torch.Generator | None = None, clip: float | None = None) -> tuple[Tensor, Tensor]:
    """One step of DDPM eq. 11 from x_t = ``x`` at time ``step``: (x_{t-1}, x0_hat). x_{t-1} is
    the posterior mean around x0_hat plus sigma_t z, sigma_t^2 the posterior variance (the
    "fixed small" choice of the LDM code); no noise at the last step (t = 0)."""
    t = torch.full((len(x),), step, dtype=torch.long, device=x.device)
    x0, _ = diffusion.predict(denoise, x, t, clip)
    # Exercise 06.2: x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat), noise drawn with `generator` if t > 0
    ### BEGIN SOLUTION
    mean, variance = diffusion.q_posterior(x0, x, t)
    noise = torch.randn(x.shape, generator=generator).to(x) if step > 0 else torch.zeros_like(x)
    return mean + variance.sqrt() * noise, x0
    ### END SOLUTION


@torch.no_grad()
def ddpm_steps(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, *, generator: torch.Generator | None = None,
               clip: float | None = None, progress: bool = False) -> Iterator[Step]:
    """Ancestral sampling over all T steps from the noise x_T (B, C, H, W), one
    :func:`ddpm_step` at a time. ``generator`` draws the noise added along the way; ``clip``
    clamps the predicted x0 to [-clip, clip] (useful in pixel space, where images live in
    [-1, 1]; latents have no fixed range)."""
    x = x_T
    for step in tqdm(range(diffusion.timesteps - 1, -1, -1), desc="DDPM", disable=not progress):
        x, x0 = ddpm_step(diffusion, denoise, x, step, generator, clip)
        yield step, x, x0


def ddpm_sample(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, *, generator: torch.Generator | None = None,
                clip: float | None = None, progress: bool = False) -> Tensor:
    """The sample (B, C, H, W) that :func:`ddpm_steps` ends on."""
    return final_state(x_T, ddpm_steps(diffusion, denoise, x_T, generator=generator, clip=clip, progress=progress))


def ddpm_trajectory(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, *,
                    generator: torch.Generator | None = None, clip: float | None = None,
                    progress: bool = False) -> Trajectory:
    """:func:`ddpm_sample`, keeping every state and every predicted x0."""
    return Trajectory.collect(x_T, ddpm_steps(diffusion, denoise, x_T, generator=generator, clip=clip,
                                              progress=progress))


def ddim_timesteps(diffusion: Diffusion, steps: int, spacing: str = "linspace") -> list[int]:
    """``steps`` time steps over [0, T-1], from the noisiest down.

    - ``linspace`` (the default): round(linspace(T-1, 0, steps)), from T-1 itself down to 0;
      the gaps are (T-1)/(steps-1) rounded, so uneven (20 or 21 apart at 50 steps).
    - ``leading``: multiples of T // steps, ``(steps-1) * (T // steps), ..., T // steps, 0``,
      every gap the same. This is diffusers' ``DDIMScheduler(timestep_spacing="leading",
      steps_offset=0)``, and the grid of the LDM paper's code (CompVis ``make_ddim_timesteps``,
      ``ddim_discr_method="uniform"``, whose time steps are these plus 1).

    An exported diffusers pipeline follows ``leading`` only: :func:`minildm.interop.export.ddim_scheduler_config`.
    """
    if not 1 <= steps <= diffusion.timesteps:
        raise ValueError(f"steps must be between 1 and {diffusion.timesteps}, got {steps}")
    if spacing == "leading":
        return [index * (diffusion.timesteps // steps) for index in reversed(range(steps))]
    if spacing != "linspace":
        raise ValueError(f"unknown time step spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    return torch.linspace(diffusion.timesteps - 1, 0, steps).round().long().tolist()


def ddim_step(diffusion: Diffusion, denoise: Denoiser, x: Tensor, step: int, next_step: int | None,
              eta: float = 0.0, generator: torch.Generator | None = None,
              clip: float | None = None) -> tuple[Tensor, Tensor]:
    """One step of DDIM eq. 12 from x_t = ``x`` at time ``step`` to the next (less noisy) time
    ``next_step`` s (None after the last: abar_s = 1); returns (x_s, x0_hat)::

        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
        sigma = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
    """
    t = torch.full((len(x),), step, dtype=torch.long, device=x.device)
    x0, eps = diffusion.predict(denoise, x, t, clip)
    alpha_bar = diffusion.alpha_bars[step].item()
    alpha_bar_next = 1.0 if next_step is None else diffusion.alpha_bars[next_step].item()
    # Exercise 06.3: sigma, then x_s; add sigma * z (z drawn with `generator`) only when sigma > 0
    ### BEGIN SOLUTION
    sigma = eta * math.sqrt((1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next))
    x = math.sqrt(alpha_bar_next) * x0 + math.sqrt(1 - alpha_bar_next - sigma ** 2) * eps
    if sigma > 0:
        x = x + sigma * torch.randn(x.shape, generator=generator).to(x)
    return x, x0
    ### END SOLUTION


@torch.no_grad()
def ddim_steps(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, *, steps: int = 50, eta: float = 0.0,
               generator: torch.Generator | None = None, clip: float | None = None,
               progress: bool = False, spacing: str = "linspace") -> Iterator[Step]:
    """DDIM over ``steps`` of the T steps, one :func:`ddim_step` at a time. ``eta = 0`` is
    deterministic: the same x_T always gives the same sample; ``eta = 1`` with all T steps is
    DDPM's ancestral sampler. ``spacing``: which time steps (:func:`ddim_timesteps`)."""
    schedule = ddim_timesteps(diffusion, steps, spacing)
    x = x_T
    for index, step in enumerate(tqdm(schedule, desc="DDIM", disable=not progress)):
        next_step = schedule[index + 1] if index + 1 < len(schedule) else None
        x, x0 = ddim_step(diffusion, denoise, x, step, next_step, eta, generator, clip)
        yield step, x, x0


def ddim_sample(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, *, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None, clip: float | None = None,
                progress: bool = False, spacing: str = "linspace") -> Tensor:
    """The sample (B, C, H, W) that :func:`ddim_steps` ends on."""
    return final_state(x_T, ddim_steps(diffusion, denoise, x_T, steps=steps, eta=eta, generator=generator,
                                       clip=clip, progress=progress, spacing=spacing))


def ddim_trajectory(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, *, steps: int = 50, eta: float = 0.0,
                    generator: torch.Generator | None = None, clip: float | None = None,
                    progress: bool = False, spacing: str = "linspace") -> Trajectory:
    """:func:`ddim_sample`, keeping every state and every predicted x0."""
    return Trajectory.collect(x_T, ddim_steps(diffusion, denoise, x_T, steps=steps, eta=eta, generator=generator,
                                              clip=clip, progress=progress, spacing=spacing))


def half_log_snr(diffusion: Diffusion, step: int) -> float:
    """lambda_t = log(alpha_t / sigma_t), alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t):
    the time variable DPM-Solver++ integrates over (Lu et al. 2022, Algorithm 2)."""
    alpha_bar = diffusion.alpha_bars[step].item()
    return 0.5 * math.log(alpha_bar / (1 - alpha_bar))


def dpm_solver_step(diffusion: Diffusion, denoise: Denoiser, x: Tensor, step: int, next_step: int | None,
                    previous: tuple[int, Tensor] | None = None, clip: float | None = None) -> tuple[Tensor, Tensor]:
    """One step of DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) from x_t = ``x`` at time
    ``step`` to the next time ``next_step`` s; returns (x_s, x0_hat at t)::

        x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,   h = lambda_s - lambda_t
        D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev,               r = h_prev / h

    ``previous`` is (the time step before t, the x0_prev predicted there), h_prev = lambda_t -
    lambda_prev. Without it (the first step) D = x0_hat: first order, DDIM with eta = 0.
    After the last step (``next_step`` None) sigma_s = 0: x_s = x0_hat, first order too, as in
    diffusers with ``final_sigmas_type="zero"`` (there lambda_s = inf and r = 0).
    """
    t = torch.full((len(x),), step, dtype=torch.long, device=x.device)
    x0, _ = diffusion.predict(denoise, x, t, clip)
    if next_step is None:
        return x0, x0
    lambda_t, lambda_s = half_log_snr(diffusion, step), half_log_snr(diffusion, next_step)
    h = lambda_s - lambda_t
    D = x0
    if previous is not None:
        previous_step, x0_previous = previous
        r = (lambda_t - half_log_snr(diffusion, previous_step)) / h
        D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_previous
    alpha_bar, alpha_bar_next = diffusion.alpha_bars[step].item(), diffusion.alpha_bars[next_step].item()
    sigma_ratio = math.sqrt((1 - alpha_bar_next) / (1 - alpha_bar))  # sigma_s / sigma_t
    return sigma_ratio * x - math.sqrt(alpha_bar_next) * math.expm1(-h) * D, x0


@torch.no_grad()
def dpm_solver_steps(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, *, steps: int = 20,
                     clip: float | None = None, progress: bool = False, spacing: str = "linspace") -> Iterator[Step]:
    """DPM-Solver++(2M) over DDIM's time steps (:func:`ddim_timesteps`), one
    :func:`dpm_solver_step` at a time, each reusing the x0_hat of the step before (multistep).
    Deterministic; Lu et al. find 15 to 20 steps enough for good samples."""
    schedule = ddim_timesteps(diffusion, steps, spacing)
    x, previous = x_T, None
    for index, step in enumerate(tqdm(schedule, desc="DPM-Solver++(2M)", disable=not progress)):
        next_step = schedule[index + 1] if index + 1 < len(schedule) else None
        x, x0 = dpm_solver_step(diffusion, denoise, x, step, next_step, previous, clip)
        previous = step, x0
        yield step, x, x0


@dataclass(frozen=True)
class SamplerOptions:
    """How to run the reverse chain, given to :meth:`minildm.ldm.LatentDiffusion.sample`.

    Attributes:
        sampler: ``ddim`` (Song et al. 2021), ``ddpm`` (Ho et al. 2020, all T steps) or
            ``dpm++2m`` (DPM-Solver++(2M), Lu et al. 2022, deterministic).
        steps: the number of steps of DDIM and DPM-Solver++ (DDPM ignores it and runs all T).
        eta: DDIM's noise, 0 deterministic, 1 like DDPM (the others ignore it).
        spacing: the time steps of DDIM and DPM-Solver++ (:func:`ddim_timesteps`).
        progress: show a progress bar.
    """

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    spacing: str = "linspace"
    progress: bool = False

    @property
    def description(self) -> str:
        """E.g. ``DDIM 50 steps, eta 0``, for the records of a result."""
        if self.sampler == "ddpm":
            return "DDPM, all T steps"
        if self.sampler == "dpm++2m":
            return f"DPM-Solver++(2M) {self.steps} steps"
        return f"DDIM {self.steps} steps, eta {self.eta:g}"

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown time step spacing {self.spacing!r}: choose one of {', '.join(SPACINGS)}")


def sampler_steps(diffusion: Diffusion, denoise: Denoiser, x_T: Tensor, options: SamplerOptions,
                  generator: torch.Generator | None = None) -> Iterator[Step]:
    """The steps of the sampler that ``options`` names, from the noise x_T (B, C, H, W)."""
    if options.sampler == "ddpm":
        return ddpm_steps(diffusion, denoise, x_T, generator=generator, progress=options.progress)
    if options.sampler == "dpm++2m":
        return dpm_solver_steps(diffusion, denoise, x_T, steps=options.steps, progress=options.progress,
                                spacing=options.spacing)
    return ddim_steps(diffusion, denoise, x_T, steps=options.steps, eta=options.eta, generator=generator,
                      progress=options.progress, spacing=options.spacing)


@torch.no_grad()
def ddim_invert(diffusion: Diffusion, denoise: Denoiser, x0: Tensor, *, steps: int = 50,
                progress: bool = False, spacing: str = "linspace") -> Tensor:
    """Run deterministic DDIM backwards, from a clean x0 to a noise x_T that DDIM with
    ``eta = 0`` and the same ``steps`` and ``spacing`` maps back to (nearly) x0.

    Going from level s up to level t needs eps(x_t, t), which is not known yet; it is
    approximated by eps(x_s, t), exact in the limit of many steps.
    """
    x, alpha_bar_prev = x0, 1.0
    for step in tqdm(ddim_timesteps(diffusion, steps, spacing)[::-1], desc="DDIM inversion", disable=not progress):
        t = torch.full((len(x),), step, dtype=torch.long, device=x.device)
        eps = diffusion.split_prediction(denoise(x, t).float(), x, t)[1]
        x0_hat = (x - math.sqrt(1 - alpha_bar_prev) * eps) / math.sqrt(alpha_bar_prev)
        alpha_bar_prev = diffusion.alpha_bars[step].item()
        x = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev) * eps
    return x


def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation between two noise tensors of the same shape (Shoemake 1985).

    Gaussian noise lives near a sphere of radius sqrt(numel); a straight line between two
    draws cuts inside it (the midpoint has about 0.71 of the norm), which DDIM decodes as a
    washed-out image. Following the great circle keeps the norm: used for DDIM interpolation.
    """
    cosine = (a.flatten() @ b.flatten() / (a.norm() * b.norm())).clamp(-1, 1)
    angle = torch.arccos(cosine)
    if angle.abs() < 1e-6:
        return torch.lerp(a, b, weight)
    return (torch.sin((1 - weight) * angle) * a + torch.sin(weight * angle) * b) / torch.sin(angle)


def distance_to_result(predictions: Sequence[Tensor], result: Tensor) -> Tensor:
    """Root-mean-square distance of each step's prediction (B, ...) to the final ``result``
    (B, ...), per step and sample: (steps, B). With decoded x0 predictions it says how far the
    image the network expects is from the image the sampler ends on (notebook 06)."""
    return torch.stack([(prediction - result).flatten(1).square().mean(dim=1).sqrt() for prediction in predictions])


def settling_step(distances: Tensor, fraction: float) -> int:
    """The first step (counted from 1) from which ``distances`` (steps,) stay at or below
    ``fraction`` of the distance at step 1 until the end; ``len(distances) + 1`` if the last
    one is above it. A curve that dips and rises again settles only after its last rise."""
    if distances.ndim != 1 or len(distances) == 0:
        raise ValueError(f"expected a non-empty 1-d tensor of distances, got shape {tuple(distances.shape)}")
    above = (distances > fraction * distances[0]).nonzero()  # steps (from 0) still above the threshold
    return 1 if len(above) == 0 else int(above[-1]) + 2
