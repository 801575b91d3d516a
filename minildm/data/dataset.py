"""Data sets: one entry point, :func:`load_images`, for every source the course uses.

Sources, named by the ``dataset`` argument:

- ``toyfaces``: procedural faces drawn from a seed (:mod:`minildm.data.toyfaces`), no download;
- a hub name from :data:`HUB_DATASETS` (``celeba-hq``, ``celeba``, ``lsun-churches``,
  ``lsun-bedrooms``) or ``hub:OWNER/NAME``: streamed from the Hugging Face hub, only the
  first ``n`` images are fetched;
- a local folder of images, optionally with a CelebA attribute file
  (``list_attr_celeba.txt``) inside it or named by ``attributes_file``;
- a local ``datasets`` folder, either written by ``Dataset.save_to_disk`` or holding
  parquet files in the hub's layout.

Every image is brought to RGB, cropped to its central square and resized with an
antialiasing filter (:mod:`minildm.data.images`). ``start`` and ``n`` count usable images, so
that ``start=n`` begins right after the images that ``n`` took, however many files were skipped.
The prepared uint8 tensors are cached under ``data/cache`` keyed by source (for a local folder,
the size and modification time of each file in it), resolution, ``start`` and ``n``, so the
second load is instant; the images of a source are written there chunk by chunk as they are prepared, and
read back memory-mapped (:mod:`minildm.data.cache`), so that no request, however large, is
held in memory whole. Unreadable files are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from minildm import checkpoint as ckpt
from minildm.config import data_dir, display_path
from minildm.data import images as imgs
from minildm.data import cache, sources, toyfaces
from minildm.data.sources import HUB_DATASETS, OFFLINE_HINT, DataError, read_celeba_attributes

__all__ = ["HUB_DATASETS", "DataError", "ImageDataset", "describe", "load_images", "random_flip",
           "read_celeba_attributes"]

CACHE_VERSION = 4  # in every cache file's name; raised when the prepared data change (4: start counts usable images)
TOO_SMALL = "smaller than the resolution"


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Prepared images with whatever labels their source has.

    Attributes:
        pixels: uint8 tensor (N, 3, R, R).
        attribute_names: names of the binary attributes (CelebA style), maybe empty.
        attributes: bool tensor (N, A) or None.
        labels: int64 tensor (N,) of class indices, or None.
        label_names: the name of each class, maybe empty.
        captions: one caption per image, or None.
        info: where the data came from, how many files were skipped and why.
    """

    pixels: torch.Tensor
    attribute_names: list[str] = field(default_factory=list)
    attributes: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    label_names: list[str] = field(default_factory=list)
    captions: list[str] | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict:
        item = {"image": imgs.uint8_to_float(self.pixels[index])}
        if self.attributes is not None:
            item["attributes"] = self.attributes[index]
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item

    @property
    def resolution(self) -> int:
        return self.pixels.shape[-1]

    def images(self) -> torch.Tensor:
        """All images as float32 in [-1, 1], shape (N, 3, R, R)."""
        return imgs.uint8_to_float(self.pixels)

    def attribute_frequencies(self) -> dict[str, float]:
        """Fraction of images that have each attribute."""
        if self.attributes is None:
            return {}
        means = self.attributes.float().mean(dim=0)
        return dict(zip(self.attribute_names, means.tolist()))


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a batch (B, C, H, W) left-right with probability 1/2."""
    flip = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)  # drawn on the CPU: one stream
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def load_images(
    dataset: str,
    resolution: int,
    n: int | None = None,
    *,
    start: int = 0,
    split: str = "train",
    seed: int = 0,
    attributes_file: str | Path | None = None,
    refresh: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Prepare (or load from the cache) usable images ``start .. start + n - 1`` of a source.

    Args:
        dataset: ``toyfaces``, a hub name, ``hub:OWNER/NAME``, or a local folder path.
        resolution: side of the square images in pixels.
        n: how many images; None takes every image of a local folder.
        start: how many usable images to pass over first, e.g. 7000 for a held-out tail; files
            skipped as unusable are not counted, so ``start=n`` follows ``n`` images exactly.
        split: the split of a hub or ``datasets`` source.
        seed: the toy-face seed (ignored by other sources).
        attributes_file: a CelebA-format attribute file for an image folder.
        refresh: prepare again even if a cached copy exists.
        cache_dir: where prepared tensors live (default ``data/cache``).
        progress: show a progress bar while preparing.
    """
    _check_request(dataset, resolution, n, start)
    cache_path = Path(cache_dir or data_dir() / "cache") / (
        _cache_key(dataset, resolution, n, start, split, seed, attributes_file) + ".safetensors"
    )
    if cache_path.exists() and not refresh:
        cached = _read_cache(cache_path)
        if cached is not None:
            return cached
    started = time.perf_counter()
    if _source_kind(dataset) == "toyfaces":  # the generator draws them all in memory at once
        data = _toyfaces(resolution, n, start, seed)
        data.info["prepare_seconds"] = round(time.perf_counter() - started, 3)
        _write_cache(data, cache_path)
        data.info["cache"] = str(cache_path)
        return data
    records, source = _open_source(dataset, split, attributes_file)
    _collect(_after_usable(records, start, resolution), resolution, n, source, progress, cache_path, started)
    return _open_cache(cache_path)


