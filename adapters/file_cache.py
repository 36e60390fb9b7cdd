"""The local cache of big parts on the file system, behind the ``Cache`` port.

Layout: one directory per resource, one entry per version in it, named by the version's digest::

    {root}/{folder}/{name}/{version}.big        a verified entry
    {root}/{folder}/{name}/.{version}.verified  its stamp; the stamp's mtime is its last use
    {root}/{folder}/{name}/.{version}.partial   a fill in progress, as long as the part (sparse)
    {root}/{folder}/{name}/.{version}.ranges    which segments of the partial have landed
    {root}/{folder}/{name}/.lock                held while filling, storing or discarding

The version is the first 32 hex digits of the big part's digest root, which the header (signed by
the publisher, carrying the file id) fixes: a new version is a new file beside the old one, and
the old entry is removed only once the new one is complete, so a failed fill leaves the old one
usable.

**Fills keep every finished segment.** A fill asks the CDN only for the segments (the digest's
segments, one per ciphertext chunk) the record says are missing, in one call, as ranges of about
``range_bytes`` in whole segments. The sink hashes each segment as its bytes land and appends
``index leaf`` to the record, so a dropped connection loses at most the segment it was in, a
retry asks for exactly the holes, and the commit compares the root of the recorded leaves with
the expected one: no second pass over the part. The record is written after the bytes (not
fsynced, for speed), so a resumed fill re-hashes the recorded segments once and keeps only those
that match.

**Entries are not fsynced.** A committed entry (a fill's or an upload's) is renamed into place
without ``fsync``: a cache is a copy, and every use of an entry authenticates every chunk
(AES-GCM) on open, so an entry a power cut left torn, with or without its stamp, fails to open and
is fetched again (``usecases.refetching_once``; the end-to-end test of tampering that hides from
the stamp is that case). Flushing 256 MiB cost 0.1-0.2 s of wall time per upload and per
cold download here, more on slower disks, for nothing a crash could lose. Files the user asked
for (a download's output) are still fsynced before their rename.

**Readers pin.** ``fetch`` holds a shared ``flock`` on the entry while ``use`` runs; eviction takes
the exclusive lock without waiting and skips what it cannot get, so an entry in use is never
evicted. **A bound.** With ``max_bytes`` set, a fill first makes room (under one cache-wide lock,
least recently used first, entries and abandoned partials alike) for the whole part, then
preallocates its partial, so the bytes on disk stay within the bound while anything can still be
evicted. **Debris.** A disk-full fill removes its partial and names it in the error; partials of
another version of the same resource and temp files of dead writers are removed by the next fill.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal, TypeVar

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters import ranges
from splitvault.adapters.atomic_file import (
    atomic_path,
    collect_dead_temps,
    is_temp_of,
    storage_failed,
)
from splitvault.adapters.ranges import cut
from splitvault.domain import digest
from splitvault.domain.errors import PartMismatch, Problem, RemoteError, StorageFailed, Transient
from splitvault.domain.ports import BigPartDigest, Fill, Produce, Span, Use
from splitvault.domain.ref import ResourceRef

log = logging.getLogger("splitvault.file_cache")

T = TypeVar("T")

HASH_CHUNK = 1024 * 1024
HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Segments up to this size are the units a fill records (hashed incrementally as they land); a part
# with larger segments (the legacy suite's single whole-part segment) is tracked in plain 1 MiB
# units and hashed whole at the commit.
MAX_HASHED_SEGMENT = 64 * 1024 * 1024 + 64
PLAIN_UNIT = 1024 * 1024
RANGE_BYTES = 8 * 1024 * 1024
# A part needing more ranges than this is probed at its last unit before the rest is asked for.
# A shorter one is asked for in one call, and the CDN checks every range against the object's
# size before any byte moves (``CdnReader.download_ranges``): the probe would add a round trip
# in series with the whole transfer and prove nothing more. The bound keeps a header's claim of
# a petabyte from becoming a list of ranges before the CDN has refused it.
PROBE_ABOVE_RANGES = 1024
VERSION_HEX = 32
ENTRY_SUFFIX = ".big"
PARTIAL_SUFFIX = ".partial"
RECORD_SUFFIX = ".ranges"
STAMP_SUFFIX = ".verified"
LOCK_NAME = ".lock"
INCOMING_NAME = ".incoming"
EVICT_LOCK_NAME = ".evict.lock"
RECORD_MAGIC = "splitvault-ranges/1"
RANGE_NOT_SATISFIABLE = 416


def version_of(expected: BigPartDigest) -> str:
    """The name of a version's entry: the first 32 hex digits of its digest root."""
    return expected.root.hex()[:VERSION_HEX]


