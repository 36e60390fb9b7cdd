"""The one atomic writer: every final file the client writes goes through here.

A file appears under its final name complete or not at all: the bytes go to a unique temp file in
the same directory (same file system, so the rename is atomic), the temp file is fsynced, renamed
over the final name with ``os.replace`` and the directory is fsynced so the rename itself survives a
crash. Temp names start with a dot and contain ``.tmp-`` so that listings skip them.

The writer holds an exclusive ``flock`` on its temp file from the moment it exists until the
rename. The kernel drops that lock when the process dies, however it dies, so the next writer of
the same output tells a dead writer's temp from a live one by trying the lock — not by its age —
and removes the dead one at once (``collect_dead_temps``). A crash-looping service therefore leaves
at most the temp of the run in flight, never a pile of full-size files.

``write_atomically`` is the form the rest of the code uses: it returns an ``IOResult``, removes the
temp on every failure (a failed write, a full disk, an exception) and names the file that could
not be written.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from returns.io import IOFailure, IOResult
from returns.pipeline import is_successful

from splitvault.domain.errors import Problem, StorageFailed

log = logging.getLogger("splitvault.atomic_file")

T = TypeVar("T")

TEMP_MARKER = ".tmp-"
TOKEN_HEX = 16
_CREATE_TRIES = 8


def temp_name_for(final_name: str, token: str) -> str:
    """The temp-file name used while ``final_name`` is being written."""
    return f".{final_name}{TEMP_MARKER}{token}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` looks like a temp file made by ``atomic_path``."""
    return name.startswith(".") and TEMP_MARKER in name


