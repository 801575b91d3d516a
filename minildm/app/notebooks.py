"""The first code cell of every notebook: it makes ``import minildm`` work wherever the
notebook is opened (README, "Colab and JupyterLab").

Its one source is :file:`minildm/app/first_cell.py`, a plain script. The cell is that script with the
repository to clone written in; the repository is named once, in ``pyproject.toml``
(``[project.urls] Repository``). An instructor's fork changes that line and runs
``python -m minildm course setup-cells``, which rewrites the cell in every notebook.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from minildm.config import MinildmError

SETUP_CELL = Path(__file__).with_name("first_cell.py")
SETUP_TAG = "setup"  # the cell's tag, so that it is found again after notebooks are edited
REPOSITORY_LINE = re.compile(r'^REPOSITORY = "[^"]*"', flags=re.MULTILINE)


def repository_url(root: Path) -> str:
    """``[project.urls] Repository`` of the checkout at ``root``."""
    import tomllib

    try:
        return tomllib.loads((root / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise MinildmError(f"cannot read [project.urls] Repository from {root / 'pyproject.toml'}: {error}") from None


def set_repository(root: Path, repository: str) -> list[Path]:
    """Name ``repository`` in the checkout's ``pyproject.toml`` and rewrite every setup cell for
    it (a student copy published as the course's own repository); returns the notebooks changed."""
    pyproject = root / "pyproject.toml"
    text, count = re.subn(r'^Repository = "[^"]*"', f'Repository = "{repository}"', pyproject.read_text(),
                          count=1, flags=re.MULTILINE)
    if count != 1:
        raise MinildmError(f"{pyproject} has no [project.urls] Repository line to change")
    pyproject.write_text(text)
    return write_setup_cells(root)


def setup_cell_source(repository: str) -> str:
    """The setup cell's code, cloning ``repository`` on a fresh Colab runtime."""
    return REPOSITORY_LINE.sub(f'REPOSITORY = "{repository}"', SETUP_CELL.read_text(), count=1).rstrip("\n")


def find_setup_cell(notebook: nbformat.NotebookNode) -> int | None:
    """The index of the notebook's setup cell, if it has one."""
    for index, cell in enumerate(notebook.cells):
        if SETUP_TAG in cell.metadata.get("tags", []):
            return index
    return None


def write_setup_cells(root: Path) -> list[Path]:
    """Put the setup cell, for the repository in ``pyproject.toml``, right after the title of
    every notebook in ``root/notebooks`` (replacing an older one); return the notebooks changed."""
    source = setup_cell_source(repository_url(root))
    changed = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        index = find_setup_cell(notebook)
        if index is not None and notebook.cells[index].source == source:
            continue
        if index is None:
            cell = nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_TAG]}, id=f"setup-{path.stem[:2]}")
            notebook.cells.insert(1, cell)
        else:
            notebook.cells[index].source = source
        nbformat.write(notebook, path)
        changed.append(path)
    return changed
