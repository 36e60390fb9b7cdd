"""File-to-file seal and open: the parallel, streaming pipeline behind upload, download and bench.

A resource is processed chunk by chunk by ``workers`` threads, the caller's among them. Each owns
one pair of chunk buffers and claims chunk after chunk from a shared counter (no task object,
future or hand-off per chunk): it reads its chunk with a positional read into its buffer, seals or
opens it with the AES ``*_into`` calls and hashes its share of the big part with BLAKE3, which all
release the GIL, so the cores really work at once and the digest costs no second pass over the
file. Writes go to an output sized up front, one writer at a time (parallel writers to one file
only spin on its inode lock) but in any order, so no core waits for a chunk that runs late. The
legacy suite's serial steps (CBC encryption, its hash) are passed from chunk to chunk like a relay
baton, in file order, on the worker that holds the bytes. ``workers`` buffer pairs exist in all, so
memory does not grow with the resource. Where each chunk's ciphertext lives (small part, big part
or both) comes from ``domain.format_v1.Layout``; this module moves bytes.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful

from splitvault.domain import digest, errors, legacy
from splitvault.domain.errors import NotFound, PartMismatch, StorageFailed
from splitvault.domain.format_v1 import DEFAULT_CHUNK_SIZE, Layout, Opener, Sealer, check_big_part
from splitvault.domain.keys import TAG_BYTES
from splitvault.domain.ports import BigPartDigest, RangeSink, Span
from splitvault.domain.ref import ResourceRef
from splitvault.domain.split import DEFAULT_RULE

log = logging.getLogger("splitvault.pipeline")

Progress = Callable[[int], None]
"""The one progress callback: called with the bytes done SINCE THE LAST CALL (a delta, never a
running total), so a bar adds them and its total equals the bytes moved. The pipeline calls it on
the caller's thread, the CDN adapters from their transfer threads: a bar must be thread-safe."""

MAX_WORKERS = 4
_CREATE_MODE = 0o600  # the caller owns the path and widens it when it renames into place


@attrs.frozen
class SealedParts:
    """What sealing a file produced besides the big part on disk.

    ``small_part`` holds the header (with the data key when it is not wrapped) and the first
    ciphertext bytes; ``big_digest`` is the length and digest of the big part just written.
    """

    small_part: bytes = attrs.field(repr=False)
    big_digest: BigPartDigest


def default_workers() -> int:
    """Threads the pipeline uses when the caller does not say: one per usable core, at most four.

    More threads than cores only add switching: every step is CPU- or memory-bound.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, usable or 1))


class _Slot:
    """One reusable pair of chunk buffers; a chunk owns a slot from submission until collected."""

    def __init__(self, plain_size: int, cipher_size: int) -> None:
        self.plain = memoryview(bytearray(plain_size))
        self.cipher = memoryview(bytearray(cipher_size))


class _Turns:
    """Relay batons that let parallel chunk tasks run some steps strictly in chunk order.

    Stage ``s`` of chunk ``i`` may run once chunk ``i - 1`` has left stage ``s``. Doing the
    ordered step (hashing, a serial cipher) on the worker that just produced the bytes keeps
    them in that core's cache and needs no extra thread. Tasks are queued in index order, so
    the chunk a task waits for has always started: the relay cannot deadlock.
    """

    def __init__(self, stages: int) -> None:
        self._next = [0] * stages
        self._cond = threading.Condition()
        self._stopped = False

    @contextmanager
    def turn(self, stage: int, index: int) -> Iterator[bool]:
        """Wait for chunk ``index``'s turn at ``stage``; yields False when the run was stopped."""
        with self._cond:
            self._cond.wait_for(lambda: self._next[stage] == index or self._stopped)
            go = not self._stopped
        try:
            yield go
        finally:
            if go:
                with self._cond:
                    self._next[stage] = index + 1
                    self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


# task(index, slot, turns) runs on a worker thread and returns a failure or None.
_Task = Callable[[int, _Slot, _Turns], "errors.Problem | None"]


