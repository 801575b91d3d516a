"""Hidden grading checks: one group per exercise (``test_exNN_K_...``). ``course grade`` runs
each in its own process and sends ``probe`` calls to the submission's code in the sandbox
(:mod:`minildm.course.probes`); the expected values are computed here, on the grader's side,
and never reach the sandbox. Under pytest, ``probe`` runs the instructor's own code. CPU, fixed
seeds, stated tolerances; each failure says what is wrong in a student's words. Not in the
student copy."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minildm.conditioning import AttributeEncoder
from minildm.course.probes import denoiser_function, gaussian_denoiser
from minildm.course.probing import local_probe
from minildm.diffusion import Diffusion, make_betas
from minildm.nn import ResBlock, SelfAttention2d
from minildm.regularizers import DiagonalGaussian
from minildm.sampling import ddim_sample

TOL = 1e-5  # relative and absolute tolerance of exact formulas (float32)


@pytest.fixture
def probe():
    """Under pytest: the instructor's own code, through the same encoding as a graded run."""
    return local_probe


def close(found, expected, tol=TOL, dtype=torch.float32):
    """``found`` is a tensor of ``expected``'s shape and of ``dtype`` whose values match to
    ``tol`` (a wrong shape or dtype fails with its own message)."""
    expected = torch.as_tensor(expected).double()
    if not isinstance(found, torch.Tensor) or found.shape != expected.shape:
        shape = tuple(found.shape) if isinstance(found, torch.Tensor) else type(found).__name__
        raise AssertionError(f"a result of shape {shape}, expected {tuple(expected.shape)}")
    if found.dtype != dtype:
        raise AssertionError(f"a result of dtype {found.dtype}, expected {dtype}")
    return torch.allclose(found.double(), expected, rtol=tol, atol=tol)


def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def module_state(outputs) -> dict:
    """The weights a probe returned as ``state.*``."""
    return {name.removeprefix("state."): value for name, value in outputs.items() if name.startswith("state.")}


def test_ex01_1_sample_is_mean_plus_std_times_eps(probe):
    parameters = randn(2, 8, 3, 3)
    posterior = DiagonalGaussian(parameters)
    z = probe("gaussian_sample", parameters=parameters, seed=3)["z"]
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3))
    assert close(z, posterior.mean + posterior.std * eps), \
        "sample: expected mean + std * eps with eps = torch.randn(mean.shape, generator=generator)"


def test_ex01_1_gradients_reach_the_mean_and_the_log_variance(probe):
    gradient = probe("gaussian_sample", parameters=randn(1, 4, 2, 2), seed=0)["gradient"]
    assert close(gradient[:, :2], torch.ones(1, 2, 2, 2)), \
        "sample: the gradient of z with respect to the mean must be 1 (reparameterise, do not sample detached)"
    assert gradient[:, 2:].abs().sum() > 0, "sample: no gradient reaches the log-variance"


def test_ex01_2_kl_matches_the_closed_form(probe):
    parameters = randn(2, 8, 3, 3, seed=1)
    posterior = DiagonalGaussian(parameters)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(posterior.mean, posterior.std),
                                                 torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3)).mean()
    kl = probe("gaussian_kl", parameters=parameters)["kl"]
    assert kl.dim() == 0, f"kl: expected a scalar, got shape {tuple(kl.shape)}"
    assert close(kl, expected, 1e-4), f"kl: {kl.item():.4f}, expected {expected.item():.4f} (sum over C, H, W; mean over B)"
    assert close(probe("gaussian_kl", parameters=torch.zeros(3, 8, 2, 2))["kl"], 0.0), "kl: must be 0 for N(0, I) itself"


