"""Resources to and from memory, never through a plaintext file.

The split exists so that an edge machine holds no usable copy at rest; a script that wants the
model's bytes should not get them by way of a decrypted temp file. Three entry points, each on a
``Client`` (the composition root's product) and ``domain.format_v1`` directly:

- ``load_into_memory`` fetches the small part, takes the big part from a verified cache entry (or
  fills it from the CDN), and decrypts every chunk straight into one preallocated buffer: peak
  memory is the plaintext plus one chunk buffer per worker. Resources in the original format (no v1
  magic) are read with the shared key through the legacy CBC suite, the same way.
- ``ResourceReader`` (from ``open_reader``) is a read-only, seekable binary file object over a
  verified cache entry: it decrypts the chunk under the read position on demand, so any reader that
  takes a file object (``torch.load``, ``onnxruntime``, ``zipfile``) loads a model of any size in
  bounded memory. It keeps the entry's file descriptor, so a newer version replacing the entry
  mid-read cannot mix two versions.
- ``upload_from_memory`` seals a bytes-like plaintext chunk by chunk straight into the cache's
  temp file, then uploads like ``usecases.upload_resource`` (big part first, the small part last as
  the commit point).

Why a ``BytesIO`` for the buffer: ``getbuffer()`` is a writable view of its internal ``bytes``
object and, once the view is released, ``getvalue()`` hands that very object out without a copy,
so the caller gets real ``bytes`` at the cost of one plaintext, not two.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.result import Failure

from splitvault.app.client.bootstrap import Client
from splitvault.app.client.pipeline import pread_exact
from splitvault.app.client.retrying import Meter, run_with
from splitvault.app.client.usecases import (
    refetching_once,
    sign_small_part,
    trusted_small_part,
)
from splitvault.domain import digest, keys, legacy
from splitvault.domain.errors import (
    ConfigInvalid,
    PartMismatch,
    Problem,
    StorageFailed,
    UnsupportedFormat,
)
from splitvault.domain.format_v1 import (
    DEFAULT_CHUNK_SIZE,
    MAGIC,
    Opener,
    Sealer,
    check_big_part,
)
from splitvault.domain.keys import TAG_BYTES
from splitvault.domain.ports import BigPartDigest, Cdn, RangeSink, Span
from splitvault.domain.ref import ResourceRef
from splitvault.domain.signature import PublisherKey

log = logging.getLogger("splitvault.in_memory")

LEGACY_RUN = 1 << 20  # plaintext bytes one legacy worker decrypts per read


@attrs.frozen
class MemoryLoad:
    """What ``load_into_memory`` produced: the plaintext and where its big part came from."""

    data: bytes = attrs.field(repr=False)
    legacy: bool
    cache_hit: bool


def _preallocated(length: int) -> tuple[io.BytesIO, memoryview]:
    """A ``BytesIO`` holding exactly ``length`` zero bytes and a writable view of them."""
    holder = io.BytesIO()
    if length:
        holder.seek(length - 1)
        holder.write(b"\x00")
    return holder, holder.getbuffer()


def _storage(what: str, error: OSError, action: str = "write") -> StorageFailed:
    return StorageFailed(what, error.strerror or type(error).__name__, action)


def _small_part(client: Client, ref: ResourceRef) -> IOResult[bytes, Problem]:
    small_part: IOResult[bytes, Problem] = client.api.download_small_part(ref)
    return small_part.bind(
        lambda small: trusted_small_part(ref, small, client.config.publisher_keys)
    )


def _verified_entry(
    client: Client, ref: ResourceRef, opener: Opener, filled: list[int]
) -> IOResult[Path, Problem]:
    """The cache entry of ``ref``'s big part, filled (resuming) from the CDN when needed."""

    expected = opener.big_digest
    expected_version = opener.header.file_id.hex()

    def on_cdn(cdn: Cdn) -> IOResult[Path, Problem]:
        meter = Meter()

        def fill(ranges: Sequence[Span], sink: RangeSink) -> IOResult[None, Problem]:
            filled.append(ranges[0][0] if ranges else expected.length)
            # The big part's object is the version's (the header's file id).
            big_ref = ref.at(expected_version)
            return cdn.download_ranges(big_ref, ranges, meter.around(sink)).map(lambda _: None)

        def use(path: Path) -> IOResult[Path, Problem]:
            return IOSuccess(path)  # opened by the caller right after (not pinned meanwhile)

        return run_with(
            client.retrier,
            f"download of the big part of {ref}",
            lambda: client.cache.fetch(ref, expected, fill, use),
            progress=meter,
        )

    return client.with_cdn(False, on_cdn)


