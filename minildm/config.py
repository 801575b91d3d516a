"""Profiles: one switch that sizes every experiment in the course.

The same notebooks and commands run on three kinds of machine:

- ``tiny``: continuous integration and ``pytest --nbval``; toy faces at 32 px, small
  models, a few steps, about a minute per notebook on 2 CPU cores.
- ``cpu``: a laptop without a GPU; results a person would call good in minutes.
- ``gpu``: one GPU; real faces (CelebA-HQ) at 64 px, the paper's recipes scaled down.
- ``celebahq256`` and ``churches256``: one-GPU recipes for the paper's CelebA-HQ (LDM-4) and
  LSUN churches (LDM-8) models at 256 px; README's "Training on one GPU" gives the commands.

The profile is chosen by ``--profile`` on the command line or the ``MINILDM_PROFILE``
environment variable; without either, ``gpu`` when CUDA is available, else ``cpu``.

This module also says where data and run folders go (:func:`data_dir`, :func:`runs_dir`) and
holds :class:`SavedConfig`, the base of every configuration a run folder's ``config.json`` keeps.
"""

from __future__ import annotations

import math
import os
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

PROFILE_ENV = "MINILDM_PROFILE"
DATA_DIR_ENV = "MINILDM_DATA_DIR"
CELEBA_DIR_ENV = "MINILDM_CELEBA_DIR"
RUNS_DIR_ENV = "MINILDM_RUNS_DIR"
C = typing.TypeVar("C", bound="SavedConfig")


class MinildmError(Exception):
    """An error caused by the user's input; the command line prints it as one line."""


@dataclass(frozen=True)
class AutoencoderPreset:
    """How big an autoencoder each profile trains, and for how long (stage 1).

    Attributes:
        base_channels: channels at full resolution (the paper: 128).
        res_blocks: ResBlocks per level (the paper: 2).
        attention: self-attention in the middle blocks.
        steps, batch_size, learning_rate: the optimisation (Adam, betas (0.5, 0.9)).
        disc_start: step at which the patch GAN switches on (beyond ``steps``: never).
        codebook_size: entries of the VQ codebook (the paper's VQ-f4: 8192).
        perceptual: whether stage 1 trains with the perceptual term (LPIPS,
            :func:`minildm.perceptual.perceptual_for`). ``tiny`` and ``cpu`` leave it out: on two CPU
            cores it makes each step 5 to 8 times slower (docs/measurements.md).
        l2_weight: weight of a squared-error term in the reconstruction loss (the paper: none;
            see :class:`minildm.losses.LossConfig`).
    """

    base_channels: int
    res_blocks: int
    attention: bool
    steps: int
    batch_size: int
    learning_rate: float
    disc_start: int
    codebook_size: int
    perceptual: bool
    l2_weight: float = 0.0


@dataclass(frozen=True)
class LDMPreset:
    """How big a UNet each profile trains in latent space, and for how long (stage 2).

    Attributes:
        base_channels, channel_mult, res_blocks, attention_levels: the UNet
            (:class:`minildm.unet.UNetConfig`; the paper's CelebA-HQ model: 224, (1, 2, 3, 4),
            2, attention at 32, 16 and 8 px).
        cross_attention_levels: the attention levels of a model conditioned through
            cross-attention (more of them: each is a place where the UNet reads the condition).
        steps, batch_size, learning_rate: the optimisation (AdamW, warm-up then cosine decay).
        ema_decay: decay of the weights' moving average used for sampling (the paper: 0.9999).
        prediction: what the UNet predicts: ``eps`` (the paper) or ``v``. Short CPU runs use
            ``v``: an eps-model's estimate of the clean latent at the noisiest steps multiplies
            its error by 1/sqrt(abar) (about 80), and DDIM then drifts off the data.
        min_snr_gamma: weight the loss by the min-SNR-gamma rule (Hang et al. 2023;
            :class:`minildm.diffusion.DiffusionConfig`), or None for the paper's unweighted
            loss. Short CPU runs use 5: at 1,400 steps it more than halves the toy-face KID
            (docs/measurements.md, "Where the demo loses quality").
    """

    base_channels: int
    channel_mult: tuple[int, ...]
    res_blocks: int
    attention_levels: tuple[int, ...]
    cross_attention_levels: tuple[int, ...]
    steps: int
    batch_size: int
    learning_rate: float
    ema_decay: float
    prediction: str
    min_snr_gamma: float | None = None


