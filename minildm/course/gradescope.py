"""Gradescope: ``python -m minildm course gradescope OUT.zip`` writes the autograder bundle.

Gradescope unpacks the bundle into ``/autograder/source``, runs ``setup.sh`` once when it
builds the image, then ``run_autograder`` for every submission, in a fresh container, and
shows ``/autograder/results/results.json``. The bundle holds:

- ``setup.sh``: bubblewrap, a virtual environment in ``/opt/minildm-venv`` with the package's
  dependencies (torch from the CPU wheel index) but not the package itself, so nothing of the
  instructor's code lies where a submission can read it; an unprivileged account
  ``minildm-sandbox`` for containers where bubblewrap cannot run; the source readable by root
  only;
- ``run_autograder``: runs :func:`run_autograder` with the source on the grader's import path;
- the instructor's package and ``tests/grading`` (the hidden checks), and ``requirements.txt``.

:func:`run_autograder` grades the one submission exactly as ``course grade`` grades a class:
each exercise on its own, its checks in the grader's process, the submission's code in the
sandbox. A student's code never sees the hidden checks.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from minildm.config import MinildmError
from minildm.course.grading import GRADING_TESTS, grade
from minildm.course.sandbox import SANDBOX_USER, Limits
from minildm.course.student import tracked_files

VENV = "/opt/minildm-venv"
ACCOUNT = "minildm-sandbox"
SETUP = f"""#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends bubblewrap python3 python3-venv
python3 -m venv {VENV}
{VENV}/bin/pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu
{VENV}/bin/pip install --no-cache-dir -r /autograder/source/requirements.txt
id -u {ACCOUNT} >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin {ACCOUNT}
chmod -R go-rwx /autograder/source
"""
RUN = f"""#!/usr/bin/env bash
# Gradescope runs this, as root, for every submission.
set -euo pipefail
AUTOGRADER="${{AUTOGRADER:-/autograder}}"
export PYTHONPATH="$AUTOGRADER/source"
export {SANDBOX_USER}="${{{SANDBOX_USER}:-{ACCOUNT}}}"
exec "${{MINILDM_PYTHON:-{VENV}/bin/python}}" -m minildm.course.gradescope "$AUTOGRADER"
"""


def requirements(root: Path) -> str:
    """The package's dependencies, one per line, from ``pyproject.toml`` (torch too: pip keeps
    the CPU build that ``setup.sh`` installed first), and pytest, which the hidden checks'
    module imports for its fixture."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return "\n".join([*project["dependencies"], "pytest"]) + "\n"


def write_bundle(out: Path, root: Path) -> int:
    """Write the autograder bundle of the checkout ``root`` into the zip ``out``; returns the
    number of source files it holds."""
    if out.suffix != ".zip":
        raise MinildmError(f"{out}: Gradescope's autograder bundle is a .zip file")
    if not (root / GRADING_TESTS).is_dir():
        raise MinildmError(f"the bundle needs the instructor's checkout with {GRADING_TESTS}/ (a private fork)")
    sources = [name for name in tracked_files(root) if name.startswith(("minildm/", GRADING_TESTS + "/"))]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, text in (("setup.sh", SETUP), ("run_autograder", RUN)):
            entry = zipfile.ZipInfo(name)
            entry.external_attr = 0o100755 << 16
            bundle.writestr(entry, text)
        bundle.writestr("requirements.txt", requirements(root))
        for name in sources:
            bundle.write(root / name, name)
    return len(sources)


def place_submission(submission: Path, submissions: Path) -> None:
    """Put Gradescope's ``submission`` folder into the class folder ``submissions`` as the one
    student ``submission``: a single uploaded zip as it is, else the folder, symbolic links kept
    (so that unpacking refuses them)."""
    entries = list(submission.iterdir()) if submission.is_dir() else []
    if len(entries) == 1 and entries[0].suffix == ".zip" and entries[0].is_file():
        shutil.copyfile(entries[0], submissions / "submission.zip")
    else:
        shutil.copytree(submission, submissions / "submission", symlinks=True)


def run_autograder(autograder: Path, *, limits: Limits = Limits(), progress=print) -> dict:
    """Grade ``autograder/submission`` with the checkout ``autograder/source``; write and return
    Gradescope's ``results.json``. A grader that cannot run says why in it, scoring 0."""
    results = autograder / "results"
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        submissions, out = Path(folder) / "submissions", Path(folder) / "out"
        submissions.mkdir()
        try:
            place_submission(autograder / "submission", submissions)
            grade(submissions, out, root=autograder / "source", limits=limits, progress=progress)
            result = json.loads(next((out / "results").glob("*.json")).read_text())
        except Exception as error:  # Gradescope shows results.json, not a traceback: say why there
            reason = str(error) if isinstance(error, MinildmError) else f"{type(error).__name__}: {error}"
            result = {"score": 0.0, "output": f"the autograder could not grade this submission: {reason}"[:1000]}
    (results / "results.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    os.umask(0o022)
    run_autograder(Path(sys.argv[1] if len(sys.argv) > 1 else "/autograder"))


if __name__ == "__main__":
    main()
