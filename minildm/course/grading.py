"""``python -m minildm course grade SUBMISSIONS --out DIR``: grade a folder of submissions.

Each submission is a student copy of the repository (a folder or a zip of one, unpacked and
checked on its own by :mod:`minildm.course.submissions`). Every exercise
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

import ast
import csv
import json
import os
import re
import shutil
import sys
import tempfile
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
from minildm.course.sandbox import Limits, check_isolation, run_isolated
from minildm.course.submissions import unpack

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
    hide = (root, work, Path(sys.prefix))
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
        try:
            tests = read_report(report, hide) if report.is_file() or report.is_symlink() else []
        except ReportError as error:
            return [TestResult("report", False, str(error))]
        if not tests:
            last = (result.output.strip().splitlines() or ["no output"])[-1]
            return [TestResult("run", False, f"the tests could not run ({feedback(last, 300, hide)})")]
        return outcomes(expected_tests(root, selector), tests)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def expected_tests(root: Path, selector: str) -> list[str]:
    """The names of the hidden tests that ``-k selector`` runs, read from the instructor's own
    copy of ``tests/grading`` (never from the run's copy, which the submission could change)."""
    names = []
    for path in sorted((root / GRADING_TESTS).rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names += [node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.name.startswith("test_") and selector in node.name]
    return names


def outcomes(expected: list[str], reported: list[TestResult]) -> list[TestResult]:
    """One result per expected test: it passes only if the report holds it (a parametrised test:
    every case of it) and every case passed; a test absent from the report failed. Names the
    report holds but nobody expected are left out."""
    if not expected:
        return reported
    results = []
    for name in expected:
        mine = [test for test in reported if test.name.split("[", 1)[0] == name]
        failed = [test for test in mine if not test.passed]
        if not mine:
            results.append(TestResult(name, False, "missing from the test report: it did not run to the end"))
        else:
            results.append(TestResult(name, not failed, failed[0].message if failed else ""))
    return results


class ReportError(MinildmError):
    """A test report that cannot be trusted to be read (too large, malformed, with entities)."""


MAX_REPORT_BYTES = 5 * 2**20
PROBLEMS = {"failure": "", "error": "error: ", "skipped": "skipped or expected to fail, which counts as a failure: "}


def read_report(path: Path, hide: tuple[Path, ...] = ()) -> list[TestResult]:
    """Test names, outcomes and the first line of each problem's message from a JUnit XML report.
    A test passes only with no ``failure``, ``error`` or ``skipped`` (pytest's skip and xfail)
    element. Names and messages go through :func:`feedback`, with the folders ``hide`` hidden."""
    unreadable = "the test report could not be read"
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_REPORT_BYTES:
            raise ReportError(f"{unreadable} (missing, not a file, or over {MAX_REPORT_BYTES // 2**20} MB)")
        data = path.read_bytes()
        if b"<!doctype" in data.lower() or b"<!entity" in data.lower():
            raise ReportError(f"{unreadable} (it declares a DOCTYPE or entities)")
        cases = ElementTree.fromstring(data).iter("testcase")
        results = []
        for case in cases:
            passed, message = True, ""
            for tag, prefix in PROBLEMS.items():
                problem = case.find(tag)
                if problem is not None:
                    passed, message = False, prefix + student_message(problem.get("message") or problem.text or "")
                    break
            results.append(TestResult(feedback(case.get("name") or "?", MAX_NAME, hide), passed,
                                      feedback(message, MAX_MESSAGE, hide)))
        return results
    except (OSError, ElementTree.ParseError, ValueError, RecursionError) as error:
        raise ReportError(f"{unreadable} ({type(error).__name__})") from None


MAX_NAME, MAX_MESSAGE = 200, 500
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
HIDDEN_TESTS = re.compile(re.escape(GRADING_TESTS) + r"[^\s:'\"]*")


def feedback(text: str, limit: int, hide: tuple[Path, ...] = ()) -> str:
    """``text`` fit to show a student: no control characters, no path of the grader's (the
    folders ``hide``, longest first, and the hidden tests' files), at most ``limit`` characters."""
    for folder in sorted({str(folder) for folder in hide}, key=len, reverse=True):
        text = text.replace(folder, "<grader>")
    text = HIDDEN_TESTS.sub("<grading tests>", CONTROL.sub("", text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def student_message(message: str) -> str:
    """The part of a failure message meant for the student: the assertion's own text."""
    for prefix in ("AssertionError: ", "NotImplementedError: "):
        if prefix in message:
            message = message.split(prefix, 1)[1]
    return message.split("\nassert ", 1)[0].strip()


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
        return ExerciseGrade(exercise_id, 0.0, feedback(answer, MAX_MESSAGE))
    tests = results[exercise_id, answer]
    failed = [f"{test.name}: {test.message}" for test in tests if not test.passed]
    score = round(sum(test.passed for test in tests) / len(tests), 3)
    return ExerciseGrade(exercise_id, score, "\n".join(failed) or f"all {len(tests)} tests pass")


def collect_answers(students: dict[str, Path | str],
                    solution: dict[str, list[Region]]) -> dict[tuple[str, str], object]:
    """What each student wrote for each exercise: the bodies, "stub", or a problem in words (a
    submission that could not be unpacked: its problem, for every exercise)."""
    answers: dict[tuple[str, str], object] = {}
    for student, folder in students.items():
        for exercise in EXERCISES:
            if isinstance(folder, str):
                answers[student, exercise.id] = folder
                continue
            stubs = tuple(stub_body(exercise.id, region.indent) for region in solution[exercise.id])
            try:
                bodies = submitted_bodies(folder, solution, exercise.id)
                answers[student, exercise.id] = "stub" if bodies == stubs else bodies
            except SubmissionError as error:
                answers[student, exercise.id] = str(error)
    return answers


def grade(submissions: Path, out: Path, *, jobs: int = 1, limits: Limits = Limits(),
          unsafe_no_sandbox: bool = False, progress=print) -> dict[str, list[ExerciseGrade]]:
    """Grade every submission in the folder ``submissions``; write the reports into ``out``.
    Without bubblewrap, refuse unless ``unsafe_no_sandbox`` (:func:`check_isolation`)."""
    warning = check_isolation(unsafe_no_sandbox=unsafe_no_sandbox)
    root = instructor_root()
    solution = find_regions(root)
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
