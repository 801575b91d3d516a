"""Stage 1 end to end in the tiny profile: train, save, load, evaluate, resume, refuse."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from minildm import autoencoder_training as stage
from minildm import checkpoint as ckpt
from minildm.app.cli import main
from minildm.config import get_profile
from minildm.evaluation.scores import evaluate_autoencoder
from minildm.recipes import autoencoder_config

from conftest import toy_pixels, train_tiny_autoencoder


@pytest.fixture(scope="module")
def pixels():
    return toy_pixels(48, seed=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pixels):
    run_dir = tmp_path_factory.mktemp("ae")
    return run_dir, train_tiny_autoencoder(run_dir, pixels)


def test_run_folder_holds_what_later_stages_need(trained, pixels):
    run_dir, autoencoder = trained
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "weights.safetensors",
                                                   "checkpoint.safetensors", "figures"}
    assert len(list((run_dir / "figures").glob("*.png"))) >= 1
    history = ckpt.load(run_dir / "checkpoint.safetensors")[1]["history"]
    assert len(history) == get_profile("tiny").autoencoder.steps
    assert "d_loss" in history[-1] and "d_loss" not in history[0]  # the GAN switched on at disc_start
    l2_weight = get_profile("tiny").autoencoder.l2_weight
    assert json.loads((run_dir / "config.json").read_text())["loss"]["l2_weight"] == l2_weight > 0
    assert history[-1]["rec"] == pytest.approx(history[-1]["l1"] + l2_weight * history[-1]["l2"], rel=1e-5)

    loaded = stage.load_autoencoder(run_dir)
    images = (pixels[:4].float() / 127.5) - 1
    with torch.no_grad():
        assert torch.allclose(loaded.decode(loaded.encode(images)),
                              autoencoder.decode(autoencoder.encode(images)), atol=1e-5)


def test_scale_factor_makes_latents_unit_variance(trained, pixels):
    _, autoencoder = trained
    with torch.no_grad():
        latents = autoencoder.encode(pixels.float() / 127.5 - 1)
    assert autoencoder.scale_factor_measured
    assert abs((latents * autoencoder.scale_factor).std().item() - 1.0) < 0.15


def test_evaluate_reports_quality_and_shapes(trained, pixels):
    results = evaluate_autoencoder(trained[1], pixels[:16])
    assert results["latent_shape"] == [4, 8, 8] and results["n_images"] == 16
    assert 5 < results["psnr"] < 60 and -1 <= results["ssim"] <= 1
    assert results["scale_factor"] == pytest.approx(trained[1].scale_factor.item(), rel=1e-4)


def test_finished_run_is_not_trained_again(trained, pixels):
    run_dir, autoencoder = trained
    before = (run_dir / "weights.safetensors").read_bytes()
    profile = get_profile("tiny")
    again = stage.train_autoencoder(run_dir, pixels, config=autoencoder_config(profile),
                                    training=stage.AutoencoderTraining(profile=profile, progress=False))
    assert torch.equal(again.decoder.conv_out.weight, autoencoder.decoder.conv_out.weight)
    assert again.scale_factor.item() == pytest.approx(autoencoder.scale_factor.item())
    assert (run_dir / "weights.safetensors").read_bytes() == before


def test_other_configuration_is_refused(trained, pixels):
    run_dir, _ = trained
    profile = get_profile("tiny")
    with pytest.raises(ckpt.MinildmError, match="another configuration"):
        stage.train_autoencoder(run_dir, pixels, config=autoencoder_config(profile, factor=8),
                                training=stage.AutoencoderTraining(profile=profile, progress=False))
    config = json.loads((run_dir / "config.json").read_text())
    config["autoencoder"]["base_channels"] *= 2
    other = run_dir.parent / "edited"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    (other / "weights.safetensors").write_bytes((run_dir / "weights.safetensors").read_bytes())
    with pytest.raises(ckpt.CheckpointError, match="different configuration"):
        stage.load_autoencoder(other)


def test_vq_autoencoder_reports_codebook_use(tmp_path, pixels):
    profile = get_profile("tiny")
    config = autoencoder_config(profile, reg="vq")
    autoencoder = stage.train_autoencoder(tmp_path, pixels, config=config,
                                          training=stage.AutoencoderTraining(profile=profile, steps=5, progress=False))
    results = evaluate_autoencoder(autoencoder, pixels[:16])
    assert autoencoder.scale_factor.item() == 1.0 and results["latent_shape"] == [3, 8, 8]
    assert 1 <= results["perplexity"] <= config.codebook_size
    assert results["codebook_usage"] == pytest.approx(results["perplexity"] / config.codebook_size, abs=1e-3)


@pytest.mark.integration
def test_command_line_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    env_args = {"env": {**os.environ, "MINILDM_DATA_DIR": str(tmp_path / "data")}}
    run = [sys.executable, "-m", "minildm"]
    trained = subprocess.run([*run, "train-ae", "--profile", "tiny", "--n", "32", "--steps", "3", "--base-channels",
                              "8", "--factor", "8", "--patch-size", "2", "--out", str(tmp_path / "ae")],
                             capture_output=True, text=True, **env_args)
    assert trained.returncode == 0, trained.stderr
    assert "scale factor" in trained.stdout
    saved = json.loads((tmp_path / "ae" / "config.json").read_text())["autoencoder"]
    assert (saved["base_channels"], saved["factor"], saved["patch_size"]) == (8, 8, 2)
    evaluated = subprocess.run([*run, "evaluate", "--profile", "tiny", "--ae", str(tmp_path / "ae"), "--n", "8"],
                               capture_output=True, text=True, **env_args)
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert results["n_images"] == 8 and "held-out images of toyfaces from index 32" in results["data"]
    assert results["latent_shape"] == [4, 4, 4]  # 32 px / f = 8
    # bad input in-process: the same main() as python -m minildm, without a second start-up
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path / "data"))
    for args, message in [
        (("train-ae", "--resolution", "36", "--factor", "8"), "minildm: error: resolution 36 is not a multiple"),
        (("train-ae", "--patch-size", "2"), "patch size 2 does not suit factor 4"),
        (("evaluate", "--ae", str(tmp_path / "nope")), "not an autoencoder run folder"),
    ]:
        out = () if args[0] == "evaluate" else ("--out", str(tmp_path / "x"))
        assert main([*args, "--profile", "tiny", *out]) == 1
        stderr = capsys.readouterr().err
        assert stderr.count("\n") == 1 and message in stderr, stderr
    with pytest.raises(SystemExit) as exit_info:
        main(["train-ae", "--profile", "tiny", "--base-channels", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "expected a positive integer, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("edit, named", [
    (lambda config: config.update(colour="red"), "unknown key 'colour'"),
    (lambda config: config.pop("loss"), "missing key 'loss'"),
    (lambda config: config.pop("perceptual"), "missing key 'perceptual'"),
    (lambda config: config.pop("start_from"), "missing key 'start_from'"),
    (lambda config: config["autoencoder"].update(depth=3), "unknown key 'depth' in autoencoder"),
    (lambda config: config["autoencoder"].pop("patch_size"), "missing key 'patch_size' in autoencoder"),
    (lambda config: config["loss"].pop("disc_start"), "missing key 'disc_start' in loss"),
])
def test_a_run_folder_with_an_unknown_or_missing_key_is_refused_naming_it(trained, tmp_path, capsys, edit, named):
    run_dir, _ = trained
    config = json.loads((run_dir / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(run_dir / "weights.safetensors", tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=f"config.json does not describe an autoencoder .*: {named}$"):
        stage.load_autoencoder(tmp_path)
    assert main(["evaluate", "--profile", "tiny", "--ae", str(tmp_path)]) == 1  # as python -m minildm does
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and named in stderr


def test_fine_tuning_starts_from_a_finished_run(tmp_path, trained, pixels):
    source_dir, source = trained
    profile = get_profile("tiny")
    config = autoencoder_config(profile, factor=4, reg="kl")
    tuned = stage.train_autoencoder(tmp_path / "tuned", pixels, config=config,
                                    training=stage.AutoencoderTraining(profile=profile, steps=1, start_from=source_dir,
                                                                       disc_start=0, progress=False))
    fresh = stage.train_autoencoder(tmp_path / "fresh", pixels, config=config,
                                    training=stage.AutoencoderTraining(profile=profile, steps=1, progress=False))

    def largest_change(a, b):
        return max((p - q).abs().max().item() for (name, p), q in zip(a.state_dict().items(), b.state_dict().values())
                   if name != "scale_factor")

    step_size = profile.autoencoder.learning_rate * 1.01  # Adam's first step moves each weight by at most lr
    assert largest_change(tuned, source) <= step_size < largest_change(fresh, source)
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert saved["start_from"] == str(source_dir) and saved["loss"]["disc_start"] == 0
    history = ckpt.load(tmp_path / "tuned" / "checkpoint.safetensors")[1]["history"]
    assert "gan_weight" in history[0]  # the patch GAN was on from the first step
    with torch.no_grad():  # the scale factor is measured again, on the fine-tuned weights
        latents = tuned.encode(pixels.float() / 127.5 - 1)
    assert tuned.scale_factor.item() == pytest.approx(1 / latents.std().item(), rel=0.1)
