"""What the grader asks a submission to compute: one probe per call of an exercise.

A probe takes tensors and numbers, calls the package (with a submission's code in one
exercise's regions), and returns tensors and numbers. It holds no expected value: the grader
computes those in its own process and compares (:mod:`minildm.course.probing` carries the calls
across the sandbox's wall, ``tests/grading`` holds the checks). Modules that carry weights
(a ResBlock, an encoder) return their state, so the grader can recompute what they should give.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

PROBES: dict[str, Callable[..., dict]] = {}


def probe(function: Callable[..., dict]) -> Callable[..., dict]:
    PROBES[function.__name__] = function
    return function


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gradient_of(tensor: Tensor) -> Tensor:
    return tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)


@probe
def gaussian_sample(parameters: Tensor, seed: int) -> dict:
    """Exercise 01.1: z = posterior.sample(generator), and the gradient of z.sum() with respect
    to the posterior's parameters (mean, then log-variance, along the channels)."""
    from minildm.regularizers import DiagonalGaussian

    parameters = parameters.clone().requires_grad_()
    z = DiagonalGaussian(parameters).sample(generator(seed))
    if z.requires_grad:
        z.sum().backward()
    return {"z": z.detach(), "gradient": gradient_of(parameters)}


@probe
def gaussian_kl(parameters: Tensor) -> dict:
    """Exercise 01.2: the KL term of the posterior with these parameters."""
    from minildm.regularizers import DiagonalGaussian

    return {"kl": DiagonalGaussian(parameters).kl().detach()}


@probe
def hinge_loss(logits_real: Tensor, logits_fake: Tensor) -> dict:
    """Exercise 01.3."""
    from minildm.losses import hinge_d_loss

    return {"loss": hinge_d_loss(logits_real, logits_fake).detach()}


@probe
def adaptive_gan_weight(weight: Tensor, bias: Tensor, x: Tensor, rec_scale: float, gan_scale: float) -> dict:
    """Exercise 01.4, for a linear layer: rec = mean |layer(x)| * rec_scale and
    gan = -mean layer(x) * gan_scale. ``backward_works``: the graphs of both losses survive."""
    from minildm.losses import adaptive_weight

    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    rec, gan = layer(x).abs().mean() * rec_scale, -layer(x).mean() * gan_scale
    found = adaptive_weight(rec, gan, layer.weight)
    requires_grad = bool(found.requires_grad)
    try:
        (rec + found * gan).backward()
        backward_works = True
    except RuntimeError:
        backward_works = False
    return {"weight": torch.as_tensor(found).detach(), "requires_grad": requires_grad, "backward_works": backward_works}


class AffineEncoder(nn.Module):
    """A stand-in autoencoder whose latents are ``scale * x + shift``."""

    def __init__(self, scale: float, shift: float):
        super().__init__()
        self.scale, self.shift = scale, shift
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def encode(self, x: Tensor) -> Tensor:
        return self.scale * x + self.shift


@probe
def latent_scale_factor(images: Tensor, scale: float, shift: float, batch_size: int) -> dict:
    """Exercise 01.5, on the latents ``scale * images + shift``."""
    from minildm.autoencoder import measure_scale_factor

    return {"factor": measure_scale_factor(AffineEncoder(scale, shift), images, batch_size=batch_size)}


@probe
def nearest_code(codebook: Tensor, flat: Tensor) -> dict:
    """Exercise 02.1: the index of the nearest codebook row for each row of ``flat``."""
    from minildm.regularizers import VectorQuantizer

    quantizer = VectorQuantizer(*codebook.shape)
    with torch.no_grad():
        quantizer.codebook.weight.copy_(codebook)
    found = quantizer.nearest_code(flat.clone().requires_grad_())
    return {"indices": found.detach(), "requires_grad": bool(found.requires_grad)}


@probe
def straight_through(z_e: Tensor, codes: Tensor, weights: Tensor) -> dict:
    """Exercise 02.2: z_q, and the gradients of sum(z_q * weights) into z_e and into the codes."""
    from minildm.regularizers import VectorQuantizer

    z_e, codes = z_e.clone().requires_grad_(), codes.clone().requires_grad_()
    z_q = VectorQuantizer.straight_through(z_e, codes)
    (z_q * weights).sum().backward()
    return {"z_q": z_q.detach(), "z_e_gradient": gradient_of(z_e), "codes_gradient": gradient_of(codes)}


