"""The notebooks' prose points at sections that exist: "notebook 01, section 7", "section 3 of
notebook 05" and, within a notebook, "section 4" must each name a numbered heading ("## 4. ...")
of that notebook. Renumbering a notebook's sections then fails here, not in a reader's hands."""

import copy
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
HEADING = re.compile(r"^## (\d+)\.", flags=re.MULTILINE)
ACROSS = re.compile(r"[Nn]otebook (\d\d)(?:'s)?,? [Ss]ections? (\d+)|[Ss]ections? (\d+) of notebook (\d\d)")
WITHIN = re.compile(r"\b[Ss]ections? (\d+)(?:[–-](\d+))?\b")
PAPER = re.compile(r"Sec\.|paper|App\.|Table|Fig\.")  # "the paper's section 3" is not one of ours


def read_notebooks(folder: Path = NOTEBOOKS) -> dict[str, nbformat.NotebookNode]:
    return {path.name[:2]: nbformat.read(path, as_version=4) for path in sorted(folder.glob("*.ipynb"))}


def headings(notebook: nbformat.NotebookNode) -> set[int]:
    return {int(number) for cell in notebook.cells if cell.cell_type == "markdown"
            for number in HEADING.findall(cell.source)}


def broken_section_references(notebooks: dict[str, nbformat.NotebookNode]) -> list[str]:
    """Every section reference in the markdown that names no numbered heading, as
    ``"NN cell I: the reference"``."""
    sections = {name: headings(notebook) for name, notebook in notebooks.items()}
    broken = []
    for name, notebook in notebooks.items():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "markdown":
                continue
            for match in ACROSS.finditer(cell.source):
                target, number = (match[1], match[2]) if match[1] else (match[4], match[3])
                if int(number) not in sections.get(target, set()):
                    broken.append(f"{name} cell {index}: {match[0]}")
            own = ACROSS.sub("", cell.source)
            for match in WITHIN.finditer(own):
                context = own[max(0, match.start() - 40):match.start()]
                numbers = [int(n) for n in match.groups() if n]
                if not PAPER.search(context) and any(n not in sections[name] for n in numbers):
                    broken.append(f"{name} cell {index}: {match[0]}")
    return broken


def test_every_section_reference_names_a_heading_that_exists():
    assert broken_section_references(read_notebooks()) == []


@pytest.mark.parametrize("reference", ["notebook 01, section 12", "section 9 of notebook 10",
                                       "see section 42 below"])
def test_a_reference_to_a_missing_section_is_found(reference):
    notebooks = read_notebooks()
    doctored = copy.deepcopy(notebooks["04"])
    doctored.cells.append(nbformat.v4.new_markdown_cell(f"As {reference} shows."))
    found = broken_section_references({**notebooks, "04": doctored})
    assert found == [f"04 cell {len(doctored.cells) - 1}: {reference.removeprefix('see ').removesuffix(' below')}"]


def test_renumbering_a_heading_breaks_the_references_to_it():
    notebooks = read_notebooks()
    doctored = copy.deepcopy(notebooks["01"])
    for cell in doctored.cells:
        cell.source = cell.source.replace("## 7. ", "## 70. ")
    assert "04 cell 0: notebook 01, section 7" in broken_section_references({**notebooks, "01": doctored})
