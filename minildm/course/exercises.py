"""The exercises: pieces of the package a student writes, marked in the source.

A marked region looks like this (the comment line names the exercise and its task)::

    # Exercise 03.2: x_t from x0 and the noise in one jump (read abar_t with self.at)
    ### BEGIN SOLUTION
    alpha_bar = self.at(self.alpha_bars, t, x0)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    ### END SOLUTION

An exercise may have several regions (05.1: the v-target and its inverse). The student copy
replaces each region's body by a stub that raises ``NotImplementedError``; the grader puts
one submission's regions of one exercise into the instructor's code and nothing else.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from minildm.config import MinildmError

NOTEBOOKS = {"01": "01_autoencoder_kl", "02": "02_autoencoder_vq", "03": "03_forward_diffusion", "04": "04_unet",
             "05": "05_train_ldm", "06": "06_sampling", "07": "07_cross_attention", "08": "08_inpainting_superres",
             "09": "09_evaluation_and_scaling", "10": "10_paper_tasks"}
HEADER = re.compile(r"(?P<indent>[ \t]*)# Exercise (?P<id>[0-9][0-9]\.[0-9]+): [^\n]*")
BEGIN_MARKER, END_MARKER = "### BEGIN SOLUTION", "### END SOLUTION"
MAX_SOURCE_BYTES = 2 * 2**20  # a submitted source file above this is refused, not read


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``id`` is notebook.number, ``section`` the notebook section that teaches it,
    ``stars`` its difficulty (1 to 3), ``minutes`` the time it is expected to take."""

    id: str
    name: str
    section: int
    stars: int
    minutes: int

    @property
    def notebook(self) -> str:
        return f"notebooks/{NOTEBOOKS[self.id[:2]]}.ipynb"

    @property
    def stub_message(self) -> str:
        return f"Exercise {self.id}: {self.name} -- see {self.notebook}, section {self.section}"


EXERCISES = [
    Exercise("01.1", "reparameterisation", section=2, stars=1, minutes=10),
    Exercise("01.2", "KL term", section=2, stars=1, minutes=15),
    Exercise("01.3", "hinge loss", section=3, stars=1, minutes=10),
    Exercise("01.4", "adaptive GAN weight", section=3, stars=2, minutes=25),
    Exercise("01.5", "latent scale factor", section=8, stars=1, minutes=10),
    Exercise("02.1", "nearest code", section=1, stars=2, minutes=20),
    Exercise("02.2", "straight-through estimator", section=2, stars=2, minutes=15),
    Exercise("02.3", "codebook and commitment losses", section=2, stars=2, minutes=20),
    Exercise("03.1", "LDM beta schedule", section=1, stars=1, minutes=10),
    Exercise("03.2", "q_sample", section=3, stars=1, minutes=15),
    Exercise("04.1", "sinusoidal time embedding", section=1, stars=2, minutes=20),
    Exercise("04.2", "scale-shift time injection", section=2, stars=2, minutes=20),
    Exercise("04.3", "self-attention over pixels", section=3, stars=3, minutes=40),
    Exercise("05.1", "v-target and its inverse", section=3, stars=2, minutes=30),
    Exercise("05.2", "training loss", section=3, stars=2, minutes=25),
    Exercise("06.1", "DDPM posterior", section=1, stars=2, minutes=20),
    Exercise("06.2", "one DDPM step", section=1, stars=2, minutes=20),
    Exercise("06.3", "one DDIM step", section=2, stars=3, minutes=30),
    Exercise("07.1", "attention weights", section=1, stars=2, minutes=25),
    Exercise("07.2", "classifier-free guidance", section=5, stars=1, minutes=10),
    Exercise("07.3", "condition dropout", section=5, stars=2, minutes=20),
    Exercise("08.1", "inpainting condition", section=1, stars=2, minutes=20),
    Exercise("09.1", "Frechet distance", section=1, stars=3, minutes=40),
    Exercise("09.2", "unbiased KID", section=1, stars=3, minutes=30),
    Exercise("10.1", "part map to the latent grid", section=3, stars=1, minutes=15),
    Exercise("10.2", "box-token encoding", section=4, stars=2, minutes=20),
]
BY_ID = {exercise.id: exercise for exercise in EXERCISES}


class SubmissionError(MinildmError):
    """A submission that cannot be graded as it is (markers removed, not a copy of minildm)."""


@dataclass(frozen=True)
class Region:
    """One marked region: the file (relative to the repository), the exercise and the body."""

    path: str
    exercise: str
    indent: str
    body: str


