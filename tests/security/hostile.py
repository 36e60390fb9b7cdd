"""The attacker's kit for the security suite: hostile names, snapshots, fakes and log capture.

``HOSTILE_NAMES`` are the folder/resource names every entry point must refuse. ``tree`` snapshots a
directory so a test can prove an attack created nothing outside where it may write.
``RecordingEngine`` is a container engine that only records what it was asked, so a test can prove
an archive that failed its checks never reached Docker. ``LogCapture`` keeps every record of the
loggers it is attached to. Test certificates come from ``tests.support.certs``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from returns.io import IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.domain.errors import EngineFailure, Problem

T = TypeVar("T")

HOSTILE_NAMES = [
    pytest.param("../x", id="dotdot-slash"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("..", id="dotdot"),
    pytest.param(".", id="dot"),
    pytest.param("x" * 300, id="very-long"),
    pytest.param("\uff4dodel", id="fullwidth-m"),
    pytest.param("model\u202egnp.exe", id="rtl-override"),
    pytest.param("mo\u200ddel", id="zero-width-joiner"),
    pytest.param("a\\b", id="backslash"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("", id="empty"),
    pytest.param(" padded ", id="whitespace"),
    pytest.param("line\nbreak", id="newline"),
]

# Every refusal of a name ends with this advice (domain.errors.InvalidRef.describe).
NAME_ADVICE = "use a plain name without path separators"

# Loggers whose DEBUG output the secrets test inspects.
WATCHED_LOGGERS = ("splitvault", "httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer")


def ok(result: IOResult[T, Problem]) -> T:
    """The success value, or fail the test showing the failure."""
    assert is_successful(result), unsafe_perform_io(result.failure()).describe()
    return unsafe_perform_io(result.unwrap())


def failure(result: IOResult[object, Problem]) -> Problem:
    """The failure value, or fail the test when it succeeded."""
    assert not is_successful(result), "expected a failure"
    value: Problem = unsafe_perform_io(result.failure())
    return value


def tree(root: Path) -> frozenset[str]:
    """Every path under ``root`` (relative, directories included); links are not followed."""
    found: set[str] = set()
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        for name in (*dirnames, *filenames):
            found.add(str((base / name).relative_to(root)))
    return frozenset(found)


def created_outside(before: frozenset[str], after: frozenset[str], *allowed: str) -> list[str]:
    """Paths that appeared in ``after`` and lie under none of the ``allowed`` relative prefixes."""
    return sorted(
        path
        for path in after - before
        if not any(path == prefix or path.startswith(prefix + os.sep) for prefix in allowed)
    )


class RecordingEngine:
    """A ``ContainerEngine`` that records calls; loading makes ``present`` images answer True."""

    def __init__(self, present: Iterable[str] = ()) -> None:
        self.loads: list[Path] = []
        self.asked: list[str] = []
        self.present = set(present)
        self.loaded_bytes: list[int] = []

    def load(self, tar: Path) -> IOResult[tuple[str, ...], EngineFailure]:
        self.loads.append(tar)
        self.loaded_bytes.append(tar.stat().st_size)
        return IOSuccess(tuple(sorted(self.present)))

    def has_image(self, name: str) -> IOResult[bool, EngineFailure]:
        self.asked.append(name)
        return IOSuccess(bool(self.loads) and name in self.present)


class LogCapture(logging.Handler):
    """Keeps every record it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self, prefix: str = "") -> list[str]:
        """Each record's formatted message and the repr of its args, for loggers under prefix."""
        out = []
        for record in self.records:
            if record.name.startswith(prefix):
                out.append(record.getMessage())
                out.append(repr(record.args))
                if record.exc_info and record.exc_info[1] is not None:
                    out.append(repr(record.exc_info[1]))
        return out


@contextmanager
def capture_debug_logs(names: Iterable[str] = WATCHED_LOGGERS) -> Iterator[LogCapture]:
    """Attach a ``LogCapture`` at DEBUG to ``names``; restore their levels afterwards."""
    capture = LogCapture()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)


def raw_http(port: int, request: bytes) -> bytes:
    """Send bytes as they are to 127.0.0.1:port and return the whole answer (no normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