class _Claims:
    """The shared state of one run: the next chunk to claim, bytes done, the first failure.

    Chunks are claimed in index order and a worker claims its next chunk only once its current
    one is done, so the chunk a relay baton waits for is always being worked on.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._next = 0
        self._done_bytes = 0
        self._reported = 0
        self._lock = threading.Lock()
        self.failure: tuple[int, errors.Problem] | None = None
        self.error: BaseException | None = None

    def claim(self) -> int | None:
        with self._lock:
            if self._next >= self.count or self.failure is not None or self.error is not None:
                return None
            index = self._next
            self._next += 1
            return index

    def finish(self, index: int, size: int, failure: errors.Problem | None) -> None:
        with self._lock:
            if failure is None:
                self._done_bytes += size
            elif self.failure is None or index < self.failure[0]:
                self.failure = (index, failure)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error

    def unreported(self) -> int:
        with self._lock:
            delta = self._done_bytes - self._reported
            self._reported = self._done_bytes
            return delta


def _run_chunks(
    count: int,
    *,
    workers: int,
    slot_sizes: tuple[int, int],
    stages: int,
    task: _Task,
    chunk_bytes: Callable[[int], int],
    progress: Progress | None,
) -> errors.Problem | None:
    """Run ``task`` for chunks ``0..count-1`` on ``workers`` threads, the caller's among them.

    Each worker owns one slot (a plaintext and a ciphertext buffer) and claims chunk after chunk
    until none is left: no task objects, futures or hand-offs per chunk, and ``workers`` slots in
    all, so memory does not grow with the resource. The caller's thread is a worker too and
    reports progress (the bytes every worker finished since its last report) between its own
    chunks. The run stops claiming at the first failure and returns the failure of the lowest
    chunk that failed, once every worker has stopped: no worker touches a file descriptor or
    buffer after this returns. An exception raised by a task is re-raised here.
    """
    claims = _Claims(count)
    turns = _Turns(stages)
    threads = max(1, min(workers, count))

    def work(report: bool) -> None:
        slot = _Slot(*slot_sizes)
        try:
            while (index := claims.claim()) is not None:
                failure = task(index, slot, turns)
                claims.finish(index, chunk_bytes(index), failure)
                if failure is not None:
                    turns.stop()
                elif report and progress is not None and (delta := claims.unreported()):
                    progress(delta)
        except BaseException as error:
            claims.fail(error)
            turns.stop()
            if not report:
                return  # a helper thread: the caller re-raises it
            raise

    helpers = [
        threading.Thread(target=work, args=(False,), name=f"splitvault-chunk-{n}", daemon=True)
        for n in range(threads - 1)
    ]
    for helper in helpers:
        helper.start()
    try:
        work(True)
    finally:
        # No stop here: on success the helpers still finish their last chunks (and their turns).
        # A failure or an exception has already stopped the turns inside ``work``.
        for helper in helpers:
            helper.join()
    if claims.error is not None:
        raise claims.error
    if claims.failure is not None:
        return claims.failure[1]
    if progress is not None:
        rest = claims.unreported()
        if rest:
            progress(rest)
    return None


def _os_failure(what: str, exc: OSError, action: str = "write") -> errors.Problem:
    if isinstance(exc, FileNotFoundError):
        return NotFound(what)
    return StorageFailed(what, exc.strerror or type(exc).__name__, action)


def pread_exact(fd: int, buf: memoryview, offset: int) -> bool:
    """Fill ``buf`` from ``offset``; False when the file ends first (it shrank under us)."""
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got == 0:
            return False
        done += got
    return True


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        wrote = os.pwrite(fd, buf[done:], offset + done)
        if wrote == 0:  # never for regular files; guard against spinning forever
            raise OSError(errno.ENOSPC, "no progress writing")
        done += wrote


Segments = Iterator[tuple[bool, int, int]]


def _scatter(segments: Segments, data: memoryview, small: memoryview, big_fd: int) -> memoryview:
    """Send a chunk's output to the small part buffer and the big part file, by segment.

    Returns the part of ``data`` that went to the big part (empty when none did).
    """
    pos = 0
    big_piece = data[:0]
    for in_big, offset, size in segments:
        piece = data[pos : pos + size]
        if in_big:
            _pwrite_all(big_fd, piece, offset)
            big_piece = piece
        else:
            small[offset : offset + size] = piece
        pos += size
    return big_piece


def _gather(
    segments: Segments, buf: memoryview, small: memoryview, big_fd: int
) -> memoryview | None:
    """Fill ``buf`` from the small part and the big part file, by segment.

    Returns the part of ``buf`` read from the big part (empty when none was), or None when
    the big part ended early (it shrank under us).
    """
    pos = 0
    big_piece = buf[:0]
    for in_big, offset, size in segments:
        piece = buf[pos : pos + size]
        if not in_big:
            piece[:] = small[offset : offset + size]
        elif not pread_exact(big_fd, piece, offset):
            return None
        else:
            big_piece = piece
        pos += size
    return big_piece


def _small_share(cut: int, start: int, length: int) -> int:
    """How many of the ``length`` stream bytes from ``start`` fall before ``cut`` (small part)."""
    return max(0, min(start + length, cut) - start)


def _open_fd(path: Path, flags: int, mode: int = _CREATE_MODE) -> int:
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)


def _prepare_output(fd: int, length: int) -> None:
    """Size the output up front: positional writes never extend it and a full disk fails early."""
    os.ftruncate(fd, length)
    if length and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, length)
        except OSError as exc:
            # Some file systems cannot reserve space; the writes will still report ENOSPC.
            if exc.errno not in {errno.EOPNOTSUPP, errno.EINVAL}:
                raise


def _advise_sequential(fd: int) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _check_workers(workers: int | None) -> int:
    chosen = default_workers() if workers is None else workers
    if chosen < 1:
        raise ValueError("workers must be at least 1")
    return chosen


def _plain_length(layout: Layout) -> Callable[[int], int]:
    def length(index: int) -> int:
        start, end = layout.plaintext_span(index)
        return end - start

    return length


def _run_v1_chunks(
    layout: Layout, workers: int, task: _Task, progress: Progress | None
) -> errors.Problem | None:
    """``_run_chunks`` over a v1 layout; no step of a v1 chunk depends on another's order."""
    # Buffers as large as the largest chunk present, not the chunk size the header claims: a
    # 1 KB resource sealed with 64 MiB chunks must not cost 128 MiB per slot. (Callers check the
    # big part's length first, so this is bounded by real data.)
    span = min(layout.chunk_size, layout.plaintext_length)
    return _run_chunks(
        layout.chunk_count,
        workers=workers,
        slot_sizes=(span, span + TAG_BYTES),
        stages=0,
        task=task,
        chunk_bytes=_plain_length(layout),
        progress=progress,
    )


