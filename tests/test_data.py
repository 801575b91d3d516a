"""The data pipeline: every source, the cache, and every kind of bad input."""

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minildm import checkpoint, data
from minildm.data import images, sources, toyfaces
from minildm.config import celeba_dir
from minildm.data import load_images
from minildm.data.sources import DataError


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def solid(color, size=(48, 40), mode="RGB"):
    return Image.new(mode, size, color)


def write_folder(folder: Path, images: dict[str, Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)
    return folder


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_toyfaces_source_matches_generator_and_caches(cache):
    first = load_images("toyfaces", 32, 64, seed=3, cache_dir=cache, progress=False)
    expected, attributes = toyfaces.generate(64, resolution=32, seed=3)
    assert first.pixels.shape == (64, 3, 32, 32) and first.pixels.dtype == torch.uint8
    assert (first.images() - expected).abs().max() <= 1 / 127.5 + 1e-6  # only uint8 rounding
    assert torch.equal(first.attributes, attributes)
    assert first.captions[0] == toyfaces.caption(attributes[0])
    assert first.attribute_names == list(toyfaces.ATTRIBUTES)

    second = load_images("toyfaces", 32, 64, seed=3, cache_dir=cache, progress=False)
    assert second.info["from_cache"] and torch.equal(second.pixels, first.pixels)
    assert torch.equal(second.attributes, first.attributes) and second.captions == first.captions
    assert len(list(cache.glob("*.safetensors"))) == 1
    other_seed = load_images("toyfaces", 32, 64, seed=4, cache_dir=cache, progress=False)
    assert not torch.equal(other_seed.pixels, first.pixels)


def test_item_is_float_in_unit_range(cache):
    item = load_images("toyfaces", 32, 4, cache_dir=cache, progress=False)[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert set(item) == {"image", "attributes", "label", "caption"}
    assert item["attributes"][item["label"]]  # the class is the hair option the face has


def test_folder_of_odd_image_modes_becomes_rgb(tmp_path, cache):
    sixteen_bit = Image.fromarray(np.full((40, 48), 0x8080, dtype=np.uint16))  # mid gray
    palette = solid((0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    transparent = solid((255, 0, 0, 0), mode="RGBA")  # fully transparent red -> white
    folder = write_folder(tmp_path / "odd", {
        "a_rgb.jpg": solid((200, 30, 30)),
        "b_gray.png": solid(90, mode="L"),
        "c_rgba.png": transparent,
        "d_16bit.png": sixteen_bit,
        "e_palette.png": palette,
        "f_cmyk.jpg": solid((0, 255, 255, 0), mode="CMYK"),  # red in CMYK
    })
    assert Image.open(folder / "d_16bit.png").mode.startswith("I")
    loaded = load_images(str(folder), 16, cache_dir=cache, progress=False)
    centre = loaded.pixels[:, :, 8, 8].int()  # (6, 3)
    assert len(loaded) == 6 and loaded.info["skipped"] == {}
    assert (centre[0] - torch.tensor([200, 30, 30])).abs().max() <= 6
    assert centre[1].tolist() == [90, 90, 90]
    assert centre[2].tolist() == [255, 255, 255]
    assert centre[3].tolist() == [128, 128, 128]
    assert centre[4].tolist() == [0, 0, 255]
    assert centre[5][0] > 200 and centre[5][1:].max() < 60
    assert loaded.attributes is None and loaded.labels is None


def test_center_crop_and_antialiased_resize(tmp_path, cache):
    stripes = np.zeros((64, 96, 3), dtype=np.uint8)
    stripes[:, 16:80] = 255  # the central 64x64 square is white, the margins black
    stripes[::2, 16:80] = 0  # ... with black rows every other line: averages to mid gray
    write_folder(tmp_path / "crop", {"x.png": Image.fromarray(stripes)})
    pixels = load_images(str(tmp_path / "crop"), 8, cache_dir=cache, progress=False).pixels[0]
    assert pixels.shape == (3, 8, 8)
    assert (pixels.float() - 127.5).abs().max() < 12  # margins cropped away, stripes averaged


def test_corrupt_and_small_files_are_skipped_and_counted(tmp_path, cache):
    kept = Path(load_images("toyfaces", 32, 8, cache_dir=cache, progress=False).info["cache"])
    before = file_hash(kept)
    folder = write_folder(tmp_path / "mixed", {"good1.png": solid((10, 20, 30)),
                                               "good2.png": solid((40, 50, 60)),
                                               "tiny.png": solid((1, 2, 3), size=(8, 8))})
    (folder / "random.jpg").write_bytes(os.urandom(500))
    full = (folder / "good1.png").read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    loaded = load_images(str(folder), 32, cache_dir=cache, progress=False)
    assert len(loaded) == 2
    assert loaded.info["skipped"] == {"unreadable": 2, "smaller than the resolution": 1}
    summary = data.describe(loaded)
    assert "skipped 2 files: unreadable" in summary
    assert "skipped 1 file: smaller than the resolution" in summary
    assert file_hash(kept) == before and len(list(cache.iterdir())) == 2


def test_start_and_n_select_a_slice(tmp_path, cache):
    folder = write_folder(tmp_path / "many", {f"{i:03d}.png": solid((i * 10, 0, 0)) for i in range(12)})
    whole = load_images(str(folder), 16, cache_dir=cache, progress=False)
    part = load_images(str(folder), 16, 4, start=5, cache_dir=cache, progress=False)
    assert len(whole) == 12 and torch.equal(part.pixels, whole.pixels[5:9])


def celeba_style_folder(root: Path, n: int = 6) -> Path:
    write_folder(root / "images", {f"{i:06d}.jpg": solid((20 * i, 100, 100)) for i in range(1, n + 1)})
    rows = [f"{i:06d}.jpg  {1 if i % 2 else -1} {1 if i % 3 == 0 else -1} -1" for i in range(1, n + 1)]
    (root / "list_attr_celeba.txt").write_text(f"{n}\nSmiling Eyeglasses Bald\n" + "\n".join(rows) + "\n")
    return root


def test_celeba_format_attributes_are_read(tmp_path, cache):
    folder = celeba_style_folder(tmp_path / "celeba")
    loaded = load_images(str(folder), 32, cache_dir=cache, progress=False)
    assert loaded.attribute_names == ["Smiling", "Eyeglasses", "Bald"]
    assert loaded.attributes[:, 0].tolist() == [True, False, True, False, True, False]
    assert loaded.attributes[:, 1].tolist() == [False, False, True, False, False, True]
    assert not loaded.attributes[:, 2].any()
    freqs = loaded.attribute_frequencies()
    assert freqs["Smiling"] == pytest.approx(0.5) and freqs["Eyeglasses"] == pytest.approx(1 / 3)


def test_malformed_attribute_file_names_the_line(tmp_path, cache):
    folder = celeba_style_folder(tmp_path / "celeba")
    attr = folder / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace("000004.jpg  -1 -1 -1", "000004.jpg  -1 maybe -1"))
    with pytest.raises(DataError, match=r"line 6: expected a file name and 3 values"):
        load_images(str(folder), 32, cache_dir=cache, progress=False)
    with pytest.raises(DataError, match="attribute file not found"):
        load_images(str(folder), 32, attributes_file=tmp_path / "nope.txt", cache_dir=cache, progress=False)


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp / "does-not-exist", "no such file or folder"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no images found"),
    (lambda tmp: write_folder(tmp / "small", {"a.png": solid(0, (20, 24), "L")}),
     "every image .* is smaller than 32 px .*largest usable resolution is 20"),
    (lambda tmp: (tmp / "f.txt").write_text("x") and tmp / "f.txt", "is a file"),
])
def test_bad_paths_give_one_line_and_keep_the_cache(tmp_path, cache, make_path, message):
    kept = load_images("toyfaces", 32, 8, cache_dir=cache, progress=False)
    kept_path = Path(kept.info["cache"])
    before = file_hash(kept_path)
    with pytest.raises(DataError, match=message) as raised:
        load_images(str(make_path(tmp_path)), 32, cache_dir=cache, progress=False)
    assert "\n" not in str(raised.value)
    assert file_hash(kept_path) == before and list(cache.iterdir()) == [kept_path]


def test_bad_numbers_are_refused(cache):
    for kwargs, message in [({"resolution": 4}, "resolution"), ({"n": 0}, "n must be"),
                            ({"start": -1}, "start must be"), ({"n": None}, "say how many")]:
        arguments = {"resolution": 32, "n": 8, **kwargs}
        with pytest.raises(DataError, match=message):
            load_images("toyfaces", cache_dir=cache, progress=False, **arguments)


def test_crash_while_saving_leaves_the_previous_cache(cache, monkeypatch):
    original = load_images("toyfaces", 32, 8, cache_dir=cache, progress=False)
    path = Path(original.info["cache"])
    before = file_hash(path)

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        load_images("toyfaces", 32, 8, cache_dir=cache, refresh=True, progress=False)
    assert file_hash(path) == before and list(cache.iterdir()) == [path]


def test_damaged_cache_is_rebuilt(cache, capsys):
    original = load_images("toyfaces", 32, 8, cache_dir=cache, progress=False)
    Path(original.info["cache"]).write_bytes(b"garbage")
    again = load_images("toyfaces", 32, 8, cache_dir=cache, progress=False)
    assert "damaged cache file" in capsys.readouterr().out
    assert torch.equal(again.pixels, original.pixels) and not again.info.get("from_cache")


def test_unreachable_hub_fails_fast_with_advice_and_keeps_the_cache(monkeypatch, cache):
    kept = Path(load_images("toyfaces", 32, 8, cache_dir=cache, progress=False).info["cache"])
    before = file_hash(kept)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face hub .*celeba-hq-256x256.*toyfaces"):
        load_images("celeba-hq", 32, 8, cache_dir=cache, progress=False)
    assert time.perf_counter() - started < 10
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="offline mode is set"):
        load_images("hub:someone/faces", 32, 8, cache_dir=cache, progress=False)
    assert file_hash(kept) == before and list(cache.iterdir()) == [kept]