@dataclass(frozen=True)
class Profile:
    """Sizes for one kind of machine.

    Attributes:
        name: ``tiny``, ``cpu``, ``gpu`` or a one-GPU recipe.
        dataset: the data set used when none is named.
        resolution: image side in pixels.
        n_images: how many training images to prepare.
        n_holdout: how many held-out images to prepare for evaluation.
        fid_images: samples and held-out images for FID/KID in ``evaluate`` and the notebooks
            (the demo uses a third); the Inception network scores ~3 images/s on a 2-core CPU.
        device: ``cuda`` or ``cpu``.
        autoencoder: the autoencoder's size and training (stage 1).
        ldm: the UNet's size and training (stage 2).
        demo_autoencoder_steps: autoencoder steps in ``minildm demo`` (shorter than stage 1's).
    """

    name: str
    dataset: str
    resolution: int
    n_images: int
    n_holdout: int
    fid_images: int
    device: str
    autoencoder: AutoencoderPreset
    ldm: LDMPreset
    demo_autoencoder_steps: int


# Parameter counts are those of a KL autoencoder (f = 4; churches256: f = 8) and of the
# unconditional UNet on its 4-channel latents.
PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny", dataset="toyfaces", resolution=32, n_images=512, n_holdout=128, fid_images=16, device="cpu",
        autoencoder=AutoencoderPreset(  # 0.65 M parameters
            base_channels=16, res_blocks=1, attention=False, steps=20, batch_size=8, learning_rate=2e-3,
            disc_start=10, codebook_size=64, perceptual=False, l2_weight=4.0),
        ldm=LDMPreset(  # 0.76 M parameters
            base_channels=32, channel_mult=(1, 2), res_blocks=1, attention_levels=(1,), cross_attention_levels=(1,),
            steps=30, batch_size=16, learning_rate=1e-3, ema_decay=0.9, prediction="v"),
        demo_autoencoder_steps=20),
    "cpu": Profile(
        name="cpu", dataset="toyfaces", resolution=32, n_images=10_000, n_holdout=1_000, fid_images=200, device="cpu",
        autoencoder=AutoencoderPreset(  # 0.65 M parameters
            base_channels=16, res_blocks=1, attention=False, steps=2200, batch_size=16, learning_rate=2e-3,
            disc_start=10**9, codebook_size=1024, perceptual=False, l2_weight=4.0),
        ldm=LDMPreset(  # 1.19 M parameters
            base_channels=32, channel_mult=(1, 2, 2), res_blocks=1, attention_levels=(2,),
            cross_attention_levels=(1, 2), steps=1400, batch_size=128, learning_rate=1e-3, ema_decay=0.999,
            prediction="v", min_snr_gamma=5.0),
        demo_autoencoder_steps=2200),
    "gpu": Profile(
        # real faces (minildm.data.faces: MINILDM_CELEBA_DIR, else the hub, else toy faces);
        # both real sources hold the held-out photos from 7,000 on
        name="gpu", dataset="celeba-hq", resolution=64, n_images=7_000, n_holdout=1_000, fid_images=1000,
        device="cuda",
        autoencoder=AutoencoderPreset(  # 55 M parameters
            base_channels=128, res_blocks=2, attention=True, steps=50_000, batch_size=16, learning_rate=4.5e-5,
            disc_start=25_000, codebook_size=8192, perceptual=True),
        ldm=LDMPreset(  # 93 M parameters
            base_channels=128, channel_mult=(1, 2, 3, 4), res_blocks=2, attention_levels=(1, 2, 3),
            cross_attention_levels=(1, 2, 3), steps=100_000, batch_size=64, learning_rate=1e-4, ema_decay=0.9999,
            prediction="eps"),
        demo_autoencoder_steps=20_000),
    # One-GPU recipes after the paper's 256 px models (Table 1), scaled to one GPU and days, not weeks:
    # CelebA-HQ with LDM-4 (train-ae --factor 4) and LSUN churches with LDM-8 (train-ae --factor 8).
    "celebahq256": Profile(
        name="celebahq256", dataset="celeba-hq", resolution=256, n_images=26_000, n_holdout=2_000, fid_images=5000,
        device="cuda",
        autoencoder=AutoencoderPreset(  # 55 M parameters
            base_channels=128, res_blocks=2, attention=True, steps=60_000, batch_size=12, learning_rate=4.5e-5,
            disc_start=30_000, codebook_size=8192, perceptual=True),
        ldm=LDMPreset(  # 210 M parameters
            base_channels=192, channel_mult=(1, 2, 3, 4), res_blocks=2, attention_levels=(1, 2, 3),
            cross_attention_levels=(1, 2, 3), steps=150_000, batch_size=48, learning_rate=9.6e-5, ema_decay=0.9999,
            prediction="eps"),
        demo_autoencoder_steps=20_000),
    "churches256": Profile(
        name="churches256", dataset="lsun-churches", resolution=256, n_images=50_000, n_holdout=2_000,
        fid_images=5000, device="cuda",
        autoencoder=AutoencoderPreset(  # 84 M parameters at f = 8
            base_channels=128, res_blocks=2, attention=True, steps=60_000, batch_size=12, learning_rate=4.5e-5,
            disc_start=30_000, codebook_size=8192, perceptual=True),
        ldm=LDMPreset(  # 178 M parameters
            base_channels=192, channel_mult=(1, 2, 2, 4), res_blocks=2, attention_levels=(0, 1, 2, 3),
            cross_attention_levels=(0, 1, 2, 3), steps=150_000, batch_size=64, learning_rate=5e-5, ema_decay=0.9999,
            prediction="eps"),
        demo_autoencoder_steps=20_000),
}


