"""Model exchange with diffusers: an exported LDM run samples in diffusers what it samples in
minildm, an imported AutoencoderKL reconstructs as in diffusers, what one library cannot
express is refused in one line, and the two commands run end to end. All offline."""

import json
import subprocess
import sys

import diffusers
import pytest
import torch

from minildm import checkpoint
from minildm.app import cli
from minildm.autoencoder import AutoencoderConfig, build_autoencoder, pixel_space_config
from minildm.autoencoder_training import AutoencoderTraining, load_autoencoder, train_autoencoder
from minildm.conditioning import ConditioningConfig
from minildm.config import get_profile
from minildm.data.images import uint8_to_float
from minildm.diffusion import DiffusionConfig
from minildm.interop.diffusers_autoencoder import autoencoder_from_diffusers, autoencoder_to_diffusers, \
    diffusers_autoencoder_config
from minildm.interop.diffusers_unet import check_unet_exportable, copy_unet_from_diffusers, unet_to_diffusers
from minildm.interop.export import ddim_scheduler_config, export_ldm
from minildm.interop.import_ae import import_autoencoder
from minildm.interop.layers import InteropError, one_group_count
from minildm.ldm_training import LDMTraining, load_ldm, train_ldm
from minildm.recipes import autoencoder_config, ldm_config
from minildm.sampling import SamplerOptions, ddim_sample, ddim_step, ddim_timesteps
from minildm.unet import UNet, UNetConfig

from conftest import toy_pixels

pytestmark = pytest.mark.integration  # trains models or runs whole commands: `make unit` leaves this file out

TINY = get_profile("tiny")
SEED = 3
DESCRIPTION = {"dataset": "toyfaces", "resolution": 32, "start": 0, "n": 48, "split": "train", "seed": SEED}
# minildm gives a network of 32, 64 and 128 channels gcd(32, 32) = 32 groups in every GroupNorm, as here
SMALL_KL = dict(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 128), layers_per_block=1, latent_channels=4, norm_num_groups=32)


