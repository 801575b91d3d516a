"""Real faces wherever a notebook runs: a local CelebA folder, else CelebA-HQ from the hub,
else toy faces.

The ``gpu`` profile and the real-face sections of notebooks 05, 07 and 09 ask for real faces.
:func:`resolve_faces` picks the first source that works, in this order:

1. the local folder named by ``MINILDM_CELEBA_DIR`` (a course machine, or CI);
2. CelebA-HQ streamed from the Hugging Face hub (``korexyz/celeba-hq-256x256``; Colab, a lab
   GPU), cached after the first load;
3. toy faces, with one printed line saying why no real faces were found.

Both real sources hold more than :data:`HELD_OUT_START` photos, so the training images are the
first ``n`` (at most ``HELD_OUT_START``) and the held-out images always start there: a bigger
profile never trains on a photo a smaller one held out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from minildm.config import CELEBA_DIR_ENV, celeba_dir, display_path
from minildm.data.dataset import ImageDataset, load_images
from minildm.data import sources
from minildm.data.sources import HUB_DATASETS, DataError

HUB_FACES = "celeba-hq"
HELD_OUT_START = 7000


@dataclass
class Faces:
    """Training and held-out faces, and where they came from.

    Attributes:
        dataset: what :func:`minildm.data.load_images` was given (a folder, a hub name or ``toyfaces``).
        kind: ``folder``, ``hub`` or ``toyfaces``.
        train, held_out: the prepared images.
        why: for toy faces, why no real faces were used; else None.
    """

    dataset: str
    kind: str
    train: ImageDataset
    held_out: ImageDataset
    why: str | None = None

    @property
    def name(self) -> str:
        """A short name for run folders and titles: ``celeba``, ``celeba-hq`` or ``toyfaces``."""
        return {"folder": "celeba", "hub": HUB_FACES}.get(self.kind, "toyfaces")

    @property
    def source(self) -> str:
        """Where the faces came from, as printed: a folder without the machine's own path
        (:func:`minildm.config.display_path`), else the hub name or ``toyfaces``."""
        return display_path(self.dataset) if self.kind == "folder" else self.dataset

    def description(self) -> dict:
        """The training data as a run folder's ``data`` records it (see ``minildm train-ae``)."""
        return {"dataset": self.dataset, "resolution": self.train.resolution, "start": 0,
                "n": len(self.train), "split": "train", "seed": 0}


def _missing_folder() -> str:
    value = os.environ.get(CELEBA_DIR_ENV)
    return f"{CELEBA_DIR_ENV} names no folder ({value})" if value else f"{CELEBA_DIR_ENV} is not set"


def resolve_faces() -> tuple[str, str | None]:
    """The first real-face source that can be reached, as a ``dataset`` for ``load_images``,
    and why there is none (then the dataset is ``toyfaces``). Downloads nothing."""
    folder = celeba_dir()
    if folder is not None:
        return str(folder), None
    try:
        sources.check_hub_reachable(HUB_DATASETS[HUB_FACES][0])
    except DataError as error:
        return "toyfaces", f"{_missing_folder()}, and {error}"
    return HUB_FACES, None


def load_faces(resolution: int, n: int, n_held_out: int, *, progress: bool = False,
               cache_dir: str | Path | None = None) -> Faces:
    """Training and held-out faces from the first source that works (see the module's order).

    A source that is found but fails while loading (a damaged folder, the hub dropping the
    connection) falls through to the next one; toy faces come with one printed line saying why.
    """
    folder = celeba_dir()
    candidates = [(str(folder), "folder")] if folder is not None else []
    reasons = [] if folder is not None else [_missing_folder()]
    for dataset, kind in [*candidates, (HUB_FACES, "hub")]:
        try:
            train = load_images(dataset, resolution, min(n, HELD_OUT_START), progress=progress, cache_dir=cache_dir)
            held_out = load_images(dataset, resolution, n_held_out, start=HELD_OUT_START, progress=progress,
                                   cache_dir=cache_dir)
            return Faces(dataset, kind, train, held_out)
        except DataError as error:
            reasons.append(str(error) if kind == "hub" else f"{dataset} could not be read: {error}")
    why = "; ".join(reasons)
    print(f"using toy faces: {why}")
    return toy_faces(resolution, n, n_held_out, progress=progress, cache_dir=cache_dir, why=why)


def toy_faces(resolution: int, n: int, n_held_out: int, *, progress: bool = False,
              cache_dir: str | Path | None = None, why: str | None = None) -> Faces:
    """``n`` toy faces for training and the ``n_held_out`` after them."""
    train = load_images("toyfaces", resolution, n, progress=progress, cache_dir=cache_dir)
    held_out = load_images("toyfaces", resolution, n_held_out, start=n, progress=progress, cache_dir=cache_dir)
    return Faces("toyfaces", "toyfaces", train, held_out, why=why)


def course_faces(profile) -> Faces:
    """The faces a profile's notebooks train on: toy faces for ``tiny`` and ``cpu``; real faces
    (:func:`load_faces`) for a profile whose data set is CelebA-HQ, such as ``gpu``."""
    if profile.dataset == "toyfaces":
        return toy_faces(profile.resolution, profile.n_images, profile.n_holdout)
    return load_faces(profile.resolution, profile.n_images, profile.n_holdout)


def default_dataset(profile) -> str:
    """The data set a command reads when ``--dataset`` is not given: the profile's, with
    CelebA-HQ resolved as :func:`resolve_faces` does. Only the teaching ``gpu`` profile falls
    back to toy faces (with one printed line); a one-GPU recipe stops instead, because toy
    faces would waste its days of training."""
    if profile.dataset != HUB_FACES:
        return profile.dataset
    dataset, why = resolve_faces()
    if why is not None and profile.name != "gpu":
        raise DataError(f"no CelebA-HQ for the {profile.name!r} recipe ({why}): name a data set with --dataset")
    if why is not None:
        print(f"using toy faces: {why}")
    return dataset
