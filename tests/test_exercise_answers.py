"""The expected answers of the end-of-notebook exercises ("## Exercises"), checked.

Each exercise either has an answer that no profile changes, computed here from the package
(:data:`CHECKED`, one test each), or says in its notebook that its answer "depends on the
profile" (benchmarks/exercise_checks.py checks those a `cpu` run folder can answer: docs/teaching.md,
"The end-of-notebook exercises and their expected answers") or is
"open-ended" (read by a person: the student's own photos, the test they break). The first test
holds the notebooks to that split, so a new exercise has to choose a side.
"""

import math
import re
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from minildm.config import PROFILES
from minildm.data import images, toyfaces
from minildm.diffusion import PREDICTIONS, Diffusion
from minildm.nn import ResBlock
from minildm.trainer import EMA
from minildm.unet import UNet, UNetConfig, forward_flops, parameter_count, timestep_embedding

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PROFILE_TAG, OPEN_TAG = "depends on the profile", "open-ended"
ITEM = re.compile(r"^(\d+)\. \*\*", flags=re.MULTILINE)
CHECKED = {"00.3": "test_00_3_cost_of_pixels", "00.5": "test_00_5_antialiased_resizing_errs_least", "02.2": "test_02_2_bits_of_a_vq_latent",
           "03.1": "test_03_1_the_schedules_cross_at_t_273",
           "03.2": "test_03_2_at_zero_terminal_snr_eps_is_trivial_and_x0_undefined",
           "03.3": "test_03_3_min_snr_is_one_weighting_on_x0_for_every_prediction",
           "04.1": "test_04_1_a_linear_time_input_cannot_tell_500_from_501",
           "04.2": "test_04_2_scale_shift_costs_11_65_m_parameters",
           "04.5": "test_04_5_parameters_and_flops_grow_like_the_square_of_the_width",
           "05.3": "test_05_3_ema_decays_are_equal_until_the_warm_up_reaches_them"}


def exercises() -> dict[str, str]:
    """Every end-of-notebook exercise by id ("03.1"), its text from the number to the next."""
    found = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown" and cell.source.startswith("## Exercises"):
                parts = ITEM.split(cell.source)[1:]
                found.update({f"{path.name[:2]}.{number}": text for number, text in zip(parts[::2], parts[1::2])})
    return found


def test_every_exercise_is_checked_here_or_tagged():
    found = exercises()
    assert len(found) >= 50  # eleven notebooks, about five each
    for exercise_id, text in found.items():
        assert "Expected:" in text or "A good answer" in text, f"exercise {exercise_id} says nothing to expect"
        tagged = PROFILE_TAG in text or OPEN_TAG in text
        assert tagged != (exercise_id in CHECKED), (
            f"exercise {exercise_id}: " + ("checked here, so it should carry no tag" if tagged
                                           else f"neither checked here nor tagged {PROFILE_TAG!r} or {OPEN_TAG!r}"))
    assert set(CHECKED) <= set(found) and all(name in globals() for name in CHECKED.values())


