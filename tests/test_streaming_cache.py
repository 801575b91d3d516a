"""The cache of prepared images: written a chunk at a time, read back memory-mapped.

Every test prepares a folder of 37 small random images (not a multiple of the chunk of 8),
with three unreadable files and a CelebA attribute file among them."""

import errno
import gc
import json
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from minildm import checkpoint as ckpt
from minildm.data import cache, images, load_images
from minildm.data.dataset import ImageDataset

RESOLUTION = 16
CHUNK = 8  # images per chunk in these tests
USABLE = 37
ATTRIBUTES = ["Smiling", "Eyeglasses", "Bald"]  # 3 bytes per image: the pixels start at an odd offset


@pytest.fixture
def folder(tmp_path) -> Path:
    """37 random images of various sizes and modes, 3 unreadable files, an attribute file."""
    folder = tmp_path / "faces"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.png" for i in range(USABLE)]
    for i, name in enumerate(names):
        size = (int(rng.integers(16, 48)), int(rng.integers(16, 48)))  # (height, width)
        pixels = rng.integers(0, 256, size=(*size, 3) if i % 5 else size, dtype=np.uint8)  # every 5th is gray
        Image.fromarray(pixels).save(folder / "images" / name)
    (folder / "images" / "000005b.png").write_bytes(os.urandom(300))
    (folder / "images" / "000012b.png").write_bytes((folder / "images" / "000012.png").read_bytes()[:60])
    (folder / "images" / "000030b.png").write_text("not an image")
    rows = [f"{name} " + " ".join(str(rng.choice([-1, 1])) for _ in ATTRIBUTES)
            for name in [*names, "000005b.png", "000012b.png", "000030b.png"]]
    (folder / "list_attr_celeba.txt").write_text(f"{len(rows)}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture
def small_chunks(monkeypatch) -> list[int]:
    """Chunks of :data:`CHUNK` images; returns the size of every chunk written, as it is written."""
    monkeypatch.setattr(cache, "CHUNK_BYTES", CHUNK * 3 * RESOLUTION * RESOLUTION)
    sizes = []
    original = cache.CacheWriter.write

    def counted(writer, chunk):
        sizes.append(len(chunk))
        original(writer, chunk)

    monkeypatch.setattr(cache.CacheWriter, "write", counted)
    return sizes


def one_by_one(folder: Path, count: int) -> torch.Tensor:
    """The first ``count`` readable images, prepared one at a time: (count, 3, R, R) uint8."""
    prepared = []
    for path in sorted((folder / "images").iterdir()):
        try:
            prepared.append(images.prepare(images.open_image(path), RESOLUTION))
        except images.UNREADABLE_ERRORS:
            continue
    assert len(prepared) == USABLE
    return torch.stack(prepared[:count])


def attribute_rows(folder: Path, count: int) -> torch.Tensor:
    table = (folder / "list_attr_celeba.txt").read_text().splitlines()[2:]
    rows = [[value == "1" for value in line.split()[1:]] for line in table if "b.png" not in line]
    return torch.tensor(rows[:count])


@pytest.mark.parametrize("n, chunks", [(None, [8, 8, 8, 8, 5]), (30, [8, 8, 8, 6])], ids=["all", "n=30"])
def test_a_cache_written_in_chunks_reads_back_bit_for_bit(folder, tmp_path, small_chunks, n, chunks):
    expected = one_by_one(folder, n or USABLE)
    prepared = load_images(str(folder), RESOLUTION, n, cache_dir=tmp_path / "cache", progress=False)
    assert small_chunks == chunks
    assert prepared.pixels.dtype == torch.uint8 and torch.equal(prepared.pixels, expected)
    assert torch.equal(prepared.attributes, attribute_rows(folder, n or USABLE))
    assert prepared.attribute_names == ATTRIBUTES and prepared.labels is None
    assert prepared.info["skipped"] == ({"unreadable": 3} if n is None else {"unreadable": 2})
    assert not prepared.info.get("from_cache")
    again = load_images(str(folder), RESOLUTION, n, cache_dir=tmp_path / "cache", progress=False)
    assert again.info["from_cache"] and small_chunks == chunks  # nothing prepared again
    assert torch.equal(again.pixels, expected) and torch.equal(again.attributes, prepared.attributes)
    assert again.info["skipped"] == prepared.info["skipped"] and again.info["requested"] == n


def test_the_cache_is_a_safetensors_file_with_the_stamp(folder, tmp_path, small_chunks):
    prepared = load_images(str(folder), RESOLUTION, cache_dir=tmp_path / "cache", progress=False)
    path = Path(prepared.info["cache"])
    tensors = load_file(str(path))
    assert set(tensors) == {"pixels", "attributes"}
    assert torch.equal(tensors["pixels"], one_by_one(folder, USABLE))
    assert torch.equal(tensors["attributes"], attribute_rows(folder, USABLE).to(torch.uint8))
    with safe_open(str(path), framework="pt") as handle:
        stamp = json.loads(handle.metadata()["written_by"])
    assert stamp == {"minildm": ckpt.__version__, "format": ckpt.FILE_FORMAT}
    loaded, metadata = ckpt.load(path)
    assert set(metadata) == {"attribute_names", "label_names", "captions", "info"}
    assert metadata["attribute_names"] == ATTRIBUTES and metadata["captions"] is None
    assert metadata["info"]["skipped"] == {"unreadable": 3} and torch.equal(loaded["pixels"], tensors["pixels"])


def test_the_writer_places_int64_labels_and_odd_sizes_where_readers_find_them(tmp_path):
    path = tmp_path / "odd.safetensors"
    chunks = [torch.randint(0, 256, (size, 3, 9, 9), dtype=torch.uint8) for size in (3, 3, 1)]  # odd byte counts
    labels = torch.tensor([5, -1, 2**40, 0, 7, 1, 3])
    attributes = torch.randint(0, 2, (7, 3), dtype=torch.uint8)
    with cache.streaming(path) as writer:
        for chunk in chunks:
            writer.write(chunk)
        writer.finish(tensors={"attributes": attributes, "labels": labels}, metadata={"info": {"a": 1}})
    tensors = load_file(str(path))
    assert torch.equal(tensors["pixels"], torch.cat(chunks)) and torch.equal(tensors["labels"], labels)
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_length])
    assert header_length % 8 == 0 and header["labels"]["data_offsets"][0] % 8 == 0  # int64 stays aligned when mapped
    assert torch.equal(tensors["attributes"], attributes)
    assert ckpt.load(path)[1] == {"info": {"a": 1}} and list(tmp_path.iterdir()) == [path]


