"""The grader against hostile submissions: unsafe zips, symbolic links and quadratic markers
each score 0 with a reason and the rest of the class is still graded; forged marks, escapes and
leaks (the table ``ATTACKS``) score 0 on their exercise, change nothing outside their run and
leave no process behind."""

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from minildm.course import submissions as unpacking
from minildm.course.exercises import (EXERCISES, SubmissionError, find_regions, replace_bodies, stub_body,
                                      submitted_bodies)
from minildm.course.grading import MAX_MESSAGE, collect_answers, grade, grade_of
from minildm.course.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = find_regions(ROOT)
Q_SAMPLE = "03.2"


def student_folder(target: Path, solved: tuple[str, ...] = (), body: dict[str, str] | None = None) -> Path:
    """A submission: the package with every region a stub, but the ``solved`` exercises (the
    instructor's code) and those of ``body`` (exercise -> the code written in its region)."""
    shutil.copytree(ROOT / "minildm", target / "minildm", ignore=shutil.ignore_patterns("__pycache__"))
    body = body or {}
    for path in {region.path for regions in SOLUTION.values() for region in regions}:
        text = (target / path).read_text()
        (target / path).write_text(replace_bodies(text, lambda region: None if region.exercise in solved else
                                                  body.get(region.exercise) or stub_body(region.exercise,
                                                                                         region.indent)))
    return target


def zip_of(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            link = zipfile.ZipInfo(symlink)
            link.external_attr = 0o120777 << 16
            archive.writestr(link, "/etc")
    return path


def lying_zip(path: Path) -> Path:
    """Three entries of 30 MB of zeros each whose central directory declares one byte each."""
    zip_of(path, {f"minildm/part{i}.py": bytes(30 * 2**20) for i in range(3)})
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        data[start + 24:start + 28] = (1).to_bytes(4, "little")  # the uncompressed size
        start = data.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda path: zip_of(path, {"../escape.py": b"x"}), "unsafe path"),
    (lambda path: zip_of(path, {"/etc/planted.py": b"x"}), "unsafe path"),
    (lambda path: zip_of(path, {"minildm/a.py": b"x"}, symlink="minildm/diffusion.py"), "symbolic link"),
    (lambda path: zip_of(path, {f"f{i}": b"" for i in range(unpacking.MAX_FILES + 1)}), "entries"),
    (lambda path: zip_of(path, {"minildm/big.py": bytes(51 * 2**20)}), "MB once unpacked"),
    (lying_zip, "refused|could not be unpacked"),
    (lambda path: path.write_bytes(b"PK\x03\x04 not a zip") and path, "could not be unpacked"),
])
def test_a_hostile_zip_is_refused_with_its_reason_and_writes_little(tmp_path, make, reason):
    archive = make(tmp_path / "mallory.zip")
    with pytest.raises(SubmissionError, match=reason):
        unpacking.extract(archive, tmp_path / "work" / "mallory")
    written = sum(path.stat().st_size for path in tmp_path.joinpath("work").rglob("*") if path.is_file())
    assert written <= unpacking.MAX_TOTAL_BYTES and not (tmp_path / "escape.py").exists()


def test_each_submission_is_unpacked_on_its_own(tmp_path):
    folder = tmp_path / "submissions"
    good = student_folder(folder / "alice", solved=(Q_SAMPLE,))
    zip_of(folder / "bob.zip", {"../escape.py": b"x"})
    (folder / "carol").mkdir()
    (folder / "carol" / "minildm").symlink_to(ROOT / "minildm")  # the grader's own solutions
    student_folder(folder / "dave")
    os.mkfifo(folder / "dave" / "minildm" / "hang.py")
    (folder / "erin").symlink_to(good)
    shutil.make_archive(str(folder / "frank"), "zip", folder / "alice")

    students = unpacking.unpack(folder, tmp_path / "work")
    assert students["alice"] == good and (students["frank"] / "minildm" / "diffusion.py").is_file()
    for student, reason in [("bob", "unsafe path"), ("carol", "symbolic link"), ("dave", "special file"),
                            ("erin", "symbolic link")]:
        assert reason in students[student], student
    answers = collect_answers(students, SOLUTION)
    for student in ("bob", "carol", "dave", "erin"):
        scores = [grade_of(e.id, answers[student, e.id], {}) for e in EXERCISES]
        assert all(g.score == 0.0 and g.output == students[student] for g in scores), student
    for student in ("alice", "frank"):
        solved = answers[student, Q_SAMPLE]
        assert solved == tuple(region.body for region in SOLUTION[Q_SAMPLE]), student
        assert all(answers[student, e.id] == "stub" for e in EXERCISES if e.id != Q_SAMPLE), student


