"""Calls across the sandbox's wall: the grader sends a probe's name and inputs, a process in the
sandbox runs it on a submission's code and sends the outputs back, as data only.

A message is a frame: the length of a JSON header (4 bytes, big-endian), the header, the
length of a safetensors blob (8 bytes), the blob. Tensors travel in the blob, numbers, strings
and booleans in the header's ``values``; nothing is unpickled. The grader reads every reply
with a deadline and a size limit, so a submission that hangs, floods or writes nonsense costs
its own exercise and nothing else.

In the sandbox: ``python -m minildm.course.probing`` answers frames on stdin until it closes.
Everything the submission prints goes to stderr, not into the replies.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import BinaryIO

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from minildm.config import MinildmError

MAX_HEADER_BYTES = 2**20
MAX_BLOB_BYTES = 64 * 2**20
MAX_ERROR = 500


class ProbeError(MinildmError):
    """A probe that gave no usable answer: the submission raised, hung, or replied nonsense."""


class Outputs(dict):
    """A probe's outputs; a missing one fails the check that asks for it."""

    def __missing__(self, key: str):
        raise ProbeError(f"the code returned no {key!r}")


def encode(header: dict, values: dict) -> bytes:
    """One frame: ``header`` with the non-tensor ``values``, and the tensors in a blob."""
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in values.items()
               if isinstance(value, torch.Tensor)}
    plain = {name: value for name, value in values.items() if not isinstance(value, torch.Tensor)}
    head = json.dumps({**header, "values": plain}).encode()
    blob = save_tensors(tensors) if tensors else b""
    return len(head).to_bytes(4, "big") + head + len(blob).to_bytes(8, "big") + blob


def decode(head: bytes, blob: bytes) -> tuple[dict, dict]:
    """(header, values) of a frame's two parts; :class:`ProbeError` if they are not a frame."""
    try:
        header = json.loads(head)
        values = dict(header.pop("values"))
        values.update(load_tensors(blob) if blob else {})
        return header, values
    except Exception as error:  # whatever a hostile reply makes the parsers raise
        raise ProbeError(f"the reply was not data the grader can read ({type(error).__name__})") from None


def read_frame(stream: BinaryIO) -> tuple[dict, dict] | None:
    """The next frame of a trusted stream (the grader's requests); None at its end."""
    size = stream.read(4)
    if len(size) < 4:
        return None
    head = stream.read(int.from_bytes(size, "big"))
    blob = stream.read(int.from_bytes(stream.read(8), "big"))
    return decode(head, blob)


class Deadline:
    """Reads from and writes to a pipe, all before one moment; :class:`ProbeError` after it."""

    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def wait(self, fd: int, writing: bool) -> None:
        left = self.end - time.monotonic()
        ready = select.select([], [fd], [], max(left, 0)) if writing else select.select([fd], [], [], max(left, 0))
        if not any(ready):
            raise ProbeError(f"time limit: stopped after {self.seconds:.0f} s (an endless loop?)")

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self.wait(fd, writing=True)
            try:
                written = os.write(fd, view[:2**16])
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise ProbeError("the submission's process ended before it was asked everything") from None
            view = view[written:]

    def read(self, fd: int, size: int) -> bytes:
        chunks, left = [], size
        while left:
            self.wait(fd, writing=False)
            chunk = os.read(fd, min(left, 2**20))
            if not chunk:
                raise ProbeError("the submission's process ended without answering (it crashed or exited)")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class ProbeSession:
    """The grader's side: ``session(name, **inputs)`` runs a probe in the sandboxed process and
    returns its :class:`Outputs`. After a failure that leaves the process unusable (its time
    is up, it died, its reply was unreadable) every later call fails the same way."""

    def __init__(self, process, seconds: float):
        self.requests, self.replies = process.stdin.fileno(), process.stdout.fileno()
        os.set_blocking(self.requests, False)
        self.deadline, self.broken = Deadline(seconds), None

    def __call__(self, name: str, **inputs) -> Outputs:
        if self.broken:
            raise ProbeError(self.broken)
        try:
            self.deadline.write(self.requests, encode({"probe": name}, inputs))
            header, values = self.reply()
        except ProbeError as error:
            self.broken = str(error)
            raise
        if "error" in header:
            raise ProbeError(f"the code raised {str(header['error'])[:MAX_ERROR]}")
        return Outputs(values)

    def reply(self) -> tuple[dict, dict]:
        head_size = int.from_bytes(self.deadline.read(self.replies, 4), "big")
        if head_size > MAX_HEADER_BYTES:
            raise ProbeError("the reply was not data the grader can read (too large)")
        head = self.deadline.read(self.replies, head_size)
        blob_size = int.from_bytes(self.deadline.read(self.replies, 8), "big")
        if blob_size > MAX_BLOB_BYTES:
            raise ProbeError(f"the reply was larger than {MAX_BLOB_BYTES // 2**20} MB")
        return decode(head, self.deadline.read(self.replies, blob_size))


def answer(probes: dict, header: dict, inputs: dict) -> bytes:
    """The reply frame to one request: the probe's outputs, or the error it raised."""
    try:
        return encode({}, probes[header["probe"]](**inputs))
    except BaseException as error:  # what the submission raises (a skip, an exit), or outputs that cannot be sent
        return encode({"error": f"{type(error).__name__}: {error}"[:MAX_ERROR]}, {})


def local_probe(name: str, **inputs) -> Outputs:
    """A probe run in this process, through the same encoding: how ``tests/grading`` checks the
    instructor's own code under pytest."""
    from minildm.course.probes import PROBES

    frame = answer(PROBES, *decode(*split(encode({"probe": name}, inputs))))
    header, values = decode(*split(frame))
    if "error" in header:
        raise ProbeError(f"the code raised {header['error']}")
    return Outputs(values)


def split(frame: bytes) -> tuple[bytes, bytes]:
    head_size = int.from_bytes(frame[:4], "big")
    return frame[4:4 + head_size], frame[4 + head_size + 8:]


def serve() -> None:
    """The sandbox's side: answer each request on stdin, the replies on what was stdout."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the submission prints goes to the log
    from minildm.course.probes import PROBES  # the package's modules are imported by each probe

    while (request := read_frame(sys.stdin.buffer)) is not None:
        replies.write(answer(PROBES, *request))
        replies.flush()


if __name__ == "__main__":
    serve()