def test_preparing_holds_one_chunk_of_images_at_a_time(folder, tmp_path, small_chunks, monkeypatch):
    alive = weakref.WeakSet()  # every image prepared and not yet freed
    most_alive, largest_built = [0], [0]
    prepare, stack, cat = images.prepare, torch.stack, torch.cat

    def tracked_prepare(image, resolution):
        prepared = prepare(image, resolution)
        alive.add(prepared)
        most_alive[0] = max(most_alive[0], len(alive))
        return prepared

    def measured(build):
        def wrapped(tensors, *args, **kwargs):
            built = build(tensors, *args, **kwargs)
            if built.dtype == torch.uint8 and built.dim() == 4:  # (B, 3, R, R): images
                largest_built[0] = max(largest_built[0], len(built))
            return built
        return wrapped

    monkeypatch.setattr(images, "prepare", tracked_prepare)
    monkeypatch.setattr(torch, "stack", measured(stack))
    monkeypatch.setattr(torch, "cat", measured(cat))
    prepared = load_images(str(folder), RESOLUTION, cache_dir=tmp_path / "cache", progress=False)
    assert len(prepared) == USABLE and sum(small_chunks) == USABLE
    assert 1 <= most_alive[0] <= CHUNK and 1 <= largest_built[0] <= CHUNK


