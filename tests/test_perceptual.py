"""The perceptual distance and its networks: VGG16 weights and their loading (never from the
network here) with the offline fallback, LPIPS-style distances on the FID Inception-v3's early
layers, what they compute, that they stay out of checkpoints, and that stage 1 records and
honours the network."""

import json
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from conftest import toy_pixels
from minildm import autoencoder_training as stage
from minildm import checkpoint as ckpt
from minildm import perceptual
from minildm.config import PROFILES, MinildmError, get_profile
from minildm.data import toyfaces
from minildm.losses import AutoencoderLoss, LossConfig
from minildm.perceptual import (EarlyInceptionFeatures, PerceptualLoss, VGG16Features, inception_input,
                                inception_weights_path, load_perceptual, vgg16_from_torchvision)
from minildm.recipes import autoencoder_config

pytestmark = pytest.mark.usefixtures("one_thread")

# torchvision's VGG16 "features": conv widths and "M" for max pooling, each conv followed by a ReLU.
TORCHVISION_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
LPIPS_RELU_INDICES = [3, 8, 15, 22, 29]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def torchvision_style_features() -> nn.Sequential:
    layers, channels = [], 3
    for item in TORCHVISION_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def fake_torchvision():
    """A randomly initialised VGG16 trunk and its state dict in torchvision's key layout."""
    torch.manual_seed(1)
    features = torchvision_style_features()
    state_dict = {f"features.{key}": value for key, value in features.state_dict().items()}
    state_dict["classifier.0.weight"] = torch.randn(8, 4)  # must be ignored
    return features, state_dict


def reference_lpips_features(features: nn.Sequential, images: torch.Tensor) -> list[torch.Tensor]:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h, taps = ((images + 1) / 2 - mean) / std, []
    for index, layer in enumerate(features):
        h = layer(h)
        if index in LPIPS_RELU_INDICES:
            taps.append(h)
    return taps


def random_images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


def assert_same_features(lpips: PerceptualLoss, features: nn.Sequential) -> None:
    images = random_images()
    with torch.no_grad():
        for ours, theirs in zip(lpips.network(images), reference_lpips_features(features, images), strict=True):
            assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)


def test_torchvision_keys_map_onto_our_vgg(fake_torchvision):
    features, state_dict = fake_torchvision
    assert all(isinstance(features[i], nn.ReLU) for i in LPIPS_RELU_INDICES)
    mapped = vgg16_from_torchvision(state_dict)
    assert len(mapped) == 26 and torch.equal(mapped["conv5_3.bias"], state_dict["features.28.bias"])
    vgg = VGG16Features()
    vgg.load_weights(mapped)
    assert_same_features(PerceptualLoss(vgg), features)
    with pytest.raises(MinildmError, match="exactly the keys"):
        vgg.load_weights({**mapped, "conv6_1.weight": torch.zeros(1)})


def test_load_perceptual_from_a_local_file(fake_torchvision, tmp_path, monkeypatch):
    features, state_dict = fake_torchvision
    path = tmp_path / "vgg.safetensors"
    save_file(vgg16_from_torchvision(state_dict), str(path))
    assert_same_features(load_perceptual(path), features)
    monkeypatch.setenv(perceptual.VGG16_WEIGHTS_ENV, str(path))
    assert_same_features(load_perceptual(), features)
    with pytest.raises(MinildmError, match="no VGG16 weights at"):
        load_perceptual(tmp_path / "missing.safetensors")
    pickled = tmp_path / "vgg16.pth"
    pickled.write_bytes(b"not opened")
    with pytest.raises(MinildmError, match="must be a .safetensors file"):
        load_perceptual(pickled)


