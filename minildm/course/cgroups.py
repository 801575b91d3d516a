"""A control group per sandboxed run: a cap on the run's *total* memory and number of processes,
whatever user it runs as, where the kernel lets the grader make one.

Resource limits (``setrlimit``) count per process (memory) or per user (processes, and not at
all for root); a control group counts everything the run started. The grader needs to be able
to write the cgroup file system, which is usually so for root on a host or a VM, and usually not
inside a container. Both layouts are handled:

- cgroup v2: a group next to the grader's own (or at the root), where ``memory`` and ``pids``
  are enabled for children; limits ``memory.max`` and ``pids.max``;
- cgroup v1: a group in the ``memory`` and in the ``pids`` hierarchy, below the grader's own;
  limits ``memory.limit_in_bytes`` and ``pids.max``.

Where neither can be made, :func:`create` returns None and the run has the resource limits
alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class RunGroup:
    """One run's groups (one per hierarchy) and the files a process joins them by."""

    folders: tuple[Path, ...]

    def join(self) -> None:
        """Put the calling process into the groups (in the child, before it runs the command:
        only ``os`` calls, safe after ``fork``)."""
        pid = str(os.getpid()).encode()
        for folder in self.folders:
            descriptor = os.open(folder / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(descriptor, pid)
            finally:
                os.close(descriptor)

    def pids(self) -> set[int]:
        found = set()
        for folder in self.folders:
            try:
                found.update(int(line) for line in (folder / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return found

    def end(self, patience: float = 10.0) -> None:
        """Kill every process left in the groups, then remove them."""
        deadline = time.monotonic() + patience
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)
        for folder in self.folders:
            for _ in range(20):  # a group empties a moment after its last process is reaped
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def own_groups() -> dict[str, str]:
    """The grader's own group in each hierarchy: controller (``""`` for v2) -> path."""
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path
    return groups


def make_group(folder: Path, limits: dict[str, int]) -> Path:
    folder.mkdir()
    try:
        for name, value in limits.items():
            (folder / name).write_text(str(value))
    except OSError:
        folder.rmdir()
        raise
    return folder


def create(memory_bytes: int, processes: int) -> RunGroup | None:
    """A new group for one run, capped at ``memory_bytes`` in all and ``processes``; None where
    this machine does not let the grader make one."""
    name = f"minildm-run-{secrets.token_hex(8)}"
    try:
        groups = own_groups()
        if (CGROUP / "cgroup.controllers").is_file():
            own = CGROUP / groups.get("", "/").lstrip("/")
            for parent in dict.fromkeys([own.parent if own != CGROUP else CGROUP, CGROUP]):
                if {"memory", "pids"} <= set((parent / "cgroup.subtree_control").read_text().split()):
                    limits = {"memory.max": memory_bytes, "pids.max": processes}
                    return RunGroup((make_group(parent / name, limits),))
            return None
        if (CGROUP / "memory").is_dir() and (CGROUP / "pids").is_dir():
            memory = make_group(CGROUP / "memory" / groups["memory"].lstrip("/") / name,
                                {"memory.limit_in_bytes": memory_bytes})
            try:
                pids = make_group(CGROUP / "pids" / groups["pids"].lstrip("/") / name, {"pids.max": processes})
            except OSError:
                memory.rmdir()
                raise
            return RunGroup((memory, pids))
    except (OSError, KeyError, ValueError):
        return None
    return None
