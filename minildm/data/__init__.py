"""Data: what a first reading of the course can skip (notebook 00 teaches it).

- :mod:`~minildm.data.toyfaces`: the offline data set, faces drawn from a seed, with
  CelebA-style attributes and captions;
- :mod:`~minildm.data.toyface_parts`: the part map (a class per pixel) and part boxes of every toy face;
- :mod:`~minildm.data.images`: any image file to a square RGB tensor, and uint8 <-> [-1, 1];
- :mod:`~minildm.data.sources`: image folders, CelebA attribute files, Hugging Face datasets;
- :mod:`~minildm.data.dataset`: :func:`load_images`, the one entry point for every source,
  cached on disk, and :class:`ImageDataset`, what it returns;
- :mod:`~minildm.data.cache`: the cache file, written a chunk of images at a time and
  memory-mapped when loaded, so that no request is held in memory whole;
- :mod:`~minildm.data.faces`: real faces from the first source that works (the
  ``MINILDM_CELEBA_DIR`` folder, CelebA-HQ from the hub, else toy faces).
"""

from minildm.data.dataset import ImageDataset, describe, load_images, random_flip

__all__ = ["ImageDataset", "describe", "load_images", "random_flip"]
