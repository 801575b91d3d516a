"""Running untrusted code: a submission's tests run in a throw-away folder with limits.

Every run gets a wall-clock limit, a CPU-time limit, a memory limit (address space, per
process), a file-size limit and no core dumps (``resource`` limits, inherited by everything it
starts), its own session, no network, and an environment that names nothing of the grader's.
Its output goes to a file, not a pipe, so a process that keeps it open cannot stall the grader.
When the run ends, by itself or at its time limit, every process it started ends with it. How
much more it gets depends on the machine:

- ``bubblewrap`` (Debian package ``bubblewrap``): the whole filesystem is mounted read-only
  except the run's folder, ``/tmp`` and ``/dev/shm`` are empty and private, the run has a user
  namespace of its own with every capability dropped (so even a grader running as root cannot
  remount anything writable), its own network, process ids, IPC and host name, and a cap on its
  number of processes;
- ``namespaces`` (``unshare`` from util-linux, where user namespaces are allowed): no network
  and its own process ids, but the filesystem is not protected beyond file permissions;
- ``none``: limits only.

Where bubblewrap cannot run (a container that forbids user namespaces, as on Gradescope), a
grader running as root can run submissions as an unprivileged account instead, named by
``MINILDM_SANDBOX_USER``: files are then protected by their permissions (the grader's own must
not be readable by others), and the account's process count is capped.

``course grade`` refuses to run without bubblewrap or that account unless told
``--unsafe-no-sandbox`` (:func:`check_isolation`).
"""

from __future__ import annotations

import os
import pwd
import resource
import secrets
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Iterator

from minildm.config import MinildmError
from minildm.course import cgroups

PRIVATE = ("/tmp", "/dev/shm")  # empty inside a bubblewrap run
RUN_MARKER = "MINILDM_SANDBOX_RUN"  # in the environment of every process of a run: how leftovers are found
OUTPUT_CHARACTERS = 2**18  # the end of a run's output that is kept
SANDBOX_USER = "MINILDM_SANDBOX_USER"  # an unprivileged account to run submissions as, without bubblewrap


@dataclass(frozen=True)
class Limits:
    """What one run may use: seconds of wall-clock and CPU time, bytes of address space (per
    process), bytes of memory in all (where a control group can be made), processes (threads
    count too), and the size of any file it writes."""

    wall_seconds: float = 120.0
    cpu_seconds: int = 240
    memory_bytes: int = 6 * 2**30
    total_memory_bytes: int = 4 * 2**30
    processes: int = 256
    file_bytes: int = 64 * 2**20


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str
    timed_out: bool


@cache
def isolation() -> str:
    """The strongest isolation this machine offers: ``bubblewrap``, ``namespaces`` or ``none``."""
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("bubblewrap", "namespaces"):
            prefix = _prefix(kind, Path(folder), ())
            if shutil.which(prefix[0]):
                try:
                    if subprocess.run([*prefix, "true"], capture_output=True, timeout=20).returncode == 0:
                        return kind
                except (OSError, subprocess.TimeoutExpired):
                    continue
    return "none"


def sandbox_user() -> tuple[str, int, int] | None:
    """The account ``MINILDM_SANDBOX_USER`` names (name, uid, gid), where the grader runs as root
    and bubblewrap cannot run; None otherwise."""
    name = os.environ.get(SANDBOX_USER)
    if not name or os.geteuid() != 0 or isolation() == "bubblewrap":
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise MinildmError(f"{SANDBOX_USER} names {name!r}, which is not an account on this machine") from None
    if entry.pw_uid == 0:
        raise MinildmError(f"{SANDBOX_USER} names {name!r}, which is root: name an unprivileged account")
    return name, entry.pw_uid, entry.pw_gid


def check_isolation(*, unsafe_no_sandbox: bool = False) -> str | None:
    """Refuse to grade without bubblewrap or a sandbox account (one line), unless
    ``unsafe_no_sandbox``: then the warning line to print. ``None`` when bubblewrap runs."""
    kind = isolation()
    if kind == "bubblewrap":
        return None
    if user := sandbox_user():
        return (f"grading as the unprivileged account {user[0]}: bubblewrap cannot run here, so files are protected "
                "by their permissions only and submissions have the network")
    if not unsafe_no_sandbox:
        raise MinildmError("grading runs untrusted code and needs bubblewrap, which cannot run here: install the "
                           "Debian package bubblewrap (or pass --unsafe-no-sandbox to grade without protection)")
    return (f"warning: grading without bubblewrap ({'no network for submissions, but ' if kind == 'namespaces' else ''}"
            "files outside a submission's folder are protected only by permissions, and a process that leaves its "
            "session may outlive its run)")


def _prefix(kind: str, folder: Path, hide: tuple[Path, ...]) -> list[str]:
    if kind == "bubblewrap":
        return _bubblewrap_prefix(folder, hide)
    if kind == "namespaces":  # --kill-child and the pid namespace: every process ends with the run
        return ["unshare", "--net", "--ipc", "--uts", "--map-root-user", "--pid", "--fork", "--kill-child",
                "--mount-proc"]
    return []


