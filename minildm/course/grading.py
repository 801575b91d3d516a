"""``python -m minildm course grade SUBMISSIONS --out DIR``: grade a folder of submissions.

Each submission is a student copy of the repository (a folder or a zip of one, unpacked and
checked on its own by :mod:`minildm.course.submissions`). Every exercise is graded on its own:
its regions are taken from the submission and put into a copy of the instructor's package,
which fills every other region, so a broken ``q_sample`` costs the q_sample exercise and
nothing else.

The hidden checks of ``tests/grading`` never share a process with a submission's code. A
process in the sandbox (:mod:`minildm.course.sandbox`) imports the spliced copy and answers
probes (:mod:`minildm.course.probes`): it calls the exercise's code on the inputs a check sends
and returns the outputs as data (:mod:`minildm.course.probing`). The check compares them, in
the grader's own process, with values it computes itself. The sandbox holds no check, no
expected value, and sees neither the instructor's checkout nor the other submissions.

The same regions always get the same grade, so each distinct piece of code runs once: a
region left as the stub is "not attempted" without running, the solution's own regions run
once, and forty submissions cost as many runs as they have distinct answers.

Results: a table on the terminal, ``grades.csv`` (one row per student, one column per
exercise), and ``results/<student>.json`` in the Gradescope format (``tests``: name, score,
max_score, output).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
from minildm.course.probing import ProbeError, ProbeSession
from minildm.course.sandbox import Limits, check_isolation, started
from minildm.course.submissions import unpack

GRADING_TESTS = "tests/grading"
Check = Callable[[ProbeSession], None]


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


def hidden_checks(root: Path) -> dict[str, list[tuple[str, Check]]]:
    """The checks of ``root/tests/grading/test_*.py`` by exercise: each function
    ``test_exNN_K_...(probe)``, imported into the grader's process."""
    checks: dict[str, list[tuple[str, Check]]] = {}
    for path in sorted((root / GRADING_TESTS).glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"minildm_grading_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, function in vars(module).items():
            if match := re.fullmatch(r"test_ex([0-9]{2})_([0-9]+)_\w+", name):
                checks.setdefault(f"{match[1]}.{match[2]}", []).append((name, function))
    return checks


def package_tree(root: Path, work: Path) -> Path:
    """A copy of the instructor's package: what a submission's run imports."""
    tree = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    shutil.copytree(root / "minildm", tree / "minildm", ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def run_checks(root: Path, solution: dict[str, list[Region]], exercise_id: str, bodies: tuple[str, ...],
               checks: list[tuple[str, Check]], work: Path, limits: Limits,
               hide: tuple[Path, ...]) -> list[TestResult]:
    """The hidden checks of one exercise, against the instructor's package with ``bodies`` in
    its regions, run in the sandbox with the folders ``hide`` out of its sight."""
    tree = package_tree(root, work)
    try:
        splice(tree, solution, exercise_id, bodies)
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(tree), "PYTHONPATH": str(tree),
                       "MPLCONFIGDIR": str(tree / ".matplotlib"), "MINILDM_PROFILE": "tiny",
                       "MINILDM_DATA_DIR": str(tree / "data"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
                       "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "minildm.course.probing"]
        with started(command, tree, limits, environment, hide=hide, pipes=True) as run:
            session = ProbeSession(run.process, limits.wall_seconds)
            return [check_result(name, check, session, (*hide, Path(sys.prefix))) for name, check in checks]
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def check_result(name: str, check: Check, session: ProbeSession, hide: tuple[Path, ...]) -> TestResult:
    """Run one check: it passes only if it returns. Its assertion's text, or the probe's
    problem in words, is the feedback, with the folders ``hide`` hidden."""
    try:
        check(session)
    except AssertionError as error:
        return TestResult(name, False, feedback(str(error) or "a check failed", MAX_MESSAGE, hide))
    except ProbeError as error:
        return TestResult(name, False, feedback(str(error), MAX_MESSAGE, hide))
    except Exception as error:  # outputs of a shape or type the check cannot even compare
        message = f"the outputs could not be checked ({type(error).__name__}: {error})"
        return TestResult(name, False, feedback(message, MAX_MESSAGE, hide))
    return TestResult(name, True, "")


MAX_MESSAGE = 500
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def feedback(text: str, limit: int, hide: tuple[Path, ...] = ()) -> str:
    """``text`` fit to show a student: no control characters, no path of the grader's (the
    folders ``hide``, longest first), at most ``limit`` characters."""
    for folder in sorted({str(folder) for folder in hide}, key=len, reverse=True):
        text = text.replace(folder, "<grader>")
    text = CONTROL.sub("", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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


def grade(submissions: Path, out: Path, *, root: Path | None = None, jobs: int = 1, limits: Limits = Limits(),
          unsafe_no_sandbox: bool = False, progress=print) -> dict[str, list[ExerciseGrade]]:
    """Grade every submission in the folder ``submissions`` with the solutions and checks of
    ``root`` (default: this checkout); write the reports into ``out``. Without bubblewrap or a
    sandbox account, refuse unless ``unsafe_no_sandbox`` (:func:`check_isolation`)."""
    warning = check_isolation(unsafe_no_sandbox=unsafe_no_sandbox)
    root = root or instructor_root()
    solution, checks = find_regions(root), hidden_checks(root)
    if unchecked := [exercise.id for exercise in EXERCISES if not checks.get(exercise.id)]:
        raise MinildmError(f"{GRADING_TESTS} has no check for exercise {', '.join(unchecked)}")
    if warning:
        progress(warning)
    work = Path(tempfile.mkdtemp(prefix="minildm-grade-"))
    work.chmod(0o711)  # a sandbox account may pass through to its run's folder, not list the others
    (work / "unpacked").mkdir(mode=0o700)  # and never read the unpacked submissions
    hide = (root, work, out.resolve(), submissions.resolve())
    try:
        students = unpack(submissions, work)
        out.mkdir(parents=True, exist_ok=True)  # before any run, so that the sandbox hides it
        answers = collect_answers(students, solution)
        distinct = sorted({(exercise_id, answer) for (_, exercise_id), answer in answers.items()
                           if isinstance(answer, tuple)})
        progress(f"{len(students)} submissions, {len(EXERCISES)} exercises: {len(distinct)} distinct answers to run "
                 f"({jobs} at a time)")
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            runs = pool.map(lambda key: run_checks(root, solution, key[0], key[1], checks[key[0]], work,
                                                   limits, hide), distinct)
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
