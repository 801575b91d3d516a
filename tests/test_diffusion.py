"""Gaussian diffusion: schedules, q(x_t | x_0), the posterior, targets, loss and samplers,
each checked against an independent computation or a known property."""

import math

import pytest
import torch

from minildm.diffusion import Diffusion, make_betas
from minildm.sampling import (SamplerOptions, Trajectory, ddim_invert, ddim_sample, ddim_timesteps, ddim_trajectory,
                              ddpm_sample, ddpm_trajectory, sampler_steps, slerp)


def test_linear_schedule_is_linear_in_sqrt_beta():
    betas = make_betas("linear", 1000, 0.0015, 0.0195)
    roots = betas.sqrt()
    assert roots[0].item() == pytest.approx(0.0015 ** 0.5) and roots[-1].item() == pytest.approx(0.0195 ** 0.5)
    assert torch.allclose(roots.diff(), torch.full((999,), roots.diff()[0].item(), dtype=torch.float64))


def test_cosine_schedule_follows_its_alpha_bar():
    betas = make_betas("cosine", 1000)
    alpha_bars = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64)
    expected = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert torch.allclose(alpha_bars[:900], expected[:900], rtol=1e-9)  # before the 0.999 clip bites
    assert betas.max() <= 0.999 and betas.min() > 0


def test_unknown_schedule_or_prediction_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("quadratic")
    with pytest.raises(ValueError, match="unknown prediction"):
        Diffusion(prediction="score")


def test_q_sample_has_the_closed_form_mean_and_variance():
    diffusion = Diffusion()
    x0 = torch.tensor([1.5, -0.5]).reshape(1, 2, 1, 1).expand(40_000, 2, 1, 1)
    for step in (0, 250, 999):
        t = torch.full((len(x0),), step)
        x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(step)))
        alpha_bar = diffusion.alpha_bars[step].item()
        assert torch.allclose(x_t.mean(0).flatten(), math.sqrt(alpha_bar) * x0[0].flatten(), atol=0.02)
        assert torch.allclose(x_t.var(0).flatten(), torch.full((2,), 1 - alpha_bar), rtol=0.03, atol=2e-4)


def test_closed_form_equals_iterating_the_chain():
    diffusion = Diffusion(timesteps=200)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((20_000, 1, 1, 1), 2.0)
    x = x0.clone()
    for step in range(120):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, one step at a time
        beta = diffusion.betas[step].item()
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=generator)
    alpha_bar = diffusion.alpha_bars[119].item()
    assert x.mean().item() == pytest.approx(2.0 * math.sqrt(alpha_bar), abs=0.02)
    assert x.var().item() == pytest.approx(1 - alpha_bar, rel=0.03)
    # and exactly: the mean factors multiply to sqrt(abar), the variances accumulate to 1 - abar
    mean_factor, variance = 1.0, 0.0
    for beta in diffusion.betas.tolist():
        mean_factor, variance = mean_factor * math.sqrt(1 - beta), (1 - beta) * variance + beta
    assert mean_factor == pytest.approx(diffusion.alpha_bars[-1].sqrt().item(), rel=1e-9)
    assert variance == pytest.approx(1 - diffusion.alpha_bars[-1].item(), rel=1e-9)