@pytest.fixture(scope="module")
def pixels():
    return toy_pixels(48, seed=SEED)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pixels):
    """LDM run folders of the tiny profile (v-prediction), trained for a step: on a KL and on a
    VQ autoencoder (base 32 channels) with random UNet weights, and a class-conditioned one."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for reg in ("kl", "vq"):
        config = AutoencoderConfig(reg=reg, factor=4, base_channels=32, latent_channels=4 if reg == "kl" else 3,
                                   codebook_size=64)
        train_autoencoder(root / f"ae-{reg}", pixels, config=config,
                          training=AutoencoderTraining(profile=TINY, steps=1, progress=False))
        train_ldm(root / reg, pixels, autoencoder_dir=root / f"ae-{reg}",
                  training=LDMTraining(profile=TINY, steps=1, data_description=DESCRIPTION, progress=False))
        randomise_unet(root / reg)
    classes = ConditioningConfig("class", class_names=["a", "b"])
    class_training = LDMTraining(profile=TINY, steps=1, conditioning=classes, data_description=DESCRIPTION,
                                 progress=False)
    train_ldm(root / "class", pixels, autoencoder_dir=root / "ae-kl", training=class_training,
              conditions=torch.arange(len(pixels)) % 2)
    torch.set_num_threads(threads)
    return root


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def randomise_unet(run_dir) -> None:
    """Random values for every UNet weight of a run folder: a step of training leaves the
    layers minildm starts at zero near zero, which would hide a wrong mapping before them."""
    tensors, metadata = checkpoint.load(run_dir / "weights.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name, tensor in tensors.items():
        if name.startswith("unet."):
            tensors[name] = torch.randn(tensor.shape, generator=generator) * 0.2
    checkpoint.save_atomic(tensors, run_dir / "weights.safetensors", metadata)


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter drawn at random: minildm starts some layers at zero, which would hide
    a wrong mapping of the layers before them."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return module


def group_counts(model: torch.nn.Module) -> set[int]:
    return {layer.num_groups for layer in model.modules() if isinstance(layer, torch.nn.GroupNorm)}


def relative_gap(theirs: torch.Tensor, ours: torch.Tensor) -> float:
    """max |theirs - ours| / max |ours|: randomised weights give outputs of any scale."""
    return ((theirs - ours).abs().max() / ours.abs().max()).item()


def test_scheduler_visits_minildm_leading_time_steps_on_the_same_schedule():
    for schedule in ("linear", "cosine"):
        config = DiffusionConfig(schedule=schedule)
        scheduler = diffusers.DDIMScheduler(**ddim_scheduler_config(config))
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), config.build().alpha_bars, rtol=1e-4, atol=1e-9)
    diffusion = DiffusionConfig().build()
    scheduler = diffusers.DDIMScheduler(**ddim_scheduler_config(DiffusionConfig()))
    for steps in range(1, diffusion.timesteps + 1):
        scheduler.set_timesteps(steps)
        ours = ddim_timesteps(diffusion, steps, "leading")
        assert scheduler.timesteps.tolist() == ours, steps
        # DDIMScheduler.step jumps from t to t - T // steps: on this grid, minildm's next time step
        assert all(t - diffusion.timesteps // steps == s for t, s in zip(ours, ours[1:])), steps


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_one_scheduler_step_is_one_minildm_ddim_step(prediction, one_thread):
    """The same network output read as eps, x0 or v gives the same DDIM step, the last one
    (t = 0, onto abar = 1) included."""
    config = DiffusionConfig(prediction=prediction)
    scheduler = diffusers.DDIMScheduler(**ddim_scheduler_config(config))
    scheduler.set_timesteps(config.timesteps)  # steps one apart: diffusers jumps from t to t - 1
    x, output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for step in (999, 500, 1, 0):
        ours, _ = ddim_step(config.build(), lambda x_t, t: output, x, step, step - 1 if step else None)
        torch.testing.assert_close(scheduler.step(output, step, x).prev_sample, ours, atol=1e-5, rtol=1e-5)


def test_unet_weights_carry_over_both_ways(one_thread):
    config = UNetConfig(base_channels=32, channel_mult=(1, 2), attention_levels=(1,))
    ours = randomised(UNet(config)).eval()
    theirs = unet_to_diffusers(ours)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        expected = ours(x, t)
        assert expected.abs().mean() > 0.1
        torch.testing.assert_close(theirs(x, t).sample, expected, atol=1e-4, rtol=1e-4)
        back = UNet(config).eval()
        for parameter in back.parameters():
            parameter.fill_(torch.nan)  # a weight the copy misses poisons the output
        copy_unet_from_diffusers(theirs, back)
        torch.testing.assert_close(back(x, t), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("reg", ["kl", "vq"])
def test_exported_autoencoder_encodes_as_minildm_when_it_pads_right_and_bottom(reg, one_thread):
    """diffusers' encoder pads each downsampling on the right and bottom: an autoencoder built
    with downsample_padding="right_bottom" encodes there as here; minildm's default "symmetric"
    one encodes differently. Both decode the same."""
    images, gaps = torch.rand(2, 3, 32, 32) * 2 - 1, {}
    for padding in ("right_bottom", "symmetric"):
        config = AutoencoderConfig(reg=reg, base_channels=32, latent_channels=4 if reg == "kl" else 3,
                                   codebook_size=64, downsample_padding=padding)
        torch.manual_seed(0)
        ours = randomised(build_autoencoder(config)).eval()
        theirs = autoencoder_to_diffusers(ours, scaling_factor=1.0, sample_size=32)
        with torch.no_grad():
            encoded = ours.encoder(images)  # KL: mean and log-variance; VQ: before the codebook
            their_encoded = theirs.encoder(images)
            if reg == "vq":
                their_encoded = theirs.quant_conv(their_encoded)  # the identity (KL exports none)
            latents = torch.randn(2, config.latent_channels, 8, 8)
            gaps[padding] = ((their_encoded - encoded).abs().max().item(),
                             (theirs.decode(latents).sample - ours.decode(latents)).abs().max().item())
        assert encoded.abs().mean() > 0.1
    print(f"{reg}: " + "; ".join(f"{padding}: max |encoder difference| {encoder:.1e}, max |decoder difference| "
                                 f"{decoder:.1e}" for padding, (encoder, decoder) in gaps.items()))
    assert max(gaps["right_bottom"]) <= 1e-4 and gaps["symmetric"][1] <= 1e-4
    assert gaps["symmetric"][0] > 1e-2


@pytest.mark.parametrize("name", ["tiny", "cpu"])
def test_the_small_profiles_models_export_and_compute_the_same(name, one_thread):
    """The tiny and cpu autoencoders have 16, 32 and 64 channels, so 16 groups in every GroupNorm:
    their KL-f4 autoencoder and the UNet on its latents export, decode and denoise in diffusers as
    in minildm, and the exported autoencoder imports back (its encoder then pads the diffusers way)."""
    profile = get_profile(name)
    ours = randomised(build_autoencoder(autoencoder_config(profile, factor=4, reg="kl"))).eval()
    theirs = autoencoder_to_diffusers(ours, scaling_factor=1.0, sample_size=32)
    back = autoencoder_from_diffusers(theirs)
    assert group_counts(ours) == group_counts(back) == {theirs.config.norm_num_groups}
    unet = randomised(UNet(ldm_config(profile, ours).unet)).eval()
    their_unet = unet_to_diffusers(unet)
    assert group_counts(unet) == {their_unet.config.norm_num_groups}
    images, latents, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        decoded, encoded, noise = ours.decode(latents), theirs.encoder(images), unet(latents, t)
        gaps = {"decoder": relative_gap(theirs.decode(latents).sample, decoded),
                "imported decoder": relative_gap(back.decode(latents), decoded),
                "imported encoder": relative_gap(back.encoder(images), encoded),
                "unet": relative_gap(their_unet(latents, t).sample, noise)}
    print(f"{name}: " + ", ".join(f"max |{part} difference| / max |output| {gap:.1e}" for part, gap in gaps.items()))
    assert min(decoded.abs().mean(), encoded.abs().mean(), noise.abs().mean()) > 0.1
    assert max(gaps.values()) <= 1e-5


@pytest.mark.parametrize("reg, steps", [("kl", 50), ("vq", 50), ("kl", 27)])
def test_exported_pipeline_samples_what_minildm_samples(runs, reg, steps, tmp_path, offline, one_thread):
    """minildm's DDIM with ``spacing="leading"`` and the exported pipeline at the same step
    count (27 does not divide T: time steps 962, 925, ..., 37, 0): same noise (the pipeline's
    generator), same latents, same images."""
    out = export_ldm(runs / reg, tmp_path / "pipeline")
    assert {"model_index.json", "vqvae", "unet", "scheduler"} <= {path.name for path in out.iterdir()}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipeline, model = diffusers.DiffusionPipeline.from_pretrained(out), load_ldm(runs / reg)
    assert type(pipeline).__name__ == "LDMPipeline"
    assert type(pipeline.vqvae).__name__ == {"kl": "AutoencoderKL", "vq": "VQModel"}[reg]
    assert pipeline.vqvae.config.scaling_factor == pytest.approx(model.scale_factor)
    decoded = []  # the pipeline's final latents, divided by the scale factor, on their way to the decoder
    decode = pipeline.vqvae.decode
    pipeline.vqvae.decode = lambda latents: decoded.append(latents) or decode(latents)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                      output_type="np").images
    noise = torch.randn((2, *model.latent_shape(32)), generator=torch.Generator().manual_seed(0))
    ours, trajectory = model.sample_trajectory(2, 32, SamplerOptions(steps=steps, spacing="leading"), noise=noise)
    latents = trajectory.result
    torch.testing.assert_close(latents, ddim_sample(model.diffusion, model.denoiser(), noise, steps=steps,
                                                    spacing="leading"))
    assert trajectory.timesteps == pipeline.scheduler.timesteps.tolist()
    latent_gap = (decoded[0] * pipeline.vqvae.config.scaling_factor - latents).abs().max().item()
    image_gap = (torch.from_numpy(images).permute(0, 3, 1, 2) - (ours + 1) / 2).abs().max().item()
    linspace_gap = (latents - ddim_sample(model.diffusion, model.denoiser(), noise, steps=steps)).abs().max().item()
    print(f"{reg}, {steps} steps: max |latent difference| {latent_gap:.2e} (latents up to "
          f"{latents.abs().max():.2f}), max |image difference| {image_gap:.2e} on [0, 1]; minildm's linspace "
          f"time steps land {linspace_gap:.2e} away")
    assert latents.abs().max() > 0.5
    assert latent_gap <= 1e-3 and image_gap <= 1e-3
    assert linspace_gap > 1e-3  # the default grid is not diffusers': the reason for spacing="leading"


def test_what_diffusers_cannot_express_is_refused_in_one_line(runs, tmp_path):
    with pytest.raises(InteropError, match="class-conditioned model is not exported") as refused:
        export_ldm(runs / "class", tmp_path / "out")
    assert "\n" not in str(refused.value)
    with pytest.raises(InteropError, match=r"GroupNorm layers have \[16, 32\] groups; diffusers' take one count"):
        one_group_count(lambda: torch.nn.Sequential(torch.nn.GroupNorm(16, 16), torch.nn.GroupNorm(32, 64)),
                        "the model's", "diffusers' take")  # a network built otherwise than minildm's
    with pytest.raises(InteropError, match="patch_size"):
        diffusers_autoencoder_config(AutoencoderConfig(base_channels=32, factor=8, patch_size=2), scaling_factor=1.0,
                                     sample_size=32)
    with pytest.raises(InteropError, match="narrows attention heads"):
        check_unet_exportable(UNetConfig(base_channels=16, channel_mult=(1, 2), attention_levels=(0,)))
    with pytest.raises(InteropError, match="cross-attention"):
        check_unet_exportable(UNetConfig(base_channels=32, context_channels=64))
    with pytest.raises(InteropError, match="pixel-space model"):
        diffusers_autoencoder_config(pixel_space_config(), scaling_factor=1.0, sample_size=32)


@pytest.mark.parametrize("post_quant_conv", [False, True])
def test_imported_autoencoder_reconstructs_as_diffusers(post_quant_conv, one_thread):
    """diffusers' AutoencoderKL as it is: its encoder pads each downsampling on the right and
    bottom, which the import maps to downsample_padding="right_bottom"."""
    theirs = diffusers.AutoencoderKL(**SMALL_KL, use_post_quant_conv=post_quant_conv).eval()
    ours = autoencoder_from_diffusers(theirs)
    assert ours.config.downsample_padding == "right_bottom"
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        their_posterior, our_posterior = theirs.encode(images).latent_dist, ours.posterior(images)
        reconstruction = theirs.decode(their_posterior.mean).sample
        gaps = {"logvar": (our_posterior.logvar - their_posterior.logvar).abs().max().item(),
                "decode(mean)": (ours.decode(our_posterior.mean) - reconstruction).abs().max().item()}
        shift = our_posterior.mean - their_posterior.mean  # zero, or one constant vector (post_quant_conv)
        gaps["mean"] = (shift - (shift.mean(dim=(0, 2, 3), keepdim=True) if post_quant_conv else 0)).abs().max().item()
    print(f"post_quant_conv {post_quant_conv}: " + ", ".join(f"max |{k} difference| {v:.1e}" for k, v in gaps.items()))
    assert reconstruction.abs().mean() > 0.01 and max(gaps.values()) <= 1e-4
    assert (shift.abs().max() > 0.01) == post_quant_conv


# Stable Diffusion's f = 8 KL autoencoder: the configuration of the hub's stabilityai/sd-vae-ft-mse,
# stabilityai/sd-vae-ft-ema and the vae/ of CompVis/stable-diffusion-v1-4 (no weights downloaded)
STABLE_DIFFUSION_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512,
                            scaling_factor=0.18215)


def test_stable_diffusions_autoencoder_has_a_shape_minildm_holds(one_thread):
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(**STABLE_DIFFUSION_VAE).eval()
    ours = autoencoder_from_diffusers(theirs)
    assert (ours.config.factor, ours.config.base_channels, ours.config.res_blocks, ours.config.latent_channels) == \
        (8, 128, 2, 4)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latent = theirs.encode(images).latent_dist.mean
        assert (ours.decode(ours.posterior(images).mean) - theirs.decode(latent).sample).abs().max() <= 1e-4


def test_what_minildm_cannot_hold_is_refused_in_one_line(tmp_path, offline):
    cases = [({"block_out_channels": (32, 64, 96)}, "not base channels times minildm's level layout"),
             ({"norm_num_groups": 16}, r"minildm gives every layer of an autoencoder of \(32, 64, 128\) channels 32 "
                                       r"groups"),
             ({"act_fn": "relu"}, "minildm's autoencoder uses SiLU")]
    for index, (change, message) in enumerate(cases):
        diffusers.AutoencoderKL(**{**SMALL_KL, **change}).save_pretrained(tmp_path / str(index))
        with pytest.raises(InteropError, match=message) as refused:
            import_autoencoder(str(tmp_path / str(index)), tmp_path / "run", pixels=toy_pixels(2, seed=0))
        assert "\n" not in str(refused.value)
    diffusers.VQModel(**{**SMALL_KL, "latent_channels": 3}).save_pretrained(tmp_path / "pipeline" / "vqvae")
    for source, message in [(tmp_path / "pipeline", "holds a VQModel, not an AutoencoderKL"),
                            ("someone/some-vae", "the Hugging Face hub cannot be reached"),
                            ("no/such/folder", "neither a folder nor a Hugging Face hub id")]:
        with pytest.raises(InteropError, match=message):
            import_autoencoder(str(source), tmp_path / "run", pixels=toy_pixels(2, seed=0))
    assert not (tmp_path / "run").exists()


def test_an_imported_autoencoder_is_a_run_folder_train_ldm_takes(pixels, tmp_path, one_thread):
    theirs = diffusers.AutoencoderKL(**SMALL_KL, use_post_quant_conv=False).eval()
    theirs.save_pretrained(tmp_path / "pipeline" / "vae")  # a pipeline folder: the autoencoder in vae/
    imported = import_autoencoder(str(tmp_path / "pipeline"), tmp_path / "ae", pixels=pixels)
    loaded = load_autoencoder(tmp_path / "ae")
    images = uint8_to_float(pixels)
    with torch.no_grad():
        their_latents = theirs.encode(images).latent_dist.mean
        assert loaded.scale_factor.item() == pytest.approx(1 / their_latents.std().item(), rel=1e-4)
        torch.testing.assert_close(loaded.decode(their_latents), theirs.decode(their_latents).sample,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(loaded.encode(images), their_latents, atol=1e-4, rtol=1e-4)
    assert loaded.config.downsample_padding == "right_bottom"
    assert loaded.scale_factor == imported.scale_factor
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["stage"] == "autoencoder"
    model = train_ldm(tmp_path / "ldm", pixels, autoencoder_dir=tmp_path / "ae",
                      training=LDMTraining(profile=TINY, steps=2, progress=False))
    assert torch.isfinite(model.sample(2, 32, SamplerOptions(steps=2))).all()


@pytest.fixture
def main(monkeypatch, tmp_path):
    """minildm's main(), its data folder under tmp_path."""
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path / "data"))
    return cli.main


