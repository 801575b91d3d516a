"""The first cell of every notebook, in the four places a notebook is opened, all offline:
minildm already importable; a checkout that is not installed (a fresh JupyterLab kernel); a
fresh Colab runtime without a checkout (the clone source is a local repository, named by
MINILDM_REPOSITORY); and anywhere else.

The fresh kernels are new virtual environments that see this environment's packages (torch,
numpy, setuptools) through a path file, but not minildm; pip runs with no index, so nothing
can be downloaded and any attempt to replace torch would fail."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from minildm.app import notebooks
from minildm.config import checkout_root

pytestmark = pytest.mark.integration  # trains models or runs whole commands: `make unit` leaves this file out

ROOT = checkout_root()
SUMMARY = re.compile(r"minildm \d+\.\d+\.\d+ \(torch [^)]+\); profile '\w+' on .+\n"
                     r"presets: data [0-9a-f]{8}, autoencoder [0-9a-f]{8}, ldm [0-9a-f]{8}, judge [0-9a-f]{8}$")


def run_cell(python: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    source = notebooks.setup_cell_source(notebooks.repository_url(ROOT))
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PIP_"))}
    environment.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1", **env)
    return subprocess.run([str(python), "-c", source], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


def fresh_kernel(folder: Path) -> Path:
    """A new virtual environment: this one's packages are visible, minildm is not."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)  # pip: this one's
    site_packages = next((folder / "lib").glob("python*/site-packages"))
    (site_packages / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin" / "python"


def copy_checkout(destination: Path) -> Path:
    """The repository's files (tracked and new, not ignored) as a new checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def imports_minildm(python: Path) -> str:
    """Where a new process of ``python`` finds minildm and torch."""
    code = "import minildm, torch; print(minildm.__file__); print(torch.__file__)"
    return subprocess.run([str(python), "-c", code], cwd="/", capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def kernel(tmp_path) -> Path:
    python = fresh_kernel(tmp_path / "venv")
    assert "minildm" not in imports_minildm(python)  # the premise: a kernel without minildm
    return python


def test_every_notebook_starts_with_the_setup_cell_for_the_repository_in_pyproject():
    expected = notebooks.setup_cell_source(notebooks.repository_url(ROOT))
    assert 'REPOSITORY = "https://' in expected
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        assert notebooks.find_setup_cell(notebook) == 1, path.name
        assert notebook.cells[1].source == expected, f"{path.name}: run `python -m minildm course setup-cells`"


def test_a_fork_rewrites_every_setup_cell(tmp_path):
    fork = copy_checkout(tmp_path / "fork")
    pyproject = fork / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(notebooks.repository_url(ROOT),
                                                       "https://example.org/course/minildm"))
    changed = notebooks.write_setup_cells(fork)
    assert len(changed) == len(list((fork / "notebooks").glob("*.ipynb"))) == 11
    notebook = nbformat.read(changed[0], as_version=4)
    assert 'REPOSITORY = "https://example.org/course/minildm"' in notebook.cells[1].source
    assert sum(notebooks.SETUP_TAG in c.metadata.get("tags", []) for c in notebook.cells) == 1
    assert notebooks.write_setup_cells(fork) == []  # a second run changes nothing


def test_a_student_copy_clones_the_repository_it_is_published_in(tmp_path, capsys):
    from minildm.app.cli import main

    out = tmp_path / "student"
    assert main(["course", "student", str(out), "--repository", "https://example.org/course/student-copy"]) == 0
    assert notebooks.repository_url(out) == "https://example.org/course/student-copy"
    for path in sorted((out / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        assert 'REPOSITORY = "https://example.org/course/student-copy"' in notebook.cells[1].source
        assert all(not cell.get("outputs") for cell in notebook.cells)  # still cleared


def test_where_minildm_imports_it_says_version_profile_and_device():
    result = run_cell(Path(sys.executable), ROOT / "notebooks", MINILDM_PROFILE="tiny")
    assert result.returncode == 0, result.stderr
    assert SUMMARY.fullmatch(result.stdout.strip()) and "profile 'tiny' on CPU" in result.stdout


def test_in_a_checkout_it_installs_the_checkout_and_keeps_torch(kernel, tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    result = run_cell(kernel, checkout / "notebooks")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("installing minildm from checkout/ with pip")  # said before the wait
    assert SUMMARY.fullmatch("\n".join(result.stdout.splitlines()[-2:]))
    minildm_file, torch_file = imports_minildm(kernel).splitlines()
    assert Path(minildm_file).is_relative_to(checkout)  # editable: the checkout itself
    assert Path(torch_file).is_relative_to(sysconfig.get_paths()["purelib"])  # the runtime's torch, untouched
    assert not list((tmp_path / "venv").glob("lib/python*/site-packages/torch"))


def test_on_a_fresh_colab_runtime_it_clones_the_repository_and_installs_it(kernel, tmp_path):
    origin = copy_checkout(tmp_path / "origin")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the course"]):
        subprocess.run(git + command, cwd=origin, check=True)
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()
    result = run_cell(kernel, content, COLAB_RELEASE_TAG="test", MINILDM_REPOSITORY=str(origin))
    assert result.returncode == 0, result.stderr
    assert SUMMARY.fullmatch("\n".join(result.stdout.splitlines()[-2:]))
    assert (content / "minildm" / "notebooks" / "05_train_ldm.ipynb").is_file()
    minildm_file, torch_file = imports_minildm(kernel).splitlines()
    assert Path(minildm_file).is_relative_to(content / "minildm")
    assert Path(torch_file).is_relative_to(sysconfig.get_paths()["purelib"])


def test_anywhere_else_it_prints_how_to_install(kernel, tmp_path):
    result = run_cell(kernel, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"minildm is not installed: run `pip install git+{notebooks.repository_url(ROOT)}`, "
        "or open the notebook from a checkout"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["venv"]  # nothing cloned, nothing written