@probe
def vq_loss(z_e: Tensor, codes: Tensor, beta: float) -> dict:
    """Exercise 02.3: the codebook and commitment losses, and their gradients."""
    from minildm.regularizers import VectorQuantizer

    z_e, codes = z_e.clone().requires_grad_(), codes.clone().requires_grad_()
    loss = VectorQuantizer(4, z_e.shape[1], beta=beta).loss(z_e, codes)
    loss.backward()
    return {"loss": loss.detach(), "z_e_gradient": gradient_of(z_e), "codes_gradient": gradient_of(codes)}


@probe
def beta_schedule(kind: str, timesteps: int, beta_start: float, beta_end: float) -> dict:
    """Exercise 03.1."""
    from minildm.diffusion import make_betas

    return {"betas": make_betas(kind, timesteps, beta_start, beta_end)}


@probe
def q_sample(x0: Tensor, t: Tensor, noise: Tensor) -> dict:
    """Exercise 03.2, on the default (LDM) schedule."""
    from minildm.diffusion import Diffusion

    return {"x_t": Diffusion().q_sample(x0, t, noise)}


@probe
def time_embedding(t: Tensor, channels: int) -> dict:
    """Exercise 04.1."""
    from minildm.unet import timestep_embedding

    return {"embedding": timestep_embedding(t, channels)}


def with_state(module: nn.Module, output: Tensor) -> dict:
    """``output`` and the module's weights (``state.`` + their names)."""
    return {"output": output.detach(), **{f"state.{name}": value.detach().clone()
                                          for name, value in module.state_dict().items()}}


@probe
def scale_shift_block(x: Tensor, t_emb: Tensor, seed: int) -> dict:
    """Exercise 04.2: a ResBlock (4 -> 6 channels, time embedding of 5) with random weights."""
    from minildm.nn import ResBlock

    torch.manual_seed(seed)
    block = ResBlock(4, 6, time_channels=5).eval()
    nn.init.normal_(block.conv2.weight, std=0.1)
    with torch.no_grad():
        return with_state(block, block(x, t_emb))


@probe
def pixel_attention(x: Tensor, seed: int) -> dict:
    """Exercise 04.3: self-attention over the pixels of ``x`` (8 channels, 2 heads)."""
    from minildm.nn import SelfAttention2d

    torch.manual_seed(seed)
    attention = SelfAttention2d(8, heads=2).eval()
    nn.init.normal_(attention.proj_out.weight, std=0.2)
    with torch.no_grad():
        return with_state(attention, attention(x))


@probe
def v_prediction(x0: Tensor, noise: Tensor, t: Tensor, v: Tensor, x_t: Tensor) -> dict:
    """Exercise 05.1: the v-target of (x0, noise, t), and what ``split_prediction`` makes of
    the given ``v`` at ``x_t``."""
    from minildm.diffusion import Diffusion

    diffusion = Diffusion(prediction="v")
    x0_back, noise_back = diffusion.split_prediction(v, x_t, t)
    return {"target": diffusion.target(x0, noise, t), "x0": x0_back, "noise": noise_back}


@probe
def training_loss(x0: Tensor, seed: int) -> dict:
    """Exercise 05.2: the loss of a network that outputs zeros, and the (x_t, t) it was given."""
    from minildm.diffusion import Diffusion

    seen = {}

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        seen["x_t"], seen["t"] = x_t.detach().clone(), t.detach().clone()
        return torch.zeros_like(x_t)

    loss = Diffusion().loss(denoise, x0, generator(seed))
    return {"loss": torch.as_tensor(loss).detach(), **seen}


def gaussian_denoiser() -> nn.Module:
    """The small network of the outcome test: (x_t, 32-channel time embedding) -> eps."""
    return nn.Sequential(nn.Linear(1 + 32, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))


