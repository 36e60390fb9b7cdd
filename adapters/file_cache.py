"""The local cache of big parts on the file system, behind the ``Cache`` port.

An entry lives at ``{root}/{folder}/{name}.big`` and is handed out only after its length and digest
(``domain.digest``) match what the small part's header says; anything else (a corrupted file, an
entry of an older version) is discarded with the reason logged and fetched again. Downloads go into
a partial file named after the expected digest (``.{name}.big.{digest[:16]}.partial``) so an
interrupted fill resumes where it stopped — at the first hole in it, if a process killed with ranges
in flight left later bytes past a gap — while a partial for another digest is stale and removed. A
finished partial is verified, fsynced, renamed into place and the directory fsynced; a resumed one
that does not verify is fetched once more from the start before the mismatch is reported. An
``flock`` on ``.{name}.lock`` keeps two processes (or threads) from downloading the same part at
once; it is not needed for correctness, which comes from verification and atomic renames.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.atomic_file import (
    atomic_path,
    collect_stale_temps,
    fsync_dir,
    fsync_file,
    is_temp_name,
)
from splitvault.domain import digest
from splitvault.domain.errors import PartMismatch, Problem, StorageFailed
from splitvault.domain.ports import BigPartDigest, Fill, Produce
from splitvault.domain.ref import ResourceRef

log = logging.getLogger("splitvault.file_cache")

HASH_CHUNK = 1024 * 1024
HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
STALE_AFTER_SECONDS = 24 * 3600.0
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
ENTRY_SUFFIX = ".big"
HASH_PREFIX_HEX = 16
STAMP_SUFFIX = ".verified"
RESUME_UNIT = 1024 * 1024  # downloads write whole 1 MiB pieces from range starts (multiples)


def file_digest(path: Path, first_segment: int, segment_size: int) -> BigPartDigest:
    """Length and segmented digest (``domain.digest``) of a file, its segments hashed on all cores.

    Each worker reads its segments with positional reads in 1 MiB pieces into its own buffer;
    the leaf hash releases the GIL, so the segments really are hashed in parallel.
    Raises ``OSError`` when the file cannot be read, ``ValueError`` when it changed size meanwhile.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        length = os.fstat(fd).st_size
        bounds = list(digest.segment_bounds(length, max(first_segment, 1), segment_size))

        def hash_segment(bound: tuple[int, int]) -> bytes:
            start, end = bound
            hasher = digest.leaf_hasher()
            buffer = memoryview(bytearray(min(HASH_CHUNK, end - start)))
            position = start
            while position < end:
                want = min(len(buffer), end - position)
                got = os.preadv(fd, [buffer[:want]], position)
                if got == 0:
                    raise ValueError(f"{path} shrank while being hashed")
                hasher.update(buffer[:got])
                position += got
            return hasher.digest()

        workers = min(HASH_WORKERS, len(bounds)) or 1
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splitvault-hash") as pool:
            leaves = list(pool.map(hash_segment, bounds))
    finally:
        os.close(fd)
    return BigPartDigest(length, digest.root(length, leaves), first_segment, segment_size)


def mismatch_reason(path: Path, expected: BigPartDigest) -> str | None:
    """Why the file at ``path`` is not the expected big part, or ``None`` when it is.

    Compares the length first (a cheap ``stat``), then the digest. Raises ``OSError``.
    """
    size = path.stat().st_size
    if size != expected.length:
        return f"length is {size} bytes, expected {expected.length}"
    try:
        actual = file_digest(path, expected.first_segment, expected.segment_size)
    except ValueError:
        return "its length changed while it was being hashed"
    if actual.length != expected.length:
        return f"length changed while reading ({actual.length} bytes)"
    if actual.root != expected.root:
        return (
            f"digest is {actual.root.hex()[:HASH_PREFIX_HEX]}…, "
            f"expected {expected.root.hex()[:HASH_PREFIX_HEX]}…"
        )
    return None