def test_ex01_3_hinge_loss_values(probe):
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    expected = 0.5 * (np.mean([0, 0.5, 2.0]) + np.mean([0, 1.0, 2.5]))
    loss = probe("hinge_loss", logits_real=real, logits_fake=fake)["loss"]
    assert close(loss, expected), \
        f"hinge loss: {loss.item():.4f}, expected 0.5 * (mean relu(1 - real) + mean relu(1 + fake)) = {expected:.4f}"
    assert close(probe("hinge_loss", logits_real=torch.ones(4) * 3, logits_fake=-torch.ones(4) * 3)["loss"], 0.0), \
        "hinge loss: confident, correct logits (real >= 1, fake <= -1) must cost nothing"


def test_ex01_4_adaptive_weight_is_the_ratio_of_gradient_norms(probe):
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    rec, gan = layer(x).abs().mean(), -layer(x).mean() * 100
    rec_norm = torch.autograd.grad(rec, layer.weight, retain_graph=True)[0].norm()
    gan_norm = torch.autograd.grad(gan, layer.weight)[0].norm()
    expected = rec_norm / (gan_norm + 1e-4)
    out = probe("adaptive_gan_weight", weight=layer.weight.detach(), bias=layer.bias.detach(), x=x, rec_scale=1.0,
                gan_scale=100.0)
    assert close(out["weight"], expected, 1e-4), \
        f"adaptive weight: {out['weight']}, expected ||grad rec|| / (||grad gan|| + 1e-4) = {expected.item():.5f}"
    assert out["requires_grad"] is False, "adaptive weight: detach it, or the GAN loss would train the weight itself"
    assert out["backward_works"] is True, "adaptive weight: keep the graphs (retain_graph=True): the losses are " \
                                          "still to be backpropagated"


def test_ex01_4_adaptive_weight_is_clamped(probe):
    out = probe("adaptive_gan_weight", weight=torch.tensor([[0.3, -0.2]]), bias=torch.tensor([0.1]),
                x=torch.ones(1, 2), rec_scale=1e8, gan_scale=0.0)
    assert close(out["weight"], 1e4), f"adaptive weight: {out['weight']}, expected the clamp at 1e4 when the GAN " \
                                      "gradient is 0"


def test_ex01_5_scale_factor_is_one_over_the_std_of_all_latents(probe):
    images = torch.cat([torch.zeros(4, 3, 2, 2), randn(4, 3, 2, 2)])
    expected = 1 / (3 * images + 1).std().item()
    factor = probe("latent_scale_factor", images=images, scale=3.0, shift=1.0, batch_size=4)["factor"]
    assert isinstance(factor, float), f"scale factor: return a float, got {type(factor).__name__}"
    assert math.isclose(factor, expected, rel_tol=1e-4), \
        f"scale factor: {factor:.5f}, expected 1 / std of all latents together = {expected:.5f} (not per batch)"


def test_ex02_1_nearest_code_is_the_closest_row(probe):
    codebook, flat = randn(16, 3), randn(50, 3, seed=1)
    expected = ((flat[:, None] - codebook[None]) ** 2).sum(-1).argmin(1)
    out = probe("nearest_code", codebook=codebook, flat=flat)
    found = out["indices"]
    assert found.shape == (50,), f"nearest code: shape {tuple(found.shape)}, expected (N,) indices"
    assert torch.equal(found.long(), expected), \
        f"nearest code: {(found.long() != expected).sum()} of 50 rows choose another code than the nearest"
    assert out["requires_grad"] is False


def test_ex02_2_straight_through_has_the_codes_value_and_the_encoder_gradient(probe):
    z_e, codes, weights = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1), torch.arange(96.0).view(2, 3, 4, 4)
    out = probe("straight_through", z_e=z_e, codes=codes, weights=weights)
    assert close(out["z_q"], codes), "straight-through: z_q must have the value of the codes"
    assert close(out["z_e_gradient"], weights), \
        "straight-through: the gradient must reach z_e unchanged, as if z_q were z_e"
    assert close(out["codes_gradient"], torch.zeros_like(codes)), \
        "straight-through: no gradient may flow into the codes"