def test_regions_are_found_in_linear_time_and_huge_sources_are_refused(tmp_path):
    submission = student_folder(tmp_path / "mallory")
    path = submission / SOLUTION[Q_SAMPLE][0].path
    path.write_text(path.read_text() + "    # Exercise 03.2: q_sample\n    ### BEGIN SOLUTION\n" * 10_000
                    + "### BEGIN SOLUTION\n" * 10_000 + "    ### END SOLUTION\n")
    assert 400_000 < path.stat().st_size < 2 * 2**20
    start = time.perf_counter()
    with pytest.raises(SubmissionError, match="removed or repeated"):
        submitted_bodies(submission, SOLUTION, Q_SAMPLE)
    assert time.perf_counter() - start < 2.0

    path.write_text(path.read_text() + "# padding\n" * 300_000)
    start = time.perf_counter()
    with pytest.raises(SubmissionError, match="larger than 2 MB"):
        submitted_bodies(submission, SOLUTION, Q_SAMPLE)
    assert time.perf_counter() - start < 2.0


# Hostile answers to exercise 03.2 (the body of q_sample(self, x0, t, noise)). Each tries to win
# marks it did not earn, to escape, or to leak; "chatty" is the control: a right answer that
# prints a lot, which must keep full marks. Placeholders: @ROOT@ the grader's checkout,
# @CLASS@ the submissions folder, @OUT@ the grades folder, @OUTSIDE@ a file of the host's,
# @TOKEN@ a word that names the processes an attack leaves, @PORT@ a listening port.
RIGHT = "alpha_bar = self.at(self.alpha_bars, t, x0)\nreturn alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise"
ATTACKS = {
    "skip": "__import__('pytest').skip('free marks')",
    "xfail": "__import__('pytest').xfail('free marks')",
    "patches-allclose": "import torch\ntorch.allclose = lambda *a, **k: True\nreturn x0",
    "patches-assert-close": "import torch.testing\ntorch.testing.assert_close = lambda *a, **k: None\nreturn x0",
    "patches-isclose": "import math\nmath.isclose = lambda *a, **k: True\nreturn x0",
    "patches-numpy": "import numpy\nnumpy.allclose = lambda *a, **k: True\nreturn x0",
    "patches-pytest-report": "import _pytest.reports as r\nr.TestReport.passed = property(lambda self: True)\nreturn x0",
    "rewrites-report": "import atexit\natexit.register(lambda: open('report.xml', 'w').write("
                       "'<testsuite><testcase name=\"test_ex03_2_q_sample_is_equation_4\"/></testsuite>'))\nreturn x0",
    "reads-caller-frames": "import inspect\nfound = [f.frame.f_locals[k] for f in inspect.stack() for k in "
                           "('expected', 'x_t') if k in f.frame.f_locals]\nreturn found[0] if found else x0",
    "imports-instructor-install": "import importlib.metadata, json\nurl = json.loads(importlib.metadata.distribution("
                                  "'minildm').read_text('direct_url.json'))['url']\nsource = url.removeprefix('file://')"
                                  " + '/minildm/diffusion.py'\nspace = {}\nexec(open(source).read(), space)\n"
                                  "return space['Diffusion']().q_sample(x0, t, noise)",
    "imports-instructor-path": "space = {}\nexec(open('@ROOT@/minildm/diffusion.py').read(), space)\n"
                               "return space['Diffusion']().q_sample(x0, t, noise)",
    "copies-classmate": "space = {}\nexec(open('@CLASS@/alice/minildm/diffusion.py').read(), space)\n"
                        "return space['Diffusion']().q_sample(x0, t, noise)",
    "leaks-hidden-tests": "raise ValueError(open('@ROOT@/tests/grading/test_grading.py').read())",
    "leaks-environment": "import os\nraise ValueError(open('/etc/passwd').read() * 50 + str(dict(os.environ)))",
    "replaces-probe": "import minildm.course.probes as p\np.PROBES['q_sample'] = lambda x0, t, noise: {'x_t': x0}\n"
                      "return x0",
    "garbles-replies": "import minildm.course.probing as p\np.encode = lambda header, values: b'\\x80\\x04' * 100\n"
                       "return x0",
    "wrong-shape": RIGHT + "[:1]",
    "wrong-dtype": RIGHT + ".double()",
    "not-a-tensor": "return 'x_t'",
    "nan": "return x0 * float('nan')",
    "huge-output": "import torch\nreturn torch.zeros(40_000_000)",
    "loops": "while True:\n    pass",
    "sleeps": "import time\ntime.sleep(10**6)",
    "stops-itself": "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)",
    "exits": "raise SystemExit(0)",
    "exits-hard": "import os\nos._exit(0)",
    "kills-parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nreturn x0",
    "allocates": "hoard = [bytearray(2**27) for _ in iter(int, 1)]",
    "spawns-sleepers": "import subprocess\nfor _ in range(50):\n    subprocess.Popen(['sleep', '@TOKEN@'])\nreturn x0",
    "detached-rewriter": "import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 2; echo forged > @OUT@/grades.csv', "
                         "'@TOKEN@'], start_new_session=True)\nreturn x0",
    "writes-outside": "open('@OUTSIDE@', 'w').write('forged')\nreturn x0",
    "plants-conftest": "open('@ROOT@/tests/grading/conftest.py', 'w').write('')\nreturn x0",
    "edits-grader": "open('@ROOT@/minildm/course/grading.py', 'a').write('# planted')\nreturn x0",
    "edits-classmate": "open('@CLASS@/alice/minildm/diffusion.py', 'w').write('')\nreturn x0",
    "connects": "import socket\nsocket.create_connection(('127.0.0.1', @PORT@), timeout=5)\nreturn x0",
    "chatty": "import os\nprint('x' * 10**6)\nos.write(1, b'\\x00' * 10**5)\n" + RIGHT,
}


