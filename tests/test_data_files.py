"""Files and folders the data pipeline meets in the wild: FIFOs, files it skips, images edited in
place, formats Pillow may not read, unreadable subfolders, damaged EXIF blocks, ``~`` in paths."""

import argparse
import os
import struct
import threading
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from minildm.app.options import load_seen, load_training_data
from minildm.config import PROFILES, data_dir
from minildm.data import images, load_images, sources
from minildm.data.sources import DataError


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` different colours, one per image, so that an image is known by its pixels."""
    return [(10 * i, 255 - 10 * i, (70 * i) % 256) for i in range(n)]


def write_images(folder: Path, names_and_colors: dict[str, tuple[int, int, int]], size: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, color in names_and_colors.items():
        Image.new("RGB", (size, size), color).save(folder / name)
    return folder


def finishes(function, seconds: float = 30.0):
    """Run ``function`` in a thread and return its result, or fail if it is still running after
    ``seconds`` (a read from a FIFO blocks forever: a regression fails instead of hanging)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the test's thread below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: blocked on a FIFO?"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_named_like_an_image_is_skipped_and_counted_never_opened(tmp_path, cache):
    folder = write_images(tmp_path / "pipes", {f"{i}.png": color for i, color in enumerate(colors(3))})
    os.mkfifo(folder / "x.png")
    loaded = finishes(lambda: load_images(str(folder), 32, cache_dir=cache, progress=False))
    assert len(loaded) == 3 and loaded.info["skipped"] == {"not a regular file": 1}
    with pytest.raises(images.NotRegularFile):
        finishes(lambda: images.read_image(folder / "x.png", 32))
    with pytest.raises(images.NotRegularFile):
        finishes(lambda: images.open_image(folder))  # a folder is refused the same way


def test_held_out_images_are_disjoint_from_training_when_files_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path / "data"))
    profile = PROFILES["tiny"]
    good = colors(20)
    folder = write_images(tmp_path / "faces", {f"{i:02d}.png": color for i, color in enumerate(good)},
                          size=profile.resolution)
    for i in range(5):  # empty files that sort among the good ones: skipped as unreadable
        (folder / f"{4 * i:02d}a.png").write_bytes(b"")
    args = argparse.Namespace(dataset=str(folder), resolution=None, n=None, start=0, split="train", seed=0,
                              attributes=None, refresh=False)
    train = load_training_data(args, profile)
    seen = {"dataset": args.dataset, "resolution": train.resolution, "start": args.start, "n": len(train),
            "split": args.split, "seed": args.seed}  # what train-ae records for evaluate
    held_out = load_seen(seen, profile.n_holdout, seen["start"] + seen["n"])  # what evaluate scores
    assert (len(train), len(held_out)) == (18, 2)
    trained = {tuple(image[:, 0, 0].tolist()) for image in train.pixels}
    kept_out = {tuple(image[:, 0, 0].tolist()) for image in held_out.pixels}
    assert not trained & kept_out and trained | kept_out == set(good)
    assert not any(torch.equal(a, b) for a in held_out.pixels for b in train.pixels)
    with pytest.raises(DataError, match="after the first 20 usable images: the source has 20"):
        load_seen(seen, 1, 20)


def test_an_image_edited_in_place_is_prepared_again(tmp_path, cache):
    folder = write_images(tmp_path / "edited", {"a.png": (200, 0, 0), "b.png": (0, 200, 0)})
    before = load_images(str(folder), 16, cache_dir=cache, progress=False)
    assert before.pixels[1, :, 0, 0].tolist() == [0, 200, 0]
    write_images(folder, {"b.png": (0, 0, 200)})
    later = (folder / "b.png").stat().st_mtime + 10
    os.utime(folder / "b.png", (later, later))
    after = load_images(str(folder), 16, cache_dir=cache, progress=False)
    assert not after.info.get("from_cache")
    assert after.pixels[1, :, 0, 0].tolist() == [0, 0, 200]
    assert torch.equal(after.pixels[0], before.pixels[0])


def test_other_photo_formats_and_unreadable_folders_are_counted(tmp_path, cache, monkeypatch):
    folder = write_images(tmp_path / "phone", {"a.png": (200, 0, 0)})
    Image.new("RGB", (32, 32), (0, 200, 0)).save(folder / "b.mpo", format="MPO")  # a camera's multi-picture JPEG
    (folder / "c.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))  # no HEIC plugin in Pillow itself
    avif = ".avif" in Image.registered_extensions()
    if avif:
        Image.new("RGB", (32, 32), (0, 0, 200)).save(folder / "d.avif")
    else:
        (folder / "d.avif").write_bytes(b"\0\0\0\x1cftypavif" + bytes(64))
    (folder / "locked").mkdir()
    scandir = os.scandir

    def refuse_locked(path):  # chmod 000 does not stop root, so the refusal is made here
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(sources.os, "scandir", refuse_locked)
    loaded = load_images(str(folder), 32, cache_dir=cache, progress=False)
    expected = {"format not supported by this Pillow (.heic)": 1, "unreadable folder": 1}
    if not avif:
        expected["format not supported by this Pillow (.avif)"] = 1
    assert loaded.info["skipped"] == expected
    assert len(loaded) == (3 if avif else 2)
    assert loaded.pixels[1, :, 16, 16].tolist() == pytest.approx([0, 200, 0], abs=3)  # the .mpo was read


def jpeg_with_broken_exif(path: Path) -> Path:
    """A JPEG whose EXIF block has an orientation tag and a tag whose data lie past its end."""
    entries = [struct.pack("<HHII", 0x0112, 3, 1, 6),  # Orientation: turn 90 degrees clockwise
               struct.pack("<HHII", 0x010E, 2, 1000, 5000)]  # a description of 1000 bytes at offset 5000
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(entries)) + b"".join(entries) + bytes(4)
    Image.new("RGB", (40, 30), (0, 0, 255)).save(path, exif=b"Exif\0\0" + tiff)
    return path


def test_a_damaged_exif_block_gives_no_warning(tmp_path):
    path = jpeg_with_broken_exif(tmp_path / "broken.jpg")
    with warnings.catch_warnings(record=True) as plain:  # Pillow alone warns: the block is damaged
        warnings.simplefilter("always")
        ImageOps.exif_transpose(Image.open(path))
    assert plain
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        opened = images.open_image(path)
        images.image_size(path)
    assert ours == []
    assert opened.size == (30, 40)  # the orientation tag that could be read was applied


def test_a_binary_attribute_file_gives_one_line(tmp_path):
    binary = tmp_path / "attributes.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="is not a CelebA attribute file: it is not text"):
        sources.read_celeba_attributes(binary)


def test_a_tilde_in_the_data_folder_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MINILDM_DATA_DIR", "~/minildm-data")
    assert data_dir() == tmp_path / "minildm-data"
