"""Use cases: upload and download one resource through the ports.

``upload_resource`` seals the file straight into a cache temp file (one streaming pass), moves it
into the cache, uploads the big part to the CDN and only then stores the small part at the API: the
API write is the commit point, so a crash leaves at worst an orphaned big part, never a small part
that points at nothing. ``download_resource`` fetches the small part (the API adapter opens the
HPKE envelope sealed to this device), checks it once (``Opener.start``: header, key commitment,
MAC) and passes that opener down, takes the big part from a verified cache entry or the CDN,
opens into a temp file next to the output and renames it into place only when every chunk
authenticated. The CDN is asked for
only on a cache miss (``CdnReader``), so a warm download never builds an S3 client.

CDN transfers are retried here, through ``client.retrying`` (the CDN adapter itself does not retry):
a failed big-part download is retried by asking the cache again, which resumes from the bytes its
partial file already holds (a ranged request from there) and discards a partial of another version.
Temp files that a dead process left beside an output file are removed by the next write of it
(``adapters.atomic_file.write_atomically``, re-exported here for the callers that import it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.result import Failure, Success
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.atomic_file import FlushBehind
from splitvault.adapters.atomic_file import write_atomically as write_atomically  # noqa: PLC0414 - re-exported for callers
from splitvault.app.client import pipeline
from splitvault.app.client.retrying import Meter, Retrier, run_with
from splitvault.domain import keys, signature
from splitvault.domain.errors import (
    CorruptResource,
    NotFound,
    PartMismatch,
    Problem,
    UntrustedPublisher,
)
from splitvault.domain.format_v1 import DEFAULT_CHUNK_SIZE, Opener, parse_header
from splitvault.domain.ports import BigPartDigest, Cache, Cdn, Random, RangeSink, ResourceApi, Span
from splitvault.domain.ref import ResourceRef

log = logging.getLogger("splitvault.usecases")

T = TypeVar("T")
Progress = pipeline.Progress


class CdnReader(Protocol):
    """What a download needs of the CDN: a ``Cdn`` is one; so is a CDN built on first use."""

    def download_ranges(
        self, ref: ResourceRef, ranges: Sequence[Span], sink: RangeSink
    ) -> IOResult[int, Problem]:
        """``Cdn.download_ranges``; its failures may also be those of building the CDN."""
        ...


@attrs.frozen
class UploadReport:
    """What an upload stored where."""

    ref: ResourceRef
    plaintext_bytes: int
    small_bytes: int
    big_bytes: int
    big_part: BigPartDigest
    cache_path: Path


@attrs.frozen
class DownloadReport:
    """What a download produced and whether the cache served the big part.

    ``fill_starts`` are the offsets the CDN fills started from, one per attempt (empty on a cache
    hit; a non-zero offset is a resumed download); ``fetched_bytes`` counts the big-part bytes
    that arrived from the CDN in all attempts (more than ``big_bytes`` when ranges were refetched);
    ``chunks_opened_in_flight`` counts the chunks opened into ``out`` while their bytes arrived
    (``pipeline.ChunkTee``), the rest were opened from the cache entry.
    """

    ref: ResourceRef
    out: Path
    plaintext_bytes: int
    small_bytes: int
    big_bytes: int
    cache_hit: bool
    cache_path: Path
    fill_starts: tuple[int, ...] = ()
    fetched_bytes: int = 0
    chunks_opened_in_flight: int = 0


def upload_resource(
    ref: ResourceRef,
    source: Path,
    *,
    api: ResourceApi,
    cdn: Cdn,
    cache: Cache,
    random: Random,
    publisher_key: bytes | None = None,
    signing_key: signature.PublisherKey | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
    progress: Progress | None = None,
    retrier: Retrier | None = None,
) -> IOResult[UploadReport, Problem]:
    """Seal ``source`` and store it: big part to cache and CDN, then the small part to the API.

    ``retrier`` retries the CDN upload (one attempt without it); the API retries its own calls.
    """
    if not source.is_file():
        return IOFailure(NotFound(f"the file {source}"))
    sealed: list[pipeline.SealedParts] = []
    file_id = random.token_bytes(16)
    # The new big part goes beside the current one (its key names the version), so downloads of
    # the current version are untouched until the API switches the small part (the commit point).
    big_ref = ref.at(file_id.hex())

    def produce(temp: Path) -> IOResult[BigPartDigest, Problem]:
        result = pipeline.seal_file(
            source,
            temp,
            ref=ref,
            dek=random.token_bytes(keys.KEY_BYTES),
            file_id=file_id,
            chunk_size=chunk_size,
            publisher_key=publisher_key,
            wrap_nonce=random.token_bytes(keys.NONCE_BYTES) if publisher_key else None,
            workers=workers,
            progress=progress,
        )

        def keep(parts: pipeline.SealedParts) -> BigPartDigest:
            sealed.append(parts)
            return parts.big_digest

        return result.map(keep)

    def report(cache_path: Path) -> UploadReport:
        parts = sealed[-1]
        return UploadReport(
            ref=ref,
            plaintext_bytes=source.stat().st_size,
            small_bytes=len(parts.small_part),
            big_bytes=parts.big_digest.length,
            big_part=parts.big_digest,
            cache_path=cache_path,
        )

    def to_cdn(path: Path) -> IOResult[Path, Problem]:
        def once() -> IOResult[None, Problem]:
            return cdn.upload_file(big_ref, path)

        return run_with(retrier, f"upload of the big part of {ref}", once).map(lambda _: path)

    def commit(path: Path) -> IOResult[Path, Problem]:
        small = sign_small_part(signing_key, sealed[-1].small_part)
        return api.upload_small_part(ref, small).map(lambda _: path)

    return cache.store(ref, produce).bind(to_cdn).bind(commit).map(report)


def sign_small_part(key: signature.PublisherKey | None, small: bytes) -> bytes:
    """The signed framing of a freshly sealed v1 small part (unchanged without a key)."""
    if key is None:
        return small
    parsed = parse_header(small)
    assert isinstance(parsed, Success), "we just sealed this small part"
    return signature.sign_small_part(key, small, parsed.unwrap()[1])


def trusted_small_part(
    ref: ResourceRef, small: bytes, pinned: Sequence[bytes]
) -> IOResult[bytes, Problem]:
    """The v1 small part inside a signed one, once its signature is trusted.

    With keys pinned, the signer must be one of them (a compromised server or bucket cannot
    substitute content). Without pins, the key the part names must verify it: the server
    vouched for that key by accepting the upload only under the key it recorded for the
    uploader. Unsigned parts are refused when anything is pinned, and otherwise accepted (parts
    published before signatures, and the original client's) with a warning.
    """
    part = signature.split_signed(small)
    if part is None:
        if pinned:
            return IOFailure(UntrustedPublisher(str(ref), "it carries no publisher signature"))
        log.warning("%s carries no publisher signature; pin publisher_keys to refuse it", ref)
        return IOSuccess(small)
    parsed = parse_header(part.inner)
    if isinstance(parsed, Failure):
        return IOFailure(parsed.failure())
    message = signature.part_statement(part.inner, parsed.unwrap()[1])
    checked = signature.verify(
        str(ref), part.signature, message, pinned=pinned, vouched=part.public
    )
    if isinstance(checked, Failure):
        return IOFailure(checked.failure())
    log.info("%s is signed by publisher key %s", ref, signature.key_id(checked.unwrap()))
    return IOSuccess(part.inner)


def download_resource(
    ref: ResourceRef,
    out: Path,
    *,
    api: ResourceApi,
    cdn: CdnReader,
    cache: Cache,
    publisher_key: bytes | None = None,
    pinned: Sequence[bytes] = (),
    workers: int | None = None,
    progress: Progress | None = None,
    retrier: Retrier | None = None,
) -> IOResult[DownloadReport, Problem]:
    """Fetch and open one resource into ``out``; nothing is left at ``out`` on failure.

    The publisher's signature is checked (``trusted_small_part``) before any big-part byte moves.

    ``retrier`` retries the big part's download, resuming each time (one attempt without it).
    """
    # The API adapter opens the envelope sealed to this device; a wrong device is a WrongKey.
    small_part: IOResult[bytes, Problem] = api.download_small_part(ref)
    return small_part.bind(lambda small: trusted_small_part(ref, small, pinned)).bind(
        lambda small: _with_big_part(
            ref,
            small,
            out,
            cdn=cdn,
            cache=cache,
            publisher_key=publisher_key,
            workers=workers,
            progress=progress,
            retrier=retrier,
        )
    )


def _with_big_part(
    ref: ResourceRef,
    small: bytes,
    out: Path,
    *,
    cdn: CdnReader,
    cache: Cache,
    publisher_key: bytes | None,
    workers: int | None,
    progress: Progress | None,
    retrier: Retrier | None,
) -> IOResult[DownloadReport, Problem]:
    # The small part is checked once, before any big-part byte moves: a wrong key or a tampered
    # header fails here without a download, and the opener is what the pipeline runs with.
    started = Opener.start(small, publisher_key=publisher_key, expected_ref=ref)
    if isinstance(started, Failure):
        return IOFailure(started.failure())
    opener = started.unwrap()
    header = opener.header
    expected = opener.big_digest
    big_ref = ref.at(header.file_id.hex())
    filled: list[int] = []

    meter = Meter()

    def report(big_path: Path, in_flight: int) -> DownloadReport:
        return DownloadReport(
            ref=ref,
            out=out,
            plaintext_bytes=header.layout.plaintext_length,
            small_bytes=len(small),
            big_bytes=expected.length,
            cache_hit=not filled,
            cache_path=big_path,
            fill_starts=tuple(filled),
            fetched_bytes=meter.moved,
            chunks_opened_in_flight=in_flight,
        )

    def fetch_into(temp: Path) -> IOResult[DownloadReport, Problem]:
        # The output's temp file exists before the fill, so each chunk is opened into it as its
        # bytes land (``ChunkTee``); what the tee could not open is opened from the entry after.
        out_fd = pipeline.new_output(temp)  # an OSError is write_atomically's to report
        # write_atomically fsyncs the output before its rename; flushed while the bytes still
        # arrive, that fsync finds nearly nothing left to wait for.
        flusher = FlushBehind(out_fd)
        try:
            tee = pipeline.ChunkTee(opener, out_fd, wrote=flusher.wrote)

            def fill(ranges: Sequence[Span], sink: RangeSink) -> IOResult[None, Problem]:
                filled.append(ranges[0][0] if ranges else expected.length)
                log.info(
                    "fetching %d range(s) of the big part of %s from the CDN", len(ranges), ref
                )
                teed = tee.around(sink, ranges)
                return cdn.download_ranges(big_ref, ranges, meter.around(teed)).map(lambda _: None)

            def use(big_path: Path) -> IOResult[DownloadReport, Problem]:
                opened = tee.opened
                return pipeline.open_with(
                    opener,
                    big_path,
                    temp,
                    workers=workers,
                    progress=progress,
                    # The cache verified the hash (or its stamp says the entry is unchanged since)
                    # and every chunk is authenticated: a second digest pass buys nothing.
                    verify_big_digest=False,
                    output_exists=True,
                    already_open=opened,
                    wrote=flusher.wrote,
                ).map(lambda _: report(big_path, len(opened)))

            # Each attempt asks the cache again: it asks the CDN only for the segments its
            # partial lacks, or finds the entry another process has finished meanwhile.
            fetched = cache.fetch(ref, expected, fill, use)
        finally:
            try:
                flush_failure = flusher.close()
            finally:
                os.close(out_fd)
        if flush_failure is not None and is_successful(fetched):
            raise flush_failure  # write_atomically names the output, as after its own fsync
        return fetched

    def fetch() -> IOResult[DownloadReport, Problem]:
        return write_atomically(out, fetch_into)

    def attempt() -> IOResult[DownloadReport, Problem]:
        return run_with(retrier, f"download of the big part of {ref}", fetch, progress=meter)

    return refetching_once(ref, cache, attempt, filled)


def refetching_once(
    ref: ResourceRef,
    cache: Cache,
    attempt: Callable[[], IOResult[T, Problem]],
    filled: list[int],
) -> IOResult[T, Problem]:
    """Run ``attempt``; when it used a cached entry (nothing ``filled``) that failed to
    authenticate, drop the entry and run it once more, from the CDN.

    A cached entry can change after it was verified (bit rot, a stray writer): every chunk is
    authenticated on open, so it is caught; the original client fell through to the CDN silently,
    this says so in the log.
    """
    first = attempt()
    if filled or is_successful(first):
        return first
    problem = unsafe_perform_io(first.failure())
    if not isinstance(problem, CorruptResource | PartMismatch):
        return first
    log.warning(
        "the cached big part of %s did not authenticate (%s); fetching it again",
        ref,
        problem.describe(),
    )
    cache.discard(ref)
    return attempt()