def _check_request(dataset: str, resolution: int, n: int | None, start: int) -> None:
    if not isinstance(resolution, int) or not 8 <= resolution <= 1024:
        raise DataError(f"resolution must be a whole number of pixels from 8 to 1024, got {resolution}")
    if n is not None and n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    if start < 0:
        raise DataError(f"start must be 0 or more, got {start}")
    if n is None and _source_kind(dataset) in ("toyfaces", "hub"):
        raise DataError(f"say how many images to take from {dataset!r} with n (--n)")


def _source_kind(dataset: str) -> str:
    if dataset == "toyfaces":
        return "toyfaces"
    if dataset in HUB_DATASETS or dataset.startswith("hub:"):
        return "hub"
    return "local"


def _open_source(dataset, split, attributes_file) -> tuple[Iterable[sources.Record], str]:
    """The records of a hub or local source, and the source's name for ``info``."""
    if _source_kind(dataset) == "hub":
        repo_id, config = HUB_DATASETS.get(dataset, (dataset.removeprefix("hub:"), None))
        sources.check_hub_reachable(repo_id)
        rows = sources.open_hf_dataset(repo_id, config, split)
        return sources.hf_records(rows), dataset
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DataError(f"no such file or folder: {path} ({OFFLINE_HINT.replace('use ', 'or use ')})")
    if not path.is_dir():
        raise DataError(f"{path} is a file: give a folder of images or a datasets folder")
    if sources.is_saved_dataset(path) or sources.has_parquet(path):
        rows = sources.open_hf_dataset(str(path), None, split)
        return sources.hf_records(rows), str(path)
    return sources.folder_records(path, attributes_file), str(path)


def _toyfaces(resolution: int, n: int, start: int, seed: int) -> ImageDataset:
    images, attributes = toyfaces.generate(n, resolution=resolution, seed=seed, start=start)
    return ImageDataset(
        pixels=imgs.float_to_uint8(images),
        attribute_names=list(toyfaces.ATTRIBUTES),
        attributes=attributes,
        labels=attributes[:, :len(toyfaces.HAIR_OPTIONS)].long().argmax(dim=1),  # the hair, as a class
        label_names=list(toyfaces.HAIR_OPTIONS),
        captions=[toyfaces.caption(row) for row in attributes],
        info={"source": "toyfaces", "seed": seed, "start": start, "requested": n},
    )


