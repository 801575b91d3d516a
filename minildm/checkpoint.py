"""Checkpoints: safetensors files written atomically, never unpickled.

A training checkpoint is one safetensors file: the tensors of every model, optimiser
state and random-number generator, with the rest (step, hyperparameters, loss history)
as JSON in the file's metadata. One file means one atomic rename, so a crash while
saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from minildm.config import MinildmError


class CheckpointError(MinildmError):
    """A checkpoint that is missing, damaged or made for another configuration."""


def save_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write tensors (and JSON-able metadata) to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text_metadata = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temporary),
                  metadata=text_metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and metadata written by :func:`save_atomic`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is damaged ({error})") from None
    return tensors, metadata


def read_run_config(run_dir: Path, stage: str, kind: str) -> dict:
    """A run folder's ``config.json``, refused in one line when it is missing or belongs to
    another stage; ``kind`` names what the stage trains, e.g. "an autoencoder"."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not {kind} run folder (no config.json)")
    run_config = json.loads(config_path.read_text())
    if run_config.get("stage") != stage:
        raise CheckpointError(f"{run_dir} holds a {run_config.get('stage')!r} run, not {kind}")
    return run_config


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