@dataclass(frozen=True)
class Span:
    """Where the body of one marked region lies in a text: ``text[body_start:body_end]``."""

    exercise: str
    indent: str
    body_start: int
    body_end: int


def marked_spans(text: str) -> list[Span]:
    """Every marked region of ``text``, in one pass over its lines (a region's body ends at the
    first END marker with its indent, found by bisection, so no input costs quadratic time)."""
    lines = text.split("\n")
    offsets = list(accumulate((len(line) + 1 for line in lines), initial=0))
    ends: dict[str, list[int]] = {}
    for number, line in enumerate(lines):
        if line.endswith(END_MARKER) and not line[:-len(END_MARKER)].strip(" \t"):
            ends.setdefault(line[:-len(END_MARKER)], []).append(number)
    spans, number = [], 0
    while number + 2 < len(lines):
        header = HEADER.fullmatch(lines[number])
        if header and lines[number + 1] == header["indent"] + BEGIN_MARKER:
            closing = ends.get(header["indent"], [])
            position = bisect_left(closing, number + 2)
            if position < len(closing):
                end = closing[position]
                spans.append(Span(header["id"], header["indent"], offsets[number + 2], offsets[end]))
                number = end + 1
                continue
        number += 1
    return spans


def file_regions(text: str, path: str) -> list[Region]:
    return [Region(path, span.exercise, span.indent, text[span.body_start:span.body_end])
            for span in marked_spans(text)]


def find_regions(root: Path) -> dict[str, list[Region]]:
    """Every marked region under ``root/minildm`` (but the course kit itself, whose docstrings
    show the markers), by exercise id, in file and line order."""
    regions: dict[str, list[Region]] = {}
    for path in sorted((root / "minildm").rglob("*.py")):
        if "course" in path.relative_to(root / "minildm").parts:
            continue
        relative = path.relative_to(root).as_posix()
        for region in file_regions(path.read_text(encoding="utf-8", errors="replace"), relative):
            regions.setdefault(region.exercise, []).append(region)
    return regions


def stub_body(exercise_id: str, indent: str) -> str:
    return f'{indent}raise NotImplementedError("{BY_ID[exercise_id].stub_message}")\n'


def replace_bodies(text: str, new_body) -> str:
    """``text`` with the body of each marked region replaced by ``new_body(region)``; None
    keeps the body. Regions are visited in order."""
    pieces, done = [], 0
    for span in marked_spans(text):
        body = new_body(Region("", span.exercise, span.indent, text[span.body_start:span.body_end]))
        if body is not None:
            pieces += [text[done:span.body_start], body]
            done = span.body_end
    return "".join(pieces) + text[done:]


def with_stubs(text: str) -> str:
    """The student version of a source file: every region's body is a stub."""
    return replace_bodies(text, lambda region: stub_body(region.exercise, region.indent))


def submitted_bodies(submission: Path, solution: dict[str, list[Region]], exercise_id: str) -> tuple[str, ...]:
    """The bodies a submission wrote for one exercise, in the order of the solution's regions."""
    bodies: list[str] = []
    for path in dict.fromkeys(region.path for region in solution[exercise_id]):
        expected = sum(1 for region in solution[exercise_id] if region.path == path)
        if not (submission / path).is_file():
            raise SubmissionError(f"{path} is missing from the submission")
        if (submission / path).stat().st_size > MAX_SOURCE_BYTES:
            raise SubmissionError(f"{path} is larger than {MAX_SOURCE_BYTES // 2**20} MB: not a source file to grade")
        text = (submission / path).read_text(encoding="utf-8", errors="replace")
        found = [region.body for region in file_regions(text, path) if region.exercise == exercise_id]
        if len(found) != expected:
            raise SubmissionError(f"the markers of exercise {exercise_id} in {path} were removed or repeated: "
                                  f"{len(found)} regions, expected {expected}")
        bodies.extend(found)
    return tuple(bodies)


def splice(tree: Path, solution: dict[str, list[Region]], exercise_id: str, bodies: tuple[str, ...]) -> None:
    """Put ``bodies`` into the regions of ``exercise_id`` in ``tree`` (a copy of the solution)."""
    remaining = list(bodies)
    for path in dict.fromkeys(region.path for region in solution[exercise_id]):
        text = (tree / path).read_text(encoding="utf-8")
        text = replace_bodies(text, lambda region: remaining.pop(0) if region.exercise == exercise_id
                              else None)
        (tree / path).write_text(text, encoding="utf-8")