def _is_version(text: str) -> bool:
    return len(text) == VERSION_HEX and all(char in "0123456789abcdef" for char in text)


def _leaf_at(fd: int, low: int, high: int, buffer: memoryview) -> bytes:
    """The digest leaf of bytes ``[low, high)`` of an open file, read in pieces into ``buffer``."""
    hasher = digest.leaf_hasher()
    position = low
    while position < high:
        got = os.preadv(fd, [buffer[: min(len(buffer), high - position)]], position)
        if got == 0:
            raise ValueError("the file shrank while being hashed")
        hasher.update(buffer[:got])
        position += got
    return hasher.digest()


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
    if actual.root != expected.root:
        return _root_mismatch(actual.root, expected.root)
    return None


def _root_mismatch(actual: bytes, expected: bytes) -> str:
    return f"digest is {actual.hex()[:16]}…, expected {expected.hex()[:16]}…"


# -- units: what a fill tracks ---------------------------------------------------------------------


@attrs.frozen
class _Units:
    """The pieces of a big part a fill records: its digest segments, or plain 1 MiB units.

    Computed, never listed: a header may claim a petabyte, and nothing may be allocated for
    that claim before the CDN has shown the object is that long.
    """

    length: int
    first: int
    size: int
    hashed: bool

    @classmethod
    def of(cls, expected: BigPartDigest) -> _Units:
        length = expected.length
        first, size = max(expected.first_segment, 1), expected.segment_size
        if max(min(first, length), min(size, length)) <= MAX_HASHED_SEGMENT:
            return cls(length, min(first, length), size, hashed=True)
        return cls(length, min(PLAIN_UNIT, length), PLAIN_UNIT, hashed=False)

    @property
    def count(self) -> int:
        if self.length == 0:
            return 0
        return 1 + -(-(self.length - self.first) // self.size)

    def span(self, index: int) -> Span:
        if index == 0:
            return 0, self.first
        low = self.first + (index - 1) * self.size
        return low, min(low + self.size, self.length)

    def index_starting_at(self, offset: int) -> int | None:
        if offset == 0 and self.length:
            return 0
        if offset < self.first or offset >= self.length or (offset - self.first) % self.size:
            return None
        return 1 + (offset - self.first) // self.size


def _rest(span: Span, begun: int) -> Span:
    return span[0] + begun, span[1]


def _record_header(expected: BigPartDigest) -> str:
    return (
        f"{RECORD_MAGIC} {expected.root.hex()} {expected.length} "
        f"{expected.first_segment} {expected.segment_size}\n"
    )


def _read_record(record: Path, expected: BigPartDigest, units: _Units) -> dict[int, bytes | None]:
    """The units an earlier fill recorded as landed (not yet re-verified). Raises ``OSError``."""
    try:
        lines = record.read_text(encoding="ascii", errors="replace").splitlines(keepends=True)
    except FileNotFoundError:
        return {}
    if not lines or lines[0] != _record_header(expected):
        return {}
    landed: dict[int, bytes | None] = {}
    for line in lines[1:]:
        if not line.endswith("\n"):
            break  # torn by a crash mid-append
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        index = int(parts[0])
        if index >= units.count:
            continue
        if units.hashed:
            try:
                leaf = bytes.fromhex(parts[1])
            except ValueError:
                continue
            landed[index] = leaf
        else:
            landed[index] = None
    return landed


_Stream = tuple[int, int, digest.LeafHasher | None]


class _FillSink:
    """The ``RangeSink`` of one fill: writes into the partial, hashes and records each unit."""

    def __init__(
        self,
        fd: int,
        record_fd: int,
        units: _Units,
        landed: dict[int, bytes | None],
        tails: dict[int, _Stream],
    ) -> None:
        self._fd = fd
        self._record_fd = record_fd
        self._units = units
        self.landed_units = landed
        self.moved = 0
        self._landed_bytes = 0
        self.local_error: OSError | None = None
        # next expected offset -> (unit index, bytes of it seen, its leaf so far); an earlier fill's
        # broken-off streams continue where they stopped.
        self._streams: dict[int, _Stream] = dict(tails)
        self._lock = threading.Lock()

    def tails(self) -> dict[int, _Stream]:
        """The streams that broke off inside a unit, by the offset they would continue at."""
        with self._lock:
            return {offset: stream for offset, stream in self._streams.items() if stream[1]}

    def write(self, offset: int, data: bytes | memoryview) -> None:
        with self._lock:
            stream = self._streams.pop(offset, None)
        if stream is None:
            index = self._units.index_starting_at(offset)
            if index is None:
                raise ValueError(f"a write at byte {offset} neither starts nor continues a range")
            stream = (index, 0, None)
        try:
            ranges.write_all(self._fd, data, offset)
        except OSError as error:
            self.local_error = error
            raise
        index, seen, hasher = stream
        view = memoryview(data)
        count = self._units.count
        while view and index < count:
            low, high = self._units.span(index)
            size = high - low
            take = min(size - seen, len(view))
            if self._units.hashed:
                if hasher is None:
                    hasher = digest.leaf_hasher()
                hasher.update(view[:take])
            seen += take
            view = view[take:]
            if seen == size:
                leaf = hasher.digest() if hasher is not None else None
                hasher = None
                self._land(index, leaf)
                index, seen = index + 1, 0
        with self._lock:
            self.moved += len(data)
            if index < count:
                self._streams[offset + len(data)] = (index, seen, hasher)

    def landed(self) -> int:
        with self._lock:
            return self._landed_bytes

    def _land(self, index: int, leaf: bytes | None) -> None:
        line = f"{index} {leaf.hex() if leaf is not None else '-'}\n".encode("ascii")
        low, high = self._units.span(index)
        with self._lock:
            self._landed_bytes += high - low
            self.landed_units[index] = leaf
            try:
                ranges.write_all(self._record_fd, line, os.lseek(self._record_fd, 0, os.SEEK_END))
            except OSError as error:
                self.local_error = error
                raise


# -- what the cache holds, for listing, pruning and eviction ---------------------------------------

Kind = Literal["entry", "partial", "temp"]


@attrs.frozen
class CachedItem:
    """One file the cache holds: an entry (``kind="entry"``), a partial fill, or a temp file.

    ``last_used`` is seconds since the epoch (an entry's last use, else the file's mtime);
    ``in_use`` says a reader holds it (entries) or a writer is filling it (partials, temps).
    """

    folder: str
    name: str
    version: str
    kind: Kind
    path: Path
    size: int
    last_used: float
    in_use: bool


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path``, or ``None`` when someone holds one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class FileCache:
    """Big parts cached under ``root``, verified before every use.

    Args:
        root: the cache directory (created on ``open``).
        max_bytes: the bound on the bytes the cache holds (``None``: no bound).
        range_bytes: about the size of the ranges a fill asks the CDN for, in whole segments.
        clock: wall-clock seconds, for ``prune``.

    Failures: ``StorageFailed`` (disk full, naming the file that filled; permissions),
    ``PartMismatch`` (what was filled or produced is not the expected big part), and whatever
    ``fill``/``produce``/``use`` return.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int | None = None,
        range_bytes: int = RANGE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._root = root
        self._max_bytes = max_bytes
        self._range_bytes = range_bytes
        self._clock = clock
        # Per partial, the units a broken-off range had begun, with their bytes so far: a
        # retry in this process asks only for the rest of them (never across processes: bytes
        # not yet fsynced may not have survived a crash, whole units are re-hashed instead).
        self._tails: dict[Path, dict[int, _Stream]] = {}

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        max_bytes: int | None = None,
        range_bytes: int = RANGE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> IOResult[FileCache, StorageFailed]:
        """Create the cache directory if needed."""
        cache = cls(root, max_bytes=max_bytes, range_bytes=range_bytes, clock=clock)
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            return IOFailure(storage_failed(root, error))
        return IOSuccess(cache)

    def __repr__(self) -> str:
        return f"FileCache({str(self._root)!r}, max_bytes={self._max_bytes!r})"

    @property
    def root(self) -> Path:
        """The cache directory."""
        return self._root

    @property
    def max_bytes(self) -> int | None:
        """The bound on the bytes held, if any."""
        return self._max_bytes

    def ref_dir(self, ref: ResourceRef) -> Path:
        """The directory holding every version of ``ref``."""
        return self._root / ref.folder / ref.name

    def version_path(self, ref: ResourceRef, expected: BigPartDigest) -> Path:
        """Where the verified entry of this version of ``ref`` lives (it may not exist)."""
        return self.ref_dir(ref) / f"{version_of(expected)}{ENTRY_SUFFIX}"

    def entry_path(self, ref: ResourceRef) -> Path:
        """The most recently used entry of ``ref``, or a path that does not exist if none."""
        items = [item for item in self.items(ref) if item.kind == "entry"]
        if not items:
            return self.ref_dir(ref) / f"(none){ENTRY_SUFFIX}"
        return max(items, key=lambda item: item.last_used).path

    # -- fetch ------------------------------------------------------------------------------------

    def fetch(
        self, ref: ResourceRef, expected: BigPartDigest, fill: Fill, use: Use[T]
    ) -> IOResult[T, Problem]:
        """Run ``use`` on a verified entry of this version, filling it through ``fill`` if needed.

        ``fill(ranges, sink)`` must hand the big part's bytes of ``ranges`` to ``sink``; a fill
        that fails keeps every segment that landed, and the next fetch asks only for the rest.
        The entry is pinned (not evictable) while ``use`` runs.
        """
        entry = self.version_path(ref, expected)
        try:
            outside = self._outside(ref)
            if outside is not None:
                return IOFailure(outside)
            entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            pin = self._pin_verified(entry, expected)
            if pin is None:
                with self._locked(ref):
                    pin = self._pin_verified(entry, expected)
                    if pin is None:
                        filled = self._fill(ref, expected, fill, fresh=False)
                        if not is_successful(filled):
                            return IOFailure(unsafe_perform_io(filled.failure()))
                        pin = unsafe_perform_io(filled.unwrap())
        except OSError as error:
            return IOFailure(storage_failed(entry, error))
        try:
            self._touch(entry)
            return use(entry)
        finally:
            os.close(pin)

    def _pin(self, entry: Path) -> int | None:
        """An fd holding a shared lock on ``entry`` while it is still the file of that name."""
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.stat(entry, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None
        except FileNotFoundError:
            os.close(fd)
            return None  # evicted between the open and the lock
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _pin_verified(self, entry: Path, expected: BigPartDigest) -> int | None:
        pin = self._pin(entry)
        if pin is None:
            return None
        if stamp_matches(entry, expected):
            return pin
        reason = mismatch_reason(entry, expected)
        if reason is None:
            write_stamp(entry, expected)
            return pin
        os.close(pin)
        log.warning("discarding cache entry %s: %s", entry, reason)
        self._remove_entry(entry)
        return None

    def _fill(
        self, ref: ResourceRef, expected: BigPartDigest, fill: Fill, *, fresh: bool
    ) -> IOResult[int, Problem]:
        """Fill (or resume) this version's partial and commit it; an fd pinning the entry."""
        version = version_of(expected)
        folder = self.ref_dir(ref)
        partial = folder / f".{version}{PARTIAL_SUFFIX}"
        record = folder / f".{version}{RECORD_SUFFIX}"
        self._remove_debris(ref, keep=version)
        units = _Units.of(expected)
        landed = {} if fresh else self._resume(partial, record, expected, units)
        resumed = bool(landed)
        if not landed:
            partial.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            self._tails.pop(partial, None)
        if self._max_bytes is not None and expected.length <= self._max_bytes:
            # A part larger than the whole bound cannot be made room for; evicting everything
            # for it (or for a header's lie) would only empty the cache. The partial is sized
            # while the cache-wide lock is held, so the next process's count includes it.
            self._make_room(
                expected.length, keep=partial, then=lambda: _preallocate(partial, expected.length)
            )
        try:
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if not landed:
                    # Not fsynced, as the record's lines are not: losing it costs only progress.
                    with atomic_path(record, durable=False) as temp:
                        temp.write_text(_record_header(expected), encoding="ascii")
                outcome = self._probe(fd, record, units, landed, fill)
                if outcome is None:
                    if os.fstat(fd).st_size != expected.length:
                        os.ftruncate(fd, expected.length)  # sparse: the bound counts it whole
                    outcome = self._fill_missing(fd, record, units, landed, fill)
            finally:
                os.close(fd)
        except OSError as error:
            return self._abandon(partial, record, error)
        if isinstance(outcome, OSError):
            return self._abandon(partial, record, outcome)
        if outcome is not None:
            problem = unsafe_perform_io(outcome.failure())
            if isinstance(problem, RemoteError) and problem.status == RANGE_NOT_SATISFIABLE:
                _remove_partial(partial)
                return IOFailure(
                    PartMismatch(f"the big part of {ref} on the CDN: {problem.describe()}")
                )
            return IOFailure(problem)
        reason = self._commit_reason(partial, expected, units, landed)
        if reason is not None:
            partial.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            if resumed:
                # What an earlier process left did not hold up (the object changed, a torn
                # write): one whole fetch costs less than failing the download.
                log.warning("resumed %s does not verify (%s); fetching it whole", partial, reason)
                return self._fill(ref, expected, fill, fresh=True)
            log.warning("discarding downloaded big part %s: %s", partial, reason)
            return IOFailure(PartMismatch(f"the big part of {ref} as downloaded: {reason}"))
        entry = folder / f"{version}{ENTRY_SUFFIX}"
        # Pinned before it gets its name (the lock is the inode's, so the rename keeps it): no
        # evictor can take the entry between the commit and its first use.
        pin = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(pin, fcntl.LOCK_SH)
            _stamp_path(entry).unlink(missing_ok=True)
            os.replace(partial, entry)  # not fsynced: see "Entries are not fsynced"
            record.unlink(missing_ok=True)
            self._tails.pop(partial, None)
            write_stamp(entry, expected)
            self._remove_other_versions(ref, keep=version)
        except BaseException:
            os.close(pin)
            raise
        return IOSuccess(pin)

    def _probe(
        self,
        fd: int,
        record: Path,
        units: _Units,
        landed: dict[int, bytes | None],
        fill: Fill,
    ) -> IOResult[None, Problem] | OSError | None:
        """Fetch the last unit first when the part is longer than ``PROBE_ABOVE_RANGES`` ranges:
        it proves the object is as long as the header says before the rest is listed."""
        last = units.count - 1
        if last < 0 or last in landed or units.length <= self._step(units) * PROBE_ABOVE_RANGES:
            return None
        return self._fill_missing(fd, record, units, landed, fill, only=[last])

    def _step(self, units: _Units) -> int:
        """The bytes of a range: about ``range_bytes``, in whole units.

        A segment is 1 MiB of plaintext plus its 16-byte tag, so 8 MiB would hold only 7 of
        them and a part would take 8/7 as many requests as a plain 8 MiB cut (S3 bills each).
        """
        if units.size >= self._range_bytes:
            return self._range_bytes
        return round(self._range_bytes / units.size) * units.size

    def _fill_missing(
        self,
        fd: int,
        record: Path,
        units: _Units,
        landed: dict[int, bytes | None],
        fill: Fill,
        *,
        only: list[int] | None = None,
    ) -> IOResult[None, Problem] | OSError | None:
        """Ask ``fill`` for the units not yet landed: ``None`` when all are there now."""
        wanted = range(units.count) if only is None else only
        partial = record.parent / f".{record.name[1 : -len(RECORD_SUFFIX)]}{PARTIAL_SUFFIX}"
        tails = {
            offset: stream
            for offset, stream in self._tails.pop(partial, {}).items()
            if stream[0] not in landed and (only is None or stream[0] in only)
        }
        begun = {stream[0]: stream[1] for stream in tails.values()}
        missing = [_rest(units.span(i), begun.get(i, 0)) for i in wanted if i not in landed]
        if not missing:
            return None
        record_fd = os.open(record, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            sink = _FillSink(fd, record_fd, units, landed, tails)
            log.info(
                "fetching %d of %d segments (%d bytes)",
                len(missing),
                units.count,
                sum(high - low for low, high in missing),
            )
            filled = fill(cut(missing, self._step(units)), sink)
        finally:
            os.close(record_fd)
        if sink.local_error is not None:
            return sink.local_error
        self._tails[partial] = sink.tails()
        if not is_successful(filled):
            return filled
        if any(i not in landed for i in wanted):
            return IOFailure(Transient("big part fill", "the CDN answered fewer bytes than asked"))
        return None

    def _abandon(self, partial: Path, record: Path, error: OSError) -> IOResult[int, Problem]:
        self._tails.pop(partial, None)
        # A full disk (or a broken one): what is in the partial cannot be finished here, and
        # leaving it would keep the disk full for everything else.
        partial.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        log.warning("abandoned the fill of %s: %s", partial, error.strerror or error)
        return IOFailure(storage_failed(partial, error))

    @staticmethod
    def _commit_reason(
        partial: Path, expected: BigPartDigest, units: _Units, landed: dict[int, bytes | None]
    ) -> str | None:
        if not units.hashed:
            return mismatch_reason(partial, expected)
        leaves = [landed[index] or b"" for index in range(units.count)]
        root = digest.root(expected.length, leaves)
        return None if root == expected.root else _root_mismatch(root, expected.root)

    @staticmethod
    def _resume(
        partial: Path, record: Path, expected: BigPartDigest, units: _Units
    ) -> dict[int, bytes | None]:
        """The recorded units that still hold their bytes, each re-hashed once."""
        try:
            size = partial.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            return {}
        if size > expected.length:
            return {}
        recorded = {
            index: leaf
            for index, leaf in _read_record(record, expected, units).items()
            if units.span(index)[1] <= size
        }
        if not recorded or not units.hashed:
            return recorded
        fd = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            local = threading.local()

            def check(index: int) -> bool:
                low, high = units.span(index)
                buffer = getattr(local, "buffer", None)
                if buffer is None:
                    buffer = memoryview(bytearray(HASH_CHUNK))
                    local.buffer = buffer
                return _leaf_at(fd, low, high, buffer) == recorded[index]

            indexes = sorted(recorded)
            with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
                good = dict(zip(indexes, pool.map(check, indexes), strict=True))
        finally:
            os.close(fd)
        kept = {index: recorded[index] for index in indexes if good[index]}
        if len(kept) < len(recorded):
            log.warning(
                "%d of %d recorded segments of %s did not hold up; fetching them again",
                len(recorded) - len(kept),
                len(recorded),
                partial,
            )
        log.info("resuming %s: %d of %d segments on disk", partial, len(kept), units.count)
        with atomic_path(record) as temp:
            lines = [_record_header(expected)]
            lines += [f"{i} {leaf.hex() if leaf else '-'}\n" for i, leaf in kept.items()]
            temp.write_text("".join(lines), encoding="ascii")
        return kept

    # -- store ------------------------------------------------------------------------------------

    def store(self, ref: ResourceRef, produce: Produce) -> IOResult[Path, Problem]:
        """Let ``produce`` write a new entry into a temp file and move it into place.

        ``produce`` hashes what it writes while it writes it and reports the digest; the entry is
        trusted to it (no second pass over the part) and only its length is checked. The temp file
        is removed when ``produce`` fails or wrote a different length than it reported
        (``PartMismatch``); the previous entries stay as they were until the new one is in place.
        """
        folder = self.ref_dir(ref)
        try:
            outside = self._outside(ref)
            if outside is not None:
                return IOFailure(outside)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked(ref):
                self._remove_debris(ref, keep=None)
                incoming = folder / INCOMING_NAME
                produced: IOResult[BigPartDigest, Problem] = IOFailure(
                    StorageFailed(str(incoming), "nothing was written")
                )
                try:
                    with atomic_path(incoming, durable=False) as temp:
                        produced = _produce_checked(ref, temp, produce)
                        _abandon_unless_successful(produced)
                except _Abandon:
                    return IOFailure(unsafe_perform_io(produced.failure()))
                made = unsafe_perform_io(produced.unwrap())
                entry = self.version_path(ref, made)
                _stamp_path(entry).unlink(missing_ok=True)
                os.replace(incoming, entry)  # not fsynced: see "Entries are not fsynced"
                write_stamp(entry, made)
                self._remove_other_versions(ref, keep=version_of(made))
            self._make_room(0, keep=entry)
        except OSError as error:
            return IOFailure(storage_failed(folder / INCOMING_NAME, error))
        return IOSuccess(entry)

    # -- discard, list, prune, clear --------------------------------------------------------------

    def discard(self, ref: ResourceRef) -> None:
        """Remove every entry and partial of ``ref``; log what cannot be removed."""
        try:
            if self._outside(ref) is not None:
                log.warning("not discarding %s: its folder resolves outside the cache", ref)
                return
            with self._locked(ref):
                for item in self.items(ref):
                    if item.kind == "entry":
                        self._remove_entry(item.path)
                    elif item.kind == "partial":
                        _remove_partial(item.path)
        except FileNotFoundError:
            return  # the folder does not exist: nothing to discard
        except OSError as error:
            log.warning("could not discard cache entries of %s: %s", ref, error.strerror)

    def holds(self, ref: ResourceRef) -> bool:
        """Whether a complete entry of ``ref`` (any version) is here (see the port)."""
        try:
            return any(item.kind == "entry" for item in self.items(ref))
        except OSError:
            return False

    def items(self, ref: ResourceRef | None = None) -> tuple[CachedItem, ...]:
        """What the cache holds (of ``ref``, or everything), oldest use first.

        Raises ``OSError`` when the root cannot be listed.
        """
        folders: list[tuple[str, Path]]
        if ref is not None:
            folders = [(ref.folder, self._root / ref.folder)]
        else:
            folders = [
                (entry.name, Path(entry.path))
                for entry in _scandir(self._root)
                if entry.is_dir(follow_symlinks=False)
            ]
        found: list[CachedItem] = []
        for folder_name, folder in folders:
            for named in _scandir(folder):
                if not named.is_dir(follow_symlinks=False):
                    continue
                if ref is not None and named.name != ref.name:
                    continue
                found.extend(_items_in(folder_name, named.name, Path(named.path)))
        return tuple(sorted(found, key=lambda item: (item.last_used, str(item.path))))

    def usage(self) -> int:
        """The bytes the cache holds at one moment: entries, partials (counted whole) and temp
        files, what the bound counts.

        Counted under the cache-wide lock that evictions and reservations take: a walk without
        it can count an entry in one folder, then, in another, the fill that took its room, and
        report a part more than the cache ever held at once.
        """
        with self._evict_locked():
            return sum(item.size for item in self.items())

    def prune(self, *, older_than: float | None = None) -> tuple[CachedItem, ...]:
        """Remove what was last used more than ``older_than`` seconds ago (everything if
        ``None``), except what is in use. Returns what was removed.
        """
        cutoff = None if older_than is None else self._clock() - older_than
        removed: list[CachedItem] = []
        with self._evict_locked():
            for item in self.items():
                if cutoff is not None and item.last_used >= cutoff:
                    continue
                if self._evict(item):
                    removed.append(item)
        return tuple(removed)

    # -- the bound --------------------------------------------------------------------------------

    def _make_room(self, need: int, *, keep: Path, then: Callable[[], None] = lambda: None) -> None:
        """Evict least recently used items until ``need`` more bytes fit under the bound, then
        run ``then`` (the reservation) while still holding the cache-wide lock."""
        if self._max_bytes is None:
            then()
            return
        with self._evict_locked():
            items = self.items()
            total = sum(item.size for item in items if item.path != keep)
            for item in items:
                if total + need <= self._max_bytes:
                    break
                if item.path == keep or item.in_use:
                    continue
                if self._evict(item):
                    total -= item.size
            if total + need > self._max_bytes:
                log.warning(
                    "the cache holds %d bytes in use; %d more exceed its bound of %d",
                    total,
                    need,
                    self._max_bytes,
                )
            then()

    def _evict(self, item: CachedItem) -> bool:
        """Remove ``item`` unless a reader or writer holds it; whether it was removed."""
        if item.kind == "entry":
            fd = _try_lock(item.path)
            if fd is None:
                return False
            try:
                self._remove_entry(item.path)
            finally:
                os.close(fd)
        elif item.kind == "partial":
            fd = _try_lock(item.path.parent / LOCK_NAME)
            if fd is None:
                return False  # a fill of that resource is running
            try:
                _remove_partial(item.path)
            finally:
                os.close(fd)
        elif not collect_dead_temps(item.path.parent, match=lambda n: n == item.path.name):
            return False
        log.info("evicted %s (%d bytes) from the cache", item.path, item.size)
        return True

    # -- helpers ----------------------------------------------------------------------------------

    def _remove_debris(self, ref: ResourceRef, *, keep: str | None) -> None:
        """Partials of other versions and temps of dead writers in ``ref``'s directory."""
        folder = self.ref_dir(ref)
        for item in self.items(ref):
            if item.kind == "partial" and item.version != keep:
                log.info("removing partial download %s of another version", item.path)
                _remove_partial(item.path)
        collect_dead_temps(folder)
        (folder / INCOMING_NAME).unlink(missing_ok=True)  # we hold the lock: nobody writes it

    def _remove_other_versions(self, ref: ResourceRef, *, keep: str) -> None:
        for item in self.items(ref):
            if item.kind == "entry" and item.version != keep:
                if self._evict(item):
                    log.info("removed %s: a newer version is complete", item.path)
                else:
                    log.info("kept %s of an older version while it is in use", item.path)

    @staticmethod
    def _remove_entry(entry: Path) -> None:
        _stamp_path(entry).unlink(missing_ok=True)
        entry.unlink(missing_ok=True)

    @staticmethod
    def _touch(entry: Path) -> None:
        # The stamp's mtime is the entry's last use (atime is unreliable under relatime).
        try:
            os.utime(_stamp_path(entry))
        except FileNotFoundError:
            return

    def _outside(self, ref: ResourceRef) -> StorageFailed | None:
        """A failure when ``ref``'s folder resolves outside the root (a link planted in the cache).

        Refs are validated already; this keeps a symlinked folder from turning the cache into a
        way to write ``*.big`` files elsewhere, as the directory CDN does for its root.
        """
        root = self._root.resolve()
        folder = (root / ref.folder).resolve()
        inner = (root / ref.folder / ref.name).resolve()
        if folder.is_relative_to(root) and folder != root and inner.parent == folder:
            return None
        log.warning("refusing cache folder %s: it resolves outside %s", ref.folder, root)
        return StorageFailed(
            str(self.ref_dir(ref)), "the folder resolves outside the cache directory"
        )

    @contextmanager
    def _locked(self, ref: ResourceRef) -> Iterator[None]:
        with _flocked(self.ref_dir(ref) / LOCK_NAME):
            yield

    @contextmanager
    def _evict_locked(self) -> Iterator[None]:
        with _flocked(self._root / EVICT_LOCK_NAME):
            yield


@contextmanager
def _flocked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        # Each open() is its own lock holder, so this excludes other threads too.
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _items_in(folder: str, name: str, directory: Path) -> list[CachedItem]:
    found: list[CachedItem] = []
    for file in _scandir(directory):
        kind: Kind
        if file.name.endswith(ENTRY_SUFFIX) and _is_version(file.name[: -len(ENTRY_SUFFIX)]):
            kind, version = "entry", file.name[: -len(ENTRY_SUFFIX)]
        elif (
            file.name.startswith(".")
            and file.name.endswith(PARTIAL_SUFFIX)
            and _is_version(file.name[1 : -len(PARTIAL_SUFFIX)])
        ):
            kind, version = "partial", file.name[1 : -len(PARTIAL_SUFFIX)]
        elif is_temp_of(INCOMING_NAME, file.name):
            # A part being stored. Temps of stamps and records are a few bytes of metadata:
            # not what the bound is about, and removed with the next fill's debris.
            kind, version = "temp", ""
        else:
            continue
        try:
            info = file.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = Path(file.path)
        last_used = info.st_mtime
        if kind == "entry":
            with suppress(FileNotFoundError):
                last_used = _stamp_path(path).stat().st_mtime
        found.append(
            CachedItem(
                folder=folder,
                name=name,
                version=version,
                kind=kind,
                path=path,
                size=info.st_size,
                last_used=last_used,
                in_use=_held(path if kind != "partial" else directory / LOCK_NAME),
            )
        )
    return found


def _preallocate(partial: Path, length: int) -> None:
    """Give ``partial`` its full (sparse) length, so every count of the cache includes it."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < length:
            os.ftruncate(fd, length)
    finally:
        os.close(fd)


def _held(path: Path) -> bool:
    fd = _try_lock(path)
    if fd is None:
        return path.exists()
    os.close(fd)
    return False


def _remove_partial(partial: Path) -> None:
    version = partial.name[1 : -len(PARTIAL_SUFFIX)]
    partial.unlink(missing_ok=True)
    (partial.parent / f".{version}{RECORD_SUFFIX}").unlink(missing_ok=True)


def _stamp_path(entry: Path) -> Path:
    return entry.parent / f".{entry.name[: -len(ENTRY_SUFFIX)]}{STAMP_SUFFIX}"


def _stamp_text(entry: Path, expected: BigPartDigest) -> str:
    """What identifies an entry whose bytes were hashed: digest, size, inode, mtime."""
    info = entry.stat()
    return f"{expected.root.hex()} {info.st_size} {info.st_ino} {info.st_mtime_ns}\n"


def write_stamp(entry: Path, expected: BigPartDigest) -> None:
    """Record that ``entry`` was verified, so the next fetch need not hash it again.

    Not fsynced (two fsyncs less per fill): a stamp lost or emptied by a power cut only costs
    one re-hash of the entry, since ``stamp_matches`` then fails. Raises ``OSError``.
    """
    text = _stamp_text(entry, expected)
    with atomic_path(_stamp_path(entry), durable=False) as temp:
        temp.write_text(text)


def stamp_matches(entry: Path, expected: BigPartDigest) -> bool:
    """Whether ``entry`` is unchanged since it was verified as ``expected``.

    A stamp only spares a re-hash; it is not what makes a download safe: every chunk is still
    authenticated when the resource is opened, and an entry that fails then is discarded.
    """
    try:
        return _stamp_path(entry).read_text() == _stamp_text(entry, expected)
    except (OSError, UnicodeDecodeError):
        return False


class _Abandon(Exception):
    """Raised inside ``atomic_path`` to throw the temp file away when ``produce`` failed."""


def _abandon_unless_successful(produced: IOResult[BigPartDigest, Problem]) -> None:
    if not is_successful(produced):
        raise _Abandon


def _produce_checked(
    ref: ResourceRef, temp: Path, produce: Produce
) -> IOResult[BigPartDigest, Problem]:
    # No re-hash: the producer (the pipeline's seal) hashed every byte as it wrote it, from the
    # same buffer it wrote, and a second pass over the part cost about 0.25 CPU-s per GiB before
    # the upload's commit point. What stays is the cheap guard that catches a producer that wrote
    # less or more than it reported (a short write, a crash of its own bookkeeping): the length.
    produced = produce(temp)
    if not is_successful(produced):
        return produced
    made = unsafe_perform_io(produced.unwrap())
    size = temp.stat().st_size
    if size != made.length:
        return IOFailure(
            PartMismatch(
                f"the new cache entry for {ref} is {size} bytes; its producer reported "
                f"{made.length}"
            )
        )
    return IOSuccess(made)
