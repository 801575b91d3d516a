"""Gradescope's autograder bundle, run against a local copy of Gradescope's folder layout
(``/autograder/source``, ``submission``, ``results``), and the sandbox account that stands in
for bubblewrap where a container forbids it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from minildm.app.cli import main
from minildm.config import MinildmError
from minildm.course import sandbox
from minildm.course.exercises import EXERCISES, find_regions, replace_bodies, stub_body
from minildm.course.sandbox import Limits, check_isolation, run_isolated

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = find_regions(ROOT)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradescope") / "autograder.zip"
    assert main(["course", "gradescope", str(out)]) == 0
    return out


def test_the_bundle_holds_the_scripts_the_package_and_the_hidden_checks(bundle):
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        modes = {entry.filename: entry.external_attr >> 16 for entry in archive.infolist()}
        setup = archive.read("setup.sh").decode()
        requirements = archive.read("requirements.txt").decode().split()
    assert {"setup.sh", "run_autograder", "requirements.txt", "tests/grading/test_grading.py",
            "minildm/course/gradescope.py", "minildm/diffusion.py"} <= names
    assert modes["setup.sh"] & 0o111 and modes["run_autograder"] & 0o111
    assert not any(name.startswith(("notebooks/", "tests/test_", "data/")) for name in names)
    assert "torch>=2.2" in requirements and "safetensors>=0.4" in requirements
    assert "pytest" in requirements  # the hidden checks' module imports it for its fixture
    assert "bubblewrap" in setup and "useradd" in setup and "chmod -R go-rwx /autograder/source" in setup
    assert "pip install" in setup and "/autograder/source[" not in setup  # the package itself is not installed


def autograder_folder(bundle: Path, folder: Path, q_sample: str | None) -> Path:
    """Gradescope's layout: the unpacked bundle, and a submission whose exercise 03.2 is
    ``q_sample`` (None: the solution) and every other exercise the stub."""
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(folder / "source")
    submission = folder / "submission"
    shutil.copytree(ROOT / "minildm", submission / "minildm", ignore=shutil.ignore_patterns("__pycache__"))
    for path in {region.path for regions in SOLUTION.values() for region in regions}:
        text = (submission / path).read_text()
        (submission / path).write_text(replace_bodies(text, lambda region: None if region.exercise == "03.2"
                                                      and q_sample is None else q_sample if region.exercise == "03.2"
                                                      else stub_body(region.exercise, region.indent)))
    return folder


def run_autograder(folder: Path) -> dict:
    environment = {"PATH": os.environ["PATH"], "AUTOGRADER": str(folder), "MINILDM_PYTHON": sys.executable,
                   "HOME": str(folder)}
    result = subprocess.run(["bash", str(folder / "source" / "run_autograder")], env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((folder / "results" / "results.json").read_text())


def test_run_autograder_grades_one_submission_into_results_json(bundle, tmp_path):
    result = run_autograder(autograder_folder(bundle, tmp_path, None))
    assert result["max_score"] == len(EXERCISES) and result["score"] == 1.0
    scores = {test["name"].split(":")[0]: test["score"] for test in result["tests"]}
    assert scores.pop("Exercise 03.2") == 1.0 and set(scores.values()) == {0.0}


def test_in_the_bundle_a_submission_cannot_read_the_hidden_checks_or_the_solution(bundle, tmp_path):
    indent = SOLUTION["03.2"][0].indent
    thief = textwrap.indent(f"space = {{}}\nexec(open({str(tmp_path / 'source' / 'minildm' / 'diffusion.py')!r})"
                            ".read(), space)\nreturn space['Diffusion']().q_sample(x0, t, noise)\n", indent)
    result = run_autograder(autograder_folder(bundle, tmp_path, thief))
    q_sample = next(test for test in result["tests"] if test["name"].startswith("Exercise 03.2"))
    assert result["score"] == 0.0 and "FileNotFoundError" in q_sample["output"]


def test_a_grader_that_cannot_run_says_why_in_results_json(tmp_path):
    from minildm.course.gradescope import run_autograder as run

    (tmp_path / "source").mkdir()
    (tmp_path / "submission").mkdir()
    result = run(tmp_path, progress=lambda _: None)
    assert result["score"] == 0.0 and "could not grade" in result["output"]
    assert json.loads((tmp_path / "results" / "results.json").read_text()) == result


def test_a_sandbox_account_stands_in_for_bubblewrap(monkeypatch, tmp_path):
    """As root, with bubblewrap taken away: runs go to the unprivileged account ``nobody``, which
    cannot read or write the grader's files but owns its run's folder."""
    monkeypatch.setattr(sandbox, "isolation", lambda: "none")
    monkeypatch.setenv(sandbox.SANDBOX_USER, "nobody")
    if os.geteuid() != 0:  # only root can change accounts: then there is no sandbox account
        assert sandbox.sandbox_user() is None
        return
    assert check_isolation().startswith("grading as the unprivileged account nobody")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as host:
        secret = Path(host) / "secret"
        secret.write_text("hidden checks")
        secret.chmod(0o600)
        run_folder = tmp_path / "run"
        run_folder.mkdir()
        tmp_path.chmod(0o711)
        script = f"id -u; cat {secret} || echo unreadable; echo x > {host}/planted || echo unwritable; echo mine > own"
        result = run_isolated(["sh", "-c", script], run_folder, Limits(), {"PATH": "/usr/bin:/bin"})
        lines = result.output.split()
        assert lines[0] == "65534" and "unreadable" in lines and "unwritable" in lines
        assert "hidden" not in result.output and not (Path(host) / "planted").exists()
    assert (run_folder / "own").read_text() == "mine\n"
    monkeypatch.setenv(sandbox.SANDBOX_USER, "root")
    with pytest.raises(MinildmError, match="which is root"):
        sandbox.sandbox_user()