def denoiser_function(network: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    from minildm.unet import timestep_embedding

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        return network(torch.cat([x_t.flatten(1), timestep_embedding(t, 32)], 1)).view_as(x_t)

    return denoise


@probe
def train_on_a_gaussian(seed: int, steps: int) -> dict:
    """Exercise 05.2 by its outcome: :func:`gaussian_denoiser` trained with the package's loss
    on 1-D data N(1.5, 0.5^2) (Adam, batch 512, cosine decay), eps-prediction on the LDM
    schedule. Returns the trained weights; the grader samples them itself."""
    from minildm.diffusion import Diffusion

    torch.manual_seed(seed)
    diffusion, network = Diffusion(), gaussian_denoiser()
    denoise = denoiser_function(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    draws = generator(seed)
    for _ in range(steps):
        batch = (1.5 + 0.5 * torch.randn(512, generator=draws)).view(512, 1, 1, 1)
        loss = diffusion.loss(denoise, batch, draws)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def small_diffusion(timesteps: int, beta_start: float, beta_end: float):
    from minildm.diffusion import Diffusion

    return Diffusion(timesteps=timesteps, beta_start=beta_start, beta_end=beta_end)


@probe
def posterior(x0: Tensor, x_t: Tensor, t: Tensor, timesteps: int, beta_start: float, beta_end: float) -> dict:
    """Exercise 06.1: the mean and variance of q(x_{t-1} | x_t, x0)."""
    mean, variance = small_diffusion(timesteps, beta_start, beta_end).q_posterior(x0, x_t, t)
    return {"mean": mean, "variance": variance}


def point_mass(diffusion, value: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The ideal denoiser for data that is always ``value``: the eps that implies x0 = value."""
    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        alpha_bar = diffusion.at(diffusion.alpha_bars, t, x_t)
        return (x_t - alpha_bar.sqrt() * value) / (1 - alpha_bar).sqrt()
    return denoise


@probe
def ddpm_step(x: Tensor, step: int, value: float, seed: int, timesteps: int, beta_start: float,
              beta_end: float) -> dict:
    """Exercise 06.2: one DDPM step of the ideal denoiser for data that is always ``value``."""
    from minildm.sampling import ddpm_step as step_function

    diffusion = small_diffusion(timesteps, beta_start, beta_end)
    x_prev, x0 = step_function(diffusion, point_mass(diffusion, value), x, step, generator(seed))
    return {"x_prev": x_prev, "x0": x0}


@probe
def ddim_step(x: Tensor, t: int, s: int, eta: float, value: float, seed: int) -> dict:
    """Exercise 06.3: one DDIM step from t to s (s < 0: the last step, to abar = 1) on the
    default schedule, for data that is always ``value``."""
    from minildm.diffusion import Diffusion
    from minildm.sampling import ddim_step as step_function

    diffusion = Diffusion()
    x_next, x0 = step_function(diffusion, point_mass(diffusion, value), x, t, s if s >= 0 else None, eta,
                               generator(seed))
    return {"x_next": x_next, "x0": x0}


@probe
def attention_weights(q: Tensor, k: Tensor, mask: Tensor) -> dict:
    """Exercise 07.1."""
    from minildm.attention import attention_weights as weights

    return {"weights": weights(q, k, mask)}


@probe
def guidance(conditional: Tensor, unconditional: Tensor, scale: float) -> dict:
    """Exercise 07.2."""
    from minildm.guidance import classifier_free_guidance

    return {"guided": classifier_free_guidance(conditional, unconditional, scale)}


@probe
def condition_dropout(attributes: Tensor, drop: Tensor, seed: int) -> dict:
    """Exercise 07.3: an attribute encoder (3 attributes, width 8) with random weights, applied
    with ``drop``; its weights come back as ``state.*``."""
    from minildm.conditioning import AttributeEncoder

    torch.manual_seed(seed)
    encoder = AttributeEncoder(attributes.shape[1], 8)
    with torch.no_grad():
        tokens, mask = encoder(attributes, drop)
    return {**with_state(encoder, tokens), "mask": mask}


@probe
def inpainting(images: Tensor, masks: Tensor, pool: int) -> dict:
    """Exercise 08.1, with an "encoder" that average-pools by ``pool``."""
    import torch.nn.functional as F

    from minildm.image_conditions import inpainting_condition

    return {"condition": inpainting_condition(lambda x: F.avg_pool2d(x, pool), images, masks)}


@probe
def semantic_map(part_maps: Tensor, parts: int, side: int) -> dict:
    """Exercise 10.1: the extra input of ``part_maps`` on a ``side`` x ``side`` latent grid."""
    from minildm.image_conditions import semantic_condition

    return {"condition": semantic_condition(part_maps, parts, (side, side))}


@probe
def box_tokens(boxes: Tensor, frequencies: int) -> dict:
    """Exercise 10.2: the Fourier features of ``boxes``."""
    from minildm.conditioning import box_features

    return {"features": box_features(boxes, frequencies)}


@probe
def frechet(a: Tensor, b: Tensor) -> dict:
    """Exercise 09.1: the distance between the two sets, and of ``a`` to itself."""
    from minildm.evaluation.metrics import frechet_distance

    return {"distance": frechet_distance(a, b), "self": frechet_distance(a, a)}


@probe
def kid(a: Tensor, b: Tensor, subset_size: int) -> dict:
    """Exercise 09.2: KID from one subset of ``subset_size``."""
    from minildm.evaluation.metrics import kernel_distance

    value, _ = kernel_distance(a, b, subsets=1, subset_size=subset_size)
    return {"kid": value}
