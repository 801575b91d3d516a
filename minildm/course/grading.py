"""``python -m minildm course grade SUBMISSIONS --out DIR``: grade a folder of submissions.

Each submission is a student copy of the repository (a folder or a zip of one). Every exercise
is graded on its own: its regions are taken from the submission and put into the instructor's
code, which fills every other region, so a broken ``q_sample`` costs the q_sample exercise and
nothing else. The hidden tests of ``tests/grading`` then run in a sandbox
(:mod:`minildm.course.sandbox`).

The same regions always get the same grade, so each distinct piece of code runs once: a
region left as the stub is "not attempted" without running, the solution's own regions run
once, and forty submissions cost as many runs as they have distinct answers.

Results: a table on the terminal, ``grades.csv`` (one row per student, one column per
exercise), and ``results/<student>.json`` in the Gradescope format (``tests``: name, score,
max_score, output).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from minildm.config import MinildmError, checkout_root
from minildm.course.exercises import (
    EXERCISES,
    Region,
    SubmissionError,
    find_regions,
    splice,
    stub_body,
    submitted_bodies,
)
from minildm.course.sandbox import Limits, isolation_warning, run_isolated

GRADING_TESTS = "tests/grading"


@dataclass(frozen=True)
class TestResult:
    name: str
    passed: bool
    message: str


def instructor_root() -> Path:
    """The instructor's checkout, which holds the solutions and the hidden tests."""
    root = checkout_root()
    if root is None or not (root / GRADING_TESTS).is_dir():
        raise MinildmError(f"grading needs the instructor's checkout with {GRADING_TESTS}/ (a private fork)")
    return root


def unpack(submissions: Path, work: Path) -> dict[str, Path]:
    """Each submission by student name: folders as they are, zips extracted into ``work``."""
    if not submissions.is_dir():
        raise MinildmError(f"no such folder: {submissions}")
    found = {}
    for entry in sorted(submissions.iterdir()):
        if entry.is_dir():
            found[entry.name] = entry
        elif entry.suffix == ".zip":
            found[entry.stem] = extract(entry, work / entry.stem)
    if not found:
        raise MinildmError(f"{submissions} holds no submissions (folders or .zip files)")
    return found


def extract(archive: Path, target: Path) -> Path:
    """Unzip safely (no absolute paths, no ``..``); a single top folder is stepped into."""
    try:
        with zipfile.ZipFile(archive) as opened:
            for member in opened.infolist():
                if member.filename.startswith("/") or ".." in Path(member.filename).parts:
                    raise MinildmError(f"{archive.name}: unsafe path {member.filename!r}")
            opened.extractall(target)
    except zipfile.BadZipFile:
        target.mkdir(parents=True, exist_ok=True)  # graded as empty: every exercise reports the problem
        return target
    children = [child for child in target.iterdir() if child.name != "__MACOSX"]
    return children[0] if len(children) == 1 and children[0].is_dir() else target


