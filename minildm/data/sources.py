"""Where images come from: folders, CelebA attribute files and Hugging Face ``datasets``.

Each source yields :class:`Record` objects: a function that decodes one image (and raises if
the file is unreadable), plus its labels. :func:`minildm.data.load_images` turns records into
prepared tensors; this module only finds and labels them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from minildm.config import MinildmError
from minildm.data import images as imgs

HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "celeba-hq": ("korexyz/celeba-hq-256x256", None),
    "celeba": ("flwrlabs/celeba", "img_align+identity+attr"),
    "lsun-churches": ("tglcourse/lsun_church_train", None),
    "lsun-bedrooms": ("pcuenq/lsun-bedrooms", None),
}
OFFLINE_HINT = (
    "use --dataset toyfaces, a local image folder or a local datasets folder (see data/README.md)"
)


class DataError(MinildmError):
    """A data source that cannot be read; the message is one line meant for the user."""


@dataclass
class Record:
    """One image still to be decoded, with its labels; ``skip`` says why a file found by a
    folder scan will not be decoded at all (it is counted among the skipped files)."""

    load: Callable[[], object]  # returns a PIL image, or raises if the file is unreadable
    name: str
    attributes: dict[str, bool] | None = None
    label: int | None = None
    skip: str | None = None


def walk(folder: Path) -> Iterator[tuple[Path, bool]]:
    """Every entry under ``folder`` that is not a folder, and every subfolder that cannot be
    listed, as (path, listable); symbolic links to folders are not followed."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        yield folder, False
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from walk(Path(entry.path))
        else:
            yield Path(entry.path), True


def scan_images(folder: Path) -> list[tuple[Path, str | None]]:
    """The files under ``folder`` meant as images, sorted by path, each with why it will be
    skipped, or None: not a regular file (a FIFO, which would block, a socket, a device, a
    broken link), an image format this Pillow cannot read, a subfolder that cannot be listed."""
    readable = imgs.readable_extensions()
    found = []
    for path, listable in walk(folder):
        suffix = path.suffix.lower()
        if not listable:
            found.append((path, "unreadable folder"))
        elif suffix in readable:
            found.append((path, None if path.is_file() else "not a regular file"))
        elif suffix in imgs.PHOTO_EXTENSIONS:
            found.append((path, f"format not supported by this Pillow ({suffix})"))
    return sorted(found)


def folder_records(folder: Path, attributes_file) -> Iterator[Record]:
    """Images of a folder (or of its ``images/`` subfolder), sorted by path, each file named in
    the attribute file if there is one."""
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    files = scan_images(image_dir)
    if not files:
        raise DataError(f"no images found in {folder} (looked for {', '.join(imgs.readable_extensions())})")
    attribute_path = Path(attributes_file) if attributes_file else folder / "list_attr_celeba.txt"
    table = read_celeba_attributes(attribute_path) if attributes_file or attribute_path.exists() else None
    for path, skip in files:
        attributes = table.get(path.name) if table is not None else None
        if table is not None and attributes is None:
            continue  # an image without a row in the attribute file cannot be labelled
        yield Record(load=lambda p=path: imgs.open_image(p), name=path.name, attributes=attributes, skip=skip)


def read_celeba_attributes(path: str | Path) -> dict[str, dict[str, bool]]:
    """Read CelebA's ``list_attr_celeba.txt``: a count line, a header of attribute
    names, then one line per file with values 1 / -1. Returns {filename: {name: bool}}."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"attribute file not found: {path}")
    try:
        with imgs.open_regular_file(path) as file:
            lines = file.read().decode().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a CelebA attribute file: it is not text") from None
    except OSError as error:
        raise DataError(f"cannot read the attribute file {path}: {error.strerror or 'not a regular file'}") from None
    if len(lines) < 2:
        raise DataError(f"{path} is not a CelebA attribute file: it has fewer than two lines")
    names = lines[1].split()
    table = {}
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1 or any(v not in ("1", "-1") for v in fields[1:]):
            raise DataError(f"{path}, line {number}: expected a file name and {len(names)} values of 1 or -1")
        table[fields[0]] = {name: value == "1" for name, value in zip(names, fields[1:])}
    return table


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def has_parquet(path: Path) -> bool:
    return any(path.rglob("*.parquet"))


def check_hub_reachable(repo_id: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with advice, when the hub cannot be reached (instead of retrying)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or \
        os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        if offline:
            raise OSError("offline mode is set")
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError as error:
        raise DataError(f"cannot reach the Hugging Face hub to stream {repo_id!r} ({error}): "
                        f"{OFFLINE_HINT}") from None


def open_hf_dataset(path: str, config: str | None, split: str):
    """A ``datasets`` split, streamed from the hub or read from a local folder."""
    import datasets  # imported here: it is slow to import and only some sources need it

    try:
        if Path(path).is_dir() and is_saved_dataset(Path(path)):
            loaded = datasets.load_from_disk(path)
            rows = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            rows = datasets.load_dataset(path, config, split=split, streaming=True)
    except KeyError:
        raise DataError(f"{path} has no split {split!r}") from None
    except Exception as error:  # datasets raises many types; the user needs one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot open {path!r} with datasets: {first_line}") from None
    column = find_image_column(rows)
    return rows.cast_column(column, datasets.Image(decode=False)), column


def find_image_column(rows) -> str:
    """The column of ``datasets.Image`` type, or one named ``image`` / ``img``."""
    import datasets

    features = rows.features or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img"):
        if name in features:
            return name
    raise DataError(f"the data set has no image column (columns: {', '.join(features) or 'unknown'})")


def hf_records(opened: tuple) -> Iterator[Record]:
    """Records from a ``datasets`` split: the image column, bool columns as attributes,
    a ``label`` column as the class."""
    rows, column = opened
    for index, row in enumerate(rows):
        value = row[column]  # {"bytes": ..., "path": ...}: decoded here, to skip bad files
        source = (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value
        attributes = {k: v for k, v in row.items() if isinstance(v, bool)} or None
        label = row.get("label") if isinstance(row.get("label"), int) else None
        yield Record(load=lambda s=source: imgs.open_image(s), name=str(index),
                     attributes=attributes, label=label)