def _stamp_path(entry: Path) -> Path:
    return entry.parent / f".{entry.name}{STAMP_SUFFIX}"


def _stamp_text(entry: Path, expected: BigPartDigest) -> str:
    """What identifies an entry whose bytes were hashed: digest, size, inode, mtime."""
    info = entry.stat()
    return f"{expected.root.hex()} {info.st_size} {info.st_ino} {info.st_mtime_ns}\n"


def write_stamp(entry: Path, digest: BigPartDigest) -> None:
    """Record that ``entry`` was verified, so the next fetch need not hash it again.

    Raises ``OSError``.
    """
    text = _stamp_text(entry, digest)
    with atomic_path(_stamp_path(entry)) as temp:
        temp.write_text(text)


def stamp_matches(entry: Path, expected: BigPartDigest) -> bool:
    """Whether ``entry`` is unchanged since it was verified as ``expected``.

    A stamp only spares a re-hash; it is not what makes a download safe: every chunk is still
    authenticated when the resource is opened, and an entry that fails then is discarded.
    """
    try:
        recorded = _stamp_path(entry).read_text()
        return recorded == _stamp_text(entry, expected)
    except (OSError, UnicodeDecodeError):
        return False


def _first_hole(fd: int, size: int) -> int:
    """The offset of the first never-written region of the file, or ``size`` when unknown."""
    try:
        return min(size, os.lseek(fd, 0, os.SEEK_HOLE))
    except OSError:  # no SEEK_HOLE here: the verification after the fill still protects us
        return size


def _resume_point(partial: Path, expected: BigPartDigest) -> int:
    """Where to resume filling ``partial``: the end of its bytes, before any hole in them.

    A download killed with several ranges in flight leaves later ranges written past a gap of
    never-written bytes; the file's length then overstates what is there. Resuming starts at the
    first hole, rounded down to ``RESUME_UNIT`` (writers write whole pieces from there).
    Raises ``OSError``.
    """
    # O_NOFOLLOW: the partial is ours; never append through a link planted in the cache.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size > expected.length:
            log.warning("partial %s is longer than the big part; starting over", partial)
            os.ftruncate(fd, 0)
            return 0
        hole = _first_hole(fd, size)
        if hole < size:
            safe = hole - hole % RESUME_UNIT
            log.info("partial %s has a gap at byte %d; resuming from byte %d", partial, hole, safe)
            os.ftruncate(fd, safe)
            return safe
        return size
    finally:
        os.close(fd)


def _is_cache_temp(name: str) -> bool:
    return is_temp_name(name) or (name.startswith(".") and name.endswith(PARTIAL_SUFFIX))


def _is_hash_tag(text: str) -> bool:
    return len(text) == HASH_PREFIX_HEX and all(char in "0123456789abcdef" for char in text)


def _storage_failed(what: Path, error: OSError) -> StorageFailed:
    return StorageFailed(str(what), error.strerror or type(error).__name__)


class _Abandon(Exception):
    """Raised inside ``atomic_path`` to throw the temp file away when ``produce`` failed."""

    def __init__(self, outcome: IOResult[None, Problem]) -> None:
        super().__init__("abandoned")
        self.outcome = outcome


def _keep_or_abandon(outcome: IOResult[None, Problem]) -> None:
    if not is_successful(outcome):
        raise _Abandon(outcome)


def _produce_checked(
    ref: ResourceRef, temp: Path, produce: Produce
) -> IOResult[BigPartDigest, Problem]:
    # Re-hash what the producer wrote even though it hashed while writing: this runs before the
    # upload's commit point, so a wrong digest is caught here instead of by every downloader.
    produced = produce(temp)
    if not is_successful(produced):
        return produced
    digest = unsafe_perform_io(produced.unwrap())
    reason = mismatch_reason(temp, digest)
    if reason is not None:
        return IOFailure(PartMismatch(f"the new cache entry for {ref} as written: {reason}"))
    return IOSuccess(digest)