def hub_schema_dataset(n: int = 10):
    """A small data set in the schema of the hub's face sets: image, class label,
    boolean attribute columns."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=["female", "male"]),
        "Smiling": datasets.Value("bool"),
        "Eyeglasses": datasets.Value("bool"),
    })
    rows = {
        "image": [solid((25 * i, 255 - 25 * i, 60), size=(64, 64)) for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "Smiling": [i % 3 == 0 for i in range(n)],
        "Eyeglasses": [i >= 7 for i in range(n)],
    }
    return datasets.Dataset.from_dict(rows, features=features)


def check_hub_schema_load(loaded, start=0):
    expected = hub_schema_dataset()
    assert loaded.labels.tolist() == expected["label"][start:start + len(loaded)]
    assert loaded.attribute_names == ["Smiling", "Eyeglasses"]
    assert loaded.attributes[:, 0].tolist() == expected["Smiling"][start:start + len(loaded)]
    first = np.asarray(expected[start]["image"])[0, 0]
    assert (loaded.pixels[0, :, 4, 4].int() - torch.tensor(first.astype(int))).abs().max() <= 1


def test_parquet_folder_in_hub_layout_streams(tmp_path, cache):
    folder = tmp_path / "hub-copy"
    (folder / "data").mkdir(parents=True)
    hub_schema_dataset().to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    loaded = load_images(str(folder), 16, 6, start=2, cache_dir=cache, progress=False)
    assert len(loaded) == 6
    check_hub_schema_load(loaded, start=2)


def test_hub_names_stream_the_right_repository(tmp_path, cache, monkeypatch):
    import datasets

    folder = tmp_path / "hub-copy"
    (folder / "data").mkdir(parents=True)
    hub_schema_dataset().to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    calls = []
    real_load = datasets.load_dataset

    def fake_hub(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return real_load(str(folder), split=split, streaming=streaming)

    monkeypatch.setattr(sources, "check_hub_reachable", lambda repo_id: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    loaded = load_images("celeba", 16, 5, cache_dir=cache, progress=False)
    assert calls == [("flwrlabs/celeba", "img_align+identity+attr", "train", True)]
    check_hub_schema_load(loaded)
    load_images("celeba", 16, 5, cache_dir=cache, progress=False)
    assert len(calls) == 1  # the second load came from the cache


def test_saved_datasets_folders_load(tmp_path, cache):
    import datasets

    hub_schema_dataset().save_to_disk(str(tmp_path / "one"))
    loaded = load_images(str(tmp_path / "one"), 16, 4, start=1, cache_dir=cache, progress=False)
    check_hub_schema_load(loaded, start=1)
    datasets.DatasetDict({"train": hub_schema_dataset()}).save_to_disk(str(tmp_path / "splits"))
    check_hub_schema_load(load_images(str(tmp_path / "splits"), 16, 3, cache_dir=cache, progress=False))
    with pytest.raises(DataError, match="has no split 'test'"):
        load_images(str(tmp_path / "splits"), 16, 4, split="test", cache_dir=cache, progress=False)


def test_random_flip_flips_about_half():
    images = torch.arange(64 * 2 * 2, dtype=torch.float32).reshape(64, 1, 2, 2)
    flipped = data.random_flip(images, torch.Generator().manual_seed(0))
    is_flipped = [torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images)]
    is_same = [torch.equal(f, x) for f, x in zip(flipped, images)]
    assert all(a != b for a, b in zip(is_flipped, is_same))
    assert 20 < sum(is_flipped) < 44


@pytest.mark.skipif(celeba_dir() is None, reason="MINILDM_CELEBA_DIR is not set (CI sets it)")
def test_real_celeba_folder_with_its_attributes(cache):
    held_out = load_images(str(celeba_dir()), 32, 50, start=7000, cache_dir=cache, progress=False)
    assert held_out.pixels.shape == (50, 3, 32, 32) and len(held_out.attribute_names) == 40
    table = sources.read_celeba_attributes(celeba_dir() / "list_attr_celeba.txt")
    assert held_out.attributes[0].tolist() == list(table["007001.jpg"].values())
    assert held_out.attributes[49].tolist() == list(table["007050.jpg"].values())
    first = Image.open(celeba_dir() / "images" / "007001.jpg")
    assert held_out.pixels[0].float().std() > 20 and first.size == (89, 109)


def test_an_image_whose_header_claims_a_huge_size_is_skipped_and_counted(tmp_path, cache):
    folder = write_folder(tmp_path / "bomb", {f"{i}.png": solid((30 * i, 0, 0)) for i in range(3)})
    Image.new("1", (20_000, 20_000)).save(folder / "huge.png")  # 400 M pixels, a 50 kB file
    Image.new("1", (10_000, 10_000)).save(folder / "big.png")  # 100 M: past MAX_PIXELS, short of PIL's error
    started = time.perf_counter()
    loaded = load_images(str(folder), 16, cache_dir=cache, progress=False)
    assert len(loaded) == 3 and loaded.info["skipped"] == {"larger than 89 megapixels": 2}
    assert time.perf_counter() - started < 5  # skipped from the header, never decoded
    with pytest.raises(images.ImageTooLarge, match="20000 x 20000|400000000 pixels"):
        images.open_image(folder / "huge.png")


def test_phone_photos_are_turned_upright_by_their_exif_orientation(tmp_path, cache):
    upright = Image.new("RGB", (40, 60), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 40, 20))  # red on top
    # a camera stores the pixels as the sensor saw them (turned 90 degrees) and the turn in EXIF
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90 degrees clockwise
    folder = tmp_path / "phone"
    folder.mkdir()
    stored.save(folder / "photo.jpg", exif=exif, quality=95)
    opened = images.open_image(folder / "photo.jpg")
    assert opened.size == (40, 60)
    assert opened.getpixel((20, 5))[0] > 200 and opened.getpixel((20, 50))[2] > 200  # red on top again
    loaded = load_images(str(folder), 40, cache_dir=cache, progress=False)
    assert loaded.pixels[0, 0, 2, 20] > 200 and loaded.pixels[0, 2, 37, 20] > 200


def test_random_flip_keeps_the_images_device():
    """On a GPU the batch is on the device while the generator draws on the CPU (found on an
    H200: train-ae failed at its first step). The meta device stands in for the GPU here."""
    images = torch.zeros(4, 3, 2, 2, device="meta")
    assert data.random_flip(images, torch.Generator().manual_seed(0)).device.type == "meta"