def _bubblewrap_prefix(folder: Path, hide: tuple[Path, ...]) -> list[str]:
    """Everything read-only; ``/tmp``, ``/dev/shm`` and the folders ``hide`` empty (the grader's
    Python, where it lies under them, bound back read-only); the folder writable. Temporary files
    go to the folder (``TMPDIR``, set by :func:`started`). ``--unshare-user --cap-drop ALL``: no
    capability even for root, so nothing can be remounted writable."""
    hidden = [*PRIVATE, *(str(path) for path in hide if path.is_dir())]
    private = [argument for path in hidden for argument in ("--tmpfs", path)]
    python = [argument for path in _python_paths(hidden) for argument in ("--ro-bind", str(path), str(path))]
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *private, *python,
            "--bind", str(folder), str(folder), "--unshare-user", "--unshare-ipc", "--unshare-uts",
            "--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--chdir", str(folder)]


def _python_paths(hidden: list[str]) -> list[Path]:
    """The folders of the grader's Python (prefixes, executable, installed packages) that lie
    under the ``hidden`` folders, as named and as resolved, parents first; never one that holds
    a hidden folder (a virtual environment inside the hidden checkout is shown, the checkout not)."""
    named = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix),
             Path(sys.executable).parent, *(Path(path) for path in sysconfig.get_paths().values()),
             *(Path(path) for path in site.getsitepackages())]
    paths = {path for entry in named if entry.is_dir() for path in (entry.absolute(), entry.resolve())}
    return sorted(path for path in paths if any(path.is_relative_to(folder) for folder in hidden)
                  and not any(Path(folder).is_relative_to(path) for folder in hidden))


def _process_cap(kind: str, limits: Limits) -> list[str]:
    """A command prefix that sets ``RLIMIT_NPROC`` inside the run's user namespace, where it
    counts the run's processes only. Set outside, it would cap every process of the grader's
    user. The kernel does not enforce it for uid 0 of the host (a grader running as root, whose
    runs are root mapped into their namespace), and there is no namespace to count in without
    isolation; then only the time limit and the end-of-run kill bound a fork bomb."""
    if kind == "none":
        return []
    code = ("import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NPROC, (n, n)); "
            "os.execvp(sys.argv[2], sys.argv[2:])")
    return [sys.executable, "-c", code, str(limits.processes)]


def _set_limits(limits: Limits, user: tuple[str, int, int] | None, group: cgroups.RunGroup | None) -> None:
    """In the child, before it runs the command: the run's control group if there is one, its
    own session, the resource limits, and the sandbox account if there is one (its processes
    capped: the cap counts that account's)."""
    if group:
        group.join()
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if user:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        os.setgroups([])
        os.setgid(user[2])
        os.setuid(user[1])


@dataclass
class Run:
    """A started run: its process, the file that collects its output, and its marker."""

    process: subprocess.Popen
    output: IO[bytes]
    marker: str
    group: cgroups.RunGroup | None = None
    ended: bool = False

    def end(self) -> None:
        """End every process of the run (:func:`end_run`) and close the pipes to it, once."""
        if self.ended:
            return
        self.ended = True
        end_run(self.process, self.marker)
        if self.group:
            self.group.end()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    def tail(self) -> str:
        """The last :data:`OUTPUT_CHARACTERS` bytes of the output, as text."""
        size = self.output.seek(0, os.SEEK_END)
        self.output.seek(max(0, size - OUTPUT_CHARACTERS))
        return self.output.read().decode(errors="replace")


@contextmanager
def started(command: list[str], folder: Path, limits: Limits, environment: dict[str, str], *,
            hide: tuple[Path, ...] = (), pipes: bool = False) -> Iterator[Run]:
    """Start ``command`` in ``folder`` under :func:`isolation` and ``limits``, with the folders
    ``hide`` out of its sight (bubblewrap only). With ``pipes`` its stdin and stdout are pipes
    to talk over; its output (stderr, and stdout without ``pipes``) goes to a file. On leaving,
    every process the run started is ended."""
    kind, user = isolation(), sandbox_user()
    (folder / "tmp").mkdir(exist_ok=True)
    if user:  # the run's folder becomes the account's
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, user[1], user[2], follow_symlinks=False)
    marker, group = secrets.token_hex(16), cgroups.create(limits.total_memory_bytes, limits.processes)
    environment = {**environment, "TMPDIR": str(folder / "tmp"), RUN_MARKER: marker}
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen([*_prefix(kind, folder, hide), *_process_cap(kind if not user else "none", limits),
                                        *command], cwd=folder, env=environment,
                                       stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                                       stdout=subprocess.PIPE if pipes else output, stderr=output,
                                       preexec_fn=lambda: _set_limits(limits, user, group))
        except BaseException:
            if group:
                group.end()
            raise
        run = Run(process, output, marker, group)
        try:
            yield run
        finally:
            run.end()


def run_isolated(command: list[str], folder: Path, limits: Limits, environment: dict[str, str], *,
                 hide: tuple[Path, ...] = ()) -> RunResult:
    """Run ``command`` to its end or its time limit (:func:`started`); its exit status and the
    end of its output."""
    with started(command, folder, limits, environment, hide=hide) as run:
        try:
            run.process.wait(timeout=limits.wall_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        run.end()
        return RunResult(run.process.returncode, run.tail(), timed_out)


def end_run(process: subprocess.Popen, marker: str, *, patience: float = 10.0) -> None:
    """Kill the run's session (with bubblewrap or unshare, its pid namespace dies with it), then
    any process still carrying the run's ``marker`` in its environment (one that left the
    session), until none is left or ``patience`` seconds have passed."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    deadline = time.monotonic() + patience
    while (left := processes_of(marker)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def processes_of(marker: str) -> list[int]:
    """The ids of the processes whose environment holds ``RUN_MARKER=marker`` (a zombie's reads
    as empty)."""
    needle = f"{RUN_MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