def _collect(records: Iterable[sources.Record], resolution: int, n: int | None, source: str, progress: bool,
             cache_path: Path, started: float) -> None:
    """Decode and prepare records until ``n`` usable images are found, writing them to the cache
    file a chunk at a time (:func:`minildm.data.cache.streaming`)."""
    with cache.streaming(cache_path) as writer:
        with tqdm(total=n, desc=f"preparing {Path(source).name or source}", unit="img", disable=not progress,
                  leave=False) as bar:  # the bar clears itself, also when a source fails
            attribute_rows, labels, skipped, smallest = _decode(records, resolution, n, bar, writer)
        if not writer.count:
            raise DataError(_nothing_usable_message(source, resolution, skipped, smallest))
        info = {"source": source, "requested": n, "skipped": dict(skipped),
                "prepare_seconds": round(time.perf_counter() - started, 3)}
        tensors = {}
        if attribute_rows[0] is not None:
            tensors["attributes"] = torch.tensor([list(row.values()) for row in attribute_rows], dtype=torch.uint8)
        if labels[0] is not None:
            tensors["labels"] = torch.tensor(labels, dtype=torch.int64)
        writer.finish(tensors=tensors, metadata={"attribute_names": list(attribute_rows[0] or []),
                                                 "label_names": [], "captions": None, "info": info})


def _after_usable(records: Iterable[sources.Record], start: int, resolution: int) -> Iterator[sources.Record]:
    """The records after the first ``start`` usable ones, or a :class:`DataError` when none is left:
    each record before them is decoded, to know whether it counts (the prepared tensors are cached,
    so this is paid once)."""
    records, passed = iter(records), 0
    while passed < start:
        record = next(records, None)
        if record is None:
            break
        if _try_decode(record, resolution)[1] is None:
            passed += 1
    following = next(records, None)
    if start and following is None:
        raise DataError(f"no image left after the first {start} usable images: the source has {passed}")
    if following is not None:
        yield following
        yield from records


def _try_decode(record: sources.Record, resolution: int):
    """(the record's PIL image, None), or (None or the image, why it is skipped): the image
    comes along when it is only too small, to say what the largest usable resolution is."""
    if record.skip:
        return None, record.skip
    try:
        image = record.load()
    except imgs.ImageTooLarge:
        return None, f"larger than {imgs.MAX_PIXELS / 1e6:.0f} megapixels"
    except imgs.NotRegularFile:
        return None, "not a regular file"
    except imgs.UNREADABLE_ERRORS:
        return None, "unreadable"
    return (image, TOO_SMALL) if min(image.size) < resolution else (image, None)


def _decode(records: Iterable[sources.Record], resolution: int, n: int | None, bar: tqdm,
            writer: cache.CacheWriter):
    """Prepare records into ``writer``, a chunk of images at a time; returns the attribute rows and
    labels of the images written, what was skipped and why, and the smallest side skipped."""
    chunk, attribute_rows, labels = [], [], []
    per_chunk = cache.images_per_chunk(resolution)
    skipped: Counter = Counter()
    smallest = None
    for record in records:
        image, why = _try_decode(record, resolution)
        if why:
            skipped[why] += 1
            if image is not None:
                smallest = min(smallest or 10**9, min(image.size))
            continue
        chunk.append(imgs.prepare(image, resolution))
        attribute_rows.append(record.attributes)
        labels.append(record.label)
        bar.update()
        if len(chunk) == per_chunk:
            writer.write(torch.stack(chunk))  # (B, 3, R, R)
            chunk = []
        if n is not None and len(labels) == n:
            break
    if chunk:
        writer.write(torch.stack(chunk))
    return attribute_rows, labels, skipped, smallest


def _nothing_usable_message(source: str, resolution: int, skipped: Counter, smallest) -> str:
    if not skipped:
        return f"no images found in {source} (looked for {', '.join(imgs.IMAGE_EXTENSIONS)})"
    if set(skipped) == {TOO_SMALL}:
        return (f"every image in {source} is smaller than {resolution} px "
                f"(the largest usable resolution is {smallest}): choose a smaller --resolution")
    counts = ", ".join(f"{count} {why}" for why, count in skipped.items())
    return f"no usable image in {source}: skipped {counts}"