def test_ex02_3_codebook_and_commitment_losses(probe):
    z_e, codes = randn(2, 3, 2, 2), randn(2, 3, 2, 2, seed=1)
    out = probe("vq_loss", z_e=z_e, codes=codes, beta=0.25)
    squared, n = (z_e - codes).pow(2).mean(), z_e.numel()
    assert close(out["loss"], 1.25 * squared, 1e-5), \
        f"VQ loss: {out['loss']}, expected mean (sg[z_e] - e)^2 + 0.25 * mean (z_e - sg[e])^2 = {1.25 * squared.item():.4f}"
    assert close(out["codes_gradient"], 2 * (codes - z_e) / n, 1e-5), \
        "VQ loss: the codes' gradient must come from the codebook term alone (stop the gradient into z_e there)"
    assert close(out["z_e_gradient"], 0.25 * 2 * (z_e - codes) / n, 1e-5), \
        "VQ loss: z_e's gradient must come from the commitment term alone, weighted by beta"


def test_ex03_1_linear_schedule_is_linear_in_sqrt_beta(probe):
    betas = probe("beta_schedule", kind="linear", timesteps=1000, beta_start=0.0015, beta_end=0.0195)["betas"]
    assert betas.dtype == torch.float64 and betas.shape == (1000,), "beta schedule: expected float64 of shape (T,)"
    assert close(betas[[0, -1]], [0.0015, 0.0195], 1e-9, torch.float64), \
        "beta schedule: must run from beta_start to beta_end"
    assert close(betas.sqrt().diff().diff(), torch.zeros(998), 1e-9, torch.float64), \
        "beta schedule: sqrt(beta) must grow linearly (the LDM schedule), not beta itself"


def test_ex03_2_q_sample_is_equation_4(probe):
    x0, noise = randn(3, 2, 4, 4), randn(3, 2, 4, 4, seed=1)
    t = torch.tensor([0, 500, 999])
    alpha_bar = torch.cumprod(1 - make_betas(), 0)[t].float().view(3, 1, 1, 1)
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    assert close(probe("q_sample", x0=x0, t=t, noise=noise)["x_t"], expected, 1e-4), \
        "q_sample: expected sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with abar_t read at each sample's own t"


def test_ex03_2_q_sample_has_the_right_mean_and_variance(probe):
    x0 = torch.full((20_000, 1, 1, 1), 2.0)
    x_t = probe("q_sample", x0=x0, t=torch.full((20_000,), 500), noise=randn(20_000, 1, 1, 1))["x_t"]
    assert isinstance(x_t, torch.Tensor) and x_t.shape == x0.shape and x_t.dtype == x0.dtype, \
        "q_sample: x_t must have the shape and dtype of x0"
    alpha_bar = Diffusion().alpha_bars[500].item()
    mean_ratio, variance_ratio = x_t.mean().item() / (2 * math.sqrt(alpha_bar)), x_t.var().item() / (1 - alpha_bar)
    assert abs(mean_ratio - 1) < 0.03, f"q_sample: at t = 500 the mean is {mean_ratio:.2f} times sqrt(abar) x0"
    assert abs(variance_ratio - 1) < 0.05, \
        f"q_sample: the mean is right but the variance is off by a factor of {variance_ratio:.2f} at t = 500"


def test_ex04_1_time_embedding_values(probe):
    t = torch.tensor([0, 7, 999])
    embedding = probe("time_embedding", t=t, channels=8)["embedding"]
    frequencies = 10_000.0 ** (-np.arange(4) / 4)
    expected = np.concatenate([np.cos(t.numpy()[:, None] * frequencies), np.sin(t.numpy()[:, None] * frequencies)], 1)
    assert embedding.shape == (3, 8), f"time embedding: shape {tuple(embedding.shape)}, expected (B, channels)"
    assert close(embedding, expected, 1e-4), "time embedding: expected [cos(t w_i), sin(t w_i)], w_i = 10000^(-i / (channels/2))"


