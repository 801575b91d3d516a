"""Preset fingerprints in the notebooks' first output (minildm.app.provenance): outputs computed
under an older preset are found, on doctored copies of committed notebooks."""

import dataclasses
import shutil
from pathlib import Path

import nbformat
import pytest

from minildm.app import provenance
from minildm.config import PROFILES
from minildm.app.notebooks import find_setup_cell

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def with_setup_output(source: Path, target: Path, text: str) -> Path:
    """A copy of notebook ``source`` whose setup cell printed ``text``."""
    shutil.copy(source, target)
    notebook = nbformat.read(target, as_version=4)
    cell = notebook.cells[find_setup_cell(notebook)]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text + "\n")]
    nbformat.write(notebook, target)
    return target


def test_one_changed_preset_changes_its_fingerprint_only():
    cpu = PROFILES["cpu"]
    longer = dataclasses.replace(cpu, autoencoder=dataclasses.replace(cpu.autoencoder, steps=cpu.autoencoder.steps + 1))
    before, after = provenance.preset_fingerprints(cpu), provenance.preset_fingerprints(longer)
    assert [name for name in before if before[name] != after[name]] == ["autoencoder"]
    assert provenance.preset_fingerprints(PROFILES["tiny"])["data"] != before["data"]
    assert all(len(value) == 8 and int(value, 16) >= 0 for value in before.values())


def test_the_demos_steps_and_the_data_fingerprint_are_independent():
    cpu = PROFILES["cpu"]
    demo = dataclasses.replace(cpu, demo_autoencoder_steps=cpu.demo_autoencoder_steps + 1)
    more_images = dataclasses.replace(cpu, n_images=cpu.n_images + 1)
    before = provenance.preset_fingerprints(cpu)
    assert provenance.preset_fingerprints(demo) == before
    assert provenance.preset_fingerprints(more_images)["data"] != before["data"]


def test_a_current_record_passes_and_an_older_preset_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILDM_PROFILE", "cpu")
    source = NOTEBOOKS / "05_train_ldm.ipynb"
    current = with_setup_output(source, tmp_path / "05_current.ipynb", provenance.setup_summary())
    assert provenance.recorded_run(current)["profile"] == "cpu"
    assert provenance.stale_presets(current) == []

    cpu = PROFILES["cpu"]
    older = dataclasses.replace(cpu, autoencoder=dataclasses.replace(cpu.autoencoder, steps=cpu.autoencoder.steps // 2))
    monkeypatch.setitem(PROFILES, "cpu", older)  # the notebook is run under an older autoencoder preset
    doctored = with_setup_output(source, tmp_path / "05_doctored.ipynb", provenance.setup_summary())
    monkeypatch.setitem(PROFILES, "cpu", cpu)  # and checked against today's
    assert provenance.stale_presets(doctored) == ["autoencoder"]
    assert provenance.stale_presets(with_setup_output(NOTEBOOKS / "04_unet.ipynb", tmp_path / "04_doctored.ipynb",
                                                      provenance.setup_summary())) == []  # 04 uses the UNet's only


def test_a_notebook_without_a_record_or_with_an_unknown_profile_is_reported(tmp_path):
    source = NOTEBOOKS / "01_autoencoder_kl.ipynb"
    assert provenance.stale_presets(with_setup_output(source, tmp_path / "01.ipynb", "minildm 0.1.0")) == ["no record"]
    unknown = "minildm 0.1.0; profile 'huge' on CPU, 2 threads\npresets: data 00000000"
    assert provenance.stale_presets(with_setup_output(source, tmp_path / "01b.ipynb", unknown)) == [
        "unknown profile 'huge'"]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.name[:2])
def test_every_notebook_names_the_presets_it_uses(path):
    assert set(provenance.NOTEBOOK_PRESETS[path.name[:2]]) <= set(provenance.preset_fingerprints(PROFILES["cpu"]))


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.name[:2])
def test_committed_outputs_come_from_todays_presets(path):
    run = provenance.recorded_run(path)
    assert run is not None and run["profile"] == "cpu"  # committed outputs are a cpu run
    assert provenance.stale_presets(path) == []
