"""A directory acting as the CDN bucket, behind the ``Cdn`` port: for air-gapped and NFS setups.

Object ``ref.key`` (``folder/name/<version>.big``, or ``folder/name.big`` for an unversioned
ref) is that file under the root. Uploads go through ``atomic_path`` (temp file, fsync, rename,
fsync of the directory), so a reader never sees a partial
object. Every path is resolved and checked to stay under the root, even though refs are validated
already: a symlinked folder must not turn the CDN into a way to read or write elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.adapters.atomic_file import atomic_path, collect_dead_temps_of
from splitvault.adapters.ranges import download_into_file
from splitvault.domain.errors import AccessDenied, NotFound, RemoteError, StorageFailed
from splitvault.domain.ports import CdnFailure, RangeSink, Span
from splitvault.domain.ref import ResourceRef

log = logging.getLogger("splitvault.directory_cdn")

COPY_CHUNK = 1024 * 1024
Progress = Callable[[int], None]


class _Copy:
    """Copies bytes ``[start:end)`` of one file to the same offsets of another, one reused buffer.

    ``offset`` is where the copy got to, so a failed copy knows which bytes are good.
    """

    def __init__(self, source_fd: int, dest_fd: int, start: int) -> None:
        self._source_fd = source_fd
        self._dest_fd = dest_fd
        self.offset = start

    def run(self, end: int, progress: Progress | None) -> None:
        buffer = bytearray(COPY_CHUNK)
        view = memoryview(buffer)
        while self.offset < end:
            want = min(COPY_CHUNK, end - self.offset)
            count = os.preadv(self._source_fd, [view[:want]], self.offset)
            if count == 0:
                raise OSError(f"source ended at byte {self.offset}, expected {end}")
            written = 0
            while written < count:
                written += os.pwrite(self._dest_fd, view[written:count], self.offset + written)
            self.offset += count
            if progress is not None:
                progress(count)


class DirectoryCdn:
    """A directory tree used as the object store for big parts.

    Args:
        root: the directory acting as the bucket (it must exist; it may be an NFS mount).

    Failures: ``NotFound`` (no such object), ``AccessDenied`` (permissions, or a path that would
    leave the root), ``StorageFailed`` (other file system errors, including a source that cannot be
    read), ``RemoteError`` (a resume offset beyond the object's end).
    """

    def __init__(self, root: Path) -> None:
        self._root = root

    def __repr__(self) -> str:
        return f"DirectoryCdn({str(self._root)!r})"

    def _object_path(self, ref: ResourceRef) -> Path | None:
        root = self._root.resolve()
        path = (root / ref.key).resolve()
        if not path.is_relative_to(root) or path == root:
            log.warning("refusing %s: it resolves outside the CDN directory", ref.key)
            return None
        return path

    def _outside(self, ref: ResourceRef) -> AccessDenied:
        return AccessDenied(f"CDN object {ref.key}", "the path resolves outside the CDN directory")

    def upload_file(
        self, ref: ResourceRef, source: Path, *, progress: Progress | None = None
    ) -> IOResult[None, CdnFailure]:
        """Copy ``source`` to the object; the object changes all at once or not at all.

        ``progress`` (optional) is called with each number of bytes copied.
        """
        target = self._object_path(ref)
        if target is None:
            return IOFailure(self._outside(ref))
        try:
            source_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            return IOFailure(StorageFailed(f"upload source {source}", _reason(error)))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            collect_dead_temps_of(target)  # a killed uploader's temp would sit there for ever
            size = os.fstat(source_fd).st_size
            with atomic_path(target, mode=0o644) as temp:
                dest_fd = os.open(temp, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    _Copy(source_fd, dest_fd, 0).run(size, progress)
                finally:
                    os.close(dest_fd)
        except PermissionError as error:
            return IOFailure(AccessDenied(f"CDN object {ref.key}", _reason(error)))
        except OSError as error:
            return IOFailure(StorageFailed(f"CDN object {ref.key}", _reason(error)))
        finally:
            os.close(source_fd)
        return IOSuccess(None)

    def download_ranges(
        self, ref: ResourceRef, ranges: Sequence[Span], sink: RangeSink
    ) -> IOResult[int, CdnFailure]:
        """Copy each range of the object into ``sink``; return the object's size.

        Ranges are copied one after another (a local or NFS read gains little from threads); a
        failing read stops at the bytes already handed over, which stay with the sink.
        """
        opened = self._open_object(ref)
        if not isinstance(opened, int):
            return IOFailure(opened)
        source_fd = opened
        what = f"CDN object {ref.key}"
        try:
            size = os.fstat(source_fd).st_size
            for low, high in ranges:
                if not 0 <= low < high <= size:
                    return IOFailure(
                        RemoteError(what, 416, f"range {low}-{high} is outside {size}")
                    )
            buffer = memoryview(bytearray(COPY_CHUNK))
            for low, high in ranges:
                offset = low
                while offset < high:
                    want = min(COPY_CHUNK, high - offset)
                    count = os.preadv(source_fd, [buffer[:want]], offset)
                    if count == 0:
                        return IOFailure(
                            StorageFailed(what, f"the object ended at byte {offset} of {size}")
                        )
                    try:
                        sink.write(offset, buffer[:count])
                    except OSError as error:
                        return IOFailure(StorageFailed(f"download of {what}", _reason(error)))
                    offset += count
        except OSError as error:
            return IOFailure(StorageFailed(what, _reason(error)))
        finally:
            os.close(source_fd)
        return IOSuccess(size)

    def download_file(
        self,
        ref: ResourceRef,
        dest: Path,
        *,
        start: int = 0,
        progress: Progress | None = None,
    ) -> IOResult[int, CdnFailure]:
        """Write the object's bytes ``[start:]`` into ``dest`` at their offsets; return its size.

        Bytes of ``dest`` before ``start`` are left alone; ``dest`` ends up exactly as long as the
        object, or, after a failure, as long as the bytes known good (a safe resume point).
        ``progress`` (optional) is called with each number of bytes written.
        """
        if start < 0:
            raise ValueError("start must be >= 0")
        return self.size(ref).bind(
            lambda size: download_into_file(
                dest,
                what=f"CDN object {ref.key}",
                start=start,
                size=size,
                step=COPY_CHUNK * 8,
                progress=progress,
                fetch=lambda ranges, sink: self.download_ranges(ref, ranges, sink),
            )
        )

    def _open_object(self, ref: ResourceRef) -> int | CdnFailure:
        source = self._object_path(ref)
        if source is None:
            return self._outside(ref)
        try:
            return os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return NotFound(f"CDN object {ref.key}")
        except PermissionError as error:
            return AccessDenied(f"CDN object {ref.key}", _reason(error))
        except OSError as error:
            return StorageFailed(f"CDN object {ref.key}", _reason(error))

    def size(self, ref: ResourceRef) -> IOResult[int, CdnFailure]:
        """The object's size in bytes, or ``NotFound``."""
        path = self._object_path(ref)
        if path is None:
            return IOFailure(self._outside(ref))
        try:
            return IOSuccess(path.stat().st_size)
        except FileNotFoundError:
            return IOFailure(NotFound(f"CDN object {ref.key}"))
        except PermissionError as error:
            return IOFailure(AccessDenied(f"CDN object {ref.key}", _reason(error)))
        except OSError as error:
            return IOFailure(StorageFailed(f"CDN object {ref.key}", _reason(error)))


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__