def test_ex04_2_scale_shift_time_injection(probe):
    x, t_emb = randn(2, 4, 3, 3), randn(2, 5, seed=1)
    out = probe("scale_shift_block", x=x, t_emb=t_emb, seed=0)
    block = ResBlock(4, 6, time_channels=5).eval()
    block.load_state_dict(module_state(out))
    with torch.no_grad():
        h = block.norm2(block.conv1(F.silu(block.norm1(x))))
        scale, shift = block.time_proj(t_emb)[:, :, None, None].chunk(2, dim=1)
        expected = block.skip(x) + block.conv2(F.silu(h * (1 + scale) + shift))
    assert close(out["output"], expected, 1e-4), \
        "scale-shift: expected h = norm(h) * (1 + scale) + shift, with (scale, shift) = time_proj(t_emb) split in two"


def test_ex04_3_self_attention_over_pixels(probe):
    x = randn(2, 8, 3, 3)
    out = probe("pixel_attention", x=x, seed=0)
    attention = SelfAttention2d(8, heads=2).eval()
    attention.load_state_dict(module_state(out))
    with torch.no_grad():
        q, k, v = attention.qkv(attention.norm(x)).reshape(2, 3, 2, 4, 9).permute(1, 0, 2, 4, 3)  # (B, heads, HW, d)
        weights = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)  # sqrt(d) = 2
        expected = x + attention.proj_out((weights @ v).permute(0, 1, 3, 2).reshape(2, 8, 3, 3))
    assert close(out["output"], expected, 1e-4), \
        "self-attention: expected softmax(Q K^T / sqrt(d)) V per head, heads read from qkv as (q, k, v) x heads x d"


def test_ex05_1_v_target_and_its_inverse(probe):
    x0, noise, t = randn(4, 2, 3, 3), randn(4, 2, 3, 3, seed=1), torch.tensor([1, 200, 600, 990])
    alpha_bar = Diffusion().alpha_bars[t].float().view(4, 1, 1, 1)
    v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    out = probe("v_prediction", x0=x0, noise=noise, t=t, v=v, x_t=x_t)
    assert close(out["target"], v, 1e-4), "v-target: expected v = sqrt(abar) eps - sqrt(1 - abar) x0"
    assert close(out["x0"], x0, 1e-4) and close(out["noise"], noise, 1e-4), \
        "v-prediction: split_prediction of the true v must give back x0 and eps exactly"