def grading_tree(root: Path, work: Path) -> Path:
    """A copy of what grading runs: the package and the hidden tests."""
    tree = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    shutil.copytree(root / "minildm", tree / "minildm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / GRADING_TESTS, tree / GRADING_TESTS, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def run_tests(root: Path, solution: dict[str, list[Region]], exercise_id: str, bodies: tuple[str, ...],
              work: Path, limits: Limits) -> list[TestResult]:
    """The hidden tests of one exercise on the instructor's code with ``bodies`` in its regions."""
    tree = grading_tree(root, work)
    try:
        splice(tree, solution, exercise_id, bodies)
        report = tree / "report.xml"
        selector = "ex" + exercise_id.replace(".", "_") + "_"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                   f"--junitxml={report}", "-k", selector, GRADING_TESTS]
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tree), "PYTHONPATH": str(tree),
                       "MPLCONFIGDIR": str(tree / ".matplotlib"), "MINILDM_PROFILE": "tiny",
                       "MINILDM_DATA_DIR": str(tree / "data"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        result = run_isolated(command, tree, limits, environment)
        if result.timed_out:
            return [TestResult("time limit", False, f"stopped after {limits.wall_seconds:.0f} s: an endless loop?")]
        tests = read_report(report) if report.is_file() else []
        if not tests:
            last = (result.output.strip().splitlines() or ["no output"])[-1]
            return [TestResult("run", False, f"the tests could not run ({last[:300]})")]
        return tests
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def read_report(path: Path) -> list[TestResult]:
    """Test names, outcomes and the first line of each failure's message from a JUnit XML report."""
    results = []
    for case in ElementTree.parse(path).iter("testcase"):
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        message = "" if problem is None else (problem.get("message") or problem.text or "").strip()
        results.append(TestResult(case.get("name", "?"), problem is None, student_message(message)))
    return results


def student_message(message: str) -> str:
    """The part of a failure message meant for the student: the assertion's own text."""
    for prefix in ("AssertionError: ", "NotImplementedError: "):
        if prefix in message:
            message = message.split(prefix, 1)[1]
    return message.split("\nassert ", 1)[0].strip()[:500]


@dataclass(frozen=True)
class ExerciseGrade:
    """One exercise of one submission: a score out of 1 (the share of its tests passed)."""

    exercise: str
    score: float
    output: str


def grade_of(exercise_id: str, answer: tuple[str, ...] | str, results: dict) -> ExerciseGrade:
    """The grade of one answer: the stub scores 0 without running, a problem scores 0 with its
    message, bodies score the share of the tests they passed in ``results``."""
    if answer == "stub":
        return ExerciseGrade(exercise_id, 0.0, "not attempted: the stub still raises NotImplementedError")
    if isinstance(answer, str):  # the submission's problem, in words
        return ExerciseGrade(exercise_id, 0.0, answer)
    tests = results[exercise_id, answer]
    failed = [f"{test.name}: {test.message}" for test in tests if not test.passed]
    score = round(sum(test.passed for test in tests) / len(tests), 3)
    return ExerciseGrade(exercise_id, score, "\n".join(failed) or f"all {len(tests)} tests pass")


def collect_answers(students: dict[str, Path], solution: dict[str, list[Region]]) -> dict[tuple[str, str], object]:
    """What each student wrote for each exercise: the bodies, "stub", or a problem in words."""
    answers: dict[tuple[str, str], object] = {}
    for student, folder in students.items():
        for exercise in EXERCISES:
            stubs = tuple(stub_body(exercise.id, region.indent) for region in solution[exercise.id])
            try:
                bodies = submitted_bodies(folder, solution, exercise.id)
                answers[student, exercise.id] = "stub" if bodies == stubs else bodies
            except SubmissionError as error:
                answers[student, exercise.id] = str(error)
    return answers


def grade(submissions: Path, out: Path, *, jobs: int = 1, limits: Limits = Limits(),
          progress=print) -> dict[str, list[ExerciseGrade]]:
    """Grade every submission in the folder ``submissions``; write the reports into ``out``."""
    root = instructor_root()
    solution = find_regions(root)
    warning = isolation_warning()
    if warning:
        progress(warning)
    work = Path(tempfile.mkdtemp(prefix="minildm-grade-"))
    try:
        students = unpack(submissions, work)
        answers = collect_answers(students, solution)
        distinct = sorted({(exercise_id, answer) for (_, exercise_id), answer in answers.items()
                           if isinstance(answer, tuple)})
        progress(f"{len(students)} submissions, {len(EXERCISES)} exercises: {len(distinct)} distinct answers to run "
                 f"({jobs} at a time)")
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            runs = pool.map(lambda key: run_tests(root, solution, key[0], key[1], work, limits), distinct)
            results = dict(zip(distinct, runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    grades = {student: [grade_of(exercise.id, answers[student, exercise.id], results) for exercise in EXERCISES]
              for student in students}
    write_reports(grades, out)
    progress(score_table(grades))
    return grades


def score_table(grades: dict[str, list[ExerciseGrade]]) -> str:
    """Students by exercises, as a markdown table with totals."""
    header = "| student | " + " | ".join(exercise.id for exercise in EXERCISES) + " | total |"
    lines = [header, "|---" * (len(EXERCISES) + 2) + "|"]
    for student, row in grades.items():
        cells = " | ".join(f"{g.score:.2g}" for g in row)
        lines.append(f"| {student} | {cells} | {sum(g.score for g in row):.1f} / {len(row)} |")
    return "\n".join(lines)


def write_reports(grades: dict[str, list[ExerciseGrade]], out: Path) -> None:
    """``grades.csv`` and a Gradescope-style ``results/<student>.json`` per submission."""
    (out / "results").mkdir(parents=True, exist_ok=True)
    with open(out / "grades.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["student", *(exercise.id for exercise in EXERCISES), "total"])
        for student, row in grades.items():
            writer.writerow([student, *(g.score for g in row), round(sum(g.score for g in row), 3)])
    names = {exercise.id: exercise.name for exercise in EXERCISES}
    for student, row in grades.items():
        tests = [{"name": f"Exercise {g.exercise}: {names[g.exercise]}", "score": g.score, "max_score": 1.0,
                  "output": g.output} for g in row]
        result = {"score": round(sum(g.score for g in row), 3), "max_score": float(len(row)), "tests": tests}
        (out / "results" / f"{student}.json").write_text(json.dumps(result, indent=2))
