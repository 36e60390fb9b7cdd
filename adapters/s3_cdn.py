"""An S3-compatible bucket as the CDN for big parts, behind the ``Cdn`` port.

Read and write credentials are separate: ``S3Cdn.reader`` is built from the read keys only and has
no upload path (it answers ``AccessDenied`` without a request); ``S3Cdn.writer`` is built from the
write keys. A download-only process therefore never holds write keys, and the bucket policy
enforces the same split on the server side.

The requests are ``adapters.s3_http``'s: SigV4 over pooled ``http.client`` connections, with no
botocore (its import and client cost 0.2-0.3 CPU-s per process; see that module). Uploads above
``multipart_threshold`` are sent in parts of ``multipart_chunksize``, ``max_concurrency`` in
flight, each read with one positional read into its worker's reused buffer and sent as that buffer
(one ``sendall``, no read loop, no per-part allocation); a failed upload is aborted, so the key
never shows a partial object. The payload is not SHA-256 signed (``UNSIGNED-PAYLOAD``): the bytes
are ciphertext whose every chunk is authenticated and whose digest the publisher signs, and TLS
guards them in transit, so the signature's 0.6 CPU-s per GiB would protect nothing. Downloads are
ranged GETs of ``multipart_chunksize`` bytes run in parallel, each read with ``readinto`` into its
worker's reused 1 MiB buffer and written with ``pwrite`` at its own offset into the destination;
every range carries ``If-Match`` with the ETag read first, so an object replaced mid-download
fails instead of mixing two versions. ``start`` resumes
a download: bytes before it are not touched. On failure the destination is cut back to the bytes
known good from ``start`` on, so its length is always a safe resume point.

Retries: none here. There is one retry layer for CDN transfers and it is the core's:
``app.client.retrying`` repeats a whole ``download_file``/``upload_file`` as ``domain.retry.decide``
says (full jitter, attempt cap, total time budget, ``Retry-After``; only ``Transient`` and
``TimedOut`` are retried), and this adapter makes exactly one request per call: a second layer
would multiply with it (3 x 6 attempts, and a budget nobody sees), and botocore's, which this
replaced, stopped at the response headers, so a reset in the middle of a ranged body was never
retried there anyway. A retried download resumes from the destination's length (the
cache's partial file), which this adapter keeps a safe resume point, so the unit of retry costs only
the bytes not yet on disk. A retried upload starts that upload again (a failed multipart upload is
aborted). Failures are classified here: throttling codes, 5xx and connection errors are
``Transient`` (with the server's ``Retry-After`` when it sent one), stalled reads ``TimedOut`` after
``read_timeout``, everything else final.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure, Result, Success

from splitvault.adapters.ranges import download_into_file
from splitvault.adapters.s3_http import (
    S3BadAnswer,
    S3ConnectionFailed,
    S3ConnectTimeout,
    S3Error,
    S3Failure,
    S3Http,
    S3ReadTimeout,
    S3TlsFailed,
    crc32_of,
)
from splitvault.domain.cdn_layout import ObjectLayout, SharedBucket
from splitvault.domain.config import DEFAULT_REGION, CdnConfig, S3Keys
from splitvault.domain.errors import (
    AccessDenied,
    ConfigInvalid,
    NotFound,
    RemoteError,
    StorageFailed,
    TimedOut,
    Transient,
)
from splitvault.domain.ports import CdnFailure, RangeSink, Span
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import TRANSIENT_SERVICE_CODES, parse_retry_after

log = logging.getLogger("splitvault.s3_cdn")

MIB = 1024 * 1024
STREAM_CHUNK = MIB
Progress = Callable[[int], None]

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchBucket"})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
_TRANSIENT_CODES = TRANSIENT_SERVICE_CODES | {
    "PreconditionFailed",  # the object was replaced mid-download: fetching again is right
    "412",
}


@attrs.frozen
class S3Tuning:
    """How the S3 adapter talks to the endpoint.

    Args:
        multipart_threshold: files at least this large are uploaded in parts.
        multipart_chunksize: the size of an upload part and of a download range (S3's minimum
            part is 5 MiB).
        max_concurrency: parts or ranges in flight at once; the connection pool is at least this.
        connect_timeout, read_timeout: seconds before a connect or a stalled read fails.
        addressing_style: ``path`` works with every S3-compatible store and with IP endpoints.
        part_checksums: send each upload part's CRC32 (as boto3 does by default since 1.36), so
            the store rejects a part damaged on the way instead of a downloader finding it; off
            for a store that refuses checksum headers (``AWS_REQUEST_CHECKSUM_CALCULATION=
            when_required``, boto3's own switch, turns it off in ``bootstrap``).
    """

    multipart_threshold: int = 8 * MIB
    multipart_chunksize: int = 8 * MIB
    max_concurrency: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    part_checksums: bool = True

    def __attrs_post_init__(self) -> None:
        if self.multipart_chunksize < 5 * MIB or self.multipart_threshold < 5 * MIB:
            raise ValueError("S3 parts are at least 5 MiB")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")

    @property
    def pool_size(self) -> int:
        """Idle connections kept: every part or range in flight needs its own, or threads queue."""
        return max(self.max_concurrency, 10)


def _versioned_ref(key: str) -> ResourceRef | None:
    """The ref of a ``folder/name/<version>.big`` key, or None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or not parts[2].endswith(".big"):
        return None
    parsed = ResourceRef.parse(parts[0], parts[1])
    if isinstance(parsed, Failure):
        return None
    try:
        return parsed.unwrap().at(parts[2].removesuffix(".big"))
    except ValueError:
        return None


def _client_error_failure(error: S3Error, what: str) -> CdnFailure:
    code, status = error.code, error.status
    shown = f"{code or 'error'} (HTTP {status})"
    if code in _NOT_FOUND_CODES or (status == 404 and not code):
        return NotFound(what)
    if code in _DENIED_CODES or status == 403:
        return AccessDenied(what, shown)
    if code in _TRANSIENT_CODES or status in {408, 429} or status >= 500:
        return Transient(what, shown, parse_retry_after(error.retry_after, time.time()))
    return RemoteError(what, status, code or "unexpected answer")


class S3Cdn:
    """Big parts in an S3-compatible bucket, under the key ``folder/name.big``.

    Build it with ``S3Cdn.reader`` (download only) or ``S3Cdn.writer``; the constructor takes
    ``writable`` to say which keys it was given.

    Args:
        endpoint_url: the S3-compatible endpoint.
        bucket: the bucket holding big parts.
        region: the signing region.
        keys: the only credentials this instance holds.
        writable: whether ``keys`` are write keys; a reader refuses uploads locally.
        tuning: part sizes, concurrency, timeouts and retries.
        layout: where a ref's object lives (default: ``bucket``, key ``folder/name.big``);
            ``BucketPerFolder`` reaches the original client's objects.

    Failures: ``NotFound``, ``AccessDenied`` (403, bad keys, a reader asked to upload),
    ``Transient`` (throttling, 5xx, connection errors, after retries), ``TimedOut``,
    ``RemoteError`` (anything else the endpoint answered), ``StorageFailed`` (local files).
    """

    def __init__(
        self,
        *,
        endpoint_url: str,
        bucket: str,
        region: str,
        keys: S3Keys,
        writable: bool,
        tuning: S3Tuning | None = None,
        layout: ObjectLayout | None = None,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._bucket = bucket
        self._layout: ObjectLayout = layout if layout is not None else SharedBucket(bucket)
        self._writable = writable
        self._tuning = tuning or S3Tuning()
        self._client = S3Http(
            endpoint_url,
            region,
            keys,
            pool_size=self._tuning.pool_size,
            connect_timeout=self._tuning.connect_timeout,
            read_timeout=self._tuning.read_timeout,
            addressing_style=self._tuning.addressing_style,
        )

    @classmethod
    def reader(
        cls,
        endpoint_url: str,
        bucket: str,
        read_keys: S3Keys,
        *,
        region: str = DEFAULT_REGION,
        tuning: S3Tuning | None = None,
        layout: ObjectLayout | None = None,
    ) -> S3Cdn:
        """A download-only client holding the read keys and nothing else."""
        return cls(
            endpoint_url=endpoint_url,
            bucket=bucket,
            region=region,
            keys=read_keys,
            writable=False,
            tuning=tuning,
            layout=layout,
        )

    @classmethod
    def writer(
        cls,
        endpoint_url: str,
        bucket: str,
        write_keys: S3Keys,
        *,
        region: str = DEFAULT_REGION,
        tuning: S3Tuning | None = None,
        layout: ObjectLayout | None = None,
    ) -> S3Cdn:
        """A client that can upload, holding the write keys."""
        return cls(
            endpoint_url=endpoint_url,
            bucket=bucket,
            region=region,
            keys=write_keys,
            writable=True,
            tuning=tuning,
            layout=layout,
        )

    @classmethod
    def from_config(
        cls, config: CdnConfig, *, write: bool, tuning: S3Tuning | None = None
    ) -> Result[S3Cdn, ConfigInvalid]:
        """A reader (``write=False``) or a writer from ``cdn.yaml``, with only that role's keys."""
        keys = config.write_keys if write else config.read_keys
        if keys is None:
            role = "write" if write else "read"
            return Failure(ConfigInvalid(role, f"cdn.yaml holds no {role} keys for this role"))
        build = cls.writer if write else cls.reader
        return Success(
            build(
                config.endpoint,
                config.bucket or "",
                keys,
                region=config.region,
                tuning=tuning,
                layout=config.object_layout(),
            )
        )

    def __repr__(self) -> str:
        role = "writer" if self._writable else "reader"
        return f"S3Cdn({role}, endpoint={self._endpoint_url!r}, {self._layout.describe()})"

    @property
    def writable(self) -> bool:
        """Whether this instance holds write keys."""
        return self._writable

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _what(self, ref: ResourceRef) -> str:
        # Both layouts make ``folder/name.big`` the object's bucket-qualified name.
        return f"CDN object {ref.key}"

    def _failure(self, error: S3Failure, what: str) -> CdnFailure:
        if isinstance(error, S3Error):
            if error.code == "NoSuchBucket":
                if isinstance(self._layout, SharedBucket):
                    return NotFound(f"bucket {self._layout.bucket}")
                return NotFound(f"the bucket of {what}")
            return _client_error_failure(error, what)
        if isinstance(error, S3ReadTimeout):
            return TimedOut(what, self._tuning.read_timeout)
        if isinstance(error, S3ConnectTimeout):
            return TimedOut(what, self._tuning.connect_timeout)
        if isinstance(error, S3TlsFailed):
            # Retrying does not fix a certificate; say what it is instead.
            return RemoteError(what, 0, "TLS handshake or certificate verification failed")
        if isinstance(error, S3ConnectionFailed):
            return Transient(what, str(error))
        if isinstance(error, S3BadAnswer):
            # A store that answers a range with other bytes, or a listing that is not XML.
            return RemoteError(what, 0, str(error))
        return RemoteError(what, 0, type(error).__name__)

    def upload_file(
        self, ref: ResourceRef, source: Path, *, progress: Progress | None = None
    ) -> IOResult[None, CdnFailure]:
        """Upload ``source`` to ``ref.key``; multipart above the threshold, aborted on failure.

        ``progress`` (optional) is called with each part's size as it is read to be sent (from
        several threads); an exception it raises fails the upload like a read error.
        """
        what = self._what(ref)
        if not self._writable:
            return IOFailure(
                AccessDenied(what, "this CDN client holds read-only keys; uploads need write keys")
            )
        if not source.is_file():
            return IOFailure(StorageFailed(f"upload source {source}", "not a readable file"))
        started = self._now()
        bucket, key = self._layout.locate(ref)
        try:
            fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            return IOFailure(StorageFailed(f"upload source {source}", _reason(error)))
        try:
            size = os.fstat(fd).st_size
            if size < self._tuning.multipart_threshold:
                body = _read_part(fd, 0, size)
                if progress is not None:
                    progress(size)
                self._client.put_object(bucket, key, body)
            else:
                _MultipartUpload(self._client, bucket, key, self._tuning).run(fd, size, progress)
        except S3Failure as error:
            failure = self._failure(error, what)
            log.warning("upload of %s failed: %s", what, failure.describe())
            return IOFailure(failure)
        except OSError as error:
            return IOFailure(StorageFailed(f"upload source {source}", _reason(error)))
        finally:
            os.close(fd)
        self.abort_stale_uploads(ref, before=started)
        return IOSuccess(None)

    def versioned_objects(self) -> IOResult[tuple[tuple[ResourceRef, float], ...], CdnFailure]:
        """Every versioned big part in the shared bucket with its last-modified time (epoch s).

        Only ``SharedBucket`` keys ``folder/name/<version>.big`` count; anything else (the
        original's ``folder/name.big``, foreign objects) is never listed, so never collected.
        """
        if not isinstance(self._layout, SharedBucket):
            return IOSuccess(())
        found: list[tuple[ResourceRef, float]] = []
        try:
            for key, modified in self._client.list_objects(self._layout.bucket):
                ref = _versioned_ref(key)
                if ref is not None:
                    found.append((ref, modified.timestamp()))
        except S3Failure as error:
            return IOFailure(self._failure(error, f"listing of bucket {self._layout.bucket}"))
        return IOSuccess(tuple(found))

    def delete(self, ref: ResourceRef) -> IOResult[None, CdnFailure]:
        """Delete the object of ``ref`` (a versioned big part ``gc`` found unreferenced)."""
        bucket, key = self._layout.locate(ref)
        try:
            self._client.delete_object(bucket, key)
        except S3Failure as error:
            return IOFailure(self._failure(error, self._what(ref)))
        return IOSuccess(None)

    def abort_unfinished(self, *, before: datetime) -> IOResult[int, CdnFailure]:
        """Abort every multipart upload of a versioned big part begun before ``before``."""
        if not isinstance(self._layout, SharedBucket):
            return IOSuccess(0)
        bucket = self._layout.bucket
        aborted = 0
        try:
            for upload in list(self._client.list_multipart_uploads(bucket)):
                if _versioned_ref(upload.key) is None or upload.initiated >= before:
                    continue
                self._client.abort_multipart_upload(bucket, upload.key, upload.upload_id)
                aborted += 1
        except S3Failure as error:
            return IOFailure(self._failure(error, f"multipart uploads of bucket {bucket}"))
        return IOSuccess(aborted)

    def abort_stale_uploads(self, ref: ResourceRef, *, before: datetime) -> int:
        """Abort the unfinished multipart uploads of ``ref``'s key begun before ``before``.

        A killed uploader leaves its parts in the bucket, billed and invisible, until someone
        aborts them; the next successful upload of the same key does (S3 keeps the last writer
        anyway, so an older upload still in flight would only have been overwritten). The
        bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule is the backstop for keys that
        are never uploaded again. Listing needs ``s3:ListBucketMultipartUploads``; without it
        this logs and aborts nothing. Returns how many were aborted.

        For a versioned ref the uploads of every version of the resource count (a killed
        re-publish left its parts under its own version's key, which nobody uploads again).
        """
        bucket, key = self._layout.locate(ref)
        versions_prefix = None
        if ref.version is not None:
            versions_prefix = self._layout.locate(ref.unversioned)[1].removesuffix(".big") + "/"
        prefix = versions_prefix or key
        aborted = 0
        try:
            for upload in list(self._client.list_multipart_uploads(bucket, prefix)):
                theirs = upload.key
                ours = theirs == key or (
                    versions_prefix is not None
                    and theirs.startswith(versions_prefix)
                    and "/" not in theirs[len(versions_prefix) :]
                )
                if not ours or upload.initiated >= before:
                    continue
                self._client.abort_multipart_upload(bucket, theirs, upload.upload_id)
                aborted += 1
        except S3Failure as error:
            failure = self._failure(error, self._what(ref))
            log.warning("could not abort stale uploads of %s: %s", key, failure.describe())
        if aborted:
            log.info("aborted %d unfinished multipart upload(s) of %s", aborted, key)
        return aborted

    def _now(self) -> datetime:
        # The endpoint's clock decides "Initiated"; S3 answers in UTC, so compare in UTC.
        return datetime.now(UTC)

    def size(self, ref: ResourceRef) -> IOResult[int, CdnFailure]:
        """The object's size in bytes, or ``NotFound``."""
        return self._head(ref).map(lambda head: head[0])

    def _head(self, ref: ResourceRef) -> IOResult[tuple[int, str], CdnFailure]:
        what = self._what(ref)
        try:
            bucket, key = self._layout.locate(ref)
            # "*" (any version) only if a store omits the ETag; S3 always sends one.
            return IOSuccess(self._client.head_object(bucket, key))
        except S3Failure as error:
            return IOFailure(self._failure(error, what))

    def download_ranges(
        self, ref: ResourceRef, ranges: Sequence[Span], sink: RangeSink
    ) -> IOResult[int, CdnFailure]:
        """Fetch ``ranges`` in parallel into ``sink``; return the object's size.

        A range that fails remotely does not stop the others, so every byte that arrived stays
        with the sink; a local failure (the sink raised ``OSError``: disk full) stops them all.
        Returns the first failure once every range has finished or failed.
        """
        return self._head(ref).bind(
            lambda head: self._fetch_ranges(ref, ranges, sink, size=head[0], etag=head[1])
        )

    def _fetch_ranges(
        self, ref: ResourceRef, ranges: Sequence[Span], sink: RangeSink, *, size: int, etag: str
    ) -> IOResult[int, CdnFailure]:
        what = self._what(ref)
        for low, high in ranges:
            if not 0 <= low < high <= size:
                return IOFailure(RemoteError(what, 416, f"range {low}-{high} is outside {size}"))
        bucket, key = self._layout.locate(ref)
        job = _RangedDownload(client=self._client, bucket=bucket, key=key, etag=etag, sink=sink)
        problem = job.run(list(ranges), workers=self._tuning.max_concurrency)
        if problem is None:
            return IOSuccess(size)
        failure = self._download_failure(problem, what)
        if failure is None:
            raise problem  # not a transfer failure (a bug, or a sink's own error)
        log.warning("download of %s: %s", what, failure.describe())
        return IOFailure(failure)

    def download_file(
        self,
        ref: ResourceRef,
        dest: Path,
        *,
        start: int = 0,
        progress: Progress | None = None,
    ) -> IOResult[int, CdnFailure]:
        """Write the object's bytes ``[start:]`` into ``dest`` at their offsets; return its size.

        Ranges are fetched in parallel. Bytes of ``dest`` before ``start`` are left alone; on
        success ``dest`` is exactly as long as the object, on failure it is cut back to the
        contiguous bytes written from ``start``, a safe point to resume from. ``progress``
        (optional) is called with byte counts from several threads.
        """
        if start < 0:
            raise ValueError("start must be >= 0")
        return self._head(ref).bind(
            lambda head: download_into_file(
                dest,
                what=self._what(ref),
                start=start,
                size=head[0],
                step=self._tuning.multipart_chunksize,
                progress=progress,
                fetch=lambda ranges, sink: self._fetch_ranges(
                    ref, ranges, sink, size=head[0], etag=head[1]
                ),
            )
        )

    def _download_failure(self, error: BaseException, what: str) -> CdnFailure | None:
        if isinstance(error, _LocalWriteFailed):
            return StorageFailed(f"download of {what}", error.reason)
        if isinstance(error, _ShortRange):
            return Transient(what, str(error))
        if isinstance(error, S3Failure):
            return self._failure(error, what)
        if isinstance(error, OSError):
            return StorageFailed(f"download of {what}", _reason(error))
        return None


def _read_part(fd: int, low: int, size: int, into: bytearray | None = None) -> bytearray:
    """Bytes ``[low, low + size)`` of the file, read into ``into`` when given (it is ``size``
    long). Raises ``OSError`` for a read error, or one saying so when the file ends first."""
    buffer = into if into is not None else bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        got = os.preadv(fd, [view[done:]], low + done)
        if got == 0:
            raise OSError(0, f"the file shrank below {low + done} bytes while being uploaded")
        done += got
    return buffer


class _MultipartUpload:
    """One multipart upload: parts read and sent in parallel, completed in order or aborted.

    Every worker thread reads its parts into one buffer of its own, reused from part to part and
    sent with one ``sendall``, so at most ``max_concurrency`` part buffers exist. The first failure
    stops the parts not yet begun; the upload is then aborted, so its parts are not left billed in
    the bucket.
    """

    def __init__(self, client: S3Http, bucket: str, key: str, tuning: S3Tuning) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part = tuning.multipart_chunksize
        self._workers = tuning.max_concurrency
        self._checksums = tuning.part_checksums
        self._buffers = threading.local()
        self._stop = threading.Event()

    def run(self, fd: int, size: int, progress: Progress | None) -> None:
        """Upload the ``size`` bytes of ``fd``; raises ``S3Failure`` or ``OSError``."""
        count = -(-size // self._part)
        upload_id = self._client.create_multipart_upload(
            self._bucket, self._key, crc32=self._checksums
        )
        try:
            sent = self._send_all(fd, size, upload_id, count, progress)
            self._client.complete_multipart_upload(self._bucket, self._key, upload_id, sent)
        except BaseException:
            self._abort(upload_id)
            raise

    def _send_all(
        self, fd: int, size: int, upload_id: str, count: int, progress: Progress | None
    ) -> list[tuple[str, str | None]]:
        """Send parts ``1..count``; their ETags and CRC32s in order, or the first failure."""
        workers = max(1, min(self._workers, count))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splitvault-s3") as pool:
            futures = [
                pool.submit(self._send, fd, size, upload_id, number, progress)
                for number in range(1, count + 1)
            ]
            wait(futures)
        for future in futures:
            problem = future.exception()
            if problem is not None and not isinstance(problem, _Stopped):
                raise problem
        return [future.result() for future in futures]

    def _send(
        self, fd: int, size: int, upload_id: str, number: int, progress: Progress | None
    ) -> tuple[str, str | None]:
        if self._stop.is_set():
            raise _Stopped
        low = (number - 1) * self._part
        length = min(self._part, size - low)
        try:
            if length == self._part:
                buffer = getattr(self._buffers, "buffer", None)
                if buffer is None:
                    buffer = self._buffers.buffer = bytearray(self._part)
                body = _read_part(fd, low, length, buffer)
            else:
                body = _read_part(fd, low, length)  # the short last part: once
            if progress is not None:
                progress(length)
            crc = crc32_of(body) if self._checksums else None
            etag = self._client.upload_part(
                self._bucket, self._key, upload_id, number, body, crc32=crc
            )
        except BaseException:
            self._stop.set()
            raise
        return etag, crc

    def _abort(self, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(self._bucket, self._key, upload_id)
        except S3Failure as error:
            # The next upload of this key, or the bucket's lifecycle rule, removes the parts.
            log.warning("could not abort the multipart upload of %s: %s", self._key, error)


class _LocalWriteFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ShortRange(Exception):
    """A range whose body ended before its last byte."""


class _Stopped(Exception):
    """A local failure stopped the download; this range gives up early."""


class _RangedDownload:
    """The shared state of one parallel ranged download."""

    def __init__(
        self, *, client: S3Http, bucket: str, key: str, etag: str, sink: RangeSink
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._etag = etag
        self._sink = sink
        self.stop = threading.Event()
        self._buffers = threading.local()

    def run(self, ranges: list[Span], *, workers: int) -> BaseException | None:
        """Fetch every range; a remote failure stops only its own range. Returns the first."""
        if not ranges:
            return None
        count = max(1, min(workers, len(ranges)))
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="splitvault-s3") as pool:
            futures = [pool.submit(self.fetch, low, high) for low, high in ranges]
            wait(futures)
        errors = [f.exception() for f in futures if f.exception() is not None]
        local = [e for e in errors if isinstance(e, _LocalWriteFailed)]
        remote = [e for e in errors if not isinstance(e, _Stopped | _LocalWriteFailed)]
        return (local or remote or [None])[0]

    def fetch(self, low: int, high: int) -> None:
        if self.stop.is_set():
            raise _Stopped
        view: memoryview | None = getattr(self._buffers, "view", None)
        if view is None:
            view = self._buffers.view = memoryview(bytearray(STREAM_CHUNK))
        answer = self._client.get_range(self._bucket, self._key, low, high, if_match=self._etag)
        offset = low
        try:
            while offset < high:
                if self.stop.is_set():
                    raise _Stopped
                got = answer.readinto(view[: min(len(view), high - offset)])
                if not got:
                    break
                try:
                    # The sink hashes and writes the piece before it returns: the buffer is free.
                    self._sink.write(offset, view[:got])
                except OSError as error:
                    # The disk is full or gone: every other range would fail the same way.
                    self.stop.set()
                    raise _LocalWriteFailed(_reason(error)) from error
                offset += got
        finally:
            answer.close()
        if offset != high:
            raise _ShortRange(f"range {low}-{high} ended at byte {offset}")


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__