def tree_digest(*folders: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for folder in folders for path in sorted(folder.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts}


def running(token: str) -> list[int]:
    import psutil

    return [process.pid for process in psutil.process_iter(["cmdline", "status"])
            if process.info["status"] != psutil.STATUS_ZOMBIE and token in " ".join(process.info["cmdline"] or [])]


@pytest.mark.slow
def test_every_attack_scores_zero_changes_nothing_outside_and_leaves_no_process(tmp_path, monkeypatch):
    import secrets
    import socket
    import tempfile
    import textwrap

    folder, out = tmp_path / "submissions", tmp_path / "out"
    monkeypatch.setenv("GRADER_TOKEN", "do-not-leak")
    indent = SOLUTION[Q_SAMPLE][0].indent
    student_folder(folder / "alice", solved=(Q_SAMPLE,))
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as host:  # outside /tmp: the host's own files
        outside = Path(host) / "grades.csv"
        outside.write_text("keep me")
        values = {"@ROOT@": str(ROOT), "@CLASS@": str(folder), "@OUT@": str(out), "@OUTSIDE@": str(outside),
                  "@TOKEN@": f"7{secrets.randbelow(10**9)}", "@PORT@": str(server.getsockname()[1])}
        for name, code in ATTACKS.items():
            for placeholder, value in values.items():
                code = code.replace(placeholder, value)
            student_folder(folder / name, body={Q_SAMPLE: textwrap.indent(code, indent) + "\n"})
        before = tree_digest(ROOT / "minildm", ROOT / "tests" / "grading", folder)

        grades = grade(folder, out, jobs=2, limits=Limits(wall_seconds=15, cpu_seconds=30), progress=lambda _: None)
        time.sleep(3)  # what a detached process would have written by now

        assert tree_digest(ROOT / "minildm", ROOT / "tests" / "grading", folder) == before
        assert outside.read_text() == "keep me"
    with pytest.raises(BlockingIOError):
        server.accept()
    assert not running(values["@TOKEN@"])
    scores = {student: {g.exercise: g for g in row}[Q_SAMPLE] for student, row in grades.items()}
    assert scores["alice"].score == scores["chatty"].score == 1.0
    assert {name: scores[name].score for name in ATTACKS if name != "chatty"} == dict.fromkeys(set(ATTACKS) - {"chatty"}, 0.0)
    rows = {line.split(",")[0]: line for line in (out / "grades.csv").read_text().splitlines()[1:]}
    assert set(rows) == set(grades)  # the grader's own table, not a forged one
    results = {name: json.loads((out / "results" / f"{name}.json").read_text()) for name in ATTACKS}
    for name, result in results.items():
        text = json.dumps(result)
        assert "def test_" not in text and "do-not-leak" not in text and str(ROOT) not in text, name
        assert all(len(test["output"]) <= 4 * MAX_MESSAGE for test in result["tests"]), name
    assert "time limit" in scores["loops"].output and "skip" in scores["skip"].output.lower()