def test_00_3_cost_of_pixels():
    pixels = 256 * 256 * 3  # uint8 values per image
    assert round(30_000 * pixels / 1e9, 1) == 5.9  # GB
    latent = 4 * (256 // 8) ** 2
    assert (latent, pixels, pixels // latent) == (4_096, 196_608, 48)


def test_00_5_antialiased_resizing_errs_least():
    large = images.float_to_uint8(toyfaces.generate(8, resolution=256, seed=0)[0]).float()  # (8, 3, 256, 256)
    truth = images.float_to_uint8(toyfaces.generate(8, resolution=32, seed=0)[0]).float()

    def error(**mode) -> float:
        resized = torch.nn.functional.interpolate(large, size=(32, 32), **mode).round().clamp(0, 255)
        return (resized - truth).abs().mean().item()

    antialiased = error(mode="bicubic", antialias=True)
    bilinear, nearest = error(mode="bilinear", antialias=False), error(mode="nearest")
    assert antialiased < 2 and 1.5 < bilinear / antialiased < 2.5 and 3 < nearest / antialiased < 5


def test_02_2_bits_of_a_vq_latent():
    codebook = PROFILES["cpu"].autoencoder.codebook_size
    positions = (32 // 4) ** 2
    bits = positions * math.log2(codebook)
    assert (codebook, positions, bits) == (1024, 64, 640)
    assert round(32 * 32 * 3 * 8 / bits) == 38 and 32 * 32 * 3 * 8 == 24_576


def test_03_1_the_schedules_cross_at_t_273():
    ldm = Diffusion().alpha_bars
    ddpm = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), dim=0)
    ldm_noisier = ldm < ddpm
    assert ldm_noisier[:274].all() and not ldm_noisier[274:].any()  # the LDM schedule is the noisier to t = 273
    assert round(ldm[273].item(), 2) == round(ddpm[273].item(), 2) == 0.46
    assert f"{ddpm[-1].item():.1e}" == "4.0e-05" and f"{ldm[-1].item():.1e}" == "1.4e-04"


def test_03_2_at_zero_terminal_snr_eps_is_trivial_and_x0_undefined():
    diffusion = Diffusion(prediction="eps")
    root = diffusion.alpha_bars.sqrt()
    rescaled = ((root - root[-1]) / (1 - root[-1])) ** 2  # sqrt(abar) 0 at t = 999, 1 before t = 0
    diffusion.alpha_bars = rescaled
    assert diffusion.alpha_bars[-1] == 0 and rescaled[-1] / (1 - rescaled[-1]) == 0  # SNR 0 at t = T
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.full((2,), 999)
    x_T = diffusion.q_sample(x0, t, noise)
    assert torch.equal(x_T, noise)  # the identity predicts eps exactly: the last step is trivial
    implied_x0, _ = diffusion.split_prediction(noise, x_T, t)
    assert implied_x0.isnan().all()  # (x_T - eps) / sqrt(abar) = 0 / 0
    diffusion.prediction = "v"
    assert torch.equal(diffusion.target(x0, noise, t), -x0)  # v at SNR 0 is -x0, defined


def test_03_3_min_snr_is_one_weighting_on_x0_for_every_prediction():
    t = torch.arange(0, 1000, 37)
    x_t, error = torch.randn(len(t), 4, 8, 8, dtype=torch.float64), 1e-3
    for prediction in PREDICTIONS:
        diffusion = Diffusion(prediction=prediction, min_snr_gamma=5)
        output = torch.randn_like(x_t)
        x0, _ = diffusion.split_prediction(output, x_t, t)
        x0_moved, _ = diffusion.split_prediction(output + error, x_t, t)
        # an error e on the output is an error (x0 shift) on x0: the loss e^2 is (e / shift)^2 times x0's
        per_x0 = (error / (x0_moved - x0).mean(dim=(1, 2, 3))) ** 2
        weight_on_x0 = diffusion.loss_weights(t).double() * per_x0
        expected = diffusion.snr[t].clamp(max=5)
        assert torch.allclose(weight_on_x0, expected, rtol=1e-6), prediction


def test_04_1_a_linear_time_input_cannot_tell_500_from_501():
    t = torch.tensor([500, 501])
    linear = (t[:, None] / 1000).repeat(1, 128)
    assert torch.nn.functional.cosine_similarity(linear[:1], linear[1:]).item() == pytest.approx(1, abs=1e-6)
    sinusoids = timestep_embedding(t, 128)
    change = (sinusoids[0] - sinusoids[1]).abs()  # cosines then sines, fastest frequencies first
    assert change[:8].min() > 0.1 and change[56:64].max() < 1e-3  # fast components differ, slow ones do not


def paper_shaped_unet(width: int) -> UNet:
    """Notebook 04's UNet of the paper's shape (section 5), on the meta device: no memory."""
    config = UNetConfig(in_channels=3, out_channels=3, base_channels=width, channel_mult=(1, 2, 3, 4),
                        res_blocks=2, attention_levels=(1, 2, 3), head_channels=32)
    with torch.device("meta"):
        return UNet(config)


def test_04_2_scale_shift_costs_11_65_m_parameters():
    blocks = [module for module in paper_shaped_unet(224).modules() if isinstance(module, ResBlock)]
    projections = [block.time_proj[1] for block in blocks]
    assert len(blocks) == 22
    assert all(p.out_features == 2 * block.norm2.num_channels for p, block in zip(projections, blocks))
    additive = [nn.Linear(p.in_features, p.out_features // 2, device="meta") for p in projections]
    difference = sum(parameter_count(p) - parameter_count(a) for p, a in zip(projections, additive))
    assert round(difference / 1e6, 2) == 11.65


def test_04_5_parameters_and_flops_grow_like_the_square_of_the_width():
    narrow, wide = paper_shaped_unet(64), paper_shaped_unet(320)
    assert 0.9 * 25 < parameter_count(wide) / parameter_count(narrow) < 1.1 * 25  # (320 / 64)^2
    assert 0.85 * 25 < forward_flops(wide, (3, 64, 64)) / forward_flops(narrow, (3, 64, 64)) < 1.1 * 25
    assert 0.2 < forward_flops(wide, (3, 32, 32)) / forward_flops(wide, (3, 64, 64)) < 0.27  # about a quarter


def test_05_3_ema_decays_are_equal_until_the_warm_up_reaches_them():
    steps = PROFILES["cpu"].ldm.steps
    first_step = {decay: next(s for s in range(10**5) if (1 + s) / (10 + s) >= decay) for decay in (0.99, 0.999)}
    assert first_step == {0.99: 890, 0.999: 8_990} and steps == 1400 < 8_990
    network = nn.Linear(8, 8)
    copies = {decay: EMA(network, decay) for decay in (0.99, 0.999, 0.9999)}
    for step in range(steps):
        with torch.no_grad():
            network.weight.add_(torch.randn_like(network.weight) * 0.01)
        for ema in copies.values():
            ema.update(network, step)
    assert torch.equal(copies[0.999].module.weight, copies[0.9999].module.weight)  # bit for bit
    assert not torch.equal(copies[0.99].module.weight, copies[0.999].module.weight)
