"""Checkpoints: safetensors files written atomically, never unpickled.

A training checkpoint is one safetensors file: the tensors of every model, optimiser
state and random-number generator, with the rest (step, hyperparameters, loss history)
as JSON in the file's metadata. One file means one atomic rename, so a crash while
saving leaves the previous checkpoint whole. Every file is stamped with the minildm version
and file format that wrote it; a file without the stamp (minildm did not write it) or from a
newer format is refused in one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from minildm import __version__
from minildm.config import MinildmError, shown


FILE_FORMAT = 1  # raised when a file of this minildm could not be read by an older one
WRITER = f"minildm {__version__}, file format {FILE_FORMAT}"


class CheckpointError(MinildmError):
    """A checkpoint that is missing, damaged, made for another configuration or by a newer minildm."""


class UnrecordedData(CheckpointError):
    """A run folder that does not record the data it was trained on (a run trained from Python)."""


def save_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write tensors (and JSON-able metadata) to ``path`` via a temporary file and a rename."""
    with atomic_write(path) as temporary:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temporary),
                  metadata=stamped_metadata(metadata))
    return Path(path)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temporary name next to ``path`` for the block to write to; after the block the file is
    synced to disk and renamed to ``path``. An error in the block deletes the temporary and leaves
    ``path`` as it was: a crash never leaves half a file under that name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~current_umask())  # as open() makes files: readable by the group, if the umask says
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())  # on disk before the rename, so a power cut cannot leave half
        os.replace(temporary, path)
    except OSError as error:  # a full disk, a folder that became read-only: the old file stays whole
        raise CheckpointError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        temporary.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's umask (set and put back: the system only reports it by replacing it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold a lock on ``path`` (a file ``.NAME.lock`` beside it) for the block, so that two
    processes that would both make ``path`` (two notebooks, two test workers) make it once: the
    second waits, then finds it made. Where the system has no ``fcntl`` (Windows) it does nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield


def stamped_metadata(metadata: dict | None) -> dict[str, str]:
    """Metadata as a safetensors header holds it, one JSON text per key, with the ``written_by``
    stamp that :func:`load` checks."""
    text_metadata = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    text_metadata["written_by"] = json.dumps({"minildm": __version__, "format": FILE_FORMAT})
    return text_metadata


def temporary_path(path: Path, part: str = "") -> Path:
    """``.NAME.PID.tmp`` (or ``.NAME.PART.PID.tmp``) next to ``path``: the name of a file on its
    way to becoming ``path``, which :func:`remove_stale_temporaries` deletes once its process is gone."""
    return path.with_name(f".{path.name}.{part + '.' if part else ''}{os.getpid()}.tmp")