def test_the_commands_import_diffusers_only_when_they_run():
    code = "import sys, minildm.app.interop_commands; print('diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_export_and_import_from_the_command_line(main, runs, tmp_path, capsys, monkeypatch, offline):
    common = ("--profile", "tiny")
    assert main(["export", *common, "--ldm", str(runs / "kl"), "--out", str(tmp_path / "pipeline")]) == 0
    assert (tmp_path / "pipeline" / "vqvae" / "diffusion_pytorch_model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "LDMPipeline written to" in printed and "its encoder downsamples the diffusers way" in printed
    assert main(["sample", *common, "--ldm", str(runs / "kl"), "--n", "2", "--steps", "27", "--spacing", "leading",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()

    diffusers.AutoencoderKL(**SMALL_KL).save_pretrained(tmp_path / "vae")
    assert main(["import-ae", *common, "--diffusers", str(tmp_path / "vae"), "--n", "16",
                 "--out", str(tmp_path / "ae")]) == 0
    assert "scale factor" in capsys.readouterr().out
    assert {"config.json", "weights.safetensors"} <= {path.name for path in (tmp_path / "ae").iterdir()}
    assert main(["train-ldm", *common, "--ae", str(tmp_path / "ae"), "--steps", "2",
                 "--out", str(tmp_path / "ldm")]) == 0
    capsys.readouterr()
    assert main(["export", *common, "--ldm", str(tmp_path / "ldm"), "--out", str(tmp_path / "again")]) == 0
    assert "its encoder too" in capsys.readouterr().out  # the imported encoder pads the diffusers way

    capsys.readouterr()
    with monkeypatch.context() as without_diffusers:
        without_diffusers.setitem(sys.modules, "diffusers", None)  # as if it were not installed
        assert main(["export", *common, "--ldm", str(runs / "kl"), "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == "minildm: error: exchanging models with diffusers needs the diffusers " \
                                      "package: pip install diffusers\n"
    for args, message in [
        (("export", "--ldm", str(runs / "class"), "--out", str(tmp_path / "x")), "class-conditioned"),
        (("export", "--ldm", str(tmp_path / "ae"), "--out", str(tmp_path / "x")), "not a latent diffusion model"),
        (("import-ae", "--diffusers", "someone/some-vae", "--out", str(tmp_path / "x")), "cannot be reached"),
        (("import-ae", "--diffusers", str(tmp_path / "pipeline" / "unet"), "--out", str(tmp_path / "x")),
         "holds a UNet2DModel, not an AutoencoderKL"),
    ]:
        capsys.readouterr()
        assert main([*args, *common]) == 1
        stderr = capsys.readouterr().err
        assert stderr.startswith("minildm: error: ") and stderr.count("\n") == 1 and message in stderr, stderr
