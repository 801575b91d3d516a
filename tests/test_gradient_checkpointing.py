"""Gradient checkpointing (Chen et al. 2016): the same loss and gradients, fewer tensors kept
for backward, blocks run twice; nothing changes in eval mode, without gradients, or in the
run folder."""

import json

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from minildm import autoencoder_training as stage
from minildm import nn as minildm_nn
from minildm.autoencoder import AutoencoderConfig, build_autoencoder
from minildm.app.cli import build_parser
from minildm.config import get_profile
from minildm.evaluation.bench import saved_activation_bytes
from minildm.nn import ResBlock, set_gradient_checkpointing
from minildm.recipes import autoencoder_config
from minildm.unet import UNet, UNetConfig

from conftest import toy_pixels

UNET = UNetConfig(in_channels=4, out_channels=4, base_channels=16, channel_mult=(1, 2), res_blocks=1,
                  attention_levels=(0, 1), head_channels=8, dropout=0.2, context_channels=8)
AUTOENCODER = AutoencoderConfig(factor=4, base_channels=8, res_blocks=1, attention=True)
pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: threads would wait on each other


def perturbed(model: nn.Module) -> nn.Module:
    """``model`` in train mode, moved off its zero initialisation so every gradient is nonzero."""
    torch.manual_seed(0)
    for parameter in model.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model.train()


def unet_case():
    """A conditional UNet and a forward pass on random latents and padded context tokens."""
    unet = perturbed(UNet(UNET))
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8)  # (B, C, H, W), (B, L, D)
    mask = torch.tensor([[True, True, False], [True, True, True]])  # (B, L): the first row has padding
    return unet, lambda: unet(x, torch.tensor([10, 700]), context, mask)


def autoencoder_case():
    """A KL autoencoder and a reconstruction of random images (the posterior is sampled)."""
    autoencoder = perturbed(build_autoencoder(AUTOENCODER))
    images = torch.rand(2, 3, 32, 32) * 2 - 1  # (B, 3, H, W)
    return autoencoder, lambda: autoencoder(images)[0]


CASES = pytest.mark.parametrize("case", [unet_case, autoencoder_case], ids=["unet", "autoencoder"])


def loss_and_gradients(model: nn.Module, forward, enabled: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    set_gradient_checkpointing(model, enabled)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks and posterior samples in both runs
    loss = forward().square().mean()
    loss.backward()
    return loss.detach(), [parameter.grad for parameter in model.parameters()]


@CASES
def test_loss_and_gradients_are_those_without_checkpointing(case):
    model, forward = case()
    loss, gradients = loss_and_gradients(model, forward, enabled=False)
    checkpointed_loss, checkpointed_gradients = loss_and_gradients(model, forward, enabled=True)
    assert torch.allclose(checkpointed_loss, loss, atol=1e-6)
    assert all(gradient.abs().sum() > 0 for gradient in gradients)
    for gradient, checkpointed_gradient in zip(gradients, checkpointed_gradients):
        assert torch.allclose(checkpointed_gradient, gradient, atol=1e-6)


@CASES
def test_fewer_activations_are_kept_for_backward(case):
    model, forward = case()
    kept = saved_activation_bytes(forward, weights=model.parameters())
    set_gradient_checkpointing(model)
    # measured: 5% of the bytes for the UNet, 23% for the autoencoder
    assert saved_activation_bytes(forward, weights=model.parameters()) < kept / 2


def forward_calls(model: nn.Module, run) -> list[int]:
    """How often the forward of each ResBlock of ``model`` starts during ``run()`` (every
    ResBlock is inside a checkpointed block). A pre-hook: the recomputation in the backward
    pass may stop early, once it has every tensor the backward needs."""
    blocks = [module for module in model.modules() if isinstance(module, ResBlock)]
    calls = [0] * len(blocks)
    handles = [block.register_forward_pre_hook(lambda module, inputs, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(blocks)]
    run()
    for handle in handles:
        handle.remove()
    return calls


def forward_and_backward(forward):
    return lambda: forward().square().mean().backward()


@CASES
def test_blocks_run_again_in_the_backward_pass(case):
    model, forward = case()
    assert set(forward_calls(model, forward_and_backward(forward))) == {1}
    set_gradient_checkpointing(model)
    assert set(forward_calls(model, forward_and_backward(forward))) == {2}


@CASES
def test_nothing_is_recomputed_in_eval_mode_or_without_gradients(case, monkeypatch):
    model, forward = case()
    set_gradient_checkpointing(model)
    model.eval()
    assert set(forward_calls(model, forward_and_backward(forward))) == {1}

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint called without a backward pass to save memory for")

    monkeypatch.setattr(minildm_nn, "checkpoint", refuse)
    model.train()
    with torch.no_grad():
        assert set(forward_calls(model, forward)) == {1}


def test_switching_needs_a_model_that_supports_it():
    with pytest.raises(ValueError, match="Linear has no part that supports gradient checkpointing"):
        set_gradient_checkpointing(nn.Linear(2, 2))
    set_gradient_checkpointing(nn.Linear(2, 2), enabled=False)  # switching off is always fine


def test_training_with_checkpointing_gives_the_same_run_folder(tmp_path, monkeypatch):
    profile = get_profile("tiny")
    config = autoencoder_config(profile, base_channels=8)
    pixels = toy_pixels(16, seed=3)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])  # the block
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(minildm_nn, "checkpoint", counted)
    weights = {}
    for enabled in (False, True):
        training = stage.AutoencoderTraining(profile=profile, steps=3, progress=False, gradient_checkpointing=enabled)
        autoencoder = stage.train_autoencoder(tmp_path / f"checkpointing_{enabled}", pixels, config=config,
                                              training=training)
        weights[enabled] = autoencoder.state_dict()
        assert bool(calls) == enabled  # the option reached the autoencoder, and only when given
    for name, value in weights[False].items():
        assert torch.allclose(weights[True][name], value, atol=1e-5), name
    # not part of the saved configuration: either run folder loads and resumes with or without it
    configs = [json.loads((tmp_path / f"checkpointing_{enabled}" / "config.json").read_text())
               for enabled in (False, True)]
    assert configs[0] == configs[1]


@pytest.mark.parametrize("command", [["train-ae"], ["train-ldm", "--ae", "runs/ae"]])
def test_command_line_takes_the_option(command, tmp_path, capsys):
    parser = build_parser()
    out = ["--out", str(tmp_path / "run")]
    assert parser.parse_args([*command, "--gradient-checkpointing", *out]).gradient_checkpointing
    assert not parser.parse_args([*command, *out]).gradient_checkpointing
    with pytest.raises(SystemExit):
        parser.parse_args([command[0], "--help"])
    assert "--gradient-checkpointing" in capsys.readouterr().out
