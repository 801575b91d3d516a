"""The grader against hostile submissions (issue 27): forged skips, hostile test reports, huge
test names, unsafe zips, symbolic links and quadratic markers each score 0 with a reason, and
the rest of the class is still graded."""

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
from minildm.course.grading import (MAX_MESSAGE, MAX_NAME, ReportError, collect_answers, grade, grade_of, outcomes,
                                    read_report, write_reports)
from minildm.course.grading import TestResult as Outcome
from minildm.course.sandbox import Limits, RunResult

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = find_regions(ROOT)
Q_SAMPLE = "03.2"
Q_SAMPLE_TESTS = ["test_ex03_2_q_sample_is_equation_4", "test_ex03_2_q_sample_has_the_right_mean_and_variance"]


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


def test_a_real_pytest_report_counts_skip_xfail_error_and_absence_as_failures(tmp_path):
    (tmp_path / "test_forged.py").write_text(
        "import pytest\n"
        "def test_ex03_2_passes():\n    assert True\n"
        "def test_ex03_2_skips():\n    pytest.skip('free marks')\n"
        "@pytest.mark.xfail(reason='free marks')\ndef test_ex03_2_xfails():\n    assert False\n"
        "def test_ex03_2_xfails_inside():\n    pytest.xfail('free marks')\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('setup')\n"
        "def test_ex03_2_errors(broken):\n    pass\n")
    report = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                    f"--junitxml={report}", str(tmp_path / "test_forged.py")], capture_output=True, timeout=120)
    reported = {test.name: test for test in read_report(report)}
    assert reported["test_ex03_2_passes"].passed
    for name in ("test_ex03_2_skips", "test_ex03_2_xfails", "test_ex03_2_xfails_inside", "test_ex03_2_errors"):
        assert not reported[name].passed, name
    assert "free marks" in reported["test_ex03_2_skips"].message

    expected = [*reported, "test_ex03_2_never_ran"]
    results = outcomes(expected, list(reported.values()))
    assert [test.passed for test in results] == [True, False, False, False, False, False]
    assert "missing from the test report" in results[-1].message
    assert grade_of(Q_SAMPLE, ("body",), {(Q_SAMPLE, ("body",)): results}).score == round(1 / 6, 3)


def test_a_report_of_only_skips_or_without_the_expected_tests_scores_zero():
    skipped = [Outcome(name, False, "skipped or expected to fail, which counts as a failure: x")
               for name in Q_SAMPLE_TESTS]
    forged = [Outcome("test_ex03_2_made_up", True, "")]
    for reported in (skipped, forged, []):
        results = {(Q_SAMPLE, ("body",)): outcomes(Q_SAMPLE_TESTS, reported)}
        assert grade_of(Q_SAMPLE, ("body",), results).score == 0.0


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
                  '<testsuite><testcase name="&lol2;"/></testsuite>')


@pytest.mark.parametrize("content", ["<testsuite><testcase name='a'>", "not xml at all", BILLION_LAUGHS,
                                     "<testsuite>" + " " * (6 * 2**20) + "</testsuite>", None, "symlink"])
def test_a_hostile_report_cannot_be_read_and_says_so(tmp_path, content):
    report = tmp_path / "report.xml"
    if content == "symlink":
        (tmp_path / "secret").write_text("<testsuite><testcase name='test_ex03_2_x'/></testsuite>")
        report.symlink_to(tmp_path / "secret")
    elif content is not None:
        report.write_text(content)
    with pytest.raises(ReportError, match="the test report could not be read"):
        read_report(report)


def test_run_tests_gives_a_hostile_report_zero_with_a_reason(tmp_path, monkeypatch):
    from minildm.course import grading

    def plant_report(command, folder, limits, environment):
        (folder / "report.xml").write_text(BILLION_LAUGHS)
        return RunResult(0, "", timed_out=False)

    monkeypatch.setattr(grading, "run_isolated", plant_report)
    bodies = tuple(region.body for region in SOLUTION[Q_SAMPLE])
    results = grading.run_tests(ROOT, SOLUTION, Q_SAMPLE, bodies, tmp_path, Limits())
    assert [test.passed for test in results] == [False] and "could not be read" in results[0].message
    assert grade_of(Q_SAMPLE, bodies, {(Q_SAMPLE, bodies): results}).score == 0.0


def test_names_and_messages_are_capped_and_hide_the_grader_s_paths(tmp_path):
    loot = "x" * 26_000
    message = f"AssertionError: {ROOT}/minildm/diffusion.py {tmp_path}/run-1/tests/grading/test_grading.py:12 {loot}"
    (tmp_path / "report.xml").write_text(
        f'<testsuite><testcase name="test_ex03_2_{loot}"><failure message="{message}"/></testcase></testsuite>')
    [test] = read_report(tmp_path / "report.xml", hide=(ROOT, tmp_path))
    assert len(test.name) <= MAX_NAME and len(test.message) <= MAX_MESSAGE
    assert str(ROOT) not in test.message and str(tmp_path) not in test.message
    assert "tests/grading" not in test.message and "<grader>/minildm/diffusion.py" in test.message

    grades = {"mallory": [grade_of(Q_SAMPLE, ("body",), {(Q_SAMPLE, ("body",)): [test]})] * len(EXERCISES)}
    write_reports(grades, tmp_path / "out")
    result = (tmp_path / "out" / "results" / "mallory.json").read_text()
    assert loot not in result and len(result) < len(EXERCISES) * 2 * (MAX_NAME + MAX_MESSAGE)


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


@pytest.mark.slow
def test_a_class_with_forged_skips_and_bad_submissions_grades_the_good_one(tmp_path):
    folder = tmp_path / "submissions"
    student_folder(folder / "alice", solved=(Q_SAMPLE,))
    indent = SOLUTION[Q_SAMPLE][0].indent
    student_folder(folder / "mallory", body={Q_SAMPLE: f"{indent}__import__('pytest').skip('free marks')\n"})
    zip_of(folder / "bob.zip", {"minildm/../../escape.py": b"x"})
    (folder / "carol").mkdir()
    (folder / "carol" / "minildm").symlink_to(ROOT / "minildm")

    grades = grade(folder, tmp_path / "out", limits=Limits(wall_seconds=60), progress=lambda _: None)
    scores = {student: {g.exercise: g.score for g in row} for student, row in grades.items()}
    assert scores["alice"][Q_SAMPLE] == 1.0 and sum(scores["alice"].values()) == 1.0
    assert all(sum(scores[student].values()) == 0.0 for student in ("mallory", "bob", "carol"))
    report = json.loads((tmp_path / "out" / "results" / "mallory.json").read_text())
    output = next(test["output"] for test in report["tests"] if test["name"].startswith(f"Exercise {Q_SAMPLE}:"))
    assert "skipped" in output and "free marks" in output
    carol = json.loads((tmp_path / "out" / "results" / "carol.json").read_text())["tests"]
    assert all("symbolic link" in test["output"] for test in carol)
