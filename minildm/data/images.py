"""Turning any image file into a square RGB tensor.

Real image folders hold every kind of file: grayscale, palette, RGBA with transparency,
16-bit PNGs, CMYK JPEGs, truncated downloads. This module brings each to 8-bit RGB,
crops the central square and resizes it with an antialiasing filter, so that the rest
of the course only ever sees tensors of shape (3, R, R).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".mpo")  # .mpo: the multi-picture JPEG of some cameras, read as its first picture
PHOTO_EXTENSIONS = (".avif", ".heic", ".heif", ".jxl")  # read only where this Pillow has a plugin for them
MAX_PIXELS = 89_478_485  # PIL's own limit (Image.MAX_IMAGE_PIXELS): a 9,459 x 9,459 image, 268 MB decoded


class ImageTooLarge(ValueError):
    """An image whose header claims more than :data:`MAX_PIXELS` pixels (a decompression bomb,
    or a scan far too big for the course); it is skipped before it is decoded."""


class NotRegularFile(OSError):
    """A path that is a folder, a FIFO, a socket or a device rather than a file: it is refused
    before it is read, since reading a FIFO waits for a writer forever."""


UNREADABLE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def readable_extensions() -> tuple[str, ...]:
    """The file name endings read as images: :data:`IMAGE_EXTENSIONS`, and those of
    :data:`PHOTO_EXTENSIONS` that this Pillow can decode (AVIF since Pillow 11.2)."""
    return IMAGE_EXTENSIONS + tuple(ext for ext in PHOTO_EXTENSIONS if ext in Image.registered_extensions())


def open_regular_file(path: str | Path) -> io.BufferedReader:
    """Open a file for reading in binary, or raise :class:`NotRegularFile` without waiting:
    the file is opened non-blocking and checked on the opened descriptor, so a FIFO put in
    its place in between cannot block either."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise NotRegularFile(f"{path} is not a regular file")
    return os.fdopen(descriptor, "rb")


def _stream(source: str | Path | bytes) -> AbstractContextManager:
    return io.BytesIO(source) if isinstance(source, bytes) else open_regular_file(source)


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open and fully decode an image from a path or bytes, turned upright by its EXIF
    orientation tag (phone photos). Raises on corrupt files, :class:`NotRegularFile` on a
    path that is no file, and :class:`ImageTooLarge` on an image whose header claims more
    than :data:`MAX_PIXELS` pixels, before decoding it. Pillow's warnings (a damaged EXIF
    block, a huge header) are silenced: the image is used or skipped, with our own words."""
    with _stream(source) as stream, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(str(error)) from None
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageTooLarge(f"{width} x {height} pixels is more than {MAX_PIXELS:,}")
            image.load()
            return ImageOps.exif_transpose(image)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header (as stored, before any EXIF turn)."""
    with open_regular_file(path) as stream, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(stream) as image:
            return image.size


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels become white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_bit_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) grayscale to 8-bit RGB, keeping the full tonal range."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max() > 255:
        values = values / 257.0  # 65535 -> 255
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Crop the largest central square and resize it to ``resolution`` (antialiased)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((resolution, resolution), Image.Resampling.BICUBIC)


def image_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image to a uint8 tensor of shape (3, H, W)."""
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def prepare(image: Image.Image, resolution: int) -> torch.Tensor:
    """Any PIL image to a uint8 tensor (3, R, R): RGB, central square, resized."""
    return image_to_uint8_tensor(center_crop_resize(to_rgb(image), resolution))


def read_image(path: Path, resolution: int) -> torch.Tensor:
    """An image file as (1, 3, R, R) in [-1, 1]: RGB, central square, resized; a missing file
    raises :class:`FileNotFoundError`, a FIFO or folder :class:`NotRegularFile`, an unreadable
    one one of :data:`UNREADABLE_ERRORS`."""
    return uint8_to_float(prepare(open_image(path), resolution))[None]


def uint8_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] to float32 in [-1, 1], the range every model in the course uses."""
    return pixels.float() / 127.5 - 1.0


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] to uint8 in [0, 255] (values outside the range are clipped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
