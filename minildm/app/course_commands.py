"""The course kit's commands: ``python -m minildm course student | check | grade | gradescope | setup-cells``
(docs/teaching.md)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from minildm.config import MinildmError, Profile, checkout_root
from minildm.course.exercises import EXERCISES
from minildm.course.gradescope import write_bundle
from minildm.course.grading import grade, instructor_root
from minildm.course.sandbox import Limits
from minildm.course.student import check_exercises, write_student_copy
from minildm.app.notebooks import repository_url, set_repository, write_setup_cells
from minildm.app.options import command, output_folder, positive_integer


def add_course(commands) -> None:
    course = commands.add_parser("course", help="the course kit: student copy, checks, grading",
                                 description="the course kit: student copy, checks, grading")
    actions = course.add_subparsers(dest="action", required=True, metavar="ACTION")
    student = command(actions, "student", "write the student copy of this checkout into a new folder", run_student)
    student.add_argument("out", type=Path, help="the new folder")
    student.add_argument("--repository", help="the URL the copy's notebooks clone on Colab: where the copy will be "
                         "published (default: the one in pyproject.toml)")
    command(actions, "check", "run the public checks: which exercises are done", run_check)
    grade = command(actions, "grade", "grade a folder of submissions (student copies or zips of them)", run_grade)
    gradescope = command(actions, "gradescope", "write Gradescope's autograder bundle (setup.sh, run_autograder, "
                         "the package and the hidden checks)", run_gradescope)
    gradescope.add_argument("out", type=Path, help="the bundle to write, a .zip file")
    command(actions, "setup-cells", "write the first cell of every notebook, with the repository named in "
            "pyproject.toml", run_setup_cells)
    grade.add_argument("submissions", type=Path, help="folder with one folder or .zip per student")
    grade.add_argument("--out", type=output_folder, required=True, help="folder for grades.csv and results/")
    grade.add_argument("--jobs", type=positive_integer, default=1, help="submissions graded at once (default 1)")
    grade.add_argument("--time-limit", type=positive_integer, default=120,
                       help="seconds of wall-clock time per exercise run (default 120)")
    grade.add_argument("--unsafe-no-sandbox", action="store_true",
                       help="grade even without bubblewrap: submissions can then write wherever this account can")


def run_setup_cells(args: argparse.Namespace, profile: Profile) -> None:
    root = checkout_root()
    if root is None:
        raise MinildmError("setup-cells rewrites the notebooks of a checkout: run it in one (pip install -e .)")
    changed = write_setup_cells(root)
    print(f"setup cell for {repository_url(root)} written into {len(changed)} notebooks")


def run_student(args: argparse.Namespace, profile: Profile) -> None:
    count = write_student_copy(args.out)
    if args.repository:
        set_repository(args.out, args.repository)
    print(f"student copy: {count} files in {args.out} ({len(EXERCISES)} exercises stubbed, outputs cleared, "
          f"grading tests left out)")


def run_check(args: argparse.Namespace, profile: Profile) -> None:
    status = check_exercises()
    for exercise in EXERCISES:
        print(f"Exercise {exercise.id} {exercise.name:<28} {status[exercise.id]}")
    done = sum(value == "done" for value in status.values())
    print(f"{done} of {len(EXERCISES)} exercises pass their public checks")


def run_grade(args: argparse.Namespace, profile: Profile) -> None:
    started = time.perf_counter()
    limits = Limits(wall_seconds=args.time_limit, cpu_seconds=2 * args.time_limit)
    grades = grade(args.submissions, args.out, jobs=args.jobs, limits=limits,
                   unsafe_no_sandbox=args.unsafe_no_sandbox)
    print(f"graded {len(grades)} submissions in {time.perf_counter() - started:.0f} s: {args.out / 'grades.csv'}, "
          f"{args.out / 'results'}")


def run_gradescope(args: argparse.Namespace, profile: Profile) -> None:
    count = write_bundle(args.out, instructor_root())
    print(f"Gradescope bundle: {args.out} (setup.sh, run_autograder, {count} source files with the hidden checks); "
          "upload it as the assignment's autograder")
