"""How long ``course grade`` takes for a class: 40 generated submissions, ``--jobs 1`` and 2.

The class is made from a student copy of this checkout:

- 10 full solutions (the instructor's package copied in),
- 10 empty copies (every exercise still the stub),
- 20 partly done: a full solution with one to four exercises broken in a known way (the
  wrong lines of ``BROKEN``, the same mistakes for several students, as in a real class) or
  left as the stub.

The script grades the class once per ``--jobs`` value and prints a markdown table: wall-clock
time, distinct answers run, and the mean total score. Run it from the repository root::

    .venv/bin/python benchmarks/grade_class.py --jobs 1,2
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from minildm.course.exercises import find_regions, stub_body, replace_bodies
from minildm.course.grading import collect_answers, grade
from minildm.course.student import write_student_copy

ROOT = Path(__file__).resolve().parent.parent
BROKEN = {  # exercise -> (file, a piece of its solution, a wrong piece)
    "01.2": ("minildm/regularizers.py", ".sum(dim=(1, 2, 3)).mean()", ".mean()"),
    "01.3": ("minildm/losses.py", "F.relu(1 + logits_fake).mean())", "F.relu(logits_fake).mean())"),
    "03.2": ("minildm/diffusion.py", "(1 - alpha_bar).sqrt() * noise\n", "(1 - alpha_bar) * noise\n"),
    "04.1": ("minildm/unet.py", "[torch.cos(angles), torch.sin(angles)]", "[torch.sin(angles), torch.cos(angles)]"),
    "06.1": ("minildm/diffusion.py", "return mean, self.at(self.posterior_variance, t, x_t)",
             "return mean, self.at(self.betas, t, x_t)"),
    "07.2": ("minildm/guidance.py", "return eps_uncond + scale * (eps_cond - eps_uncond)",
             "return eps_cond + scale * (eps_cond - eps_uncond)"),
    "09.2": ("minildm/evaluation/metrics.py", "/ (size * (size - 1))", "/ size**2"),
}


def solved(student: Path, target: Path) -> Path:
    shutil.copytree(student, target, ignore=shutil.ignore_patterns("notebooks", "docs"))
    shutil.rmtree(target / "minildm")
    shutil.copytree(ROOT / "minildm", target / "minildm", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def break_one(folder: Path, exercise_id: str) -> None:
    """Break an exercise the known way, or put its stub back when there is no known way."""
    if exercise_id in BROKEN:
        path, old, new = BROKEN[exercise_id]
        text = (folder / path).read_text()
        (folder / path).write_text(text.replace(old, new, 1))
        return
    for path in dict.fromkeys(region.path for region in find_regions(ROOT)[exercise_id]):
        text = (folder / path).read_text()
        (folder / path).write_text(replace_bodies(text, lambda region: stub_body(region.exercise, region.indent)
                                                  if region.exercise == exercise_id else None))


def make_class(folder: Path, seed: int = 0) -> Path:
    """40 submissions in ``folder / "submissions"``."""
    generator = random.Random(seed)
    student = folder / "student"
    write_student_copy(student, ROOT)
    submissions = folder / "submissions"
    exercises = sorted(find_regions(ROOT))
    for number in range(40):
        name = submissions / f"student{number:02d}"
        if number < 10:
            solved(student, name)
        elif number < 20:
            shutil.copytree(student, name, ignore=shutil.ignore_patterns("notebooks", "docs"))
        else:
            solved(student, name)
            for exercise_id in generator.sample(exercises, generator.randint(1, 4)):
                break_one(name, exercise_id)
    return submissions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values (default 1,2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        submissions = make_class(Path(folder))
        solution = find_regions(ROOT)
        answers = collect_answers({p.name: p for p in sorted(submissions.iterdir())}, solution)
        distinct = len({(e, a) for (_, e), a in answers.items() if isinstance(a, tuple)})
        rows = []
        for jobs in [int(value) for value in args.jobs.split(",")]:
            started = time.perf_counter()
            grades = grade(submissions, Path(folder) / f"out{jobs}", jobs=jobs, progress=lambda _: None)
            seconds = time.perf_counter() - started
            mean = sum(sum(g.score for g in row) for row in grades.values()) / len(grades)
            rows.append(f"| {jobs} | {seconds:.0f} s | {distinct} | {mean:.2f} / {len(solution)} |")
    print(f"40 submissions (10 full, 10 empty, 20 partly broken), {len(solution)} exercises")
    print("| --jobs | wall-clock | distinct answers run | mean total |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