def remove_stale_temporaries(path: Path) -> None:
    """Delete half-written temporaries of ``path`` left by processes that were killed
    (``kill -9``, the OOM killer): their process id is no longer running."""
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        pid = temporary.name.removesuffix(".tmp").rsplit(".", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            temporary.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and metadata written by :func:`save_atomic`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
    except (SafetensorError, OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is damaged ({error})") from None
    if "written_by" not in metadata:
        raise CheckpointError(f"{path} has no written_by stamp: minildm did not write it")
    writer = metadata.pop("written_by")
    if not isinstance(writer, dict) or not isinstance(writer.get("format"), int):
        raise CheckpointError(f"{path} is damaged (its written_by stamp is {writer!r})")
    if writer["format"] > FILE_FORMAT:
        raise CheckpointError(f"{path} was written by minildm {writer.get('minildm')} in file format "
                              f"{writer['format']}; this is {WRITER}: upgrade minildm to read it")
    return tensors, metadata


def read_run_config(run_dir: Path, stage: str, kind: str, keys: tuple[str, ...]) -> dict:
    """A run folder's ``config.json``, refused in one line when it is missing, belongs to
    another stage, or has other top-level ``keys`` than a run of this stage writes; ``kind``
    names what the stage trains, e.g. "an autoencoder"."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not {kind} run folder (no config.json)")
    run_config = _read_json(config_path)
    if run_config.get("stage") != stage:
        raise CheckpointError(f"{run_dir} holds a {shown(run_config.get('stage'))} run, not {kind}")
    unknown = sorted(set(run_config) - set(keys))
    missing = [key for key in keys if key not in run_config]
    if unknown or missing:
        problem = f"unknown key {shown(unknown[0])}" if unknown else f"missing key {missing[0]!r}"
        raise CheckpointError(f"{config_path} does not describe {kind} this version can read: {problem}")
    return run_config


TRAINING_DATA = {  # what ``data`` in a run folder's config.json holds: a string, or a whole number's bounds
    "dataset": str, "resolution": (8, 1024), "start": (0, None), "n": (1, None), "split": str, "seed": (0, None)}


def read_training_data(run_dir: Path) -> dict:
    """What a run folder was trained on (``data`` in its ``config.json``: dataset, resolution,
    start, n, split, seed), as the command line records it; each value is checked against
    :data:`TRAINING_DATA`, a wrong one refused in one line that names it."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json)")
    seen = _read_json(config_path).get("data", {})
    if not isinstance(seen, dict):
        raise CheckpointError(f"{config_path}: data must be a JSON object, got {shown(seen)}")
    if "dataset" not in seen:
        raise UnrecordedData(f"{run_dir} does not record the data it was trained on (a run trained from Python "
                             f"without data_description, as the notebooks do); train it with the command line")
    _check_training_data(seen, config_path)
    return seen


def _check_training_data(seen: dict, config_path: Path) -> None:
    """Refuse a ``data`` section with other keys than :data:`TRAINING_DATA`, or a value of
    another type or below its least value, in one line that names it."""
    unknown = sorted(set(seen) - set(TRAINING_DATA))
    missing = [key for key in TRAINING_DATA if key not in seen]
    if unknown or missing:
        problem = f"an unknown key {shown(unknown[0])}" if unknown else f"no key {missing[0]!r}"
        raise CheckpointError(f"{config_path}: data has {problem}")
    for key, expected in TRAINING_DATA.items():
        value = seen[key]
        if expected is str and not isinstance(value, str):
            raise CheckpointError(f"{config_path}: data.{key} must be a string, got {shown(value)}")
        if expected is not str and not _whole_number_within(value, *expected):
            least, most = expected
            bounds = f"of {least} or more" if most is None else f"from {least} to {most}"
            raise CheckpointError(f"{config_path}: data.{key} must be a whole number {bounds}, got {shown(value)}")


def _whole_number_within(value, least: int, most: int | None) -> bool:
    """Whether ``value`` is an int (a bool is not) from ``least`` to ``most`` (None: no bound)."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= least
            and (most is None or value <= most))


def write_run_config(run_dir: Path, run_config: dict) -> None:
    """Write ``config.json`` into a new run folder; in an existing one, refuse a different
    configuration rather than resume it."""
    path = run_dir / "config.json"
    if path.exists():
        saved, recorded = _read_json(path), json.loads(json.dumps(run_config))  # as JSON would store it
        if saved != recorded:
            changed = sorted(k for k in {*saved, *recorded} if k not in saved or k not in recorded
                             or saved[k] != recorded[k])
            raise CheckpointError(f"{run_dir} holds a run with another configuration "
                                  f"(differs in: {', '.join(changed)}); choose another --out or delete it")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)  # one per process: every rank under torchrun writes it at once
    temporary.write_text(json.dumps(run_config, indent=2))
    temporary.replace(path)


def _read_json(path: Path) -> dict:
    """A JSON file that must hold an object, refused in one line when it does not or cannot be read."""
    try:
        values = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{path} is damaged ({error})") from None
    except RecursionError:  # lists or objects nested thousands deep
        raise CheckpointError(f"{path} is damaged (nested too deeply to read)") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} is damaged (not a JSON object)")
    return values


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": value for name, value in tensors.items()}


def strip_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict, explaining a mismatch in one line instead of a wall of keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)} there but "
                  f"{tuple(expected[wrong[0]].shape)} here" if wrong else
                  f"{len(missing)} weights missing, {len(unexpected)} unexpected, "
                  f"e.g. {(missing or unexpected)[0]}")
        raise CheckpointError(f"{source} was made with a different configuration: {detail}")
    module.load_state_dict(tensors)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state into tensors and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           rest: dict) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_training_state(path: Path, *, modules: dict[str, torch.nn.Module], averages: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], metadata: dict) -> Path:
    """Everything a run needs to resume exactly, in one file: the weights of ``modules``,
    their moving ``averages`` (EMA), the optimisers' states and the random-number generators'
    states as tensors; ``metadata`` (step, history, ...) and the optimisers' scalars as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    optimizer_rest = {}
    for name, module in modules.items():
        tensors.update(with_prefix(f"model.{name}", module.state_dict()))
    for name, module in averages.items():
        tensors.update(with_prefix(f"ema.{name}", module.state_dict()))
    for name, optimizer in optimizers.items():
        state, optimizer_rest[name] = optimizer_to_tensors(optimizer)
        tensors.update(with_prefix(f"optimizer.{name}", state))
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return save_atomic(tensors, path, {**metadata, "optimizers": optimizer_rest})


def load_training_state(path: Path, *, modules: dict[str, torch.nn.Module], averages: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer]) -> dict:
    """Inverse of :func:`save_training_state`: load every state in place (the random-number
    generators included) and return the metadata."""
    tensors, metadata = load(path)
    for prefix, group in (("model", modules), ("ema", averages)):
        for name, module in group.items():
            load_weights(module, strip_prefix(f"{prefix}.{name}", tensors), str(path))
    for name, optimizer in optimizers.items():
        optimizer_from_tensors(optimizer, strip_prefix(f"optimizer.{name}", tensors), metadata["optimizers"][name])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return metadata