def is_temp_of(final_name: str, name: str) -> bool:
    """Whether ``name`` is exactly a temp name ``atomic_path`` makes for ``final_name``."""
    prefix = f".{final_name}{TEMP_MARKER}"
    token = name[len(prefix) :]
    return (
        name.startswith(prefix)
        and len(token) == TOKEN_HEX
        and all(char in "0123456789abcdef" for char in token)
    )


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or unlink in it) to stable storage.

    Raises ``OSError`` when the directory cannot be opened. File systems that cannot fsync a
    directory (some network file systems answer EINVAL) are tolerated: there is nothing more a
    client can do there.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in {errno.EINVAL, errno.ENOTSUP, errno.EBADF}:
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_locked_temp(final: Path, mode: int) -> tuple[Path, int]:
    """A new temp file beside ``final`` and an fd holding its exclusive lock."""
    for _ in range(_CREATE_TRIES):
        temp = final.parent / temp_name_for(final.name, secrets.token_hex(TOKEN_HEX // 2))
        # O_EXCL + O_NOFOLLOW: never write through a file or symlink someone else placed there.
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A collector may have taken the lock in the instant between create and flock and
            # unlinked the name; the file we hold is then gone, so make another.
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                continue
            os.fchmod(fd, mode)  # os.open's mode is filtered by the umask; set it exactly
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        return temp, fd
    raise OSError(errno.EEXIST, f"could not create a temp file beside {final}")


FLUSH_EVERY = 32 * 1024 * 1024


class FlushBehind:
    """Makes a file durable while it is still being written, so its last fsync is short.

    For an output the atomic writer fsyncs before its rename (a download's): that fsync waits
    until the disk (here a virtual disk with a write-back cache, where a flush costs about
    0.35 s per 256 MiB even with every page already written) holds every byte, all at once
    after the last one. Told of each write (``wrote``), this runs ``fdatasync`` on ``fd`` from
    one thread of its own after every ``every`` bytes, while the rest is still arriving: the
    same work, done during the transfer. ``close`` stops the thread and returns the ``OSError``
    a background flush met (a full or failing disk), for the caller to fail with as the fsync
    would, unless it is failing already for a reason of its own.
    """

    def __init__(self, fd: int, *, every: int = FLUSH_EVERY) -> None:
        self._fd = fd
        self._every = every
        self._unflushed = 0
        self._lock = threading.Lock()
        self._due = threading.Condition(self._lock)
        self._flushes_due = 0
        self._closed = False
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"FlushBehind(fd={self._fd}, every={self._every})"

    def wrote(self, count: int) -> None:
        """Count ``count`` bytes just written to the file; start a flush every ``every``."""
        with self._lock:
            self._unflushed += count
            if self._unflushed < self._every or self._closed:
                return
            self._unflushed = 0
            self._flushes_due = 1  # one flush covers every write before it starts
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="splitvault-flush", daemon=True
                )
                self._thread.start()
            self._due.notify()

    def close(self) -> OSError | None:
        """Stop the flushing thread and wait for it; the ``OSError`` a flush met, if one did."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._due.notify()
        if thread is not None:
            thread.join()
        return self._error

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._flushes_due and not self._closed:
                    self._due.wait()
                if self._closed:
                    return
                self._flushes_due = 0
            try:
                os.fdatasync(self._fd)
            except OSError as error:
                with self._lock:
                    self._error, self._closed = error, True
                return


@contextmanager
def atomic_path(final: Path, *, mode: int = 0o600, durable: bool = True) -> Iterator[Path]:
    """Yield a locked temp path next to ``final``; on normal exit it becomes ``final`` atomically.

    The temp file exists (empty, with ``mode``) when the body starts; the body writes it (opening
    it by path). On normal exit the file is fsynced, renamed onto ``final`` and the directory is
    fsynced. If the body raises, the temp file is removed and the exception propagates, so
    ``final`` keeps its previous content (or stays absent).

    ``durable=False`` skips both fsyncs, for files whose loss in a crash costs only time (a
    cache's verification stamp): readers still see the old file or the whole new one, never a
    mixture, while the process lives; after a power cut the file may be empty or missing.

    Raises ``OSError`` when the temp file cannot be created, flushed or renamed.
    """
    temp, lock_fd = _create_locked_temp(final, mode)
    try:
        yield temp
        if durable:
            os.fsync(lock_fd)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(lock_fd)  # closing releases the lock
    if durable:
        fsync_dir(final.parent)


def collect_dead_temps(
    directory: Path, *, match: Callable[[str], bool] = is_temp_name
) -> tuple[Path, ...]:
    """Remove the temp files in ``directory`` (not recursive) whose writer is gone.

    A temp whose lock is held belongs to a live writer and stays. The lock is taken before the
    unlink and the writer checks after locking that its file still has a name, so a writer that
    is just starting is never robbed. Returns the paths removed; a missing directory holds none.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return ()
    for entry in entries:
        if not match(entry.name):
            continue
        path = Path(entry.path)
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer holds it
                os.unlink(path)
            finally:
                os.close(fd)
        except FileNotFoundError:
            continue
        log.info("removed temp file %s of a writer that is gone", path)
        removed.append(path)
    return tuple(removed)


def collect_dead_temps_of(final: Path) -> tuple[Path, ...]:
    """Remove temp files of ``final`` (and only of it) that a dead writer left beside it.

    Only names ``atomic_path`` makes for ``final`` are touched, so other files in a user's
    directory are never at risk. Raises ``OSError`` when the directory cannot be listed.
    """
    return collect_dead_temps(final.parent, match=lambda name: is_temp_of(final.name, name))


def storage_failed(path: Path | str, error: OSError) -> StorageFailed:
    """The typed failure for an ``OSError`` on ``path``: the file named, the reason in words."""
    return StorageFailed(str(path), error.strerror or str(error) or type(error).__name__)


class _Abort(Exception):
    """Unwinds ``atomic_path`` so the temp file is removed when a write returned a failure."""


def _abort_unless_successful(result: IOResult[object, Problem]) -> None:
    if not is_successful(result):
        raise _Abort


def write_atomically(
    final: Path, write: Callable[[Path], IOResult[T, Problem]], *, mode: int = 0o600
) -> IOResult[T, Problem]:
    """Run ``write`` on a temp file beside ``final``; rename it into place only on success.

    Temp files of ``final`` left by dead writers are removed first. On any failure the temp file
    is removed and ``final`` keeps its previous content; an ``OSError`` (a full disk) becomes a
    ``StorageFailed`` naming ``final``, the file that could not be written.
    """
    result: IOResult[T, Problem] = IOFailure(StorageFailed(str(final), "nothing was written"))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        collect_dead_temps_of(final)
        with atomic_path(final, mode=mode) as temp:
            result = write(temp)
            _abort_unless_successful(result)
    except _Abort:
        return result
    except OSError as error:
        return IOFailure(storage_failed(final, error))
    return result