def mapped_files(tensor: torch.Tensor) -> list[str]:
    """The files mapped into this process at the address of ``tensor``'s first byte (Linux)."""
    address = tensor.data_ptr()
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if start <= address < end and len(fields) == 6:
            found.append(fields[5])
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_loading_maps_the_file_and_writes_never_reach_it(folder, tmp_path, small_chunks, recwarn):
    prepared = load_images(str(folder), RESOLUTION, cache_dir=tmp_path / "cache", progress=False)
    path = Path(prepared.info["cache"])
    again = load_images(str(folder), RESOLUTION, cache_dir=tmp_path / "cache", progress=False)
    for data in (prepared, again):  # just prepared, and from the cache
        assert mapped_files(data.pixels) == [str(path.resolve())]
        assert not data.pixels.untyped_storage().resizable()
    assert not [w for w in recwarn if "writable" in str(w.message)]
    before = path.read_bytes()
    again.pixels[0] = 0  # a private, copy-on-write mapping: only this process's copy changes
    assert path.read_bytes() == before and again.pixels[0].max() == 0 and prepared.pixels[0].max() > 0
    rows = torch.tensor([3, 0, 36, 3])
    batch = ImageDataset(pixels=prepared.pixels)[rows]["image"]  # as the trainer indexes a batch
    assert torch.equal(batch, images.uint8_to_float(one_by_one(folder, USABLE)[rows]))


def test_a_crash_while_preparing_leaves_nothing_and_the_next_call_prepares_again(folder, tmp_path, small_chunks,
                                                                                   monkeypatch):
    cache_dir = tmp_path / "cache"
    counted = cache.CacheWriter.write

    def fails_at_the_third_chunk(writer, chunk):
        if len(small_chunks) == 2:
            raise KeyboardInterrupt
        counted(writer, chunk)

    monkeypatch.setattr(cache.CacheWriter, "write", fails_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        load_images(str(folder), RESOLUTION, cache_dir=cache_dir, progress=False)
    assert small_chunks == [8, 8] and list(cache_dir.iterdir()) == []  # no cache file, no temporaries
    monkeypatch.setattr(cache.CacheWriter, "write", counted)
    prepared = load_images(str(folder), RESOLUTION, cache_dir=cache_dir, progress=False)
    path = Path(prepared.info["cache"])
    assert torch.equal(prepared.pixels, one_by_one(folder, USABLE)) and list(cache_dir.iterdir()) == [path]

    killed = path.with_name(f".{path.name}.pixels.999999999.tmp")
    killed.write_bytes(b"\0" * 100)  # what a process killed with SIGKILL leaves behind
    load_images(str(folder), RESOLUTION, cache_dir=cache_dir, refresh=True, progress=False)
    assert list(cache_dir.iterdir()) == [path]


def test_a_full_disk_while_assembling_keeps_the_old_cache(folder, tmp_path, small_chunks, monkeypatch):
    cache_dir = tmp_path / "cache"
    path = Path(load_images(str(folder), RESOLUTION, cache_dir=cache_dir, progress=False).info["cache"])
    before = path.read_bytes()

    def disk_full(source, target, length=0):
        target.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache.shutil, "copyfileobj", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="cannot write .*: No space left on device"):
        load_images(str(folder), RESOLUTION, cache_dir=cache_dir, refresh=True, progress=False)
    assert path.read_bytes() == before and list(cache_dir.iterdir()) == [path]


def tensor_bytes(file: bytes) -> bytes:
    """A safetensors file's data, after its 8-byte header length and its JSON header."""
    return file[8 + int.from_bytes(file[:8], "little"):]


def test_a_truncated_cache_is_prepared_again(folder, tmp_path, small_chunks, capsys):
    cache_dir = tmp_path / "cache"
    prepared = load_images(str(folder), RESOLUTION, cache_dir=cache_dir, progress=False)
    path = Path(prepared.info["cache"])
    whole = path.read_bytes()
    del prepared  # it maps the file: reading it after the file shrank in place would crash (SIGBUS)
    gc.collect()
    path.write_bytes(whole[: len(whole) - 1000])
    again = load_images(str(folder), RESOLUTION, cache_dir=cache_dir, progress=False)
    assert "damaged cache file" in capsys.readouterr().out and not again.info.get("from_cache")
    assert torch.equal(again.pixels, one_by_one(folder, USABLE))
    assert tensor_bytes(path.read_bytes()) == tensor_bytes(whole)  # the header's timing may differ
    assert sum(small_chunks) == 2 * USABLE
