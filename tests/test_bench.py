"""The benchmark of pixel vs latent diffusion: what it measures and how it reports it."""

import math
import time
from types import SimpleNamespace

import pytest
import torch

from minildm.evaluation import bench
from minildm.evaluation.bench import (BenchResult, check_sizes, markdown_table, median_seconds, run_bench,
                           saved_activation_bytes, speedups, steps_for_budget)
from minildm.config import MinildmError, get_profile


def test_saved_activations_are_the_tensors_autograd_keeps():
    a = torch.randn(1000, requires_grad=True)
    b = torch.randn(1000, requires_grad=True)
    assert saved_activation_bytes(lambda: (a * b).sum()) == 2 * 1000 * 4  # a * b saves both factors
    assert saved_activation_bytes(lambda: (a + b).sum()) == 0  # a sum needs nothing for its gradient
    assert saved_activation_bytes(lambda: (a * a).sum()) == 1000 * 4  # one storage, counted once
    assert saved_activation_bytes(lambda: (a * b).sum(), weights=[b]) == 1000 * 4  # b is a weight: left out


def test_median_leaves_out_the_warmup():
    durations = iter([0.2, 0.01, 0.03, 0.01])

    def run():
        time.sleep(next(durations))

    assert 0.01 <= median_seconds(run, repeats=3, warmup=1, device=torch.device("cpu")) < 0.03


def test_the_latent_model_trains_faster_on_fewer_positions_with_the_same_unet():
    profile = get_profile("tiny")
    pixel, latent = run_bench(profile, (32,), (1, 4), batch_size=8, repeats=2, warmup=1, sampling_steps=2)
    assert (pixel.unet_input, latent.unet_input) == ("3x32x32", "4x8x8")
    # the same UNet: only the first and last convolutions see the 3 or 4 input channels
    base = profile.ldm.base_channels
    assert latent.parameters - pixel.parameters == 9 * base + 9 * base + 1
    assert latent.train_images_per_s > 2 * pixel.train_images_per_s  # 16x fewer positions
    assert latent.memory_mb < pixel.memory_mb / 2
    assert pixel.encode_images_per_s is None and latent.encode_images_per_s > 0
    assert 0 < pixel.sample_images_per_s < pixel.train_images_per_s * 50


def test_table_reports_speedups_against_the_pixel_model():
    rows = [BenchResult("pixel DM (f=1)", 1, 64, "3x64x64", 10, 4.0, 0.5, None, 500.0),
            BenchResult("LDM-4", 4, 64, "4x16x16", 10, 60.0, 3.0, 100.0, 50.0),
            BenchResult("LDM-8", 8, 128, "4x16x16", 10, 30.0, 2.0, 50.0, 40.0)]
    assert speedups(rows) == {(1, 64): 1.0, (4, 64): 15.0}
    table = markdown_table(rows).splitlines()
    assert len(table) == 5 and "| LDM-4 | 64 | 4x16x16 | 60.0 | 15.0x |" in table[3]
    assert "| LDM-8 | 128 | 4x16x16 | 30.0 | - |" in table[4]  # no pixel model measured at 128 px


def test_sizes_the_models_cannot_take_are_refused():
    profile = get_profile("tiny")  # UNet downsamples 2x
    with pytest.raises(MinildmError, match="resolution 36 does not suit f = 8: it must be a multiple of 16"):
        check_sizes((32, 36), (1, 8), profile)
    with pytest.raises(MinildmError, match="factor 2 has no model"):
        check_sizes((32,), (2,), profile)
    check_sizes((32, 64), (1, 4, 8), profile)



def test_steps_for_budget_follow_the_measured_speed():
    profile = get_profile("tiny")
    pixel, latent = (steps_for_budget(factor, 32, profile, seconds=5.0, multiple=1) for factor in (1, 4))
    assert 1 <= pixel < latent / 2  # in the same time the latent model takes several times more steps
    assert steps_for_budget(1, 32, profile, seconds=0.0) == 10  # never fewer than one multiple


def test_a_case_too_big_for_the_free_memory_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(bench.psutil, "virtual_memory", lambda: SimpleNamespace(available=2**20))  # 1 MiB free
    row, = run_bench(get_profile("tiny"), (32,), (1,), batch_size=2, repeats=1, warmup=0, sampling_steps=1)
    assert row.note.startswith("skipped: needs about") and math.isnan(row.train_images_per_s)
    assert row.memory_mb > 1  # the estimate that did not fit
    assert f"| pixel DM (f=1) | 32 | 3x32x32 | {row.note} | - | - | - |" in markdown_table([row])
