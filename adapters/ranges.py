"""Byte ranges of a big part: how a wanted region is cut into requests, and a plain-file sink.

Both CDN adapters fetch through ``download_ranges(ref, ranges, sink)``; the cache hands them a sink
that hashes and records what lands. ``download_into_file`` is the simple case (the original
facade's download of a whole object into a file): a ``FileSink`` that writes at the bytes' own
offsets and remembers how far each range got, so a failed download is cut back to the bytes known
good from its start — a safe point to resume from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.domain.errors import RemoteError, StorageFailed
from splitvault.domain.ports import CdnFailure, RangeSink, Span

Progress = Callable[[int], None]
Fetch = Callable[[Sequence[Span], RangeSink], IOResult[int, CdnFailure]]


def cut(spans: Iterable[Span], step: int) -> list[Span]:
    """Coalesce adjacent spans (in order) into runs, then cut each run into pieces of ``step``.

    Cuts fall on span boundaries when a span is smaller than ``step``, so a request never starts
    inside a span (the cache's spans are its digest segments).
    """
    if step < 1:
        raise ValueError("step must be >= 1")
    out: list[Span] = []
    for low, high in spans:
        if low >= high:
            continue
        if out and out[-1][1] == low and (high - out[-1][0]) <= step:
            out[-1] = (out[-1][0], high)
        elif high - low > step:
            out.extend((a, min(a + step, high)) for a in range(low, high, step))
        else:
            out.append((low, high))
    return out


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite`` every byte of ``data`` at ``offset``. Raises ``OSError``."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class FileSink:
    """Writes each range's bytes at their offsets in one file and remembers how far each got."""

    def __init__(self, fd: int, ranges: Sequence[Span], progress: Progress | None) -> None:
        self._fd = fd
        self._progress = progress
        self._reached = {low: low for low, _ in ranges}  # range start -> end of its bytes
        self._cursor = {low: low for low, _ in ranges}  # next expected offset -> range start
        self._lock = threading.Lock()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        with self._lock:
            low = self._cursor.pop(offset)
        write_all(self._fd, data, offset)
        with self._lock:
            self._reached[low] = offset + len(data)
            self._cursor[offset + len(data)] = low
        if self._progress is not None:
            self._progress(len(data))

    def landed(self) -> int:
        with self._lock:
            return sum(end - low for low, end in self._reached.items())

    def contiguous_end(self, start: int, ranges: Sequence[Span]) -> int:
        """The end of the bytes known good from ``start``: whole ranges, then part of one."""
        end = start
        with self._lock:
            for low, high in ranges:
                end = self._reached.get(low, low)
                if end < high:
                    break
        return end


def download_into_file(
    dest: Path,
    *,
    what: str,
    start: int,
    size: int,
    step: int,
    progress: Progress | None,
    fetch: Fetch,
) -> IOResult[int, CdnFailure]:
    """Fetch bytes ``[start:size)`` of ``what`` into ``dest``; on failure cut ``dest`` back.

    ``dest`` ends exactly as long as the object, or after a failure as long as the bytes known
    good from ``start`` (never longer than it was). A ``start`` past the end is a 416.
    """
    if start > size:
        return IOFailure(RemoteError(what, 416, f"resume offset {start} is beyond {size}"))
    ranges = cut([(start, size)], step)
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        return IOFailure(StorageFailed(f"download into {dest}", error.strerror or str(error)))
    try:
        sink = FileSink(fd, ranges, progress)
        result = fetch(ranges, sink)
        if isinstance(result, IOSuccess):
            os.ftruncate(fd, size)
            return IOSuccess(size)
        good = sink.contiguous_end(start, ranges)
        if os.fstat(fd).st_size > good:  # never extend: bytes before start stay as they were
            os.ftruncate(fd, good)
    except OSError as error:
        return IOFailure(StorageFailed(f"download into {dest}", error.strerror or str(error)))
    finally:
        os.close(fd)
    return result