def _opener(
    small: bytes, ref: ResourceRef, publisher_key: bytes | None
) -> IOResult[Opener, Problem]:
    started = Opener.start(small, publisher_key=publisher_key, expected_ref=ref)
    if isinstance(started, Failure):
        return IOFailure(started.failure())
    return IOSuccess(started.unwrap())


class _ChunkSource:
    """Reads one v1 chunk's ciphertext from the small part's bytes and the big part's file."""

    def __init__(self, opener: Opener, fd: int) -> None:
        self.opener = opener
        self.layout = opener.layout
        self._small = memoryview(opener.small_ciphertext)
        self._fd = fd

    def read(self, index: int, buffer: memoryview) -> memoryview | None:
        """Chunk ``index``'s ciphertext in ``buffer``; None when the big part ended early."""
        start, end = self.layout.ciphertext_span(index)
        cipher = buffer[: end - start]
        pos = 0
        for in_big, offset, size in self.layout.segments(start, end):
            piece = cipher[pos : pos + size]
            if not in_big:
                piece[:] = self._small[offset : offset + size]
            elif not pread_exact(self._fd, piece, offset):
                return None
            pos += size
        return cipher

    def open_into(self, index: int, buffer: memoryview, out: memoryview) -> Problem | None:
        """Authenticate and decrypt chunk ``index`` into ``out`` (its exact plaintext size)."""
        cipher = self.read(index, buffer)
        if cipher is None:
            return PartMismatch("the cached big part shrank while being read")
        opened = self.opener.open_chunk_into(index, cipher, out)
        return opened.failure() if isinstance(opened, Failure) else None


def open_v1_into_memory(opener: Opener, big_path: Path, workers: int) -> IOResult[bytes, Problem]:
    """Authenticate and decrypt every chunk of a v1 resource into one exact-size ``bytes``.

    ``big_path`` is the (verified) big part; ``workers`` threads each hold one chunk buffer.
    Fails with ``PartMismatch`` for a big part of the wrong length, ``CorruptResource`` for a
    chunk that does not authenticate, ``StorageFailed`` for I/O.
    """
    layout = opener.layout

    def decrypt(fd: int) -> IOResult[bytes, Problem]:
        try:
            holder, view = _preallocated(layout.plaintext_length)
            source = _ChunkSource(opener, fd)
            count = layout.chunk_count
            threads = max(1, min(workers, count))
            span = min(layout.chunk_size, layout.plaintext_length) + TAG_BYTES

            def run(worker: int) -> Problem | None:
                # Each worker takes every threads-th chunk with its own buffer: memory is bounded by
                # the worker count, and AES-GCM releases the GIL, so the cores really work at once.
                buffer = memoryview(bytearray(span))
                for index in range(worker, count, threads):
                    pt_start, pt_end = layout.plaintext_span(index)
                    problem = source.open_into(index, buffer, view[pt_start:pt_end])
                    if problem is not None:
                        return problem
                return None

            with ThreadPoolExecutor(threads, thread_name_prefix="splitvault-open") as pool:
                problems = [problem for problem in pool.map(run, range(threads)) if problem]
            view.release()
            if problems:
                return IOFailure(problems[0])
            return IOSuccess(holder.getvalue())
        except OSError as error:
            return IOFailure(_storage(str(big_path), error, "read"))
        finally:
            os.close(fd)

    return _open_big_part(opener, big_path).bind(decrypt)