class _Blamed(Exception):
    """Carries an OS error out of a block as the failure of the file it happened to."""

    def __init__(self, problem: errors.Problem) -> None:
        super().__init__(problem.describe())
        self.problem = problem


@contextmanager
def _blame(what: str, action: str = "write") -> Iterator[None]:
    """Report an ``OSError`` raised inside as a failure to ``action`` the file ``what``.

    A full disk while writing the output must name the output, not the source being read (nor
    the cache entry being read from): the person has to free space on the right file system.
    """
    try:
        yield
    except OSError as exc:
        raise _Blamed(_os_failure(what, exc, action)) from exc


def seal_file(
    source: Path,
    big_out: Path,
    *,
    ref: ResourceRef,
    dek: bytes,
    file_id: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    publisher_key: bytes | None = None,
    wrap_nonce: bytes | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> IOResult[SealedParts, errors.Problem]:
    """Seal ``source`` with format v1: write the big part to ``big_out``, return the small part.

    ``big_out`` is created or truncated (mode 0600 when created); the caller renames it into
    place and fsyncs if it needs durability. The output is byte-for-byte what
    ``format_v1.seal_bytes`` gives for the same inputs, whatever ``workers`` is. Every byte is
    read once, sealed once, hashed once (its chunk's digest leaf, on the worker that sealed it)
    and written once. Fails with ``NotFound`` when ``source`` is missing, ``StorageFailed``
    naming the file that failed (the source on a read error or when it shrinks, ``big_out`` on a
    write error or a full disk) and ``LimitExceeded`` for a chunk size or length the format
    refuses. Raises ``ValueError`` for a malformed key, file id or worker count.
    """
    threads = _check_workers(workers)
    reading, writing = str(source), str(big_out)
    try:
        with ExitStack() as stack:
            with _blame(reading, "read"):
                src_fd = _open_fd(source, os.O_RDONLY)
                stack.callback(os.close, src_fd)
                length = os.fstat(src_fd).st_size
                _advise_sequential(src_fd)
            started = Sealer.start(
                ref,
                length,
                dek=dek,
                file_id=file_id,
                chunk_size=chunk_size,
                publisher_key=publisher_key,
                wrap_nonce=wrap_nonce,
            )
            if not is_successful(started):
                return IOFailure(started.failure())
            sealer = started.unwrap()
            layout = sealer.layout
            with _blame(writing):
                big_fd = _open_fd(big_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                stack.callback(os.close, big_fd)
                _prepare_output(big_fd, layout.big_length)
            small = memoryview(bytearray(layout.small_ciphertext_length))
            leaves: list[bytes | None] = [None] * layout.chunk_count
            write_lock = threading.Lock()

            def task(index: int, slot: _Slot, turns: _Turns) -> errors.Problem | None:
                pt_start, pt_end = layout.plaintext_span(index)
                plain = slot.plain[: pt_end - pt_start]
                ct_start, ct_end = layout.ciphertext_span(index)
                try:
                    with _blame(reading, "read"):
                        if not pread_exact(src_fd, plain, pt_start):
                            return StorageFailed(writing, f"{source} shrank while being sealed")
                    size = sealer.seal_chunk_into(index, plain, slot.cipher)
                    sealed = slot.cipher[:size]
                    # Hash this chunk's share of the big part while it is in this core's
                    # cache; the segmented digest needs no ordering between chunks.
                    share = sealed[_small_share(layout.small_ciphertext_length, ct_start, size) :]
                    if share:
                        leaves[index] = digest.leaf(share)
                    # One writer at a time, in any order (the file is sized up front): parallel
                    # writers to one file only spin on its inode lock, and waiting for the
                    # previous chunk's turn would idle a core whenever that chunk runs late.
                    with write_lock, _blame(writing):
                        _scatter(layout.segments(ct_start, ct_end), sealed, small, big_fd)
                except _Blamed as blamed:
                    return blamed.problem
                return None

            failure = _run_v1_chunks(layout, threads, task, progress)
            if failure is not None:
                return IOFailure(failure)
            root = digest.root(layout.big_length, (leaf for leaf in leaves if leaf is not None))
            small_part = sealer.finish(bytes(small), root)
    except _Blamed as blamed:
        return IOFailure(blamed.problem)
    except OSError as exc:  # closing a descriptor: only the output's can report a late error
        return IOFailure(_os_failure(writing, exc))
    log.debug("sealed %s: %d bytes, %d chunks", ref, length, layout.chunk_count)
    first, size = layout.big_segmentation()
    return IOSuccess(SealedParts(small_part, BigPartDigest(layout.big_length, root, first, size)))


def open_file(
    small_part: bytes,
    big_path: Path,
    out: Path,
    *,
    publisher_key: bytes | None = None,
    expected_ref: ResourceRef | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    verify_big_digest: bool = True,
) -> IOResult[None, errors.Problem]:
    """Open a v1 resource from its small part and the big part at ``big_path`` into ``out``.

    Checks the small part (``Opener.start``) and runs ``open_with``; see there. Fails also with
    the small part's format failures (``WrongKey``, ``CorruptResource``, ``UnsupportedFormat``...).
    """
    started = Opener.start(small_part, publisher_key=publisher_key, expected_ref=expected_ref)
    if not is_successful(started):
        return IOFailure(started.failure())
    return open_with(
        started.unwrap(),
        big_path,
        out,
        workers=workers,
        progress=progress,
        verify_big_digest=verify_big_digest,
    )


def open_with(
    opener: Opener,
    big_path: Path,
    out: Path,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    verify_big_digest: bool = True,
    output_exists: bool = False,
    already_open: frozenset[int] = frozenset(),
    wrote: Progress | None = None,
) -> IOResult[None, errors.Problem]:
    """Open the big part at ``big_path`` with an already checked ``opener`` into ``out``.

    A download parses and checks the small part once and passes the opener down. ``out`` (the
    caller's temp path) is created or truncated and sized up front. Every chunk is authenticated
    and, with ``verify_big_digest``, the big part's digest is computed while reading (each leaf on
    the worker that read its chunk) and must match the header. A caller whose cache has just
    verified the same big part passes ``verify_big_digest=False``: every chunk is still
    authenticated under a key bound to the header, so a changed, swapped or stale big part still
    fails, only as ``CorruptResource``. Fails with ``PartMismatch`` for a big part of the wrong
    length or digest, ``CorruptResource`` for a chunk that does not authenticate,
    ``NotFound``/``StorageFailed`` naming the file that failed (``big_path`` on a read error,
    ``out`` on a write error or a full disk). On failure ``out`` holds garbage: the caller
    deletes it.

    ``output_exists`` keeps what ``out`` holds (it is sized, not truncated, once the big part's
    length is checked). ``already_open`` (a ``ChunkTee``'s ``opened``) names chunks that are in
    ``out`` already: they are neither read nor written, which needs ``output_exists`` and
    ``verify_big_digest=False`` (their leaves are not read here). ``wrote`` (optional) is told
    the byte count of each chunk written to ``out``, from several threads.
    """
    if already_open and (verify_big_digest or not output_exists):
        raise ValueError("chunks opened elsewhere need the existing output and no digest pass")
    threads = _check_workers(workers)
    layout = opener.layout
    small_ct = memoryview(opener.small_ciphertext)
    reading, writing = str(big_path), str(out)
    try:
        with ExitStack() as stack:
            with _blame(reading, "read"):
                big_fd = _open_fd(big_path, os.O_RDONLY)
                stack.callback(os.close, big_fd)
                big_length = os.fstat(big_fd).st_size
                _advise_sequential(big_fd)
            checked = check_big_part(opener, big_length)
            if not is_successful(checked):
                return IOFailure(checked.failure())
            with _blame(writing):
                keep = 0 if output_exists else os.O_TRUNC
                out_fd = _open_fd(out, os.O_WRONLY | os.O_CREAT | keep)
                stack.callback(os.close, out_fd)
                _prepare_output(out_fd, layout.plaintext_length)
            leaves: list[bytes | None] = [None] * layout.chunk_count
            write_lock = threading.Lock()

            def task(index: int, slot: _Slot, turns: _Turns) -> errors.Problem | None:
                if index in already_open:
                    return None
                ct_start, ct_end = layout.ciphertext_span(index)
                cipher = slot.cipher[: ct_end - ct_start]
                try:
                    with _blame(reading, "read"):
                        segments = layout.segments(ct_start, ct_end)
                        big_piece = _gather(segments, cipher, small_ct, big_fd)
                    if big_piece is None:
                        return PartMismatch(f"the big part {big_path} shrank while being read")
                    if big_piece and verify_big_digest:
                        leaves[index] = digest.leaf(big_piece)
                    opened = opener.open_chunk_into(index, cipher, slot.plain)
                    if not is_successful(opened):
                        return opened.failure()
                    pt_start, pt_end = layout.plaintext_span(index)
                    with write_lock, _blame(writing):  # one writer at a time, in any order
                        _pwrite_all(out_fd, slot.plain[: pt_end - pt_start], pt_start)
                    if wrote is not None:
                        wrote(pt_end - pt_start)
                except _Blamed as blamed:
                    return blamed.problem
                return None

            failure = _run_v1_chunks(layout, threads, task, progress)
            if failure is not None:
                return IOFailure(failure)
    except _Blamed as blamed:
        return IOFailure(blamed.problem)
    except OSError as exc:  # closing a descriptor: only the output's can report a late error
        return IOFailure(_os_failure(writing, exc))
    if verify_big_digest:
        root = digest.root(layout.big_length, (leaf for leaf in leaves if leaf is not None))
        if not hmac.compare_digest(root, opener.header.big_digest):
            return IOFailure(PartMismatch("the big part's digest differs from the header's"))
    log.debug("opened %s: %d bytes", opener.header.ref, layout.plaintext_length)
    return IOSuccess(None)


TEE_BUDGET = 16 << 20
TEE_MAX_CHUNK = (4 << 20) + TAG_BYTES


class ChunkTee:
    """A ``RangeSink`` wrapper that opens each v1 chunk into the output as its bytes land.

    A cold download hands the CDN's bytes to the cache's sink (which writes and hashes them) and,
    through this tee, decrypts every chunk whose ciphertext arrived whole in this fill straight
    into ``out`` at its plaintext offset: the open runs while the network waits, and the finished
    entry is not read again. Chunks wholly in the small part are opened at once. ``opened`` names
    the chunks in ``out``; ``open_with(..., already_open=tee.opened)`` opens the rest (chunks that
    landed in an earlier attempt, chunks past the buffer bound) from the committed entry.

    Nothing is trusted early: ``out`` is the caller's temp file, renamed into place only after the
    cache has checked the whole big part against the signed digest, and a chunk's earlier opening
    is forgotten whenever a fill asks for its bytes again (the cache refetching a part that did
    not verify), so the output always holds the bytes the cache committed.

    A chunk collects its bytes in a buffer of its own (from two ranges when it straddles them); at
    most ``max_pending`` buffers exist (``TEE_BUDGET`` bytes by default, none for chunks over
    4 MiB), beyond which chunks are left to ``open_with``.
    A chunk that does not authenticate or an output write that fails is left to it too, which
    reports the failure as it always does. Thread-safe: ranges land from several threads.
    ``wrote`` is ``open_with``'s: told the byte count of each chunk written to the output.
    """

    def __init__(
        self,
        opener: Opener,
        out_fd: int,
        *,
        max_pending: int | None = None,
        wrote: Progress | None = None,
    ) -> None:
        self._opener = opener
        self._wrote = wrote
        self._layout = opener.layout
        self._cut = opener.layout.small_ciphertext_length
        self._step = opener.layout.chunk_size + TAG_BYTES
        self._small = memoryview(opener.small_ciphertext)
        self._fd = out_fd
        # 16 MiB of chunks waiting at most (15 of 1 MiB); none for chunks above 4 MiB.
        fits = TEE_BUDGET // self._step if self._step <= TEE_MAX_CHUNK else 0
        self._max_pending = fits if max_pending is None else max_pending
        self._pending: dict[int, tuple[memoryview, int]] = {}
        self._opened: set[int] = set()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._plain = threading.local()
        self._broken = False
        # Chunks wholly in the small part need no byte from the CDN: opened now.
        for index in range(self._layout.chunk_count):
            start, end = self._layout.ciphertext_span(index)
            if end > self._cut:
                break
            self._open(index, self._small[start:end])

    @property
    def opened(self) -> frozenset[int]:
        """The chunks now in the output, opened from the bytes last delivered for them."""
        with self._lock:
            return frozenset(self._opened)

    def around(self, inner: RangeSink, ranges: Sequence[Span]) -> RangeSink:
        """The sink for one fill of ``ranges`` into ``inner``: what lands goes to both."""
        with self._lock:
            self._pending.clear()  # a broken-off range of an earlier fill never continues here
            for low, high in ranges:
                first, last = self._chunks_of(low, high)
                self._opened.difference_update(range(first, last + 1))
        return _TeeSink(self, inner)

    def _chunks_of(self, low: int, high: int) -> tuple[int, int]:
        """The first and last chunk holding big-part bytes ``[low, high)``."""
        return (self._cut + low) // self._step, (self._cut + high - 1) // self._step

    def take(self, offset: int, data: memoryview) -> None:
        """Collect big-part bytes at ``offset``; open every chunk they complete."""
        position = self._cut + offset
        while data:
            index = position // self._step
            start, end = self._layout.ciphertext_span(index)
            size = min(len(data), end - position)
            buffer = self._buffer_for(index, start, end)
            if buffer is not None:
                buffer[position - start : position - start + size] = data[:size]
                self._landed(index, buffer, size)
            position += size
            data = data[size:]

    def _buffer_for(self, index: int, start: int, end: int) -> memoryview | None:
        with self._lock:
            held = self._pending.get(index)
            if held is not None:
                return held[0]
            if self._broken or len(self._pending) >= self._max_pending:
                return None
            buffer = memoryview(bytearray(end - start))
            small = max(0, min(self._cut, end) - start)  # the chunk's head in the small part
            buffer[:small] = self._small[start : start + small]
            self._pending[index] = (buffer, small)
            return buffer

    def _landed(self, index: int, buffer: memoryview, size: int) -> None:
        with self._lock:
            held = self._pending.get(index)
            if held is None or held[0] is not buffer:
                return  # a fill began since: these bytes are its predecessor's
            have = held[1] + size
            if have < len(buffer):
                self._pending[index] = (buffer, have)
                return
            del self._pending[index]
        self._open(index, buffer)

    def _open(self, index: int, cipher: memoryview) -> None:
        plain: memoryview | None = getattr(self._plain, "buffer", None)
        if plain is None or len(plain) < len(cipher):
            plain = self._plain.buffer = memoryview(bytearray(len(cipher)))
        opened = self._opener.open_chunk_into(index, cipher, plain)
        if not is_successful(opened):
            return  # open_with meets it again and says so
        pt_start, pt_end = self._layout.plaintext_span(index)
        try:
            with self._write_lock:
                _pwrite_all(self._fd, plain[: pt_end - pt_start], pt_start)
            if self._wrote is not None:
                self._wrote(pt_end - pt_start)
        except OSError:
            with self._lock:
                self._broken = True  # a full disk: open_with reports it, naming the output
            return
        with self._lock:
            self._opened.add(index)


class _TeeSink:
    """One fill's sink: the cache's sink first (its failure stops the range), then the tee."""

    def __init__(self, tee: ChunkTee, inner: RangeSink) -> None:
        self._tee = tee
        self._inner = inner

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._inner.write(offset, data)
        self._tee.take(offset, memoryview(data))

    def landed(self) -> int:
        return self._inner.landed()


def new_output(out: Path) -> int:
    """An fd of ``out`` created empty (0600) for a ``ChunkTee``. Raises ``OSError``.

    Not sized: the header's lengths are unchecked until the big part's length is known, and a
    lying header must not make a download allocate (``open_with`` sizes it after that check).
    """
    return _open_fd(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)


# --- the legacy suite (AES-256-CBC, PKCS#7, IV in front, no header) -------------------------

_LEGACY = "legacy resource"
_LEGACY_SLOT_SLACK = 3 * legacy.BLOCK  # room for the IV, the padding block and update_into's slack


def _stream_segments(cut: int, start: int, end: int) -> Segments:
    """Split a stream range into ``(in_big_part, offset_in_part, length)`` around ``cut``."""
    if start < cut:
        stop = min(end, cut)
        yield False, start, stop - start
        start = stop
    if start < end:
        yield True, start - cut, end - start


def _read_stream(small: memoryview, big_fd: int, start: int, buf: memoryview) -> bool:
    """Fill ``buf`` with stream bytes from ``start``; False when the big part ends first."""
    segments = _stream_segments(len(small), start, start + len(buf))
    return _gather(segments, buf, small, big_fd) is not None


def seal_file_legacy(
    source: Path,
    big_out: Path,
    *,
    key: bytes,
    iv: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
    progress: Progress | None = None,
) -> IOResult[SealedParts, errors.Problem]:
    """Seal ``source`` in the legacy suite: ``IV || AES-256-CBC(key, PKCS#7(data))``, split.

    CBC encryption is serial, so chunks are encrypted in order (into reused buffers, no copies)
    while other workers read ahead, write behind and hash the big part. ``big_out`` is created or
    truncated; ``iv`` comes from the caller's random source. Fails like ``seal_file``; raises
    ``ValueError`` for a key that is not 32 bytes, an IV that is not 16 or a chunk size that is
    not a positive multiple of 16.
    """
    threads = _check_workers(workers)
    if chunk_size <= 0 or chunk_size % legacy.BLOCK:
        raise ValueError("the legacy chunk size is a positive multiple of 16")
    sealer = legacy.LegacySealer(key, iv)
    reading, writing = str(source), str(big_out)
    try:
        with ExitStack() as stack:
            with _blame(reading, "read"):
                src_fd = _open_fd(source, os.O_RDONLY)
                stack.callback(os.close, src_fd)
                length = os.fstat(src_fd).st_size
                _advise_sequential(src_fd)
            stream_length = legacy.legacy_stream_length(length)
            cut = DEFAULT_RULE.small_length(stream_length)
            count = max(1, -(-length // chunk_size))
            with _blame(writing):
                big_fd = _open_fd(big_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                stack.callback(os.close, big_fd)
                _prepare_output(big_fd, stream_length - cut)
            small = memoryview(bytearray(cut))
            hasher = hashlib.sha256()

            def plain_span(index: int) -> tuple[int, int]:
                start = index * chunk_size
                return start, min(start + chunk_size, length)

            def task(index: int, slot: _Slot, turns: _Turns) -> errors.Problem | None:
                pt_start, pt_end = plain_span(index)
                plain = slot.plain[: pt_end - pt_start]
                # The IV leads chunk 0's output; the padding block ends the last chunk's.
                out_start = 0 if index == 0 else legacy.IV_BYTES + pt_start
                try:
                    with _blame(reading, "read"):
                        if not pread_exact(src_fd, plain, pt_start):
                            return StorageFailed(writing, f"{source} shrank while being sealed")
                    with turns.turn(0, index) as go:
                        if not go:
                            return None
                        written = sealer.update_into(plain, slot.cipher)
                        if index == count - 1:
                            written += sealer.finalize_into(slot.cipher[written:])
                    sealed = slot.cipher[:written]
                    with turns.turn(1, index) as go:
                        if go:
                            hasher.update(sealed[_small_share(cut, out_start, written) :])
                    with turns.turn(2, index) as go, _blame(writing):
                        if go:
                            segments = _stream_segments(cut, out_start, out_start + written)
                            _scatter(segments, sealed, small, big_fd)
                except _Blamed as blamed:
                    return blamed.problem
                return None

            failure = _run_chunks(
                count,
                workers=threads,
                slot_sizes=(chunk_size, chunk_size + _LEGACY_SLOT_SLACK),
                stages=3,
                task=task,
                chunk_bytes=lambda index: plain_span(index)[1] - plain_span(index)[0],
                progress=progress,
            )
            if failure is not None:
                return IOFailure(failure)
    except _Blamed as blamed:
        return IOFailure(blamed.problem)
    except OSError as exc:  # closing a descriptor: only the output's can report a late error
        return IOFailure(_os_failure(writing, exc))
    big_length = stream_length - cut
    whole = digest.root(big_length, [hasher.digest()] if big_length else [])
    big_digest = BigPartDigest(big_length, whole)
    return IOSuccess(SealedParts(bytes(small), big_digest))


def open_file_legacy(
    small_part: bytes,
    big_path: Path,
    out: Path,
    *,
    key: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
    progress: Progress | None = None,
) -> IOResult[None, errors.Problem]:
    """Open a legacy resource into ``out``, decrypting chunks in parallel.

    Each CBC block needs only the ciphertext block before it, so every chunk is decrypted on
    its own. The last block is decrypted and its padding checked first, before anything is
    written. The format has no integrity: a tampered body decrypts to changed bytes and only
    the padding is checked. Fails with ``CorruptResource`` for a stream that cannot be legacy,
    ``PartMismatch`` when the small part's length is not what the split rule gives for the
    pair, ``WrongKey`` for bad padding, ``NotFound``/``StorageFailed`` for I/O.
    """
    threads = _check_workers(workers)
    if chunk_size <= 0 or chunk_size % legacy.BLOCK:
        raise ValueError("the legacy chunk size is a positive multiple of 16")
    small = memoryview(small_part)
    reading, writing = str(big_path), str(out)
    try:
        with ExitStack() as stack:
            with _blame(reading, "read"):
                big_fd = _open_fd(big_path, os.O_RDONLY)
                stack.callback(os.close, big_fd)
                big_length = os.fstat(big_fd).st_size
                _advise_sequential(big_fd)
            checked = legacy.check_legacy_pair(len(small), big_length, _LEGACY)
            if not is_successful(checked):
                return IOFailure(checked.failure())
            stream_length = checked.unwrap()
            tail = memoryview(bytearray(2 * legacy.BLOCK))
            with _blame(reading, "read"):
                whole = _read_stream(small, big_fd, stream_length - len(tail), tail)
            if not whole:
                return IOFailure(PartMismatch(f"the big part {big_path} shrank while being read"))
            last = memoryview(bytearray(legacy.BLOCK))
            legacy.decrypt_blocks_into(key, bytes(tail[: legacy.BLOCK]), tail[legacy.BLOCK :], last)
            stripped = legacy.strip_padding(bytes(last), _LEGACY)
            if not is_successful(stripped):
                return IOFailure(stripped.failure())
            last_plain = stripped.unwrap()
            # The body: every ciphertext block after the IV but the padded last one.
            body = stream_length - legacy.IV_BYTES - legacy.BLOCK
            with _blame(writing):
                out_fd = _open_fd(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                stack.callback(os.close, out_fd)
                _prepare_output(out_fd, body + len(last_plain))

            def body_span(index: int) -> tuple[int, int]:
                start = index * chunk_size
                return start, min(start + chunk_size, body)

            def task(index: int, slot: _Slot, turns: _Turns) -> errors.Problem | None:
                start, end = body_span(index)
                # The block before the chunk (the IV for chunk 0), then the chunk's blocks.
                cipher = slot.cipher[: legacy.BLOCK + end - start]
                try:
                    with _blame(reading, "read"):
                        whole = _read_stream(small, big_fd, start, cipher)
                    if not whole:
                        return PartMismatch(f"the big part {big_path} shrank while being read")
                    legacy.decrypt_blocks_into(
                        key, bytes(cipher[: legacy.BLOCK]), cipher[legacy.BLOCK :], slot.plain
                    )
                    with turns.turn(0, index) as go, _blame(writing):
                        if go:
                            _pwrite_all(out_fd, slot.plain[: end - start], start)
                except _Blamed as blamed:
                    return blamed.problem
                return None

            failure = _run_chunks(
                -(-body // chunk_size),
                workers=threads,
                slot_sizes=(chunk_size, chunk_size + legacy.BLOCK),
                stages=1,
                task=task,
                chunk_bytes=lambda index: body_span(index)[1] - body_span(index)[0],
                progress=progress,
            )
            if failure is not None:
                return IOFailure(failure)
            with _blame(writing):
                _pwrite_all(out_fd, memoryview(last_plain), body)
    except _Blamed as blamed:
        return IOFailure(blamed.problem)
    except OSError as exc:  # closing a descriptor: only the output's can report a late error
        return IOFailure(_os_failure(writing, exc))
    if progress is not None:
        progress(len(last_plain))
    return IOSuccess(None)
