"""The cache file of prepared images, written chunk by chunk and read back memory-mapped.

A large request never sits in memory whole (30,000 CelebA-HQ images of 256 px are 5.9 GB).
:class:`CacheWriter` appends each chunk of prepared images to a raw temporary file next to the
cache file as soon as it is decoded. Only at the end, when the number of usable images is known,
does it write the safetensors file: the header, the small per-image tensors (labels, attributes),
then the pixels copied over from the raw file a few megabytes at a time. That file is written
under a temporary name, synced and renamed (:func:`minildm.checkpoint.atomic_write`), so a crash
never leaves a damaged cache under the final name, and the temporaries are deleted on any error.

The file is an ordinary safetensors file, the tensors in the order ``save_file`` would choose,
with the metadata and ``written_by`` stamp of :func:`minildm.checkpoint.save_atomic`; only the
header is written here (:func:`safetensors_header`), because safetensors has no writer that
takes a tensor in pieces.

Reading needs no code of its own: safetensors maps a file rather than reading it (for torch,
``safe_open`` builds tensors on ``torch.UntypedStorage.from_file(..., shared=False)``), so the
pixels that :func:`minildm.checkpoint.load` returns stay on disk until they are indexed. The
mapping is private and copy-on-write: the tensor is writable, so torch gives no "non-writable"
warning, and a write would change this process's copy only, never the cache file. A cache file
must therefore never be changed in place while it is loaded: it is only ever replaced by a rename.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from minildm import checkpoint as ckpt

CHUNK_BYTES = 16 * 2**20  # images prepared in memory before they go to disk: 85 of 256 px, 1,365 of 64 px
COPY_BYTES = 8 * 2**20  # the buffer that copies the raw pixels into the cache file
DTYPES = {torch.uint8: ("U8", "<u1"), torch.int64: ("I64", "<i8")}  # safetensors' name, little-endian numpy type


def images_per_chunk(resolution: int) -> int:
    """How many prepared images (3, R, R) of uint8 fill :data:`CHUNK_BYTES` (at least one)."""
    return max(1, CHUNK_BYTES // (3 * resolution * resolution))


@contextmanager
def streaming(path: str | Path) -> Iterator[CacheWriter]:
    """A :class:`CacheWriter` for the cache file ``path``; on leaving the block its raw temporary
    is deleted, also after an error (then no cache file is written)."""
    writer = CacheWriter(Path(path))
    try:
        yield writer
    finally:
        writer.raw_path.unlink(missing_ok=True)


class CacheWriter:
    """Writes a cache file of prepared images without holding them all in memory: :meth:`write`
    each chunk, then :meth:`finish`. Made by :func:`streaming`, which cleans up after it."""

    def __init__(self, path: Path):
        self.path = path
        self.raw_path = ckpt.temporary_path(path, "pixels")  # the pixels so far, back to back
        self.count = 0  # images written so far
        self.image_shape: tuple[int, ...] | None = None  # (3, R, R)

    def write(self, images: torch.Tensor) -> None:
        """Append a chunk of prepared images, uint8 (B, 3, R, R)."""
        if self.count == 0:  # the first chunk: a request without usable images leaves nothing behind
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.path)
        with open(self.raw_path, "ab" if self.count else "wb") as raw:
            raw.write(images.contiguous().numpy())
        self.count += len(images)
        self.image_shape = tuple(images.shape[1:])

    def finish(self, *, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
        """Write the cache file atomically: ``pixels`` (N, 3, R, R), the images written so far;
        ``tensors``, the small per-image tensors (uint8 or int64); the JSON-able ``metadata``."""
        small = sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0]))  # int64 first: aligned
        entries = [(name, DTYPES[value.dtype][0], list(value.shape), value.nbytes) for name, value in small]
        entries.append(("pixels", "U8", [self.count, *self.image_shape], self.raw_path.stat().st_size))
        with (ckpt.atomic_write(self.path) as temporary, open(temporary, "wb") as out,
              open(self.raw_path, "rb") as raw):
            out.write(safetensors_header(entries, ckpt.stamped_metadata(metadata)))
            out.writelines(value.contiguous().numpy().astype(DTYPES[value.dtype][1]).tobytes() for _, value in small)
            shutil.copyfileobj(raw, out, COPY_BYTES)
        return self.path


def safetensors_header(entries: list[tuple[str, str, list[int], int]], metadata: dict[str, str]) -> bytes:
    """The start of a safetensors file whose tensors' bytes follow, back to back, in the order of
    ``entries`` (name, dtype as safetensors spells it, shape, size in bytes): the header's length
    as 8 little-endian bytes, then the JSON header (each tensor's dtype, shape and byte range in
    the data, and ``__metadata__``, text to text), padded with spaces to a multiple of 8 bytes so
    that the data starts 8-byte aligned."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, size in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text