def test_ex05_2_loss_draws_t_then_noise_and_averages_the_squared_error(probe):
    x0 = randn(6, 2, 3, 3)
    generator = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (6,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    out = probe("training_loss", x0=x0, seed=1)
    assert close(out["t"], t, 0, torch.int64), "loss: draw t = torch.randint(0, T, (B,), generator=generator) first"
    alpha_bar = Diffusion().alpha_bars[t].float().view(6, 1, 1, 1)
    assert close(out["x_t"], alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise, 1e-5), \
        "loss: x_t must be q_sample(x0, t, noise)"
    assert close(out["loss"], noise.pow(2).mean(), 1e-5), "loss: with a zero output, the loss must be the mean of eps^2"


# Graded by an outcome: a small network trained in the sandbox with the submitted loss on 1-D
# data N(1.5, 0.5^2) (500 Adam steps of 512, cosine learning-rate decay, eps-prediction on the
# LDM schedule), then sampled here with DDIM (20 steps, 2,000 samples). Ten reference runs of
# the solution (seeds 0-9) gave sample means 1.459-1.521 and standard deviations 0.410-0.441;
# the pass band leaves about the width of each range on either side. A loss with the wrong
# target, mismatched noise or time steps from half the range lands far outside (means 2.2-2.9
# or standard deviations > 17).
OUTCOME_MEAN, OUTCOME_STD = (1.40, 1.60), (0.37, 0.49)


def sample_trained(state: dict, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of 2,000 DDIM samples of the trained weights ``state``."""
    network = gaussian_denoiser()
    network.load_state_dict(dict(state))
    noise = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        samples = ddim_sample(Diffusion(), denoiser_function(network), noise, steps=20)
    return samples.mean().item(), samples.std().item()


def test_ex05_2_a_model_trained_with_this_loss_samples_the_data(probe):
    for seed in (0, 1):
        mean, std = sample_trained(probe("train_on_a_gaussian", seed=seed, steps=500), seed)
        assert OUTCOME_MEAN[0] <= mean <= OUTCOME_MEAN[1] and OUTCOME_STD[0] <= std <= OUTCOME_STD[1], \
            (f"loss: a small model trained with it samples mean {mean:.2f}, std {std:.2f} (seed {seed}); trained with "
             f"the reference loss: mean {OUTCOME_MEAN[0]}-{OUTCOME_MEAN[1]}, std {OUTCOME_STD[0]}-{OUTCOME_STD[1]} "
             "for data of mean 1.5 and std 0.5")


SMALL = {"timesteps": 50, "beta_start": 0.001, "beta_end": 0.05}


def test_ex06_1_posterior_is_ddpm_equation_7(probe):
    betas = make_betas("linear", 50, 0.001, 0.05)
    alpha_bars = torch.cumprod(1 - betas, 0)
    x0, x_t, t = randn(2, 1, 2, 2), randn(2, 1, 2, 2, seed=1), torch.tensor([10, 40])
    out = probe("posterior", x0=x0, x_t=x_t, t=t, **SMALL)
    mean, variance = out["mean"], out["variance"]
    assert mean.shape == x0.shape, f"posterior: a mean of shape {tuple(mean.shape)}, expected {tuple(x0.shape)}"
    for i, step in enumerate(t.tolist()):
        prev = alpha_bars[step - 1]
        coef_x0 = betas[step] * prev.sqrt() / (1 - alpha_bars[step])
        coef_xt = (1 - prev) * (1 - betas[step]).sqrt() / (1 - alpha_bars[step])
        assert close(mean[i], coef_x0 * x0[i] + coef_xt * x_t[i], 1e-4), f"posterior: the mean is wrong at t = {step}"
        assert close(variance[i].flatten()[0], (1 - prev) / (1 - alpha_bars[step]) * betas[step], 1e-4), \
            f"posterior: the variance is wrong at t = {step} (DDPM eq. 7: beta-tilde)"


def test_ex06_2_a_ddpm_step_is_equation_11(probe):
    diffusion = Diffusion(**SMALL)
    x = randn(3, 1, 2, 2)
    for step in (30, 0):
        out = probe("ddpm_step", x=x, step=step, value=0.5, seed=1, **SMALL)
        mean, variance = diffusion.q_posterior(torch.full_like(x, 0.5), x, torch.full((3,), step))
        noise = randn(3, 1, 2, 2, seed=1) if step else torch.zeros_like(x)
        assert close(out["x0"], torch.full_like(x, 0.5), 1e-4), "DDPM step: return x0_hat as the second value"
        assert close(out["x_prev"], mean + variance.sqrt() * noise, 1e-4), \
            f"DDPM step at t = {step}: expected posterior mean + sqrt(posterior variance) * z" + \
            (", with no noise at t = 0" if step == 0 else ", z drawn with the generator")


def test_ex06_3_a_ddim_step_is_equation_12(probe):
    diffusion = Diffusion()
    x = randn(2, 1, 2, 2)
    for eta in (0.0, 1.0):
        x_next = probe("ddim_step", x=x, t=600, s=400, eta=eta, value=-0.3, seed=2)["x_next"]
        abar_t, abar_s = diffusion.alpha_bars[600].item(), diffusion.alpha_bars[400].item()
        eps = (x + 0.3 * math.sqrt(abar_t)) / math.sqrt(1 - abar_t)
        sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        z = randn(2, 1, 2, 2, seed=2) if eta else 0
        expected = math.sqrt(abar_s) * -0.3 + math.sqrt(1 - abar_s - sigma**2) * eps + sigma * z
        assert close(x_next, expected, 1e-4), f"DDIM step with eta = {eta:g}: x_s differs from DDIM eq. 12"
    last = probe("ddim_step", x=x, t=5, s=-1, eta=0.0, value=-0.3, seed=2)["x_next"]
    assert close(last, torch.full_like(x, -0.3), 1e-4), "DDIM step: after the last step (abar_s = 1) x must be x0_hat"


def test_ex07_1_attention_weights(probe):
    q, k = randn(2, 3, 4, 8), randn(2, 3, 5, 8, seed=1)
    mask = torch.tensor([[True] * 5, [True, True, False, True, False]]).view(2, 1, 1, 5)
    weights = probe("attention_weights", q=q, k=k, mask=mask)["weights"]
    scores = torch.einsum("bhnd,bhld->bhnl", q, k) / math.sqrt(8)
    expected = scores.masked_fill(~mask, -1e9).softmax(-1)
    assert weights.shape == (2, 3, 4, 5), f"attention: weights of shape {tuple(weights.shape)}, expected (B, h, N, L)"
    assert close(weights, expected, 1e-5), "attention: expected softmax(Q K^T / sqrt(d)) over the keys, masked keys at 0"


def test_ex07_2_guidance_extrapolates(probe):
    conditional, unconditional = randn(2, 4, 8, 8), randn(2, 4, 8, 8, seed=1)
    guided = probe("guidance", conditional=conditional, unconditional=unconditional, scale=3.0)["guided"]
    assert close(guided, unconditional + 3.0 * (conditional - unconditional)), \
        "guidance: expected out(null) + s * (out(y) - out(null))"
    assert close(probe("guidance", conditional=conditional, unconditional=unconditional, scale=1.0)["guided"],
                 conditional), "guidance: scale 1 should give the conditional output itself"


def test_ex07_3_dropped_conditions_become_the_null_sequence(probe):
    attributes = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    drop = torch.tensor([False, True, False])
    out = probe("condition_dropout", attributes=attributes, drop=drop, seed=0)
    encoder = AttributeEncoder(3, 8)
    encoder.load_state_dict(module_state(out))
    with torch.no_grad():
        kept_tokens, kept_mask = encoder(attributes)
        null_tokens, null_mask = encoder.null(1)
    tokens, mask = out["output"], out["mask"]
    assert tokens.shape == kept_tokens.shape and mask.shape == kept_mask.shape, \
        f"condition dropout: tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)}, expected the shapes " \
        f"{tuple(kept_tokens.shape)} and {tuple(kept_mask.shape)} of the encoded batch"
    assert close(tokens[[0, 2]], kept_tokens[[0, 2]]) and torch.equal(mask[[0, 2]], kept_mask[[0, 2]]), \
        "condition dropout: rows that are not dropped must stay as they are"
    assert torch.equal(mask[1], F.pad(null_mask[0], (0, mask.shape[1] - 1))), \
        "condition dropout: a dropped row's mask must be the null mask, padded with False"
    assert close(tokens[1, 0], null_tokens[0, 0]), "condition dropout: a dropped row must start with the null token"


def test_ex08_1_inpainting_condition(probe):
    images = randn(2, 3, 8, 8)
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, :4] = 1
    masks[1, :, :, 2:6] = 1
    condition = probe("inpainting", images=images, masks=masks, pool=4)["condition"]
    assert condition.shape == (2, 4, 2, 2), f"inpainting condition: shape {tuple(condition.shape)}, expected (B, c + 1, h, w)"
    assert close(condition[:, :3], F.avg_pool2d(images * (1 - masks), 4)), \
        "inpainting condition: encode the image with the masked region set to 0"
    assert close(condition[:, 3:], F.avg_pool2d(masks, 4)), \
        "inpainting condition: the last channel is the masked fraction of each latent cell"


def test_ex10_1_part_map_to_the_latent_grid(probe):
    part_maps = torch.randint(0, 5, (2, 8, 8), generator=torch.Generator().manual_seed(4))
    part_maps[1, :4, :4] = 3  # one latent cell of one part only
    condition = probe("semantic_map", part_maps=part_maps, parts=6, side=2)["condition"]
    assert condition.shape == (2, 6, 2, 2), \
        f"part map to the latent grid: shape {tuple(condition.shape)}, expected (B, parts, h, w) = (2, 6, 2, 2)"
    expected = torch.zeros(2, 6, 2, 2)
    for b in range(2):
        for row in range(2):
            for column in range(2):
                cell = part_maps[b, 4 * row:4 * row + 4, 4 * column:4 * column + 4]
                for part in range(6):
                    expected[b, part, row, column] = (cell == part).float().mean()
    assert close(condition, expected), \
        "part map to the latent grid: expected (B, parts, h, w), each latent cell holding the share of each part " \
        "among its pixels (a one-hot map averaged over the cell)"
    assert close(condition[1, :, 0, 0], F.one_hot(torch.tensor(3), 6).float()), \
        "part map to the latent grid: a cell of one part only must be that part's one-hot vector"
    assert close(condition[:, 5], torch.zeros(2, 2, 2)), \
        "part map to the latent grid: a part that is in no pixel (index 5 here) must get share 0 everywhere"


def test_ex10_2_box_token_encoding(probe):
    boxes = torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(5))
    features = probe("box_tokens", boxes=boxes, frequencies=3)["features"]
    assert features.shape == (3, 2, 24), \
        f"box-token encoding: shape {tuple(features.shape)}, expected (..., 4 * 2 * frequencies) = (3, 2, 24)"
    angles = torch.stack([boxes[..., c] * math.pi * 2.0 ** k for c in range(4) for k in range(3)], dim=-1)
    assert close(features, torch.cat([angles.sin(), angles.cos()], dim=-1), tol=1e-4), \
        "box-token encoding: expected (..., 4 * 2 * frequencies): the sines of 2^k pi x for each coordinate x " \
        "(x0's k = 0, 1, ..., then y0's, x1's, y1's), then the cosines in the same order"
    moved = probe("box_tokens", boxes=boxes + torch.tensor([1 / 32, 0, 0, 0]), frequencies=3)["features"]
    assert (moved - features).norm(dim=-1).min() > 0.05, \
        "box-token encoding: moving x0 by 1/32 must change the features of every box"


def test_ex09_1_frechet_distance(probe):
    a = randn(300, 4)
    b = randn(300, 4, seed=1) @ torch.tensor([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]) + 1
    cov_a, cov_b = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root_trace = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(0)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace
    out = probe("frechet", a=a, b=b)
    found = out["distance"]
    assert isinstance(found, float), f"Frechet distance: return a float, got {type(found).__name__}"
    assert math.isclose(found, expected, rel_tol=1e-4), f"Frechet distance: {found:.5f}, expected {expected:.5f}"
    assert isinstance(out["self"], float) and abs(out["self"]) < 1e-6, \
        "Frechet distance: a set against itself must give 0"


def test_ex09_2_kid_is_the_unbiased_mmd(probe):
    a, b = randn(30, 3), randn(30, 3, seed=1) + 0.5
    x, y = a.double().numpy(), b.double().numpy()
    kid = probe("kid", a=a, b=b, subset_size=30)["kid"]
    k_xx, k_yy, k_xy = ((x @ x.T / 3 + 1) ** 3, (y @ y.T / 3 + 1) ** 3, (x @ y.T / 3 + 1) ** 3)
    expected = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (30 * 29) - 2 * k_xy.mean()
    assert isinstance(kid, float), f"KID: return a float, got {type(kid).__name__}"
    assert math.isclose(kid, expected, rel_tol=1e-6), \
        f"KID: {kid:.6f}, expected {expected:.6f}: leave out the diagonal of k(x, x) and k(y, y) (divide by m (m - 1))"
