"""The one atomic-write discipline every writer of a final file uses.

A file appears under its final name complete or not at all: the bytes go to a unique temp file in
the same directory (same file system, so the rename is atomic), the temp file is fsynced, renamed
over the final name with ``os.replace`` and the directory is fsynced so the rename itself survives a
crash. Temp names start with a dot and contain ``.tmp-`` so that listings skip them and
``collect_stale_temps`` can find the ones a killed process left behind.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("splitvault.atomic_file")

TEMP_MARKER = ".tmp-"
TOKEN_HEX = 16
# A writer of a final file keeps touching its temp file (each write moves its mtime); one untouched
# for an hour belongs to a process that is gone.
ORPHAN_AFTER_SECONDS = 3600.0


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


@contextmanager
def atomic_path(final: Path, *, mode: int = 0o600) -> Iterator[Path]:
    """Yield a temp path next to ``final``; on normal exit it becomes ``final`` atomically.

    The temp file exists (empty, with ``mode``) when the body starts; the body may write it or
    replace it. On normal exit the file is fsynced, renamed onto ``final`` and the directory is
    fsynced. If the body raises, the temp file is removed and the exception propagates, so
    ``final`` keeps its previous content (or stays absent).

    Raises ``OSError`` when the temp file cannot be created, flushed or renamed.
    """
    directory = final.parent
    temp = directory / temp_name_for(final.name, secrets.token_hex(TOKEN_HEX // 2))
    # O_EXCL + O_NOFOLLOW: never write through a file or symlink someone else placed there.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask; set it exactly
    finally:
        os.close(fd)
    try:
        yield temp
        fsync_file(temp)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def collect_stale_temps(
    directory: Path,
    older_than_seconds: float,
    now: float,
    *,
    match: Callable[[str], bool] = is_temp_name,
) -> tuple[Path, ...]:
    """Remove temp files in ``directory`` (not recursive) last modified before ``now - older_than``.

    A writer that is alive keeps touching its temp file, so only the leftovers of killed processes
    are old. Returns the paths removed. Files that vanish meanwhile are skipped; a directory that
    does not exist holds no temps.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return ()
    cutoff = now - older_than_seconds
    for entry in entries:
        if not match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        log.info("removed stale temp file %s", entry.path)
        removed.append(Path(entry.path))
    return tuple(removed)


def collect_orphans_of(
    final: Path, older_than_seconds: float = ORPHAN_AFTER_SECONDS
) -> tuple[Path, ...]:
    """Remove old temp files of ``final`` (and only of it) that a killed writer left beside it.

    Only names ``atomic_path`` makes for ``final`` are touched, so other files in a user's
    directory are never at risk. Returns the paths removed; raises ``OSError`` when the directory
    cannot be listed.
    """
    return collect_stale_temps(
        final.parent,
        older_than_seconds,
        time.time(),
        match=lambda name: is_temp_of(final.name, name),
    )