def default_profile_name() -> str:
    """``MINILDM_PROFILE`` if set, else ``gpu`` when CUDA is available, else ``cpu``."""
    name = os.environ.get(PROFILE_ENV, "").strip()
    if name:
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name`` (default: :func:`default_profile_name`)."""
    name = name or default_profile_name()
    if name not in PROFILES:
        raise MinildmError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise MinildmError(f"profile {name!r} needs CUDA, and no GPU is visible: use --profile cpu")
    return profile


def checkout_root() -> Path | None:
    """The repository when minildm runs from a checkout (an editable install), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def data_dir() -> Path:
    """Where prepared data, weights and the judge are cached: ``MINILDM_DATA_DIR``, else the
    checkout's ``data/``, else (an installed package) the user's cache folder,
    ``$XDG_CACHE_HOME/minildm`` or ``~/.cache/minildm``. A leading ``~`` is the home folder."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    root = checkout_root()
    if root is not None:
        return root / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minildm"


def celeba_dir() -> Path | None:
    """The local CelebA folder named by ``MINILDM_CELEBA_DIR``, if it exists."""
    path = os.environ.get(CELEBA_DIR_ENV)
    return Path(path) if path and Path(path).is_dir() else None


def runs_dir() -> Path:
    """Where notebooks keep their run folders: ``MINILDM_RUNS_DIR``, else the checkout's
    ``runs/``, else (an installed package) ``runs/`` in the working directory."""
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    root = checkout_root()
    return root / "runs" if root is not None else Path.cwd() / "runs"


def display_path(path: str | Path) -> str:
    """``path`` as printed in notebooks and logs, without the machine's own folders: relative
    to the checkout (``runs/cpu/ae``), else as the environment variable that names it
    (``$MINILDM_CELEBA_DIR/images``), else with the home folder as ``~``."""
    path = Path(path).expanduser().absolute()
    named = [(f"${name}", os.environ.get(name)) for name in (RUNS_DIR_ENV, DATA_DIR_ENV, CELEBA_DIR_ENV)]
    for label, place in [("", checkout_root()), *named, ("~", Path.home())]:
        if not place:
            continue
        place = Path(place).expanduser().absolute()
        if path.is_relative_to(place):
            inside = path.relative_to(place).as_posix()
            return "/".join(part for part in (label, inside) if part not in ("", ".")) or "."
    return str(path)


class SavedConfig:
    """Base of the configuration dataclasses that a run folder's ``config.json`` holds:
    ``to_dict`` gives JSON-able values, ``from_dict`` builds the config back and checks it."""

    def to_dict(self) -> dict:
        values = asdict(self)
        for name in values:  # nested configs by their own to_dict
            if isinstance(getattr(self, name), SavedConfig):
                values[name] = getattr(self, name).to_dict()
        return values

    @classmethod
    def from_dict(cls: type[C], values: dict, where: str | None = None) -> C:
        """Build from ``to_dict``'s output (read back from JSON), checking every value at every
        depth against the field's type (:func:`saved_value`). A wrong type, an unknown or a missing
        key, or a value the config refuses raises a ValueError that names its path, e.g.
        ``autoencoder.factor``; ``where`` names the section (default: the class)."""
        return saved_value(values, cls, where or cls.__name__)


def saved_value(value, hint, where: str):
    """``value``, read back from JSON, as the annotation ``hint`` asks: a SavedConfig from a JSON
    object, a tuple or list from a JSON list, None where the hint is optional; int, float, str and
    bool checked (a bool is no number, a float is finite, a whole number is 0 or more: each counts
    or sizes something). Else a ValueError naming ``where``."""
    arguments = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, SavedConfig):
        return _saved_config(value, hint, where)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        (hint,) = [argument for argument in arguments if argument is not type(None)]
        return saved_value(value, hint, where)
    if typing.get_origin(hint) in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {shown(value)}")
        items = [saved_value(item, arguments[0], f"{where}[{index}]") for index, item in enumerate(value)]
        return typing.get_origin(hint)(items)
    expected, fits = _SCALARS[hint]
    if not fits(value):
        raise ValueError(f"{where} must be {expected}, got {shown(value)}")
    return float(value) if hint is float else value


def _saved_config(values, cls: type[C], where: str) -> C:
    """A SavedConfig from a JSON object with exactly its fields; what its ``__post_init__``
    refuses is reported under ``where``."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a JSON object, got {shown(values)}")
    names = [field.name for field in fields(cls)]
    unknown = sorted(set(values) - set(names))
    missing = [name for name in names if name not in values]
    if unknown or missing:
        problem = f"unknown key {shown(unknown[0])}" if unknown else f"missing key {missing[0]!r}"
        raise ValueError(f"{problem} in {where}")
    hints = typing.get_type_hints(cls)
    built = {name: saved_value(values[name], hints[name], f"{where}.{name}") for name in names}
    try:
        return cls(**built)
    except (ValueError, MinildmError) as error:
        raise ValueError(f"{where}: {error}") from None


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


_SCALARS = {  # a JSON value's type: (what the message says, the check)
    bool: ("true or false", lambda value: isinstance(value, bool)),
    int: ("a whole number of 0 or more", lambda value: isinstance(value, int) and not isinstance(value, bool)
          and value >= 0),
    float: ("a finite number",
            lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)),
    str: ("a string", lambda value: isinstance(value, str)),
}
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 3, 3, 40, 40


def shown(value) -> str:
    """``value`` for a one-line message: its repr, cut short (a long string, a deeply nested list)."""
    return _SHORT.repr(value)
