"""The course kit: exercise markers, the student copy, ``course check`` and ``course grade``
with its sandbox, on real copies of this checkout."""

import importlib.util
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from minildm.course.exercises import EXERCISES, find_regions, with_stubs
from minildm.course.grading import grade
from minildm.course.sandbox import Limits, isolation
from minildm.course.student import write_student_copy

pytestmark = pytest.mark.integration  # trains models or runs whole commands: `make unit` leaves this file out

ROOT = Path(__file__).resolve().parent.parent
GRADE_CLASS = ROOT / "benchmarks" / "grade_class.py"
spec = importlib.util.spec_from_file_location("grade_class", GRADE_CLASS)
grade_class = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grade_class)
BROKEN = {**grade_class.BROKEN,  # exercise -> (file, a line of its solution, a wrong line); 03.1 as well here
          "03.1": ("minildm/diffusion.py", "torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2",
                   "torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)")}
solved = grade_class.solved


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "student"
    write_student_copy(out, ROOT)
    return out


def test_every_exercise_has_marked_regions_and_the_student_copy_stubs_them(student_copy):
    regions = find_regions(ROOT)
    assert sorted(regions) == [exercise.id for exercise in EXERCISES] and len(EXERCISES) >= 18
    assert find_regions(student_copy).keys() == regions.keys()
    stubbed = (student_copy / "minildm" / "diffusion.py").read_text()
    assert stubbed == with_stubs((ROOT / "minildm" / "diffusion.py").read_text())
    assert ('raise NotImplementedError("Exercise 03.2: q_sample -- see notebooks/03_forward_diffusion.ipynb, '
            'section 3")') in stubbed
    assert "alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise" not in stubbed
    for path in student_copy.rglob("minildm/**/*.py"):
        compile(path.read_text(), str(path), "exec")  # every stub leaves valid Python


