"""Running untrusted code: a submission's tests run in a throw-away folder with limits.

Every run gets a wall-clock limit, a CPU-time limit and a memory limit (``resource`` limits,
inherited by everything it starts), its own process group (killed as a whole on timeout),
no network, and an environment that names nothing of the grader's. How much more it gets
depends on the machine:

- ``bubblewrap`` (Debian package ``bubblewrap``): the whole filesystem is mounted read-only
  except the run's folder (which also holds its temporary files), and the network and process
  ids are in namespaces of their own;
- ``namespaces`` (``unshare`` from util-linux, where user namespaces are allowed): no
  network, but the filesystem is not protected beyond file permissions;
- ``none``: limits only; :func:`isolation` says so in one warning line.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """What one run may use: seconds of wall-clock and CPU time, bytes of address space."""

    wall_seconds: float = 120.0
    cpu_seconds: int = 240
    memory_bytes: int = 6 * 2**30


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str
    timed_out: bool


@cache
def isolation() -> str:
    """The strongest isolation this machine offers: ``bubblewrap``, ``namespaces`` or ``none``."""
    for kind, prefix in (("bubblewrap", _bubblewrap_prefix(Path("/"))), ("namespaces", _unshare_prefix())):
        if shutil.which(prefix[0]):
            try:
                if subprocess.run([*prefix, "true"], capture_output=True, timeout=20).returncode == 0:
                    return kind
            except (OSError, subprocess.TimeoutExpired):
                continue
    return "none"


def isolation_warning() -> str | None:
    """One line for the terminal when the filesystem outside a run's folder is not protected."""
    kind = isolation()
    if kind == "bubblewrap":
        return None
    return (f"warning: bubblewrap is not available ({'no network for submissions, but ' if kind == 'namespaces' else ''}"
            "files outside a submission's folder are protected only by permissions); "
            "install the Debian package bubblewrap for stronger isolation")


def _bubblewrap_prefix(folder: Path) -> list[str]:
    """Everything read-only (``/tmp`` too: the grader's Python may live there), the folder
    writable; temporary files go to the folder (``TMPDIR``, set by :func:`run_isolated`)."""
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--bind", str(folder), str(folder), "--unshare-net", "--unshare-pid", "--die-with-parent",
            "--chdir", str(folder)]


def _unshare_prefix() -> list[str]:
    return ["unshare", "--net", "--map-root-user"]


def _set_limits(limits: Limits) -> None:
    """In the child, before it runs the command: its own session, and the resource limits."""
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))


def run_isolated(command: list[str], folder: Path, limits: Limits, environment: dict[str, str]) -> RunResult:
    """Run ``command`` in ``folder`` under :func:`isolation` and ``limits``."""
    kind = isolation()
    prefix = {"bubblewrap": _bubblewrap_prefix(folder), "namespaces": _unshare_prefix(), "none": []}[kind]
    (folder / "tmp").mkdir(exist_ok=True)
    environment = {**environment, "TMPDIR": str(folder / "tmp")}
    process = subprocess.Popen([*prefix, *command], cwd=folder, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace",
                               preexec_fn=lambda: _set_limits(limits))
    try:
        output, _ = process.communicate(timeout=limits.wall_seconds)
        return RunResult(process.returncode, output, timed_out=False)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = process.communicate()
        return RunResult(process.returncode, output, timed_out=True)
