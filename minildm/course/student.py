"""The student's side: ``course student OUT`` writes the copy a student gets, ``course check``
runs the public checks and says which exercises are done.

The student copy is the repository's tracked files with every marked solution replaced by a
stub (:func:`~minildm.course.exercises.with_stubs`), the notebooks' outputs cleared (nbconvert's
``ClearOutputPreprocessor``), and the hidden grading tests left out. The public checks in
``tests/exercises`` stay: they are what ``course check`` runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

from minildm.config import MinildmError, checkout_root
from minildm.course.exercises import BY_ID, EXERCISES, find_regions, with_stubs
from minildm.course.grading import GRADING_TESTS, TestResult

PUBLIC_CHECKS = "tests/exercises"
STUB = re.compile(r"Exercise (\d\d\.\d+): ")  # the start of a stub's message


def tracked_files(root: Path) -> list[str]:
    """The repository's files under version control (what a fork would hold)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise MinildmError(f"{root} is not a git checkout: the student copy is made from the tracked files") from None
    return [name for name in listed.stdout.decode().split("\0") if name]


def clear_outputs(source: Path, target: Path) -> None:
    """Write the notebook without outputs, execution counts and run metadata (cell tags stay)."""
    import nbformat
    from nbconvert.preprocessors import ClearMetadataPreprocessor, ClearOutputPreprocessor

    notebook = nbformat.read(source, as_version=4)
    ClearOutputPreprocessor().preprocess(notebook, {})
    ClearMetadataPreprocessor(preserve_cell_metadata_mask={"tags"}).preprocess(notebook, {})
    nbformat.write(notebook, target)


def write_student_copy(out: Path, root: Path | None = None) -> int:
    """Write the student copy of the checkout ``root`` into the new folder ``out``; returns
    the number of files written."""
    root = root or checkout_root()
    if root is None:
        raise MinildmError("the student copy is made from a checkout of the repository, not an installed package")
    if out.is_file():
        raise MinildmError(f"{out} exists and is a file: name a new folder")
    if out.exists() and any(out.iterdir()):
        raise MinildmError(f"{out} exists and is not empty: name a new folder")
    files = [name for name in tracked_files(root) if not name.startswith(GRADING_TESTS + "/")]
    for name in files:
        source, target = root / name, out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("minildm/") and name.endswith(".py"):
            target.write_text(with_stubs(source.read_text(encoding="utf-8")), encoding="utf-8")
        elif name.endswith(".ipynb"):
            clear_outputs(source, target)
        else:
            shutil.copy2(source, target)
    return len(files)


def check_exercises(root: Path | None = None, selected: tuple[str, ...] = ()) -> dict[str, str]:
    """Run the public checks of ``root`` (default: this checkout), of the ``selected`` exercises
    or all; each exercise's status: ``done``, ``not done`` (still the stub), ``needs exercise
    ... first``, or ``fails: <the first failing check's message>``."""
    root = root or checkout_root()
    if root is None or not (root / PUBLIC_CHECKS).is_dir():
        raise MinildmError(f"course check runs {PUBLIC_CHECKS}/ of a checkout or a student copy; none found")
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        chosen = ["-k", " or ".join("test_ex" + e.replace(".", "_") + "_" for e in selected)] if selected else []
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                        f"--junitxml={report}", *chosen, PUBLIC_CHECKS], cwd=root, capture_output=True)
        if not report.is_file():
            raise MinildmError(f"the public checks in {root / PUBLIC_CHECKS} could not run")
        tests = read_report(report)
    status = {}
    for exercise in [BY_ID[e] for e in selected] or EXERCISES:
        mine = [test for test in tests if test.name.startswith("test_ex" + exercise.id.replace(".", "_") + "_")]
        failed = [test for test in mine if not test.passed]
        waiting = sorted({found for test in failed for found in STUB.findall(test.message)} - {exercise.id})
        if not mine:
            status[exercise.id] = "no public check"
        elif any(f"Exercise {exercise.id}:" in test.message for test in failed):
            status[exercise.id] = "not done"
        elif waiting:
            status[exercise.id] = f"needs exercise {', '.join(waiting)} first"
        else:
            status[exercise.id] = f"fails: {failed[0].message}" if failed else "done"
    return status


PROBLEMS = {"failure": "", "error": "error: ", "skipped": "skipped: "}


def read_report(path: Path) -> list[TestResult]:
    """Test names, outcomes and the first line of each problem's message from the JUnit XML
    report of the public checks (pytest's, on the student's own machine). A test passes only
    with no ``failure``, ``error`` or ``skipped`` element."""
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        passed, message = True, ""
        for tag, prefix in PROBLEMS.items():
            problem = case.find(tag)
            if problem is not None:
                passed, message = False, prefix + assertion_text(problem.get("message") or problem.text or "")
                break
        results.append(TestResult(case.get("name") or "?", passed, message))
    return results


def assertion_text(message: str) -> str:
    """The part of a failure message meant for the student: the assertion's own text."""
    for prefix in ("AssertionError: ", "NotImplementedError: "):
        if prefix in message:
            message = message.split(prefix, 1)[1]
    return message.split("\nassert ", 1)[0].strip()


class ExerciseNotDone(MinildmError):
    """An exercise whose public checks do not pass yet (raised in a notebook's check cell)."""


def check_in_notebook(*exercise_ids: str) -> None:
    """A notebook's exercise cell: run the public checks of these exercises on the files as
    they are on disk now; print one line each when they pass, else raise one line that says
    what to do. Edit the package file, then run the cell again (restart the kernel to use
    the new code in the cells that follow)."""
    status = check_exercises(selected=exercise_ids)
    for exercise_id in exercise_ids:
        exercise = BY_ID[exercise_id]
        if status[exercise_id] != "done":
            raise ExerciseNotDone(f"Exercise {exercise_id} ({exercise.name}) is {status[exercise_id]}: write it in "
                                  f"{exercise_file(exercise_id)} (between the markers), then run this cell again")
        print(f"Exercise {exercise_id} ({exercise.name}): done, its public checks pass")


def exercise_file(exercise_id: str) -> str:
    """Where an exercise is written, e.g. ``minildm/diffusion.py``."""
    root = checkout_root()
    regions = find_regions(root)[exercise_id] if root else []
    return ", ".join(dict.fromkeys(region.path for region in regions)) or "the package"
