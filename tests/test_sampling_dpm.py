"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), checked against diffusers' independent
implementation, an exact property (a one-point data distribution), DDIM for its first step,
and its place among the samplers."""

import math

import pytest
import torch

from minildm.app.cli import build_parser
from minildm.diffusion import Diffusion
from minildm.sampling import (SAMPLERS, SamplerOptions, Trajectory, ddim_sample, ddim_step, ddim_timesteps,
                              dpm_solver_steps, final_state, sampler_steps)

DIFFUSERS_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def toy_denoiser(diffusion: Diffusion):
    """A fixed smooth function of x_t and t standing in for a network."""
    def denoise(x, t):
        level = (t.to(x.dtype) / diffusion.timesteps).reshape(-1, 1, 1, 1)
        return 0.3 * x + 0.5 * torch.sin(x + 3 * level) + level
    return denoise


def diffusers_sample(diffusion: Diffusion, denoise, x_T: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """DPMSolverMultistepScheduler's sample: DPM-Solver++ of order 2 on the same betas and time
    steps, ending at sigma = 0 (``final_sigmas_type="zero"``, whose last step is first order)."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=diffusion.timesteps, trained_betas=diffusion.betas.numpy(),
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        prediction_type=DIFFUSERS_PREDICTIONS[diffusion.prediction], thresholding=False,
        lower_order_final=True, final_sigmas_type="zero")
    scheduler.set_timesteps(timesteps=timesteps)
    assert scheduler.timesteps.tolist() == timesteps
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(denoise(x, t.expand(len(x))), t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("steps, spacing", [(4, "linspace"), (10, "leading"), (25, "linspace")])
def test_dpm_solver_agrees_with_diffusers(prediction, steps, spacing):
    diffusion = Diffusion(prediction=prediction)
    denoise = toy_denoiser(diffusion)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = final_state(x_T, dpm_solver_steps(diffusion, denoise, x_T, steps=steps, spacing=spacing))
    theirs = diffusers_sample(diffusion, denoise, x_T, ddim_timesteps(diffusion, steps, spacing))
    tolerance = 1e-5 * theirs.norm()  # diffusers steps in float32
    assert (ours - theirs).norm() <= tolerance
    ddim = ddim_sample(diffusion, denoise, x_T, steps=steps, spacing=spacing)
    assert (ddim - theirs).norm() > 100 * tolerance  # the second-order steps are what agrees


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("steps", [1, 2, 3, 8, 20])
def test_one_point_data_is_followed_exactly(prediction, steps):
    """With data x0 = c only, the exact x0_hat is c at every step; the probability-flow ODE then
    keeps x_t = alpha_t c + sigma_t eps with the eps of x_T, which the solver integrates
    exactly (its D is c), landing on c in any number of steps."""
    diffusion = Diffusion(prediction=prediction)
    c = torch.tensor([0.7, -1.2, 0.1]).reshape(1, 3, 1, 1).expand(2, 3, 4, 4)

    def exact(x, t):
        alpha_bar = diffusion.at(diffusion.alpha_bars, t, x)
        eps = (x - alpha_bar.sqrt() * c) / (1 - alpha_bar).sqrt()
        return diffusion.target(c, eps, t)

    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    first = diffusion.alpha_bars[diffusion.timesteps - 1].item()
    eps = (x_T - math.sqrt(first) * c) / math.sqrt(1 - first)
    trajectory = Trajectory.collect(x_T, dpm_solver_steps(diffusion, exact, x_T, steps=steps))
    for next_step, state in zip(trajectory.timesteps[1:], trajectory.states[1:-1]):
        alpha_bar = diffusion.alpha_bars[next_step].item()
        assert torch.allclose(state, math.sqrt(alpha_bar) * c + math.sqrt(1 - alpha_bar) * eps, atol=1e-5)
    assert torch.allclose(trajectory.result, c, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_first_step_is_ddim_with_eta_zero(prediction):
    diffusion = Diffusion(prediction=prediction)
    denoise = toy_denoiser(diffusion)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    schedule = ddim_timesteps(diffusion, 12)
    step, x, x0 = next(dpm_solver_steps(diffusion, denoise, x_T, steps=12))
    ddim_x, ddim_x0 = ddim_step(diffusion, denoise, x_T, schedule[0], schedule[1], eta=0.0)
    assert step == schedule[0] and torch.equal(x0, ddim_x0)
    assert torch.allclose(x, ddim_x, rtol=1e-5, atol=1e-5)


def test_sampler_options_run_dpm_solver_for_its_steps():
    assert "dpm++2m" in SAMPLERS
    diffusion = Diffusion()
    denoise = toy_denoiser(diffusion)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    options = SamplerOptions(sampler="dpm++2m", steps=7, spacing="leading")
    trajectory = Trajectory.collect(x_T, sampler_steps(diffusion, denoise, x_T, options))
    assert trajectory.timesteps == ddim_timesteps(diffusion, 7, "leading")
    assert torch.equal(trajectory.result,
                       final_state(x_T, dpm_solver_steps(diffusion, denoise, x_T, steps=7, spacing="leading")))
    args = build_parser().parse_args(["sample", "--ldm", "run", "--sampler", "dpm++2m", "--steps", "20",
                                      "--out", "grid.png"])
    assert (args.sampler, args.steps) == ("dpm++2m", 20)


def test_each_sampler_describes_itself_for_the_records():
    assert SamplerOptions().description == "DDIM 50 steps, eta 0"
    assert SamplerOptions(sampler="ddpm", steps=7).description == "DDPM, all T steps"
    assert SamplerOptions(sampler="dpm++2m", steps=20).description == "DPM-Solver++(2M) 20 steps"