def open_legacy_into_memory(
    small: bytes, big_path: Path, key: bytes, workers: int
) -> IOResult[bytes, Problem]:
    """Decrypt a legacy pair (small bytes + big part file) into one exact-size buffer."""
    what = "legacy resource"
    try:
        fd = os.open(big_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        return IOFailure(_storage(str(big_path), error, "read"))
    try:
        checked = legacy.check_legacy_pair(len(small), os.fstat(fd).st_size, what)
        if isinstance(checked, Failure):
            return IOFailure(checked.failure())
        stream_length = checked.unwrap()
        small_view = memoryview(small)

        def stream(start: int, buffer: memoryview) -> bool:
            cut = len(small)
            pos = 0
            if start < cut:
                take = min(len(buffer), cut - start)
                buffer[:take] = small_view[start : start + take]
                pos = take
            return pos == len(buffer) or pread_exact(fd, buffer[pos:], start + pos - cut)

        tail = memoryview(bytearray(2 * legacy.BLOCK))
        if not stream(stream_length - len(tail), tail):
            return IOFailure(PartMismatch("the big part shrank while being read"))
        last = memoryview(bytearray(legacy.BLOCK))
        legacy.decrypt_blocks_into(key, bytes(tail[: legacy.BLOCK]), tail[legacy.BLOCK :], last)
        stripped = legacy.strip_padding(bytes(last), what)
        if isinstance(stripped, Failure):
            return IOFailure(stripped.failure())
        last_plain = stripped.unwrap()
        body = stream_length - legacy.IV_BYTES - legacy.BLOCK
        holder, view = _preallocated(body + len(last_plain))
        runs = list(range(0, body, LEGACY_RUN))
        threads = max(1, min(workers, len(runs)))

        def run(worker: int) -> bool:
            # The block before a run (the IV for the first), then the run: CBC blocks decrypt
            # independently given their predecessor, so runs go to workers in any order.
            buffer = memoryview(bytearray(LEGACY_RUN + legacy.BLOCK))
            for start in runs[worker::threads]:
                end = min(start + LEGACY_RUN, body)
                cipher = buffer[: legacy.BLOCK + end - start]
                if not stream(start, cipher):
                    return False
                legacy.decrypt_blocks_into(
                    key, bytes(cipher[: legacy.BLOCK]), cipher[legacy.BLOCK :], view[start:end]
                )
            return True

        with ThreadPoolExecutor(threads, thread_name_prefix="splitvault-legacy") as pool:
            complete = all(pool.map(run, range(threads)))
        view[body:] = last_plain
        view.release()
        if not complete:
            return IOFailure(PartMismatch("the big part shrank while being read"))
        return IOSuccess(holder.getvalue())
    except OSError as error:
        return IOFailure(_storage(str(big_path), error, "read"))
    finally:
        os.close(fd)


def _legacy_big_part(client: Client, ref: ResourceRef) -> IOResult[Path, Problem]:
    """Download a legacy big part (ciphertext) into a private file in the cache directory.

    The original format has no header, so there is no digest to verify a cache entry against:
    the part is fetched from the CDN each time, and the caller removes the file.
    """
    scratch = client.config.cache_dir / ".legacy"
    try:
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = _mkstemp(scratch)
    except OSError as error:
        return IOFailure(_storage(str(scratch), error, "create"))
    os.close(fd)
    temp = Path(name)

    def on_cdn(cdn: Cdn) -> IOResult[Path, Problem]:
        def once() -> IOResult[Path, Problem]:
            try:
                start = temp.stat().st_size
            except OSError as error:
                return IOFailure(_storage(str(temp), error, "read"))
            return cdn.download_file(ref, temp, start=start).map(lambda _: temp)

        return run_with(client.retrier, f"download of the big part of {ref}", once)

    fetched = client.with_cdn(False, on_cdn)
    if not is_successful(fetched):
        temp.unlink(missing_ok=True)
    return fetched


def _mkstemp(directory: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=".legacy-", suffix=".big", dir=directory)


def load_into_memory(
    client: Client, ref: ResourceRef, *, shared_key: bytes | None = None
) -> IOResult[MemoryLoad, Problem]:
    """The plaintext of ``ref`` as bytes, decrypted straight into one buffer.

    ``shared_key`` is the original client's resource key: for a v1 resource the publisher key
    that wraps its data key (the client's configured one otherwise), for a resource in the original
    format (no v1 magic) the legacy CBC key, which is then required. Fails like a download
    (``NotFound``, ``WrongKey``, ``CorruptResource``, ``PartMismatch``, network failures); a
    resource in the original format without a key is ``ConfigInvalid`` naming ``key``.
    """
    workers = client.config.workers

    def with_small(small: bytes) -> IOResult[MemoryLoad, Problem]:
        if small[: len(MAGIC)] != MAGIC:
            if shared_key is None:
                return IOFailure(
                    ConfigInvalid(
                        "key",
                        f"{ref} is in the original format (AES-CBC under a shared key); pass "
                        "the original resource key, or migrate it with splitvault migrate",
                    )
                )
            return _legacy_big_part(client, ref).bind(
                lambda path: _finally_unlink(
                    path, open_legacy_into_memory(small, path, shared_key, workers)
                ).map(lambda data: MemoryLoad(data, legacy=True, cache_hit=False))
            )
        publisher_key = shared_key if shared_key is not None else client.publisher_key
        return _opener(small, ref, publisher_key).bind(
            lambda opener: _v1_into_memory(client, ref, opener, workers)
        )

    return _small_part(client, ref).bind(with_small)


def _finally_unlink(path: Path, result: IOResult[bytes, Problem]) -> IOResult[bytes, Problem]:
    path.unlink(missing_ok=True)
    return result


def _v1_into_memory(
    client: Client, ref: ResourceRef, opener: Opener, workers: int
) -> IOResult[MemoryLoad, Problem]:
    filled: list[int] = []

    def attempt() -> IOResult[MemoryLoad, Problem]:
        return _verified_entry(client, ref, opener, filled).bind(
            lambda path: open_v1_into_memory(opener, path, workers).map(
                lambda data: MemoryLoad(data, legacy=False, cache_hit=not filled)
            )
        )

    return refetching_once(ref, client.cache, attempt, filled)


class ResourceReader(io.RawIOBase):
    """A read-only, seekable binary file over one v1 resource, decrypting chunks on demand.

    Built by ``open_reader``. Holds the verified cache entry's file descriptor and the chunk under
    the read position (one chunk of plaintext); reads of whole chunks go straight into the
    caller's buffer. ``fileno()`` is refused on purpose: the descriptor is the ciphertext.
    Thread-safe. A chunk that does not authenticate raises ``IntegrityError``.
    """

    def __init__(self, opener: Opener, fd: int, name: str) -> None:
        super().__init__()
        self._source = _ChunkSource(opener, fd)
        self._layout = opener.layout
        self._fd = fd
        self.name = name
        self._pos = 0
        self._lock = threading.Lock()
        span = min(self._layout.chunk_size, self._layout.plaintext_length)
        self._cipher = memoryview(bytearray(span + TAG_BYTES))
        self._plain = memoryview(bytearray(span))
        self._held: int | None = None  # the chunk whose plaintext is in self._plain

    def __repr__(self) -> str:
        return f"ResourceReader({self.name!r}, size={self.size}, closed={self.closed})"

    @property
    def size(self) -> int:
        """The plaintext's length in bytes."""
        return self._layout.plaintext_length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def write(self, _data: object) -> int:
        raise io.UnsupportedOperation("a resource is read-only")

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        with self._lock:
            self._pos = target
        return target

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._checkClosed()
        out = memoryview(buffer).cast("B")
        with self._lock:
            done = 0
            while done < len(out) and self._pos < self.size:
                done += self._fill(out[done:])
            return done

    def _fill(self, out: memoryview) -> int:
        from splitvault.app.client.errors import to_exception  # noqa: PLC0415 - edge only

        layout = self._layout
        index = self._pos // layout.chunk_size
        pt_start, pt_end = layout.plaintext_span(index)
        within = self._pos - pt_start
        size = pt_end - pt_start
        if within == 0 and len(out) >= size and self._held != index:
            problem = self._source.open_into(index, self._cipher, out[:size])
            if problem is not None:
                raise to_exception(problem)
            self._pos = pt_end
            return size
        if self._held != index:
            self._held = None
            problem = self._source.open_into(index, self._cipher, self._plain[:size])
            if problem is not None:
                raise to_exception(problem)
            self._held = index
        take = min(len(out), size - within)
        out[:take] = self._plain[within : within + take]
        self._pos += take
        return take

    def close(self) -> None:
        if not self.closed:
            with self._lock:
                os.close(self._fd)
                self._held = None
        super().close()


def open_reader(
    client: Client, ref: ResourceRef, *, publisher_key: bytes | None = None
) -> IOResult[ResourceReader, Problem]:
    """A ``ResourceReader`` over ``ref``, its big part verified in (or filled into) the cache.

    Resources in the original format have no addressable, authenticated chunks: they fail with
    ``UnsupportedFormat`` saying to migrate them (``load_into_memory`` reads them).
    """
    key = publisher_key if publisher_key is not None else client.publisher_key

    def with_small(small: bytes) -> IOResult[ResourceReader, Problem]:
        if small[: len(MAGIC)] != MAGIC:
            return IOFailure(
                UnsupportedFormat(
                    f"{ref} is in the original format, which cannot be read on demand; "
                    "run splitvault migrate, or use load_big_small_resource with its key"
                )
            )
        return _opener(small, ref, key).bind(
            lambda opener: _verified_entry(client, ref, opener, []).bind(
                lambda path: _reader_over(opener, path, ref)
            )
        )

    return _small_part(client, ref).bind(with_small)


def _open_big_part(opener: Opener, path: Path) -> IOResult[int, Problem]:
    """An open descriptor of the big part at ``path`` whose length ``opener``'s header expects
    (the caller closes it); ``PartMismatch`` for another length, ``StorageFailed`` for I/O."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        return IOFailure(_storage(str(path), error, "read"))
    try:
        checked = check_big_part(opener, os.fstat(fd).st_size)
    except OSError as error:
        os.close(fd)
        return IOFailure(_storage(str(path), error, "read"))
    if isinstance(checked, Failure):
        os.close(fd)
        return IOFailure(checked.failure())
    return IOSuccess(fd)


def _reader_over(opener: Opener, path: Path, ref: ResourceRef) -> IOResult[ResourceReader, Problem]:
    return _open_big_part(opener, path).map(lambda fd: ResourceReader(opener, fd, str(ref)))


# --- sealing from memory --------------------------------------------------------------------


@attrs.frozen
class MemoryUpload:
    """What ``upload_from_memory`` stored."""

    ref: ResourceRef
    plaintext_bytes: int
    small_bytes: int
    big_bytes: int
    cache_path: Path


def seal_buffer_into(
    sealer: Sealer, plaintext: memoryview, temp: Path
) -> IOResult[tuple[bytes, BigPartDigest], Problem]:
    """Seal every chunk of ``plaintext`` in order, writing the big part's share to ``temp``."""
    layout = sealer.layout
    small = memoryview(bytearray(layout.small_ciphertext_length))
    span = min(layout.chunk_size, layout.plaintext_length) + TAG_BYTES
    cipher = memoryview(bytearray(span))
    leaves: list[bytes] = []
    try:
        with temp.open("wb") as sink:
            for index in range(layout.chunk_count):
                pt_start, pt_end = layout.plaintext_span(index)
                size = sealer.seal_chunk_into(index, plaintext[pt_start:pt_end], cipher)
                ct_start, ct_end = layout.ciphertext_span(index)
                pos = 0
                for in_big, offset, length in layout.segments(ct_start, ct_end):
                    piece = cipher[pos : pos + length]
                    if in_big:
                        sink.write(piece)
                        leaves.append(digest.leaf(piece))
                    else:
                        small[offset : offset + length] = piece
                    pos += length
                assert pos == size
    except OSError as error:
        return IOFailure(_storage(str(temp), error))
    root = digest.root(layout.big_length, leaves)
    first, segment = layout.big_segmentation()
    return IOSuccess(
        (sealer.finish(bytes(small), root), BigPartDigest(layout.big_length, root, first, segment))
    )


def upload_from_memory(
    client: Client,
    ref: ResourceRef,
    plaintext: bytes | bytearray | memoryview,
    *,
    publisher_key: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> IOResult[MemoryUpload, Problem]:
    """Seal ``plaintext`` (v1, its data key wrapped under ``publisher_key`` when given, else the
    client's) and store it: big part into the cache and to the CDN, then the small part."""
    view = memoryview(plaintext).cast("B")
    file_id = client.random.token_bytes(16)
    key = publisher_key if publisher_key is not None else client.publisher_key
    started = Sealer.start(
        ref,
        len(view),
        dek=client.random.token_bytes(keys.KEY_BYTES),
        file_id=file_id,
        chunk_size=chunk_size,
        publisher_key=key,
        wrap_nonce=client.random.token_bytes(keys.NONCE_BYTES) if key else None,
    )
    if isinstance(started, Failure):
        return IOFailure(started.failure())
    sealer = started.unwrap()
    small_parts: list[bytes] = []

    def produce(temp: Path) -> IOResult[BigPartDigest, Problem]:
        def keep(sealed: tuple[bytes, BigPartDigest]) -> BigPartDigest:
            small_parts.append(sealed[0])
            return sealed[1]

        return seal_buffer_into(sealer, view, temp).map(keep)

    def to_cdn(path: Path) -> IOResult[Path, Problem]:
        def on_cdn(cdn: Cdn) -> IOResult[Path, Problem]:
            return run_with(
                client.retrier,
                f"upload of the big part of {ref}",
                lambda: cdn.upload_file(ref.at(file_id.hex()), path),
            ).map(lambda _: path)

        return client.with_cdn(True, on_cdn)

    def commit(path: Path) -> IOResult[MemoryUpload, Problem]:
        small = small_parts[-1]

        def store(signing_key: PublisherKey | None) -> IOResult[None, Problem]:
            return client.api.upload_small_part(ref, sign_small_part(signing_key, small))

        return (
            client.upload_signing_key()
            .bind(store)
            .map(lambda _: MemoryUpload(ref, len(view), len(small), sealer.layout.big_length, path))
        )

    return client.cache.store(ref, produce).bind(to_cdn).bind(commit)