def _cache_key(dataset, resolution, n, start, split, seed, attributes_file) -> str:
    """A readable file name that changes whenever the prepared tensors would."""
    kind = _source_kind(dataset)
    if kind == "toyfaces":
        name, identity = "toyfaces", f"seed{seed}"
    elif kind == "hub":
        name, identity = dataset.removeprefix("hub:"), split
    else:
        path = Path(dataset).expanduser().resolve()
        name = path.name
        stamp = [str(path), split, str(attributes_file), *_folder_stamp(path, attributes_file)]
        identity = hashlib.sha1("|".join(stamp).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    return f"{name}-{identity}-{resolution}px-start{start}-n{n or 'all'}-v{CACHE_VERSION}"


def _folder_stamp(path: Path, attributes_file) -> list[str]:
    """The path, size and modification time of every file under a folder and of the attribute
    file: they change when a file is added, removed or edited in place, which makes a cached
    copy stale. A file that vanishes while it is listed is left out."""
    if not path.is_dir():
        return []
    files = sorted(file for file, listable in sources.walk(path) if listable)
    stamps = []
    for file in files + ([Path(attributes_file)] if attributes_file else []):
        try:
            status = file.stat()
        except OSError:
            continue
        stamps.append(f"{file}:{status.st_size}:{status.st_mtime_ns}")
    return stamps


def _write_cache(data: ImageDataset, path: Path) -> None:
    """Save data held in memory (the toy faces) atomically (:func:`minildm.checkpoint.save_atomic`):
    a crash never damages the old copy."""
    tensors = {"pixels": data.pixels}
    if data.attributes is not None:
        tensors["attributes"] = data.attributes.to(torch.uint8)
    if data.labels is not None:
        tensors["labels"] = data.labels
    metadata = {"attribute_names": data.attribute_names, "label_names": data.label_names,
                "captions": data.captions, "info": data.info}
    ckpt.save_atomic(tensors, path, metadata)


def _read_cache(path: Path) -> ImageDataset | None:
    """Load a cached copy, or None (with a warning) if the file is damaged."""
    try:
        data = _open_cache(path)
    except (ckpt.CheckpointError, KeyError) as error:
        print(f"warning: ignoring damaged cache file {path} ({type(error).__name__}); preparing again")
        return None
    data.info["from_cache"] = True
    return data


def _open_cache(path: Path) -> ImageDataset:
    """The data set in a cache file; its pixels stay on disk, memory-mapped (see :mod:`minildm.data.cache`)."""
    tensors, metadata = ckpt.load(path)
    data = ImageDataset(
        pixels=tensors["pixels"],
        attribute_names=metadata["attribute_names"],
        attributes=tensors["attributes"].bool() if "attributes" in tensors else None,
        labels=tensors.get("labels"),
        label_names=metadata.get("label_names", []),
        captions=metadata["captions"],
        info=metadata["info"],
    )
    data.info["cache"] = str(path)
    return data


def describe(data: ImageDataset) -> str:
    """A few lines that summarise a prepared data set (used by ``minildm data``)."""
    info = data.info
    source = info.get("source")
    shown = display_path(source) if source and Path(str(source)).exists() else source
    lines = [f"{len(data)} images of {data.resolution}x{data.resolution} px from {shown}"]
    if info.get("requested") and info["requested"] > len(data):
        lines.append(f"note: {info['requested']} were requested, the source had only {len(data)} usable")
    for why, count in info.get("skipped", {}).items():
        lines.append(f"skipped {count} {'file' if count == 1 else 'files'}: {why}")
    if data.attributes is not None:
        lines.append("attribute frequencies:")
        for name, freq in sorted(data.attribute_frequencies().items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<22} {freq:6.1%}")
    if data.labels is not None:
        counts = sorted(Counter(data.labels.tolist()).items())
        named = {data.label_names[label] if data.label_names else label: count for label, count in counts}
        lines.append(f"classes: {named}")
    if data.captions:
        lines.append(f"example caption: {data.captions[0]!r}")
    cached = display_path(info["cache"]) if info.get("cache") else None
    lines.append(f"cached at {cached}" + (" (loaded from cache)" if info.get("from_cache") else ""))
    return "\n".join(lines)
