"""Prose that cannot drift from its outputs: every measured number in a notebook's markdown (a
decimal, a percentage or a ratio such as 12.2x) appears in an output of the same notebook, at
the precision the prose gives it, or sits in a sentence that names where it comes from: a paper
("et al.", "Table 5", "Fig. 7", "the paper"), the docs, or a figure's labels or legend, which no
text output holds. Naming another notebook is not a source: a number from another notebook's
run is read from that run's folder and printed here, so that it cannot go stale.
The exercise lists are left out: their expected answers are ranges for the student's own run."""

import copy
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NUMBER = re.compile(r"(?<![\w.,])[-−]?\d[\d,]*(?:\.\d+)?(?:%|x\b)|(?<![\w.,])[-−]?\d[\d,]*\.\d+")
OUTPUT_NUMBER = re.compile(r"[-−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
SOURCE = re.compile(r"et al\.|\bpaper|Table \d|Fig\. ?\d|docs/|README|& Salimans|"
                    r"\bSec\. \d|Ho 20\d\d|quoted|\blabels?\b|\blegend\b|Stable Diffusion")
SKIPPED = re.compile(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|https?://\S+|^#.*$", flags=re.DOTALL | re.MULTILINE)
# a table belongs to the sentence before it, which names its source
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*(])|\n\s*\n(?!\|)|\n(?=\s*(?:[-*]|\d+\.)\s)")


def plain(number: str) -> str:
    return number.replace(",", "").replace("−", "-").rstrip("%x")


def decimals(number: str) -> int:
    return len(number.split(".")[1]) if "." in number else 0


def output_text(notebook: nbformat.NotebookNode) -> str:
    """Every text output of the notebook's cells, joined."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            texts += ["".join(text) for text in (output.get("text"), data.get("text/plain"), data.get("text/markdown"))
                      if text]
    return "\n".join(texts)


def shown(number: str, printed: list[float]) -> bool:
    """Whether ``number`` (as the prose writes it) is an output value at the prose's precision;
    a percentage may also be a printed fraction (58% for 0.58 or 0.583)."""
    value, places = float(plain(number)), decimals(plain(number))
    candidates = [(value, places)]
    if number.endswith("%"):
        candidates.append((value / 100, places + 2))
    return any(abs(round(output, digits) - target) < 10 ** -(digits + 6)
               for target, digits in candidates for output in printed)


def unshown_numbers(notebook: nbformat.NotebookNode) -> list[str]:
    """Each measured number of the markdown that no output shows and no source is named for,
    as ``"cell I: number in '...sentence...'"``."""
    text = output_text(notebook)
    printed = [float(plain(found)) for found in OUTPUT_NUMBER.findall(text) if plain(found) not in ("", "-")]
    missing = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown" or cell.source.lstrip().startswith("## Exercises"):
            continue
        for sentence in SENTENCE_END.split(cell.source):
            if SOURCE.search(sentence):
                continue
            missing += [f"cell {index}: {number} in {sentence.strip()[:90]!r}"
                        for number in NUMBER.findall(SKIPPED.sub(" ", sentence)) if not shown(number, printed)]
    return missing


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.stem)
def test_every_number_in_the_prose_is_an_output_or_names_its_source(path):
    assert unshown_numbers(nbformat.read(path, as_version=4)) == []


def notebook_with(output: str, prose: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print(...)")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
    notebook.cells = [code, nbformat.v4.new_markdown_cell(prose)]
    return notebook


@pytest.mark.parametrize("prose", ["KID falls to 0.1234.", "It is 15.8x faster.", "Faces: 93% of samples.",
                                   "The KID is 0.51. Notebook 05 saw 0.77.",
                                   "Notebook 05 measured 0.77 on real faces."])
def test_a_number_no_output_shows_is_found(prose):
    assert len(unshown_numbers(notebook_with("KID 0.5142 ± 0.0100, faces 0.871, 12.24 s", prose))) == 1


@pytest.mark.parametrize("prose", ["KID falls to 0.514 (± 0.010).", "Faces: 87% of samples, in 12.2 s.",
                                   "The paper reports FID 5.11 (Rombach et al. 2022, Table 1).",
                                   "Notebook 05 measured 0.5142 on real faces.", "`lr = 4.5e-6` is `0.5x`."])
def test_a_shown_or_sourced_number_passes(prose):
    assert unshown_numbers(notebook_with("KID 0.5142 ± 0.0100, faces 0.871, 12.24 s", prose)) == []


def test_a_doctored_committed_notebook_fails():
    path = next(NOTEBOOKS.glob("04_*.ipynb"))
    doctored = copy.deepcopy(nbformat.read(path, as_version=4))
    doctored.cells.append(nbformat.v4.new_markdown_cell("**Reading.** The step took 123.456 ms, 99.9% of it in attention."))
    assert [entry.split(" in ")[0] for entry in unshown_numbers(doctored)][-2:] == \
        [f"cell {len(doctored.cells) - 1}: 123.456", f"cell {len(doctored.cells) - 1}: 99.9%"]
