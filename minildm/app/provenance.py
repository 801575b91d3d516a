"""Which profile, device and presets produced a notebook's committed outputs.

Every notebook's first code cell (:file:`minildm/app/first_cell.py`) prints :func:`setup_summary`:
the version, the profile and the device, then a short fingerprint of each preset, e.g.

    minildm 0.1.0 (torch 2.13.0); profile 'cpu' on CPU, 2 threads
    presets: data 5d41402a, autoencoder 7d793037, ldm 9e107d9d, judge e4d909c2

A fingerprint is the start of the SHA-256 of the preset's values, so it changes whenever a
preset does. :func:`stale_presets` compares the fingerprints a committed notebook recorded with
today's, for the presets that notebook uses (:data:`NOTEBOOK_PRESETS`): outputs computed under
an older preset cannot land unnoticed (``tests/test_provenance.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import nbformat
import torch

from minildm.config import PROFILES, Profile, default_profile_name
from minildm.evaluation.judge import JUDGE_SETTINGS
from minildm.app.notebooks import find_setup_cell

# The presets whose values each notebook's outputs depend on, by the notebook's number.
NOTEBOOK_PRESETS = {
    "00": ("data",),
    "01": ("data", "autoencoder"),
    "02": ("data", "autoencoder"),
    "03": ("data", "autoencoder"),  # the autoencoder of notebook 01
    "04": ("ldm",),
    "05": ("data", "autoencoder", "ldm"),
    "06": ("data", "autoencoder", "ldm"),
    "07": ("data", "autoencoder", "ldm", "judge"),
    "08": ("data", "autoencoder", "ldm", "judge"),
    "09": ("data", "autoencoder", "ldm", "judge"),
    "10": ("data", "autoencoder", "ldm"),  # the segmenter's settings are its own (its cache checks them)
}
SUMMARY = re.compile(r"profile '(?P<profile>[^']+)' on (?P<device>[^\n]+)\npresets: (?P<presets>[^\n]+)")


def fingerprint(values: dict) -> str:
    """Eight hex digits that change whenever ``values`` (JSON-able) do."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def preset_fingerprints(profile: Profile) -> dict[str, str]:
    """The fingerprint of each preset of ``profile``: the data it prepares, the autoencoder's
    and the UNet's sizes and training, and the toy-face judge's training settings. The demo's
    autoencoder steps are left out: no notebook uses them."""
    left_out = ("autoencoder", "ldm", "demo_autoencoder_steps")
    data = {key: value for key, value in asdict(profile).items() if key not in left_out}
    return {"data": fingerprint(data), "autoencoder": fingerprint(asdict(profile.autoencoder)),
            "ldm": fingerprint(asdict(profile.ldm)), "judge": fingerprint(JUDGE_SETTINGS)}


def setup_summary() -> str:
    """Two lines for a notebook's first cell: version, profile and device, then the presets."""
    from minildm import __version__

    name = default_profile_name()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    presets = ", ".join(f"{key} {value}" for key, value in preset_fingerprints(PROFILES[name]).items())
    return f"minildm {__version__} (torch {torch.__version__}); profile {name!r} on {device}\npresets: {presets}"


def recorded_run(path: Path) -> dict | None:
    """What a notebook's committed setup-cell output says: ``profile``, ``device`` and
    ``presets`` (name -> fingerprint); None if it records no presets."""
    notebook = nbformat.read(path, as_version=4)
    index = find_setup_cell(notebook)
    outputs = notebook.cells[index].get("outputs", []) if index is not None else []
    text = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
    match = SUMMARY.search(text)
    if match is None:
        return None
    presets = dict(item.split(" ", 1) for item in match["presets"].split(", "))
    return {"profile": match["profile"], "device": match["device"], "presets": presets}


def stale_presets(path: Path) -> list[str]:
    """The presets notebook ``path`` uses whose fingerprint differs from today's (or
    ``["no record"]`` when its outputs record none); empty when its outputs are current."""
    run = recorded_run(path)
    if run is None:
        return ["no record"]
    if run["profile"] not in PROFILES:
        return [f"unknown profile {run['profile']!r}"]
    today = preset_fingerprints(PROFILES[run["profile"]])
    used = NOTEBOOK_PRESETS.get(path.name[:2], tuple(today))
    return [name for name in used if run["presets"].get(name) != today[name]]