def test_load_perceptual_downloads_once_and_converts(fake_torchvision, tmp_path, monkeypatch, capsys):
    features, state_dict = fake_torchvision
    served = tmp_path / "served" / "vgg16-397923af.pth"
    served.parent.mkdir()
    torch.save(state_dict, served)
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(perceptual.VGG16_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(perceptual, "VGG16_URL", served.as_uri())  # a local "download", no network
    assert_same_features(load_perceptual(), features)
    assert (tmp_path / "data" / "weights" / "vgg16.safetensors").is_file()
    assert list((tmp_path / "data" / "weights").iterdir()) == [tmp_path / "data" / "weights" / "vgg16.safetensors"]
    monkeypatch.setattr(perceptual, "VGG16_URL", (tmp_path / "gone.pth").as_uri())
    assert_same_features(load_perceptual(), features)  # from the saved file now
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("inception", ["installed", "missing"])
@pytest.mark.parametrize("failure", ["missing file", "timeout"])
def test_offline_load_perceptual_warns_once_and_falls_back(failure, inception, tmp_path, monkeypatch, capsys):
    """Offline, the FID Inception's early layers replace VGG16; without the fid extra, nothing does."""
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(perceptual.VGG16_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(perceptual, "VGG16_URL", (tmp_path / "nowhere" / "vgg16.pth").as_uri())
    if failure == "timeout":
        def time_out(*args, **kwargs):
            raise TimeoutError("timed out")
        monkeypatch.setattr(perceptual.urllib.request, "urlopen", time_out)
    if inception == "missing":
        def not_installed():
            raise MinildmError("the FID Inception network was not found")
        monkeypatch.setattr("minildm.perceptual.inception_weights_path", not_installed)
    loaded = load_perceptual()
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert len(lines) == 1
    if inception == "missing":
        assert loaded is None
        assert lines[0].startswith("warning: VGG16 weights unavailable (offline?): training without the perceptual "
                                   "loss; put vgg16.safetensors in $MINILDM_DATA_DIR/weights to enable it")
    else:
        assert isinstance(loaded.network, EarlyInceptionFeatures) and loaded.description.startswith("FID Inception")
        assert lines[0].startswith("warning: VGG16 weights unavailable (offline?): the perceptual loss uses the FID "
                                   "Inception-v3's early layers instead; put vgg16.safetensors in "
                                   "$MINILDM_DATA_DIR/weights for the paper's VGG16 (")


def test_perceptual_distance_properties():
    lpips = PerceptualLoss(VGG16Features())
    x, y = random_images(), random_images()
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    distance = lpips(x, y)
    assert distance.shape == (2,) and (distance > 0).all()
    assert torch.allclose(distance, lpips(y, x), rtol=1e-5)
    assert list(lpips.parameters()) == [] and lpips.state_dict() == {}  # frozen, never saved



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
        layers = torch.jit.load(str(inception_weights_path())).net.layers
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
    lpips = PerceptualLoss(trunk)
    x, others = faces(4, seed=0), faces(4, seed=1)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    error = (x - blurred).square().mean(dim=(1, 2, 3))  # (B,)
    brighter = x + error.sqrt()[:, None, None, None]  # the same squared error as the blur
    with torch.no_grad():
        assert torch.allclose(lpips(x, x), torch.zeros(4), atol=1e-6)
        distance = lpips(x, others)
        assert (distance > 0).all() and torch.allclose(distance, lpips(others, x), rtol=1e-5)
        blur = lpips(x, blurred)
        assert (blur > 10 * lpips(x, brighter)).all()  # structure counts, not the squared error
        assert (distance > blur).all()  # another face is further than a blurred copy


def test_gradients_reach_the_images_not_the_trunk_and_nothing_is_saved(trunk):
    lpips = PerceptualLoss(trunk)
    x = faces(2).requires_grad_(True)
    lpips(x, faces(2, seed=1)).sum().backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None and not p.requires_grad for _, layer in trunk.layers for p in layer.parameters())
    assert list(lpips.parameters()) == [] and lpips.state_dict() == {}
    saved = AutoencoderLoss(LossConfig(), lpips).state_dict()
    assert saved.keys() == AutoencoderLoss(LossConfig(), None).state_dict().keys()
    assert lpips.description == "FID Inception-v3 early layers (conv_2, conv_4, mixed, mixed_2)"


def test_offline_load_perceptual_gives_the_inception_loss_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(perceptual.VGG16_WEIGHTS_ENV, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(perceptual.urllib.request, "urlopen", unreachable)
    loaded = perceptual.perceptual_for(PROFILES["gpu"])  # trains with it (the profile needs no GPU here)
    assert isinstance(loaded.network, EarlyInceptionFeatures)
    assert perceptual.perceptual_for(get_profile("tiny")) is None  # CI's profile does not even look
    assert perceptual.perceptual_for(get_profile("cpu")) is None
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "FID Inception-v3's early layers instead" in captured.err and "network is unreachable" in captured.err


@pytest.fixture(scope="module")
def inception_run(tmp_path_factory, trunk):
    """Two steps of the tiny autoencoder with the Inception perceptual loss on 8 toy faces."""
    run_dir, pixels = tmp_path_factory.mktemp("ae-inception"), toy_pixels(8, seed=2)
    profile = get_profile("tiny")
    training = stage.AutoencoderTraining(profile=profile, steps=2, perceptual=PerceptualLoss(trunk), progress=False)
    stage.train_autoencoder(run_dir, pixels, config=autoencoder_config(profile), training=training)
    return run_dir, pixels


def test_the_run_records_the_network_and_refuses_another(inception_run):
    run_dir, pixels = inception_run
    assert json.loads((run_dir / "config.json").read_text())["perceptual"] == EarlyInceptionFeatures.description
    history = ckpt.load(run_dir / "checkpoint.safetensors")[1]["history"]
    assert len(history) == 2 and all(logs["perceptual"] > 0 for logs in history)
    profile = get_profile("tiny")
    with pytest.raises(ckpt.CheckpointError, match="another configuration .differs in: perceptual"):
        stage.train_autoencoder(run_dir, pixels, config=autoencoder_config(profile),
                                training=stage.AutoencoderTraining(profile=profile, steps=3, progress=False))


def test_a_run_folder_without_the_record_is_refused(inception_run, tmp_path):
    run_dir, pixels = inception_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    recorded = json.loads((old / "config.json").read_text())
    del recorded["perceptual"]
    (old / "config.json").write_text(json.dumps(recorded, indent=2))
    profile = get_profile("tiny")
    with pytest.raises(ckpt.CheckpointError, match="another configuration .differs in: perceptual"):
        stage.train_autoencoder(old, pixels, config=autoencoder_config(profile),
                                training=stage.AutoencoderTraining(profile=profile, steps=3, progress=False))
    assert ckpt.load(old / "checkpoint.safetensors")[1]["step"] == 2  # not resumed
    with pytest.raises(ckpt.CheckpointError, match="missing key 'perceptual'"):
        stage.load_autoencoder(old)
