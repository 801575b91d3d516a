"""Paths as notebooks and logs print them (minildm.config.display_path), and committed notebook
outputs that name no folder of the machine they ran on."""

import json
import re
from pathlib import Path

import pytest

from minildm.config import CELEBA_DIR_ENV, checkout_root, display_path

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# an absolute path two folders deep, after a space, a quote, a bracket or the line's start
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=])/[\w.-]+/[\w.-]+", re.MULTILINE)


def test_paths_are_shown_relative_to_the_checkout_the_variable_or_home(tmp_path, monkeypatch):
    monkeypatch.setenv(CELEBA_DIR_ENV, str(tmp_path / "faces"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert display_path(checkout_root() / "runs" / "cpu" / "ae") == "runs/cpu/ae"
    assert display_path(checkout_root()) == "."
    assert display_path(tmp_path / "faces" / "images" / "1.jpg") == f"${CELEBA_DIR_ENV}/images/1.jpg"
    assert display_path(tmp_path / "faces") == f"${CELEBA_DIR_ENV}"
    assert display_path(tmp_path / "home" / "x.png") == "~/x.png"
    assert display_path(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")


def test_a_sibling_folder_whose_name_starts_like_the_variables_is_not_inside_it(tmp_path, monkeypatch):
    monkeypatch.setenv(CELEBA_DIR_ENV, str(tmp_path / "faces"))
    assert display_path(tmp_path / "faces2" / "a.jpg") == str(tmp_path / "faces2" / "a.jpg")


def output_texts(path: Path):
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain") or ""
            yield index, "".join(text)


def test_the_pattern_finds_a_machine_path():
    assert ABSOLUTE_PATH.search("163 s: /home/student/minildm/runs/cpu/ae")
    assert ABSOLUTE_PATH.search("cached at '/tmp/x/y.safetensors'")
    assert not ABSOLUTE_PATH.search("163 s: runs/cpu/ae, 5,359 images/s, 1/2 of them")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_outputs_name_no_machine_folder(path):
    found = [(index, match.group(0).strip()) for index, text in output_texts(path)
             for match in ABSOLUTE_PATH.finditer(text)]
    assert not found, f"{path.name}: absolute paths in outputs (cell, path): {found[:5]}"
