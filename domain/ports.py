"""Ports: the small protocols the use cases need from the outside world.

Each port is implemented by one or more adapters in ``adapters/`` and checked by one contract suite
run against every adapter. Library types (boto3, httpx) never cross a port: adapters return
``IOResult`` values whose failures come from ``domain.errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import attrs
from returns.io import IOResult

from splitvault.domain.errors import (
    AccessDenied,
    AuthFailed,
    CorruptResource,
    EngineFailure,
    HardwareMismatch,
    NotFound,
    PartMismatch,
    Problem,
    RemoteError,
    StorageFailed,
    TimedOut,
    Transient,
)
from splitvault.domain.ref import ResourceRef

CdnFailure = NotFound | AccessDenied | Transient | TimedOut | RemoteError | StorageFailed
ApiFailure = (
    NotFound | AccessDenied | AuthFailed | HardwareMismatch | Transient | TimedOut | RemoteError
)
CacheFailure = StorageFailed | PartMismatch | CorruptResource
T = TypeVar("T")


@attrs.frozen
class BigPartDigest:
    """What a big part must be: its length and digest, as recorded in the small part's header.

    ``root`` is the segmented SHA-256 of ``domain.digest``; ``first_segment`` and
    ``segment_size`` say where the segments are (by default the whole part is one segment).
    """

    length: int
    root: bytes
    first_segment: int = attrs.field()
    segment_size: int = attrs.field()

    @first_segment.default
    def _whole(self) -> int:
        return max(self.length, 1)

    @segment_size.default
    def _whole_size(self) -> int:
        return max(self.length, 1)


Span = tuple[int, int]
"""A byte range ``[low, high)`` of a big part."""


class RangeSink(Protocol):
    """Where a ranged download puts the bytes it receives.

    Called from several threads at once, but each range's bytes arrive in order from its ``low``:
    a write either starts a range or continues one exactly where its previous write ended.
    """

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Take ``data``, the big part's bytes at ``offset``. Raises ``OSError`` (disk full)."""
        ...

    def landed(self) -> int:
        """Bytes this sink has kept for good so far: what a retry will not ask for again."""
        ...


class Cdn(Protocol):
    """Object storage for big parts, keyed by ``ref.key``."""

    def upload_file(self, ref: ResourceRef, source: Path) -> IOResult[None, CdnFailure]:
        """Store the file's bytes under the ref; readers never see a partial object."""
        ...

    def download_ranges(
        self, ref: ResourceRef, ranges: Sequence[Span], sink: RangeSink
    ) -> IOResult[int, CdnFailure]:
        """Fetch every range (in parallel) into ``sink``; return the object's total size.

        A range that fails does not stop the others: every byte handed to ``sink`` stays
        handed, so the caller keeps whatever finished and asks again only for what is missing.
        Returns the first failure once every range has finished or failed.
        """
        ...

    def download_file(
        self, ref: ResourceRef, dest: Path, *, start: int = 0
    ) -> IOResult[int, CdnFailure]:
        """Write the object's bytes ``[start:]`` into ``dest`` at their own offsets.

        ``dest`` is created if absent; bytes before ``start`` are left as they are (resume).
        Returns the object's total size.
        """
        ...

    def size(self, ref: ResourceRef) -> IOResult[int, CdnFailure]:
        """The object's size, or ``NotFound``."""
        ...


# fill(ranges, sink): fetch the big part's byte ranges into the sink (``Cdn.download_ranges``).
Fill = Callable[[Sequence[Span], RangeSink], IOResult[None, Problem]]
# write(temp_path): produce a big part in temp_path and say what it is.
Produce = Callable[[Path], IOResult[BigPartDigest, Problem]]
# use(entry_path): read a verified entry; the cache keeps it from eviction until this returns.
Use = Callable[[Path], IOResult[T, Problem]]


class Cache(Protocol):
    """The local cache of big parts, one entry per resource version, verified before use."""

    def fetch(
        self, ref: ResourceRef, expected: BigPartDigest, fill: Fill, use: Use[T]
    ) -> IOResult[T, Problem]:
        """Run ``use`` on a verified entry, filling (or resuming) it through ``fill`` when needed.

        The entry is not evicted while ``use`` runs; a failed fill keeps what has landed.
        """
        ...

    def store(self, ref: ResourceRef, produce: Produce) -> IOResult[Path, Problem]:
        """Let ``produce`` write a new entry into a temp file, then move it into place."""
        ...

    def discard(self, ref: ResourceRef) -> None:
        """Remove an entry known to be bad."""
        ...


@attrs.frozen
class Fingerprint:
    """A machine's hardware fingerprint.

    ``components`` are the canonicalised probe readings (``None`` when a source is absent);
    ``value`` is the app-keyed HMAC of them, the only form that leaves the process.
    """

    components: tuple[tuple[str, str | None], ...] = attrs.field(repr=False)
    value: str


class Hardware(Protocol):
    """Where the hardware fingerprint comes from."""

    def fingerprint(self) -> Fingerprint:
        """Probe the machine; missing sources are recorded as absent, never raised."""
        ...


class ResourceApi(Protocol):
    """The authenticated resource API that holds small parts and key fragments."""

    def upload_small_part(self, ref: ResourceRef, small_part: bytes) -> IOResult[None, ApiFailure]:
        """Store a small part (the commit point of an upload)."""
        ...

    def download_small_part(
        self, ref: ResourceRef, fingerprint: str
    ) -> IOResult[bytes, ApiFailure]:
        """The small part, as the transport envelope sealed for this user and machine."""
        ...

    def list_folder(self, folder: str) -> IOResult[tuple[str, ...], ApiFailure]:
        """Names of the resources in a folder."""
        ...


class KeyFragments(Protocol):
    """Key fragments of encrypted image archives, one per version."""

    def get_fragment(self, version: str) -> IOResult[bytes, ApiFailure]:
        """The fragment that unlocks a version's archive."""
        ...

    def put_fragment(self, version: str, fragment: bytes) -> IOResult[None, ApiFailure]:
        """Register the fragment of a newly sealed archive."""
        ...


class ContainerEngine(Protocol):
    """A container engine that can load image archives and answer whether an image exists."""

    def load(self, tar: Path) -> IOResult[tuple[str, ...], EngineFailure]:
        """Load an image tar; returns the names the engine reported as loaded."""
        ...

    def has_image(self, name: str) -> IOResult[bool, EngineFailure]:
        """Whether ``name`` (``repo:tag``) is present."""
        ...


class Clock(Protocol):
    """Time, passed in so decisions stay deterministic in tests."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch."""
        ...


class Random(Protocol):
    """Randomness, passed in."""

    def token_bytes(self, n: int) -> bytes:
        """``n`` cryptographically random bytes."""
        ...

    def uniform(self) -> float:
        """A float in [0, 1) for jitter (need not be cryptographic)."""
        ...
