"""Real faces are found in a fixed order: the MINILDM_CELEBA_DIR folder, then the hub, then toy
faces with one line saying why. No test touches the network: the hub is a local parquet folder
in the hub's schema, reached through a stand-in for ``datasets.load_dataset``."""

import dataclasses

import pytest
import torch
from PIL import Image

from minildm.config import CELEBA_DIR_ENV, PROFILES
from minildm.data import faces, load_images, sources
from minildm.data.sources import DataError

REAL_HELD_OUT_START = faces.HELD_OUT_START
HELD_OUT_START = 6  # stands in for 7000, so that a folder of 10 images has a held-out part


@pytest.fixture
def small_sources(tmp_path, monkeypatch):
    """A 10-image folder and a 10-row 'hub' with different colours; records every hub call."""
    import datasets

    monkeypatch.setattr(faces, "HELD_OUT_START", HELD_OUT_START)
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path / "data"))  # a fresh cache
    folder = tmp_path / "celeba"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (20, 24), (20 * i, 10, 10)).save(folder / f"{i:06d}.png")
    hub_copy = tmp_path / "hub-copy" / "data"
    hub_copy.mkdir(parents=True)
    rows = {"image": [Image.new("RGB", (16, 16), (10, 10, 20 * i)) for i in range(10)], "label": [0] * 10}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["face"])})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(hub_copy / "train-00000-of-00001.parquet"))
    calls = []
    real_load = datasets.load_dataset

    def fake_hub(path, name=None, split=None, streaming=False):
        calls.append(path)
        return real_load(str(hub_copy.parent), split=split, streaming=streaming)

    monkeypatch.setattr(sources, "check_hub_reachable", lambda repo_id: calls.append(f"reach {repo_id}"))
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    monkeypatch.delenv(CELEBA_DIR_ENV, raising=False)
    return folder, calls


def red(images):
    return images.pixels[:, 0, 4, 4].tolist()


def blue(images):
    return images.pixels[:, 2, 4, 4].tolist()


def test_the_folder_comes_first_and_the_hub_is_not_contacted(small_sources, monkeypatch, capsys):
    folder, calls = small_sources
    monkeypatch.setenv(CELEBA_DIR_ENV, str(folder))
    found = faces.load_faces(8, 4, 3)
    assert (found.kind, found.dataset, found.name, found.why) == ("folder", str(folder), "celeba", None)
    assert red(found.train) == [0, 20, 40, 60] and red(found.held_out) == [120, 140, 160]
    assert calls == [] and capsys.readouterr().out == ""
    assert faces.resolve_faces() == (str(folder), None)
    assert found.description() == {"dataset": str(folder), "resolution": 8, "start": 0, "n": 4,
                                   "split": "train", "seed": 0}


def test_without_a_folder_the_hub_streams_celeba_hq(small_sources, capsys):
    _, calls = small_sources
    found = faces.load_faces(8, 20, 3)
    assert (found.kind, found.dataset, found.name) == ("hub", "celeba-hq", "celeba-hq")
    assert calls[:2] == ["reach korexyz/celeba-hq-256x256", "korexyz/celeba-hq-256x256"]
    # training stops where the held-out part starts, however many images were asked for
    assert blue(found.train) == [0, 20, 40, 60, 80, 100] and blue(found.held_out) == [120, 140, 160]
    assert capsys.readouterr().out == ""
    assert faces.resolve_faces() == ("celeba-hq", None)


def test_a_broken_folder_falls_through_to_the_hub(small_sources, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(CELEBA_DIR_ENV, str(empty))
    assert faces.load_faces(8, 4, 2).kind == "hub"


def test_offline_without_a_folder_gives_toy_faces_and_one_line_why(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CELEBA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path))
    found = faces.load_faces(16, 6, 4)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("using toy faces: ")
    assert f"{CELEBA_DIR_ENV} is not set" in lines[0] and "offline mode is set" in lines[0]
    assert (found.kind, found.name, found.why) == ("toyfaces", "toyfaces", lines[0].removeprefix("using toy faces: "))
    assert torch.equal(found.train.pixels, load_images("toyfaces", 16, 6, progress=False).pixels)
    assert torch.equal(found.held_out.pixels, load_images("toyfaces", 16, 4, start=6, progress=False).pixels)
    monkeypatch.setenv(CELEBA_DIR_ENV, str(tmp_path / "missing"))
    dataset, why = faces.resolve_faces()
    assert dataset == "toyfaces" and f"{CELEBA_DIR_ENV} names no folder" in why


def test_profiles_pick_their_data(small_sources, monkeypatch):
    folder, _ = small_sources
    assert faces.default_dataset(PROFILES["cpu"]) == "toyfaces"
    gpu = PROFILES["gpu"]
    assert gpu.dataset == "celeba-hq" and gpu.n_images <= REAL_HELD_OUT_START  # training never reaches held-out
    assert faces.default_dataset(gpu) == "celeba-hq"
    monkeypatch.setenv(CELEBA_DIR_ENV, str(folder))
    assert faces.default_dataset(gpu) == str(folder)
    assert faces.default_dataset(PROFILES["celebahq256"]) == str(folder)


def test_without_any_real_source_gpu_falls_back_and_a_recipe_stops(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CELEBA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert faces.default_dataset(PROFILES["gpu"]) == "toyfaces"
    assert capsys.readouterr().out.startswith("using toy faces: ")
    with pytest.raises(DataError, match="no CelebA-HQ for the 'celebahq256' recipe .* --dataset"):
        faces.default_dataset(PROFILES["celebahq256"])


def test_course_faces_follow_the_profile(small_sources, monkeypatch):
    folder, _ = small_sources
    tiny = PROFILES["tiny"]
    on_toys = faces.course_faces(tiny)
    assert on_toys.kind == "toyfaces" and on_toys.why is None and len(on_toys.train) == tiny.n_images
    monkeypatch.setenv(CELEBA_DIR_ENV, str(folder))
    real = faces.course_faces(dataclasses.replace(tiny, dataset="celeba-hq", resolution=8, n_images=5,
                                                n_holdout=2))
    assert real.kind == "folder" and red(real.train) == [0, 20, 40, 60, 80] and red(real.held_out) == [120, 140]
