"""The autoencoder objective: the perceptual term, the patch GAN's losses and its adaptive
weight, the regularisers' terms, and the two-optimiser training step."""

import math

import pytest
import torch
from torch import nn

from minildm.autoencoder import AutoencoderConfig, build_autoencoder
from minildm.losses import (AutoencoderLoss, LossConfig, PatchDiscriminator, adaptive_weight,
                            generator_adversarial_loss, hinge_d_loss)
from minildm.perceptual import PerceptualLoss, VGG16Features

pytestmark = pytest.mark.usefixtures("one_thread")


def random_images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


def test_hinge_and_generator_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2], mean 5/6; relu(1 + fake) = [0, 1, 2], mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert generator_adversarial_loss(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(-2.0)


def test_adaptive_weight_on_a_linear_decoder():
    weight = nn.Parameter(torch.randn(3, 2))
    h, target, v = torch.randn(5, 2), torch.randn(5, 3), torch.randn(3)
    out = h @ weight.T  # (5, 3)
    rec_loss = (out - target).abs().mean()
    g_loss = -(out @ v).mean()
    rec_grad = torch.sign(out - target).detach().T @ h / 15  # d rec / d weight
    g_grad = -torch.outer(v, h.mean(dim=0))  # d g / d weight
    expected = rec_grad.norm() / (g_grad.norm() + 1e-4)
    result = adaptive_weight(rec_loss, g_loss, weight)
    assert result.item() == pytest.approx(expected.item(), rel=1e-5) and not result.requires_grad
    assert adaptive_weight(1e3 * rec_loss, 1e-12 * g_loss, weight).item() == pytest.approx(1e4)  # clamped


def test_patch_discriminator_shape_and_init():
    discriminator = PatchDiscriminator()
    assert discriminator(random_images(2, 32)).shape == (2, 1, 2, 2)
    assert discriminator(random_images(1, 64)).shape == (1, 1, 6, 6)
    assert discriminator.layers[2].weight.std().item() == pytest.approx(0.02, rel=0.05)


def kl_setup(disc_start: int = 10, perceptual: PerceptualLoss | None = None) -> tuple:
    autoencoder = build_autoencoder(AutoencoderConfig(base_channels=16))
    loss = AutoencoderLoss(LossConfig.from_autoencoder(autoencoder.config, disc_start=disc_start), perceptual)
    x = random_images()
    reconstruction, extras = autoencoder(x)
    return autoencoder, loss, x, reconstruction, extras


def test_generator_loss_switches_the_gan_on_at_disc_start():
    autoencoder, loss_fn, x, reconstruction, extras = kl_setup(disc_start=10)
    with torch.no_grad():
        loss_fn.logvar.fill_(0.3)
    calls = []
    loss_fn.discriminator.register_forward_hook(lambda *args: calls.append(1))
    weight = autoencoder.last_layer_weight

    loss, logs = loss_fn.generator_loss(x, reconstruction, extras, step=9, last_layer_weight=weight)
    nll = (x - reconstruction).abs().mean() / math.exp(0.3) + 0.3
    expected = nll + 1e-6 * extras["kl"] / (3 * 32 * 32)
    assert torch.allclose(loss, expected) and calls == [] and "g_loss" not in logs
    assert logs["nll"] == pytest.approx(nll.item()) and logs["kl"] == pytest.approx(extras["kl"].item())

    loss, logs = loss_fn.generator_loss(x, reconstruction, extras, step=10, last_layer_weight=weight)
    assert calls == [1]
    g_loss = -loss_fn.discriminator(reconstruction).mean()
    nll_grad, = torch.autograd.grad(nll, weight, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, weight, retain_graph=True)
    gan_weight = 0.5 * nll_grad.norm() / (g_grad.norm() + 1e-4)
    assert logs["gan_weight"] == pytest.approx(gan_weight.item(), rel=1e-4)
    assert torch.allclose(loss, expected + gan_weight * g_loss, rtol=1e-5)


def test_perceptual_term_enters_the_reconstruction_loss():
    perceptual = PerceptualLoss(VGG16Features())
    autoencoder, loss_fn, x, reconstruction, extras = kl_setup(perceptual=perceptual)
    _, logs = loss_fn.generator_loss(x, reconstruction, extras, step=0,
                                     last_layer_weight=autoencoder.last_layer_weight)
    distance = perceptual(x, reconstruction).mean().item()
    assert logs["perceptual"] == pytest.approx(distance) and distance > 0
    assert logs["rec"] == pytest.approx(logs["l1"] + distance)
    assert not any("vgg" in key for key in loss_fn.state_dict())  # checkpoints stay small


def test_l2_weight_adds_the_mean_squared_error_to_the_reconstruction_loss():
    autoencoder, loss_fn, x, reconstruction, extras = kl_setup()
    loss_fn.config.l2_weight = 4.0
    _, logs = loss_fn.generator_loss(x, reconstruction, extras, step=0,
                                     last_layer_weight=autoencoder.last_layer_weight)
    squared_error = ((x - reconstruction) ** 2).sum().item() / x.numel()
    assert logs["l2"] == pytest.approx(squared_error) and squared_error > 0
    assert logs["rec"] == pytest.approx(logs["l1"] + 4.0 * squared_error)


def test_discriminator_loss_is_zero_before_disc_start():
    _, loss_fn, x, reconstruction, _ = kl_setup(disc_start=10)
    loss, logs = loss_fn.discriminator_loss(x, reconstruction, step=9)
    assert loss.item() == 0.0 and logs == {"d_loss": 0.0}
    loss.backward()  # a no-op, so a training loop needs no special case
    assert all(p.grad is None for p in loss_fn.discriminator_parameters())
    loss, _ = loss_fn.discriminator_loss(x, reconstruction, step=10)
    expected = hinge_d_loss(loss_fn.discriminator(x), loss_fn.discriminator(reconstruction))
    assert torch.allclose(loss, expected)


def test_two_optimisers_take_one_step_each():
    autoencoder, loss_fn, x, reconstruction, extras = kl_setup(disc_start=0)
    generator_opt = torch.optim.Adam([*autoencoder.parameters(), *loss_fn.generator_parameters()],
                                     lr=1e-4, betas=(0.5, 0.9))
    discriminator_opt = torch.optim.Adam(loss_fn.discriminator_parameters(), lr=1e-4, betas=(0.5, 0.9))

    loss, _ = loss_fn.generator_loss(x, reconstruction, extras, step=0,
                                     last_layer_weight=autoencoder.last_layer_weight)
    loss.backward()
    assert all(p.grad is None and p.requires_grad for p in loss_fn.discriminator_parameters())
    assert autoencoder.last_layer_weight.grad is not None and loss_fn.logvar.grad is not None
    generator_opt.step()

    before = [p.detach().clone() for p in loss_fn.discriminator_parameters()]
    encoder_grad = autoencoder.encoder.conv_in.weight.grad.clone()
    d_loss, logs = loss_fn.discriminator_loss(x, reconstruction, step=0)
    d_loss.backward()
    assert torch.equal(autoencoder.encoder.conv_in.weight.grad, encoder_grad)  # reconstruction detached
    discriminator_opt.step()
    after = loss_fn.discriminator_parameters()
    assert all(not torch.equal(b, a) for b, a in zip(before, after))
    assert set(logs) == {"d_loss", "logits_real", "logits_fake"}


def test_vq_objective_adds_the_codebook_loss_without_learned_logvar():
    autoencoder = build_autoencoder(AutoencoderConfig(reg="vq", base_channels=16, codebook_size=32))
    config = LossConfig.from_autoencoder(autoencoder.config, disc_start=100)
    assert not config.learned_logvar
    loss_fn = AutoencoderLoss(config)
    assert loss_fn.generator_parameters() == []
    x = random_images()
    reconstruction, extras = autoencoder(x)
    loss, logs = loss_fn.generator_loss(x, reconstruction, extras, step=0,
                                        last_layer_weight=autoencoder.last_layer_weight)
    assert torch.allclose(loss, (x - reconstruction).abs().mean() + extras["vq_loss"])
    assert logs["perplexity"] == pytest.approx(extras["perplexity"].item()) and "vq" in logs
