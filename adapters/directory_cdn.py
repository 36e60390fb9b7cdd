"""A directory acting as the CDN bucket, behind the ``Cdn`` port: for air-gapped and NFS setups.

Object ``ref.key`` (``folder/name.big``) is the file ``{root}/folder/name.big``. Uploads go through
``atomic_path`` (temp file, fsync, rename, fsync of the directory), so a reader never sees a partial
object. Every path is resolved and checked to stay under the root, even though refs are validated
already: a symlinked folder must not turn the CDN into a way to read or write elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.adapters.atomic_file import atomic_path
from splitvault.domain.errors import AccessDenied, NotFound, RemoteError, StorageFailed
from splitvault.domain.ports import CdnFailure
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
        source = self._object_path(ref)
        if source is None:
            return IOFailure(self._outside(ref))
        try:
            source_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return IOFailure(NotFound(f"CDN object {ref.key}"))
        except PermissionError as error:
            return IOFailure(AccessDenied(f"CDN object {ref.key}", _reason(error)))
        except OSError as error:
            return IOFailure(StorageFailed(f"CDN object {ref.key}", _reason(error)))
        try:
            size = os.fstat(source_fd).st_size
            if start > size:
                return IOFailure(
                    RemoteError(
                        f"CDN object {ref.key}", 416, f"resume offset {start} is beyond {size}"
                    )
                )
            dest_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            copy = _Copy(source_fd, dest_fd, start)
            try:
                copy.run(size, progress)
                os.ftruncate(dest_fd, size)
            except OSError:
                # Leave only bytes known good, so the file's length is a safe resume point.
                if os.fstat(dest_fd).st_size > copy.offset:
                    os.ftruncate(dest_fd, copy.offset)
                raise
            finally:
                os.close(dest_fd)
        except OSError as error:
            return IOFailure(StorageFailed(f"download into {dest}", _reason(error)))
        finally:
            os.close(source_fd)
        return IOSuccess(size)

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
