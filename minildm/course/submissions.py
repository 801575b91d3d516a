"""Unpacking a class's submissions, each on its own: one bad submission scores 0 with the reason,
and the rest of the class is graded.

A submission is a folder or a ``.zip`` of one. It is refused (every exercise scores 0 with the
reason) when it holds a symbolic link or anything but plain files and folders, or, for a zip,
an entry with an absolute path or ``..``, more than :data:`MAX_FILES` entries, or more than
:data:`MAX_TOTAL_BYTES` once unpacked. A zip's sizes are checked twice: as its header declares
them before anything is written, and as the bytes actually come out while extracting, so a
header that lies does not help a zip bomb.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from minildm.config import MinildmError
from minildm.course.exercises import SubmissionError

MAX_FILES = 5_000
MAX_TOTAL_BYTES = 50 * 2**20
MAX_FOLDER_ENTRIES = 100_000  # a folder submission (a whole repository, perhaps with .git) is walked up to this
CHUNK = 2**20


def unpack(submissions: Path, work: Path) -> dict[str, Path | str]:
    """Each submission by student name: its folder (zips extracted into ``work``), or why it
    cannot be graded, in words."""
    if not submissions.is_dir():
        raise MinildmError(f"no such folder: {submissions}")
    found: dict[str, Path | str] = {}
    for entry in sorted(submissions.iterdir()):
        name = entry.stem if entry.suffix == ".zip" else entry.name
        try:
            if entry.is_symlink():
                raise SubmissionError("the submission is a symbolic link, not a folder or a zip")
            if entry.is_dir():
                check_folder(entry)
                found[name] = entry
            elif entry.suffix == ".zip":
                found[name] = extract(entry, work / "unpacked" / name)
        except SubmissionError as error:
            found[name] = str(error)
    if not found:
        raise MinildmError(f"{submissions} holds no submissions (folders or .zip files)")
    return found


def check_folder(folder: Path) -> None:
    """Refuse a folder that holds a symbolic link (``minildm`` -> the grader's own copy would
    grade the grader's code) or a special file (a FIFO would hang the grader reading it)."""
    seen = 0
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            mode = os.lstat(os.path.join(parent, name)).st_mode
            relative = os.path.relpath(os.path.join(parent, name), folder)
            if stat.S_ISLNK(mode):
                raise SubmissionError(f"the submission holds a symbolic link ({relative[:200]!r}): refused")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise SubmissionError(f"the submission holds a special file ({relative[:200]!r}): refused")
        seen += len(folders) + len(files)
        if seen > MAX_FOLDER_ENTRIES:
            raise SubmissionError(f"the submission holds more than {MAX_FOLDER_ENTRIES} files: refused")


def extract(archive: Path, target: Path) -> Path:
    """Unzip ``archive`` into ``target`` after :func:`check_members`, counting the bytes that come
    out; a single top folder (but ``minildm`` itself) is stepped into."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = opened.infolist()
            check_members(members)
            written = 0
            for member in members:
                written = extract_member(opened, member, target, written)
    except SubmissionError as error:
        shutil.rmtree(target, ignore_errors=True)
        raise SubmissionError(f"{archive.name}: {error}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, EOFError,
            OSError, zlib.error, lzma.LZMAError) as error:
        shutil.rmtree(target, ignore_errors=True)
        raise SubmissionError(f"{archive.name} could not be unpacked ({type(error).__name__})") from None
    target.mkdir(parents=True, exist_ok=True)
    children = [child for child in target.iterdir() if child.name != "__MACOSX"]
    single = len(children) == 1 and children[0].is_dir() and children[0].name != "minildm"
    return children[0] if single else target


def check_members(members: list[zipfile.ZipInfo]) -> None:
    """Refuse unsafe paths, symbolic links, too many entries and too many declared bytes."""
    if len(members) > MAX_FILES:
        raise SubmissionError(f"{len(members)} entries, more than {MAX_FILES}: refused")
    for member in members:
        name = member.filename.replace("\\", "/")
        if name.startswith("/") or ".." in PurePosixPath(name).parts or ":" in name.split("/")[0]:
            raise SubmissionError(f"unsafe path {member.filename[:200]!r}: refused")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise SubmissionError(f"symbolic link {member.filename[:200]!r}: refused")
    if sum(member.file_size for member in members) > MAX_TOTAL_BYTES:
        raise SubmissionError(f"more than {MAX_TOTAL_BYTES // 2**20} MB once unpacked: refused")


def extract_member(opened: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, written: int) -> int:
    """Write one entry under ``target``; the bytes written so far in the zip, this entry's added."""
    path = target / member.filename.replace("\\", "/")
    if member.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return written
    path.parent.mkdir(parents=True, exist_ok=True)
    with opened.open(member) as source, open(path, "wb") as sink:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > MAX_TOTAL_BYTES:
                raise SubmissionError(f"more than {MAX_TOTAL_BYTES // 2**20} MB once unpacked "
                                      "(more than its header declares): refused")
            sink.write(chunk)
    return written
