"""Stage 2 in the tiny profile: cached latents, training, sampling, saving and loading."""

import json

import pytest
import torch

from minildm import autoencoder_training, checkpoint
from minildm.config import MinildmError, get_profile
from minildm.data.images import float_to_uint8, uint8_to_float
from minildm.evaluation.metrics import frechet_distance
from minildm.evaluation.scores import FLOOR_LABEL, evaluate_ldm, heldout_loss, kid_difference, score_table
from minildm.ldm import LatentDiffusion
from minildm.ldm_training import LDMTraining, load_ldm, mirrored_batches, train_ldm
from minildm.recipes import ldm_config
from minildm.sampling import SamplerOptions

from conftest import toy_pixels, train_tiny_autoencoder

pytestmark = pytest.mark.integration  # trains models or runs whole commands: `make unit` leaves this file out


@pytest.fixture(scope="module")
def pixels():
    return toy_pixels(64, seed=8)


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory, pixels):
    run_dir = tmp_path_factory.mktemp("ae")
    train_tiny_autoencoder(run_dir, pixels)
    return run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, autoencoder_dir, pixels):
    run_dir = tmp_path_factory.mktemp("ldm")
    training = LDMTraining(profile=get_profile("tiny"), progress=False,
                           data_description={"dataset": "toyfaces", "resolution": 32})
    model = train_ldm(run_dir, pixels, autoencoder_dir=autoencoder_dir, training=training)
    return run_dir, model


def test_run_folder_loads_back_to_the_same_sampler(trained):
    run_dir, model = trained
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "weights.safetensors", "checkpoint.safetensors",
                                                   "latents.safetensors", "figures"}
    loaded = load_ldm(run_dir)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    options = SamplerOptions(steps=5)
    assert torch.allclose(loaded.sample(3, 32, options, noise=noise), model.sample(3, 32, options, noise=noise),
                          atol=1e-5)
    assert loaded.scale_factor == pytest.approx(model.scale_factor) and model.scale_factor != 1.0


def test_cached_latents_are_scaled_and_hold_the_mirror_images(trained, pixels):
    run_dir, model = trained
    latents = checkpoint.load(run_dir / "latents.safetensors")[0]["latents"]
    assert latents.shape == (2 * len(pixels), 4, 8, 8)
    assert latents.std().item() == pytest.approx(1.0, rel=0.15)  # the scale factor's job
    mirrored = model.encode(uint8_to_float(pixels[:4]).flip(-1))
    assert torch.allclose(latents[len(pixels):len(pixels) + 4], mirrored, atol=1e-4)


def test_samples_have_the_image_shape_and_range(trained):
    _, model = trained
    for sampler, steps in (("ddim", 4), ("ddpm", None)):
        options = SamplerOptions(sampler=sampler, steps=steps or 1000)
        images, trajectory = model.sample_trajectory(2, 32, options, generator=torch.Generator().manual_seed(1))
        if sampler == "ddim":  # the trajectory's result is the sample (DDPM's 1000 steps once are enough)
            assert torch.equal(images, model.sample(2, 32, options, generator=torch.Generator().manual_seed(1)))
        assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
        assert len(trajectory.states) == (steps or 1000) + 1 and trajectory.states[0].shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerOptions(sampler="euler")


def test_ddim_with_eta_zero_gives_the_same_images_for_the_same_seed(trained):
    _, model = trained
    first = model.sample(2, 32, SamplerOptions(steps=5), generator=torch.Generator().manual_seed(4))
    second = model.sample(2, 32, SamplerOptions(steps=5), generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)


def test_a_tiny_ldm_overfits_a_batch(autoencoder_dir, pixels):
    torch.manual_seed(0)
    autoencoder = autoencoder_training.load_autoencoder(autoencoder_dir)
    model = LatentDiffusion(ldm_config(get_profile("tiny"), autoencoder, prediction="eps"), autoencoder)
    latents = model.encode(uint8_to_float(pixels[:8]))
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        loss = model.loss(latents, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, abs=0.1)  # an untrained UNet predicts zero noise: E[eps^2] = 1
    assert sum(losses[-50:]) / 50 < 0.3