def test_posterior_is_bayes_rule_on_the_two_gaussians():
    diffusion = Diffusion()
    x0, x_t = torch.tensor([0.7]).reshape(1, 1, 1, 1), torch.tensor([-0.3]).reshape(1, 1, 1, 1)
    for step in (1, 10, 500, 999):
        mean, variance = diffusion.q_posterior(x0, x_t, torch.tensor([step]))
        # prior x_{t-1} ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}); likelihood x_t ~ N(sqrt(alpha_t) x_{t-1}, beta_t)
        prior_var = 1 - diffusion.alpha_bars[step - 1].item()
        prior_mean = math.sqrt(diffusion.alpha_bars[step - 1].item()) * 0.7
        alpha, beta = diffusion.alphas[step].item(), diffusion.betas[step].item()
        posterior_var = 1 / (1 / prior_var + alpha / beta)
        posterior_mean = posterior_var * (prior_mean / prior_var + math.sqrt(alpha) * -0.3 / beta)
        assert variance.item() == pytest.approx(posterior_var, rel=1e-5)
        assert mean.item() == pytest.approx(posterior_mean, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_target_implies_the_true_x0_and_noise(prediction):
    diffusion = Diffusion(prediction=prediction)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(6, 4, 8, 8, generator=generator), torch.randn(6, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, noise_hat = diffusion.split_prediction(diffusion.target(x0, noise, t), x_t, t)
    assert torch.allclose(x0_hat, x0, atol=2e-3) and torch.allclose(noise_hat, noise, atol=2e-3)


def test_v_target_is_the_velocity():
    diffusion = Diffusion(prediction="v")
    x0, noise, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([300])
    alpha_bar = diffusion.alpha_bars[300].item()
    expected = math.sqrt(alpha_bar) * 2.0 - math.sqrt(1 - alpha_bar) * 1.0
    assert diffusion.target(x0, noise, t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("prediction,gamma", [("eps", None), ("eps", 5.0), ("v", 5.0), ("x0", 5.0)])
def test_loss_is_the_weighted_mean_squared_error(prediction, gamma):
    diffusion = Diffusion(prediction=prediction, min_snr_gamma=gamma)
    x0 = torch.randn(16, 4, 4, 4, generator=torch.Generator().manual_seed(2))

    def denoise(x_t, t):
        return 0.5 * x_t

    loss = diffusion.loss(denoise, x0, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the same draws, computed by hand
    t = torch.randint(0, 1000, (16,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    alpha_bar = diffusion.alpha_bars[t].float().reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0}[prediction]
    errors = (0.5 * x_t - target).pow(2).mean(dim=(1, 2, 3))
    snr = (alpha_bar / (1 - alpha_bar)).flatten()
    if gamma is None:
        weights = torch.ones(16)
    else:
        weights = snr.clamp(max=gamma) / {"eps": snr, "x0": torch.ones(16), "v": snr + 1}[prediction]
    assert loss.item() == pytest.approx((errors * weights).mean().item(), rel=1e-4)


def gaussian_data_denoiser(diffusion, variance):
    """The exact E[eps | x_t] when the data are N(0, variance I): everything is linear."""

    def denoise(x_t, t):
        alpha_bar = diffusion.at(diffusion.alpha_bars, t, x_t)
        x0_mean = alpha_bar.sqrt() * variance / (alpha_bar * variance + 1 - alpha_bar) * x_t
        return (x_t - alpha_bar.sqrt() * x0_mean) / (1 - alpha_bar).sqrt()

    return denoise


def point_mass_denoiser(diffusion, value):
    """The exact noise prediction when every data point equals ``value``."""

    def denoise(x_t, t):
        alpha_bar = diffusion.at(diffusion.alpha_bars, t, x_t)
        return (x_t - alpha_bar.sqrt() * value) / (1 - alpha_bar).sqrt()

    return denoise


def test_ddim_timesteps_run_from_the_noisiest_to_zero():
    diffusion = Diffusion()
    assert ddim_timesteps(diffusion, 1000) == list(range(999, -1, -1))
    steps = ddim_timesteps(diffusion, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0 and steps == sorted(set(steps), reverse=True)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        ddim_timesteps(diffusion, 0)


def test_leading_ddim_timesteps_are_diffusers_leading_grid_evenly_spaced():
    """spacing="leading": multiples of T // steps from (steps - 1) * (T // steps) down to 0, the
    time steps of diffusers' DDIMScheduler(timestep_spacing="leading", steps_offset=0), whose
    step always jumps by T // steps; the default grid (linspace) is unchanged."""
    diffusers = pytest.importorskip("diffusers")
    diffusion = Diffusion()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=diffusion.timesteps, timestep_spacing="leading",
                                        steps_offset=0)
    for steps in range(1, diffusion.timesteps + 1):
        leading = ddim_timesteps(diffusion, steps, spacing="leading")
        scheduler.set_timesteps(steps)
        assert leading == scheduler.timesteps.tolist(), steps
        jump = diffusion.timesteps // steps
        assert len(leading) == steps and leading[-1] == 0 and leading[0] == (steps - 1) * jump
        assert {t - s for t, s in zip(leading, leading[1:])} <= {jump}, steps
    assert ddim_timesteps(diffusion, 50, "leading")[:3] == [980, 960, 940]
    assert ddim_timesteps(diffusion, 50) == ddim_timesteps(diffusion, 50, "linspace")
    assert ddim_timesteps(diffusion, 50)[:3] == [999, 979, 958]
    with pytest.raises(ValueError, match="unknown time step spacing 'trailing'"):
        ddim_timesteps(diffusion, 50, "trailing")
    with pytest.raises(ValueError, match="between 1 and 1000"):
        ddim_timesteps(diffusion, 1001, "leading")


def test_ddim_samples_along_the_spacing_it_is_given():
    diffusion = Diffusion()
    denoise = gaussian_data_denoiser(diffusion, 0.5)
    x_T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    trajectory = ddim_trajectory(diffusion, denoise, x_T, steps=27, spacing="leading")
    assert trajectory.timesteps == ddim_timesteps(diffusion, 27, "leading")
    torch.testing.assert_close(ddim_sample(diffusion, denoise, x_T, steps=27, spacing="leading"), trajectory.result)
    assert ddim_trajectory(diffusion, denoise, x_T, steps=27).timesteps == ddim_timesteps(diffusion, 27)


def test_sampler_options_pick_the_sampler_and_refuse_unknown_names():
    diffusion = Diffusion(timesteps=50, beta_start=0.001, beta_end=0.05)
    denoise = gaussian_data_denoiser(diffusion, 0.5)
    x_T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ddpm = Trajectory.collect(x_T, sampler_steps(diffusion, denoise, x_T, SamplerOptions(sampler="ddpm", steps=7),
                                                 torch.Generator().manual_seed(1)))
    assert ddpm.timesteps == list(range(49, -1, -1))  # DDPM runs all T steps, whatever ``steps`` says
    assert torch.equal(ddpm.result, ddpm_sample(diffusion, denoise, x_T, generator=torch.Generator().manual_seed(1)))
    ddim = Trajectory.collect(x_T, sampler_steps(diffusion, denoise, x_T, SamplerOptions(steps=7, spacing="leading")))
    assert ddim.timesteps == ddim_timesteps(diffusion, 7, "leading")
    assert torch.equal(ddim.result, ddim_sample(diffusion, denoise, x_T, steps=7, spacing="leading"))
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerOptions(sampler="euler")
    with pytest.raises(ValueError, match="unknown time step spacing"):
        SamplerOptions(spacing="trailing")


def test_ddim_with_eta_zero_is_deterministic():
    diffusion = Diffusion()
    denoise = gaussian_data_denoiser(diffusion, 0.5)
    x_T = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    first = ddim_sample(diffusion, denoise, x_T, steps=20, generator=torch.Generator().manual_seed(1))
    second = ddim_sample(diffusion, denoise, x_T, steps=20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, second)
    noisy = ddim_sample(diffusion, denoise, x_T, steps=20, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(first, noisy)


def test_ddim_with_eta_one_and_all_steps_is_ddpm():
    diffusion = Diffusion(timesteps=100, beta_start=0.001, beta_end=0.05)
    denoise = gaussian_data_denoiser(diffusion, 0.5)
    x_T = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ddpm = ddpm_sample(diffusion, denoise, x_T, generator=torch.Generator().manual_seed(5))
    ddim = ddim_sample(diffusion, denoise, x_T, steps=100, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ddpm, ddim, atol=1e-4)


def test_a_ddpm_step_is_equation_11():
    diffusion = Diffusion(timesteps=50, beta_start=0.001, beta_end=0.05)
    eps_model = gaussian_data_denoiser(diffusion, 2.0)
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    trajectory = ddpm_trajectory(diffusion, eps_model, x_T, generator=torch.Generator().manual_seed(1))
    x = trajectory.result
    assert torch.equal(x, ddpm_sample(diffusion, eps_model, x_T, generator=torch.Generator().manual_seed(1)))
    generator = torch.Generator().manual_seed(1)
    expected = x_T
    for step in range(49, -1, -1):  # x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z
        t = torch.full((3,), step)
        alpha, beta = diffusion.alphas[step].item(), diffusion.betas[step].item()
        alpha_bar = diffusion.alpha_bars[step].item()
        mean = (expected - beta / math.sqrt(1 - alpha_bar) * eps_model(expected, t)) / math.sqrt(alpha)
        sigma = math.sqrt(diffusion.posterior_variance[step].item())
        expected = mean + sigma * torch.randn(x_T.shape, generator=generator) if step > 0 else mean
    assert torch.allclose(x, expected, atol=1e-4)
    assert trajectory.timesteps == list(range(49, -1, -1)) and len(trajectory.states) == 51
    assert torch.equal(trajectory.states[-1], x)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_samplers_recover_a_point_mass(prediction):
    diffusion = Diffusion(prediction=prediction)
    eps_of = point_mass_denoiser(diffusion, 0.8)

    def denoise(x_t, t):  # the same exact model, expressed in the chosen parameterisation
        eps = eps_of(x_t, t)
        alpha_bar = diffusion.at(diffusion.alpha_bars, t, x_t)
        x0 = torch.full_like(x_t, 0.8)
        return {"eps": eps, "x0": x0, "v": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0}[prediction]

    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ddim_sample(diffusion, denoise, x_T, steps=10), torch.full_like(x_T, 0.8), atol=1e-4)
    assert torch.allclose(ddpm_sample(diffusion, denoise, x_T), torch.full_like(x_T, 0.8), atol=1e-4)


def test_samplers_draw_from_the_gaussian_data_distribution():
    diffusion = Diffusion()
    denoise = gaussian_data_denoiser(diffusion, 0.25)
    x_T = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    for samples in (ddim_sample(diffusion, denoise, x_T, steps=1000),
                    ddpm_sample(diffusion, denoise, x_T, generator=torch.Generator().manual_seed(1))):
        assert samples.std().item() == pytest.approx(0.5, rel=0.03)
        assert abs(samples.mean().item()) < 0.03
    # DDIM is a first-order solver of an ODE: with fewer steps it loses some of the spread
    spreads = [ddim_sample(diffusion, denoise, x_T, steps=steps).std().item() for steps in (10, 50, 200)]
    assert spreads[0] < spreads[1] < spreads[2] < 0.5


def test_ddim_inversion_finds_the_noise_that_maps_back():
    diffusion = Diffusion()
    denoise = gaussian_data_denoiser(diffusion, 0.25)
    x0 = 0.5 * torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = ddim_invert(diffusion, denoise, x0, steps=200)
    assert noise.std().item() == pytest.approx(1.0, rel=0.1)  # data N(0, 0.25) -> noise N(0, 1)
    assert torch.allclose(ddim_sample(diffusion, denoise, noise, steps=200), x0, rtol=0.03, atol=0.01)


def test_clip_keeps_the_predicted_x0_in_range():
    diffusion = Diffusion()
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    wild = point_mass_denoiser(diffusion, 5.0)
    trajectory = ddim_trajectory(diffusion, wild, x_T, steps=10, clip=1.0)
    assert torch.equal(trajectory.result, ddim_sample(diffusion, wild, x_T, steps=10, clip=1.0))
    assert all(prediction.abs().max() <= 1.0 for prediction in trajectory.predictions)
    assert torch.allclose(trajectory.states[-1], torch.ones_like(x_T), atol=1e-4)


def test_slerp_keeps_the_norm_and_hits_both_ends():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, 8, generator=generator), torch.randn(4, 8, 8, generator=generator)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = slerp(a, b, 0.5)
    assert middle.norm().item() == pytest.approx(((a.norm() + b.norm()) / 2).item(), rel=0.05)
    assert torch.lerp(a, b, 0.5).norm() < 0.8 * middle.norm()  # the straight line cuts inside the sphere
    assert torch.allclose(slerp(a, a, 0.3), a)