def test_the_student_copy_leaves_out_the_grading_tests_and_the_outputs(student_copy):
    assert not (student_copy / "tests" / "grading").exists()
    assert (student_copy / "tests" / "exercises" / "test_exercises.py").is_file()
    for notebook in (student_copy / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        assert all(not cell.get("outputs") for cell in cells if cell["cell_type"] == "code"), notebook.name
    assert (ROOT / "notebooks" / "01_autoencoder_kl.ipynb").stat().st_size > 3 * (
        student_copy / "notebooks" / "01_autoencoder_kl.ipynb").stat().st_size


def test_course_check_reports_every_exercise_of_the_student_copy_as_not_done(student_copy):
    environment = {**os.environ, "PYTHONPATH": str(student_copy)}
    result = subprocess.run([sys.executable, "-m", "minildm", "course", "check"], cwd=student_copy,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("Exercise ")]
    assert len(lines) == len(EXERCISES) and all(line.endswith(" not done") for line in lines)
    assert f"0 of {len(EXERCISES)} exercises pass" in result.stdout


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


class Listener:
    """A local TCP server that counts the connections it receives."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port, self.connections = self.server.getsockname()[1], 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()


def hostile(student_copy: Path, folder: Path, name: str, code: str) -> None:
    """A full solution whose q_sample (exercise 03.2) runs ``code`` first."""
    target = solved(student_copy, folder / name)
    replace_in(target / "minildm" / "diffusion.py", "        alpha_bar = self.at(self.alpha_bars, t, x0)\n",
               f"        {code}\n        alpha_bar = self.at(self.alpha_bars, t, x0)\n")


@pytest.mark.slow
def test_grading_scores_each_exercise_alone_and_survives_hostile_code(student_copy, tmp_path):
    assert isolation() == "bubblewrap", "the grader's sandbox needs bubblewrap (the Debian package .ci/run installs)"
    submissions = tmp_path / "submissions"
    shutil.copytree(student_copy, submissions / "empty", ignore=shutil.ignore_patterns("notebooks", "docs"))
    solved(student_copy, submissions / "full")
    for exercise_id, (path, old, new) in BROKEN.items():
        replace_in(solved(student_copy, submissions / f"broken-{exercise_id}") / path, old, new)
    outside, listener = tmp_path / "outside.txt", Listener()
    outside.write_text("keep me")
    hostile(student_copy, submissions, "loops", "while True: pass")
    hostile(student_copy, submissions, "allocates", "hoard = [bytearray(2**27) for _ in iter(int, 1)]")
    hostile(student_copy, submissions, "writes", f"open({str(outside)!r}, 'w').write('gone'); "
                                                 f"open({str(tmp_path / 'planted.txt')!r}, 'w').write('x')")
    hostile(student_copy, submissions, "connects", f"__import__('socket').create_connection(('127.0.0.1', "
                                                   f"{listener.port}), timeout=5)")
    shutil.make_archive(str(submissions / "zipped"), "zip", submissions / "broken-03.2")

    grades = grade(submissions, tmp_path / "out", jobs=2, limits=Limits(wall_seconds=40), progress=lambda _: None)
    scores = {student: {g.exercise: g.score for g in row} for student, row in grades.items()}
    assert set(scores["full"].values()) == {1.0} and set(scores["empty"].values()) == {0.0}
    for student in [*(f"broken-{e}" for e in BROKEN), "zipped", "loops", "allocates", "connects"]:
        exercise_id = student.removeprefix("broken-") if student.startswith("broken-") else "03.2"
        assert scores[student][exercise_id] < 1.0, student
        assert all(score == 1.0 for other, score in scores[student].items() if other != exercise_id), student
    assert scores["loops"]["03.2"] == scores["allocates"]["03.2"] == 0.0
    assert scores["connects"]["03.2"] == 0.0
    assert scores["writes"]["03.2"] == 1.0  # a right answer whose writes landed in the run's own empty /tmp
    assert outside.read_text() == "keep me" and not (tmp_path / "planted.txt").exists()
    assert listener.connections == 0

    rows = (tmp_path / "out" / "grades.csv").read_text().splitlines()
    assert rows[0].split(",") == ["student", *(e.id for e in EXERCISES), "total"] and len(rows) == len(grades) + 1
    report = json.loads((tmp_path / "out" / "results" / "broken-03.2.json").read_text())
    failed = [test for test in report["tests"] if test["score"] < 1]
    assert [test["name"] for test in failed] == ["Exercise 03.2: q_sample"]
    assert "variance is off by a factor of" in failed[0]["output"] and report["max_score"] == len(EXERCISES)
    looped = json.loads((tmp_path / "out" / "results" / "loops.json").read_text())["tests"]
    assert "time limit" in next(test for test in looped if test["name"].startswith("Exercise 03.2:"))["output"]


@pytest.mark.slow
def test_the_student_copy_s_notebooks_run_up_to_their_first_exercise(student_copy):
    """Every notebook of the student copy, run in a fresh kernel in the tiny profile, either
    runs to the end or stops first at an exercise cell (tagged "exercise"), with one line that
    says what to write where."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    data = os.environ.get("MINILDM_DATA_DIR", str(ROOT / "data"))  # the cache the other tests filled
    stopped = {}
    for path in sorted((student_copy / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        first = next((i for i, cell in enumerate(notebook.cells) if "exercise" in cell.metadata.get("tags", [])),
                     len(notebook.cells) - 1)
        notebook.cells = notebook.cells[:first + 1]  # nothing after the first exercise cell is promised
        client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(env={**os.environ, "PYTHONPATH": str(student_copy), "MINILDM_PROFILE": "tiny",
                                "MINILDM_DATA_DIR": data})
        except CellExecutionError as error:
            failed = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
                      and any(output.get("output_type") == "error" for output in cell.get("outputs", []))]
            assert failed == [first], f"{path.name}: cell {failed} failed before the first exercise: {error}"
            stopped[path.stem[:2]] = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # without terminal colours
    assert "00" not in stopped  # notebook 00 has no exercise: it runs to the end
    assert set(stopped) == {f"{n:02d}" for n in range(1, 11)}
    assert all("ExerciseNotDone: Exercise" in message and "then run this cell again" in message
               for message in stopped.values())