class FileCache:
    """Big parts cached under ``root``, verified before every use.

    Args:
        root: the cache directory (created on ``open``).
        stale_after_seconds: temp and partial files untouched for this long are leftovers of a
            killed process and are removed by ``collect_stale``.
        clock: wall-clock seconds, for judging staleness.

    Failures: ``StorageFailed`` (disk full, permissions), ``PartMismatch`` (what was filled or
    produced is not the expected big part), and whatever ``fill``/``produce`` return.
    """

    def __init__(
        self,
        root: Path,
        *,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._root = root
        self._stale_after = stale_after_seconds
        self._clock = clock

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> IOResult[FileCache, StorageFailed]:
        """Create the cache directory if needed and collect stale temp files in it."""
        cache = cls(root, stale_after_seconds=stale_after_seconds, clock=clock)
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            cache.collect_stale()
        except OSError as error:
            return IOFailure(_storage_failed(root, error))
        return IOSuccess(cache)

    def __repr__(self) -> str:
        return f"FileCache({str(self._root)!r})"

    @property
    def root(self) -> Path:
        """The cache directory."""
        return self._root

    def entry_path(self, ref: ResourceRef) -> Path:
        """Where the verified entry of ``ref`` lives (it may not exist)."""
        return self._root / ref.key

    def collect_stale(self) -> tuple[Path, ...]:
        """Remove temp and partial files older than the staleness threshold in every folder.

        Raises ``OSError`` when the root cannot be listed.
        """
        now = self._clock()
        removed: list[Path] = []
        for folder in os.scandir(self._root):
            if folder.is_dir(follow_symlinks=False):
                removed.extend(
                    collect_stale_temps(
                        Path(folder.path), self._stale_after, now, match=_is_cache_temp
                    )
                )
        return tuple(removed)

    def fetch(
        self, ref: ResourceRef, expected: BigPartDigest, fill: Fill
    ) -> IOResult[Path, Problem]:
        """A verified entry for ``ref``: the cached one if it matches, else filled through ``fill``.

        ``fill(partial, start)`` must write the big part's bytes ``[start:]`` into ``partial``;
        a partial left by an earlier, interrupted fill for the same hash is resumed. When ``fill``
        fails, the partial is kept for the next attempt and the failure returned.
        """
        entry = self.entry_path(ref)
        try:
            outside = self._outside(ref)
            if outside is not None:
                return IOFailure(outside)
            entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked(ref):
                if entry.exists():
                    if stamp_matches(entry, expected):
                        return IOSuccess(entry)
                    reason = mismatch_reason(entry, expected)
                    if reason is None:
                        write_stamp(entry, expected)
                        return IOSuccess(entry)
                    log.warning("discarding cache entry %s: %s", entry, reason)
                    self._remove(entry)
                return self._fill(ref, expected, fill)
        except OSError as error:
            return IOFailure(_storage_failed(entry, error))

    def _fill(
        self, ref: ResourceRef, expected: BigPartDigest, fill: Fill
    ) -> IOResult[Path, Problem]:
        entry = self.entry_path(ref)
        partial = self._partial_path(ref, expected)
        for stale in self._partials(ref):
            if stale != partial:
                log.info("removing partial download %s of another version", stale)
                stale.unlink(missing_ok=True)
        current = _resume_point(partial, expected)
        if current < expected.length:
            if current:
                log.info("resuming %s from byte %d of %d", partial, current, expected.length)
            filled = fill(partial, current)
            if not is_successful(filled):
                return filled.map(lambda _: entry)
        reason = mismatch_reason(partial, expected)
        if reason is not None and current > 0:
            # What an earlier process left did not hold up (a torn write, a file system that
            # hides holes): one whole fetch costs less than failing the download.
            log.warning("resumed %s does not verify (%s); fetching it whole", partial, reason)
            os.truncate(partial, 0)
            filled = fill(partial, 0)
            if not is_successful(filled):
                return filled.map(lambda _: entry)
            reason = mismatch_reason(partial, expected)
        if reason is not None:
            log.warning("discarding downloaded big part %s: %s", partial, reason)
            partial.unlink(missing_ok=True)
            return IOFailure(PartMismatch(f"the big part of {ref} as downloaded: {reason}"))
        fsync_file(partial)
        _stamp_path(entry).unlink(missing_ok=True)
        os.replace(partial, entry)
        fsync_dir(entry.parent)
        write_stamp(entry, expected)
        return IOSuccess(entry)

    def store(self, ref: ResourceRef, produce: Produce) -> IOResult[Path, Problem]:
        """Let ``produce`` write a new entry into a temp file; verify it and move it into place.

        The temp file is removed when ``produce`` fails or its result does not match the digest
        it reported (``PartMismatch``); the previous entry, if any, stays as it was.
        """
        entry = self.entry_path(ref)
        try:
            outside = self._outside(ref)
            if outside is not None:
                return IOFailure(outside)
            entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked(ref):
                _stamp_path(entry).unlink(missing_ok=True)
                with atomic_path(entry) as temp:
                    produced = _produce_checked(ref, temp, produce)
                    _keep_or_abandon(produced.map(lambda _: None))
                write_stamp(entry, unsafe_perform_io(produced.unwrap()))
        except _Abandon as abandon:
            return abandon.outcome.map(lambda _: entry)
        except OSError as error:
            return IOFailure(_storage_failed(entry, error))
        return IOSuccess(entry)

    def discard(self, ref: ResourceRef) -> None:
        """Remove the entry of ``ref`` and any partial of it; log what cannot be removed."""
        entry = self.entry_path(ref)
        try:
            if self._outside(ref) is not None:
                log.warning("not discarding %s: its folder resolves outside the cache", entry)
                return
            with self._locked(ref):
                self._remove(entry)
                for partial in self._partials(ref):
                    partial.unlink(missing_ok=True)
        except FileNotFoundError:
            return  # the folder does not exist: nothing to discard
        except OSError as error:
            log.warning("could not discard cache entry %s: %s", entry, error.strerror)

    @staticmethod
    def _remove(entry: Path) -> None:
        _stamp_path(entry).unlink(missing_ok=True)
        entry.unlink(missing_ok=True)

    def _outside(self, ref: ResourceRef) -> StorageFailed | None:
        """A failure when ``ref``'s folder resolves outside the root (a link planted in the cache).

        Refs are validated already; this keeps a symlinked folder from turning the cache into a
        way to write ``*.big`` files elsewhere, as the directory CDN does for its root.
        """
        root = self._root.resolve()
        folder = (root / ref.folder).resolve()
        if folder.is_relative_to(root) and folder != root:
            return None
        log.warning("refusing cache folder %s: it resolves outside %s", ref.folder, root)
        return StorageFailed(
            str(self.entry_path(ref)), "the folder resolves outside the cache directory"
        )

    def _partial_path(self, ref: ResourceRef, expected: BigPartDigest) -> Path:
        tag = expected.root.hex()[:HASH_PREFIX_HEX]
        return self.entry_path(ref).parent / f".{ref.name}{ENTRY_SUFFIX}.{tag}{PARTIAL_SUFFIX}"

    def _partials(self, ref: ResourceRef) -> list[Path]:
        # Compared as strings, not globbed: a name may contain glob characters such as "[".
        prefix = f".{ref.name}{ENTRY_SUFFIX}."
        found: list[Path] = []
        for entry in os.scandir(self.entry_path(ref).parent):
            name = entry.name
            if (
                name.startswith(prefix)
                and name.endswith(PARTIAL_SUFFIX)
                and _is_hash_tag(name[len(prefix) : -len(PARTIAL_SUFFIX)])
            ):
                found.append(Path(entry.path))
        return found

    @contextmanager
    def _locked(self, ref: ResourceRef) -> Iterator[None]:
        lock_path = self.entry_path(ref).parent / f".{ref.name}{LOCK_SUFFIX}"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # Each open() is its own lock holder, so this excludes other threads too.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
