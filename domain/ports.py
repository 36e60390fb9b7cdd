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
    Conflict,
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
    UnsupportedFormat,
    WrongKey,
)
from splitvault.domain.ref import ResourceRef

CdnFailure = NotFound | AccessDenied | Transient | TimedOut | RemoteError | StorageFailed
# WrongKey, CorruptResource, UnsupportedFormat: an answer sealed to another device, altered on
# the way, or of another protocol (the API adapters open what the server seals to this device).
ApiFailure = (
    NotFound
    | AccessDenied
    | AuthFailed
    | HardwareMismatch
    | Transient
    | TimedOut
    | RemoteError
    | WrongKey
    | CorruptResource
    | UnsupportedFormat
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

        Every range is checked against the object's size before any byte moves: one that lies
        outside it fails the call with ``RemoteError`` 416 and hands ``sink`` nothing (the cache
        relies on this to refuse a header that claims a longer part without a probe first).
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

    def holds(self, ref: ResourceRef) -> bool:
        """Whether a complete entry of ``ref`` (any version) is here: a hint that lets a client
        start building its CDN client early when a download will surely miss; ``fetch`` decides."""
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

    def download_small_part(self, ref: ResourceRef) -> IOResult[bytes, ApiFailure]:
        """The small part, opened from the envelope the API sealed to this device."""
        ...

    def list_folder(self, folder: str) -> IOResult[tuple[str, ...], ApiFailure]:
        """Names of the resources in a folder."""
        ...


@attrs.frozen
class VouchedFragment:
    """A version's key fragment and the publisher key the server vouches for with it: the key
    the registering account declared (and the server checked against the key it records for that
    account), or ``None`` when the fragment was registered without one."""

    fragment: bytes = attrs.field(repr=False)
    publisher_key: bytes | None


class KeyFragments(Protocol):
    """Key fragments of encrypted image archives, one per version."""

    def get_fragment(self, version: str) -> IOResult[bytes, ApiFailure]:
        """The fragment that unlocks a version's archive."""
        ...

    def vouched_fragment(self, version: str) -> IOResult[VouchedFragment, ApiFailure]:
        """The fragment with the publisher key the server vouches for (what a loader checks)."""
        ...

    def put_fragment(
        self, version: str, fragment: bytes, publisher_key: bytes | None = None
    ) -> IOResult[None, ApiFailure]:
        """Register the fragment of a newly sealed archive, declaring the key that signed it."""
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


# --- the server's store ------------------------------------------------------------------------
#
# Everything the reference API server keeps goes through these protocols; one store object
# (``SqliteStore``, ``PostgresStore``) implements them all, and one contract suite checks both.
# Every write is one transaction: readers, and a process that is killed mid-write, see all of it or
# none of it.

StoreFailure = StorageFailed | Conflict | NotFound

ROLES: tuple[str, ...] = ("uploader", "downloader", "admin")
DEVICE_STATUSES: tuple[str, ...] = ("pending", "active", "revoked")


@attrs.frozen
class Account:
    """One user account.

    ``email`` is canonical (see ``app.server.accounts.canonical_email``); ``salt`` is the per-user
    random salt a client derives its device key with; ``generation`` is the session generation
    every token carries (bumped by a password change, a device revocation, a binding reset).
    No fingerprint is kept: a device is bound by its enrolled key (``Device``).
    """

    email: str
    role: str
    password_hash: str = attrs.field(repr=False)
    salt: bytes = attrs.field(repr=False)
    generation: int = 0


@attrs.frozen
class Device:
    """A client machine's enrolled public key; the fingerprint is stored only as a keyed hash."""

    device_id: str
    email: str
    public_key: bytes
    fingerprint_hash: bytes = attrs.field(repr=False)
    status: str
    created_at: float


@attrs.frozen
class Grant:
    """What an account may do in a folder."""

    email: str
    folder: str
    read: bool
    write: bool


@attrs.frozen
class ResourceVersion:
    """One published version of a resource; ``version`` is the header's file id (hex)."""

    folder: str
    name: str
    version: str
    small_part: bytes = attrs.field(repr=False)
    publisher: str
    created_at: float


@attrs.frozen
class Publisher:
    """The Ed25519 public key the server records for an account that publishes signed content."""

    email: str
    public_key: bytes
    recorded_at: float


@attrs.frozen
class StoredFragment:
    """A version's key fragment as stored: who registered it and the publisher key it declared
    (``None``: registered unsigned, or by an administrator's replacement)."""

    version: str
    fragment: bytes = attrs.field(repr=False)
    publisher: str
    publisher_key: bytes | None


class Accounts(Protocol):
    """User accounts, keyed by canonical e-mail."""

    def get_account(self, email: str) -> IOResult[Account | None, StoreFailure]:
        """The account, or ``None``."""
        ...

    def put_account(self, account: Account) -> IOResult[None, StoreFailure]:
        """Create or replace the account (grants and devices are kept)."""
        ...

    def remove_account(self, email: str) -> IOResult[bool, StoreFailure]:
        """Delete the account with its grants and devices; ``True`` when it existed."""
        ...

    def list_accounts(self) -> IOResult[tuple[Account, ...], StoreFailure]:
        """Every account, by e-mail."""
        ...


class Sessions(Protocol):
    """Changes that end sessions or bind a machine, each one atomic on its own."""

    def bump_generation(self, email: str) -> IOResult[int, StoreFailure]:
        """Add one to the account's session generation; ``NotFound`` without the account."""
        ...


class Devices(Protocol):
    """Enrolled client devices."""

    def put_device(
        self, device: Device, *, active_limit: int | None = None
    ) -> IOResult[bool, StoreFailure]:
        """Enrol a device; a second enrolment of the same id is a ``Conflict``.

        With ``active_limit``, an active device is enrolled only while the account has fewer
        active devices, counted in the same write (two machines enrolling at once cannot both
        pass); ``False`` when the limit refused it, and nothing was written.
        """
        ...

    def list_devices(self, email: str | None = None) -> IOResult[tuple[Device, ...], StoreFailure]:
        """Devices of one account, or of all."""
        ...

    def set_device_status(self, device_id: str, status: str) -> IOResult[Device, StoreFailure]:
        """Approve or revoke; revoking bumps the account's session generation in the same write."""
        ...


class Grants(Protocol):
    """Folder grants."""

    def put_grant(self, grant: Grant) -> IOResult[None, StoreFailure]:
        """Create or replace the account's grant on the folder."""
        ...

    def remove_grant(self, email: str, folder: str) -> IOResult[bool, StoreFailure]:
        """Delete it; ``True`` when it existed."""
        ...

    def list_grants(self, email: str | None = None) -> IOResult[tuple[Grant, ...], StoreFailure]:
        """Grants of one account, or of all."""
        ...


class Resources(Protocol):
    """Small parts by folder and name, with their recent versions."""

    def publish(self, version: ResourceVersion) -> IOResult[None, StoreFailure]:
        """Record the version and make it current (the commit point); keeps the store's last N."""
        ...

    def current(self, folder: str, name: str) -> IOResult[ResourceVersion | None, StoreFailure]:
        """The current version, or ``None``."""
        ...

    def names(self, folder: str) -> IOResult[tuple[str, ...], StoreFailure]:
        """Names of the folder's resources, sorted."""
        ...


class ResourceAdmin(Protocol):
    """What operators do to resources."""

    def versions(
        self, folder: str, name: str | None = None
    ) -> IOResult[tuple[ResourceVersion, ...], StoreFailure]:
        """The kept versions in a folder (of one name), newest first."""
        ...

    def remove_resource(self, folder: str, name: str) -> IOResult[int, StoreFailure]:
        """Delete a resource and every version; returns how many versions went."""
        ...

    def collect_garbage(self) -> IOResult[int, StoreFailure]:
        """Delete versions beyond the kept N that nothing points at; returns how many went."""
        ...


class Fragments(Protocol):
    """Image key fragments, write-once per version."""

    def put_fragment(
        self, version: str, fragment: bytes, *, replace: bool = False
    ) -> IOResult[None, StoreFailure]:
        """Store a fragment; a different one for a stored version is a ``Conflict`` unless
        ``replace`` (an administrator's decision). The same bytes again succeed (a retry)."""
        ...

    def get_fragment(self, version: str) -> IOResult[bytes | None, StoreFailure]:
        """The fragment, or ``None``."""
        ...

    def latest_fragment(self) -> IOResult[tuple[str, bytes] | None, StoreFailure]:
        """The most recently registered ``(version, fragment)``, or ``None`` when there is none."""
        ...

    def fragment_versions(self) -> IOResult[tuple[str, ...], StoreFailure]:
        """Every version with a fragment, sorted."""
        ...


class FragmentAdmin(Protocol):
    """What operators do to fragments."""

    def remove_fragment(self, version: str) -> IOResult[bool, StoreFailure]:
        """Delete it; ``True`` when it existed."""
        ...


class VouchedFragments(Protocol):
    """Fragments with the publisher each was registered under: what the server vouches for."""

    def register_fragment(self, fragment: StoredFragment) -> IOResult[None, StoreFailure]:
        """Store a fragment write-once with its publisher; the same fragment and key again
        succeed (a retry), anything else for a stored version is a ``Conflict``."""
        ...

    def fragment_record(self, version: str | None) -> IOResult[StoredFragment | None, StoreFailure]:
        """The version's fragment with its publisher (``None``: the latest registered one)."""
        ...


class Publishers(Protocol):
    """Publisher keys, one per account: recorded on first use, re-keyed by operators."""

    def record_publisher_key(
        self, email: str, public_key: bytes, at: float
    ) -> IOResult[bytes, StoreFailure]:
        """Record ``public_key`` when the account has none (trust on first use); returns the
        key recorded afterwards, which a caller compares with the one it offered."""
        ...

    def publisher_key(self, email: str) -> IOResult[bytes | None, StoreFailure]:
        """The account's recorded key, or ``None``."""
        ...


class PublisherAdmin(Protocol):
    """What operators do to publisher keys (a leaked or rotated key)."""

    def set_publisher_key(
        self, email: str, public_key: bytes | None, at: float
    ) -> IOResult[bool, StoreFailure]:
        """Replace the account's key (``None`` clears it: the next signed upload records one);
        ``True`` when a key was recorded before. Versions signed earlier keep the key recorded
        with them."""
        ...

    def list_publishers(self) -> IOResult[tuple[Publisher, ...], StoreFailure]:
        """Every recorded key, by e-mail."""
        ...


class Settings(Protocol):
    """Named server settings (the CDN config, the token signing key)."""

    def get_setting(self, name: str) -> IOResult[bytes | None, StoreFailure]:
        """The value, or ``None``."""
        ...

    def put_setting(self, name: str, value: bytes) -> IOResult[None, StoreFailure]:
        """Create or replace."""
        ...

    def setting_or_create(self, name: str, value: bytes) -> IOResult[bytes, StoreFailure]:
        """The stored value, storing ``value`` first when there is none: servers starting
        together agree on one."""
        ...


class LoginFailures(Protocol):
    """Failed logins, shared by every server on the store so a throttle holds on all of them."""

    def record_failure(
        self, key: str, at: float, *, forget_before: float
    ) -> IOResult[None, StoreFailure]:
        """Record one failure for ``key`` and drop every record older than ``forget_before``."""
        ...

    def failures_since(self, key: str, since: float) -> IOResult[tuple[float, ...], StoreFailure]:
        """Times of ``key``'s failures after ``since``, oldest first."""
        ...

    def clear_failures(self, key: str) -> IOResult[None, StoreFailure]:
        """Forget ``key``'s failures (after a correct password)."""
        ...


class StoreHealth(Protocol):
    """Whether the store answers, and its schema version."""

    def ping(self) -> IOResult[int, StoreFailure]:
        """The schema version, read from the store itself."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class ServerStore(
    Accounts,
    Sessions,
    Devices,
    Grants,
    Resources,
    ResourceAdmin,
    Fragments,
    FragmentAdmin,
    VouchedFragments,
    Publishers,
    PublisherAdmin,
    Settings,
    LoginFailures,
    StoreHealth,
    Protocol,
):
    """Everything the reference server keeps, on one object."""