def test_training_without_the_scale_factor_uses_raw_latents(autoencoder_dir):
    autoencoder = autoencoder_training.load_autoencoder(autoencoder_dir)
    model = LatentDiffusion(ldm_config(get_profile("tiny"), autoencoder, use_scale_factor=False), autoencoder)
    assert model.scale_factor == 1.0 and autoencoder.scale_factor.item() != 1.0
    autoencoder.scale_factor.fill_(float("nan"))  # as if never measured: raw latents need no factor
    assert model.scale_factor == 1.0
    scaled = LatentDiffusion(ldm_config(get_profile("tiny"), autoencoder), autoencoder)
    with pytest.raises(MinildmError, match="latent scale factor was never measured"):
        scaled.encode(torch.zeros(1, 3, 32, 32))


def test_loading_refuses_other_folders_and_configurations(trained, autoencoder_dir, tmp_path):
    run_dir, _ = trained
    with pytest.raises(checkpoint.CheckpointError, match="not a latent diffusion model"):
        load_ldm(autoencoder_dir)
    with pytest.raises(checkpoint.CheckpointError, match="no config.json"):
        load_ldm(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["unet"]["base_channels"] = 48
    (other / "config.json").write_text(json.dumps(config))
    (other / "weights.safetensors").write_bytes((run_dir / "weights.safetensors").read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="different configuration"):
        load_ldm(other)


def test_evaluation_reports_distances_and_counts(trained, pixels):
    _, model = trained

    def tiny_features(images):  # 4x4 average colours: a cheap stand-in for Inception
        return torch.nn.functional.avg_pool2d(images.float(), 8).flatten(1)

    def mean_colour(images):
        return images.float().mean(dim=(2, 3))

    mean_colour.description = "mean colour"
    results = evaluate_ldm(model, pixels[:20], n_samples=12, options=SamplerOptions(steps=3),
                           features=tiny_features, generator=torch.Generator().manual_seed(0),
                           extra_features={"colour": mean_colour})
    assert results["n_samples"] == 12 and results["n_reference"] == 20 and results["fid"] >= 0
    assert {"kid", "kid_std", "sampler", "features", "sample_images_per_s"} <= set(results)
    # the extra distances are those of the same samples: colour means are 4x4 means averaged
    samples = model.sample(12, 32, SamplerOptions(steps=3), generator=torch.Generator().manual_seed(0))
    expected = frechet_distance(mean_colour(pixels[:20]), mean_colour(float_to_uint8(samples)))
    assert results["colour_fid"] == pytest.approx(expected, abs=1e-3) and results["colour_features"] == "mean colour"


def test_the_floor_is_real_against_real_at_the_same_n(trained, pixels):
    _, model = trained

    def mean_colour(images):
        return images.float().mean(dim=(2, 3))

    results = evaluate_ldm(model, pixels[:16], n_samples=16, options=SamplerOptions(steps=2), features=mean_colour,
                           floor_reference=pixels[16:32], extra_features={"colour": mean_colour})
    expected = frechet_distance(mean_colour(pixels[:16]), mean_colour(pixels[16:32]))
    assert results["fid_floor"] == pytest.approx(expected, abs=1e-3) == results["colour_fid_floor"]
    assert results["n_floor"] == 16 and list(results)[:3] == ["kid", "kid_std", "fid"]  # KID leads
    assert "kid_floor" in results and "kid_std_floor" in results
    unfloored = evaluate_ldm(model, pixels[:16], n_samples=4, options=SamplerOptions(steps=2), features=mean_colour)
    assert "fid_floor" not in unfloored


def test_heldout_loss_is_the_training_loss_on_the_same_draws_for_every_model(trained, pixels):
    _, model = trained
    latents = model.encode(uint8_to_float(pixels[:40]))
    values = heldout_loss(model, latents, seed=3, repeats=2, chunk=16)
    assert values.shape == (6,)  # 2 passes of 3 chunks (16, 16, 8)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        expected = [model.loss(batch, generator).item() for _ in range(2) for batch in latents.split(16)]
    assert values.tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(heldout_loss(model, latents, seed=3, repeats=2, chunk=16), values)  # paired draws
    assert not torch.equal(heldout_loss(model, latents, seed=4, repeats=2, chunk=16), values)
    fresh = LatentDiffusion(model.config, model.autoencoder).train()
    assert heldout_loss(fresh, latents).mean().item() == pytest.approx(1.0, abs=0.25)  # a zero output: E[v^2] ~ 1
    assert fresh.unet.training  # its mode is given back


def _scores(kid, kid_std=0.002, **changes):
    return {"kid": kid, "kid_std": kid_std, "fid": 12.345, "kid_floor": 0.001, "kid_std_floor": 0.0015,
            "fid_floor": 5.5, "features": "judge", "n_samples": 16, "n_reference": 16, "n_floor": 16, **changes}


def test_score_table_puts_the_floor_first_and_refuses_numbers_that_cannot_be_compared(trained, pixels):
    lines = score_table({"EMA weights": _scores(0.0123), "raw weights": _scores(0.0456)}).splitlines()
    assert "16 samples against 16 held-out images" in lines[0] and "judge" in lines[0]
    assert lines[2].startswith(FLOOR_LABEL) and "0.0010 ± 0.0015" in lines[2] and "5.50" in lines[2]
    assert lines[3].startswith("EMA weights") and "0.0123 ± 0.0020" in lines[3] and "12.35" in lines[3]
    assert lines[4].startswith("raw weights") and "0.0456" in lines[4] and len(lines) == 5
    for key, value in (("n_samples", 8), ("features", "Inception"), ("kid_floor", 0.002)):
        with pytest.raises(MinildmError, match=key):
            score_table({"a": _scores(0.01), "b": _scores(0.02, **{key: value})})
    _, model = trained
    measured = evaluate_ldm(model, pixels[:8], options=SamplerOptions(steps=2),
                            features=lambda images: images.float().mean(dim=(2, 3)))
    assert len(score_table({"model": measured}).splitlines()) == 3  # no floor given, no floor row


def test_kid_difference_is_within_the_spread_only_when_the_stds_cover_it():
    gap = kid_difference(_scores(0.020, kid_std=0.003), _scores(0.010, kid_std=0.004))
    assert gap["difference"] == pytest.approx(0.010) and gap["spread"] == pytest.approx(0.005)
    assert not gap["within_spread"]
    assert kid_difference(_scores(0.010, kid_std=0.006), _scores(0.020, kid_std=0.008))["within_spread"]


def test_pixel_space_model_diffuses_the_images_themselves(tmp_path, pixels):
    model = train_ldm(tmp_path, pixels[:16], autoencoder_dir=None,
                      training=LDMTraining(profile=get_profile("tiny"), steps=2, progress=False))
    latents = checkpoint.load(tmp_path / "latents.safetensors")[0]["latents"]
    images = uint8_to_float(pixels[:16])
    assert torch.equal(latents, torch.cat([images, images.flip(-1)]))  # f = 1, scale 1: the latents are pixels
    assert model.latent_shape(32) == (3, 32, 32) and model.unet.config.in_channels == 3
    loaded = load_ldm(tmp_path)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    samples = loaded.sample(2, 32, SamplerOptions(steps=3), noise=noise)
    assert torch.allclose(samples, model.sample(2, 32, SamplerOptions(steps=3), noise=noise), atol=1e-5)
    assert samples.shape == (2, 3, 32, 32) and samples.abs().max() <= 1


@pytest.mark.parametrize("edit, named", [
    (lambda config: config.update(notes="mine"), "unknown key 'notes'"),
    (lambda config: config["model"].pop("conditioning"), "missing key 'conditioning' in model"),
    (lambda config: config["model"]["diffusion"].update(schedule_kind="cosine"),
     "unknown key 'schedule_kind' in model.diffusion"),
    (lambda config: config["model"]["unet"].pop("head_channels"), "missing key 'head_channels' in model.unet"),
])
def test_a_run_folder_with_an_unknown_or_missing_key_is_refused_naming_it(trained, tmp_path, edit, named):
    run_dir, _ = trained
    config = json.loads((run_dir / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "weights.safetensors").write_bytes((run_dir / "weights.safetensors").read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match=f"config.json does not .*: {named}$"):
        load_ldm(tmp_path)


def test_mirrored_batches_are_the_images_then_their_mirrors_one_float_batch_at_a_time():
    pixels = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    images = uint8_to_float(pixels)
    everything = torch.cat([images, images.flip(-1)])  # (14, 3, 8, 8)
    batches = list(mirrored_batches(pixels, range(3, 12), batch_size=4))  # crosses from images to mirrors
    assert [len(batch) for batch in batches] == [4, 4, 1]
    assert torch.equal(torch.cat(batches), everything[3:12])
