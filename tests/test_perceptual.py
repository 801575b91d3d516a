"""The offline perceptual loss: LPIPS-style distances on the FID Inception-v3's early layers,
what it computes, that it stays out of checkpoints, and that stage 1 records and honours it."""

import json
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import toy_pixels
from minildm import autoencoder_training as stage
from minildm import checkpoint as ckpt
from minildm import losses
from minildm.config import PROFILES, MinildmError, get_profile
from minildm.data import toyfaces
from minildm.evaluation import metrics
from minildm.losses import AutoencoderLoss, LossConfig, PerceptualLoss
from minildm.perceptual import EarlyInceptionFeatures, inception_input

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trunk():
    try:
        return EarlyInceptionFeatures()
    except MinildmError as error:
        pytest.fail(f"the dev install provides the FID Inception network: {error}")


def faces(n: int = 4, seed: int = 0) -> torch.Tensor:
    return toyfaces.generate(n, resolution=32, seed=seed)[0]  # (n, 3, 32, 32) in [-1, 1]


def test_first_map_is_the_torchscript_stem_run_by_hand(trunk):
    images = faces(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        layers = torch.jit.load(str(metrics.inception_weights_path())).net.layers
    pixels = F.interpolate((images + 1) * 127.5, size=(128, 128), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = layers.conv_2(layers.conv_1(layers.conv(pixels / 128 - 1)))
        features = trunk(images)
    assert torch.allclose(features[0], expected, atol=1e-5)
    assert [tuple(f.shape[1:]) for f in features] == [(64, 61, 61), (192, 28, 28), (256, 13, 13), (288, 13, 13)]


def test_preprocessing_upsamples_only_short_images():
    assert inception_input(torch.zeros(1, 3, 48, 64)).shape == (1, 3, 128, 171)  # the short side reaches 128
    large = torch.rand(1, 3, 160, 200) * 2 - 1
    assert torch.allclose(inception_input(large), (large + 1) * 127.5 / 128 - 1)


def test_distance_properties_on_faces(trunk):
    perceptual = PerceptualLoss(trunk)
    x, others = faces(4, seed=0), faces(4, seed=1)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    error = (x - blurred).square().mean(dim=(1, 2, 3))  # (B,)
    brighter = x + error.sqrt()[:, None, None, None]  # the same squared error as the blur
    with torch.no_grad():
        assert torch.allclose(perceptual(x, x), torch.zeros(4), atol=1e-6)
        distance = perceptual(x, others)
        assert (distance > 0).all() and torch.allclose(distance, perceptual(others, x), rtol=1e-5)
        blur = perceptual(x, blurred)
        assert (blur > 10 * perceptual(x, brighter)).all()  # structure counts, not the squared error
        assert (distance > blur).all()  # another face is further than a blurred copy


def test_gradients_reach_the_images_not_the_trunk_and_nothing_is_saved(trunk):
    perceptual = PerceptualLoss(trunk)
    x = faces(2).requires_grad_(True)
    perceptual(x, faces(2, seed=1)).sum().backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None and not p.requires_grad for _, layer in trunk.layers for p in layer.parameters())
    assert list(perceptual.parameters()) == [] and perceptual.state_dict() == {}
    saved = AutoencoderLoss(LossConfig(), perceptual).state_dict()
    assert saved.keys() == AutoencoderLoss(LossConfig(), None).state_dict().keys()
    assert perceptual.description == "FID Inception-v3 early layers (conv_2, conv_4, mixed, mixed_2)"


def test_offline_load_perceptual_gives_the_inception_loss_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(losses.VGG16_WEIGHTS_ENV, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(losses.urllib.request, "urlopen", unreachable)
    loaded = losses.perceptual_for(PROFILES["gpu"])  # trains with it (the profile needs no GPU here)
    assert isinstance(loaded.network, EarlyInceptionFeatures)
    assert losses.perceptual_for(get_profile("tiny")) is None  # CI's profile does not even look
    assert losses.perceptual_for(get_profile("cpu")) is None
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "FID Inception-v3's early layers instead" in captured.err and "network is unreachable" in captured.err


@pytest.fixture(scope="module")
def inception_run(tmp_path_factory, trunk):
    """Two steps of the tiny autoencoder with the Inception perceptual loss on 8 toy faces."""
    run_dir, pixels = tmp_path_factory.mktemp("ae-inception"), toy_pixels(8, seed=2)
    profile = get_profile("tiny")
    stage.train_autoencoder(run_dir, pixels, config=stage.autoencoder_config(profile), profile=profile, steps=2,
                            perceptual=PerceptualLoss(trunk), progress=False)
    return run_dir, pixels


def test_the_run_records_the_network_and_refuses_another(inception_run):
    run_dir, pixels = inception_run
    assert json.loads((run_dir / "config.json").read_text())["perceptual"] == EarlyInceptionFeatures.description
    history = ckpt.load(run_dir / "checkpoint.safetensors")[1]["history"]
    assert len(history) == 2 and all(logs["perceptual"] > 0 for logs in history)
    profile = get_profile("tiny")
    with pytest.raises(ckpt.CheckpointError, match="another configuration .differs in: perceptual"):
        stage.train_autoencoder(run_dir, pixels, config=stage.autoencoder_config(profile), profile=profile,
                                steps=3, perceptual=None, progress=False)


def test_a_run_folder_from_before_the_record_resumes_and_loads(inception_run, tmp_path):
    run_dir, pixels = inception_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    recorded = json.loads((old / "config.json").read_text())
    del recorded["perceptual"]
    (old / "config.json").write_text(json.dumps(recorded, indent=2))
    profile = get_profile("tiny")
    stage.train_autoencoder(old, pixels, config=stage.autoencoder_config(profile), profile=profile, steps=3,
                            perceptual=None, progress=False)
    assert ckpt.load(old / "checkpoint.safetensors")[1]["step"] == 3
    assert json.loads((old / "config.json").read_text()) == recorded  # left as it was
    assert stage.load_autoencoder(old).latent_shape(32) == (4, 8, 8)
