"""The closed set of expected failures, as frozen values.

Every function that can fail in an expected way returns one of these inside a ``Result``. Each
value knows how to describe itself to a person (what happened, what was expected, what to do) and
never carries a secret: fields that could hold one do not exist. Programming errors still raise.
The facade turns these values into ``SplitvaultError`` exceptions at the edge.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class InvalidRef:
    """A folder or resource name that cannot be used as a path or object key."""

    field: str
    reason: str

    def describe(self) -> str:
        return (
            f"invalid {self.field}: {self.reason}; use a plain name without path separators, "
            "control characters or a leading dot"
        )


@attrs.frozen
class CorruptResource:
    """Bytes that do not authenticate or do not parse: tampering, truncation, or the wrong file."""

    what: str
    detail: str

    def describe(self) -> str:
        return f"{self.what} is corrupt or was tampered with: {self.detail}"


@attrs.frozen
class WrongKey:
    """The key offered does not open this resource."""

    what: str

    def describe(self) -> str:
        return f"the key for {self.what} is wrong (key commitment or padding check failed)"


@attrs.frozen
class PartMismatch:
    """A small part and a big part that do not belong together (or a stale cache entry)."""

    detail: str

    def describe(self) -> str:
        return f"small and big part do not belong together: {self.detail}; fetch the big part again"


@attrs.frozen
class UnsupportedFormat:
    """A file in a format or version this build does not read."""

    detail: str

    def describe(self) -> str:
        return f"unsupported format: {self.detail}"


@attrs.frozen
class LimitExceeded:
    """A declared size outside what the format allows, refused before any allocation."""

    what: str
    limit: int
    got: int

    def describe(self) -> str:
        return f"{self.what} is {self.got}, over the limit of {self.limit}"


@attrs.frozen
class NotFound:
    """A resource, object or image that does not exist where it was looked for."""

    what: str

    def describe(self) -> str:
        return f"{self.what} was not found; check the folder and name"


@attrs.frozen
class AccessDenied:
    """Valid credentials without the right to do this (wrong role, read-only keys)."""

    what: str
    detail: str

    def describe(self) -> str:
        return f"access denied to {self.what}: {self.detail}"


@attrs.frozen
class AuthFailed:
    """Login failed or the session could not be renewed."""

    detail: str
    status: int | None = None

    def describe(self) -> str:
        code = f" (HTTP {self.status})" if self.status is not None else ""
        return f"authentication failed{code}: {self.detail}; check the e-mail and password"


@attrs.frozen
class HardwareMismatch:
    """The API refused this machine's device (409): over the account's device limit, pending an
    operator's approval; the server's message says which and what to do."""

    error_code: str
    message: str

    def describe(self) -> str:
        return f"the API refused this machine ({self.error_code}): {self.message}"


@attrs.frozen
class Transient:
    """A failure worth retrying (network error, 5xx, throttling) that outlived the retries."""

    what: str
    detail: str
    retry_after: float | None = None

    def describe(self) -> str:
        return f"{self.what} failed after retries: {self.detail}"


@attrs.frozen
class TimedOut:
    """A peer that stalled beyond the configured timeout."""

    what: str
    seconds: float

    def describe(self) -> str:
        return f"{self.what} timed out after {self.seconds:g} s"


@attrs.frozen
class RemoteError:
    """An unexpected, non-transient answer from a remote service."""

    what: str
    status: int
    detail: str

    def describe(self) -> str:
        return f"{self.what} answered {self.status}: {self.detail}"


@attrs.frozen
class ConfigInvalid:
    """Configuration that is missing or malformed, naming the field."""

    field: str
    detail: str

    def describe(self) -> str:
        return f"configuration field {self.field!r}: {self.detail}"


@attrs.frozen
class StorageFailed:
    """A local file system operation that failed (disk full, permissions).

    ``what`` names the file, ``detail`` the system's reason, ``action`` what was being done to it
    (``write`` unless the failure was a ``read``, ``create``, ``remove`` ...), so a read failure is
    not reported as a write.
    """

    what: str
    detail: str
    action: str = "write"

    def describe(self) -> str:
        return f"could not {self.action} {self.what}: {self.detail}; {self._advice()}"

    def _advice(self) -> str:
        reason = self.detail.lower()
        if "space" in reason or "quota" in reason:
            return "free some space on that file system (or point the cache elsewhere) and retry"
        if "permission" in reason or "read-only" in reason:
            return "check the file's permissions and that its file system is writable"
        if "no such file" in reason:
            return "check that the path exists"
        return "check the path, its permissions and free space, then retry"


@attrs.frozen
class Conflict:
    """A write that would replace something stored as write-once (a key fragment, a schema)."""

    what: str
    detail: str

    def describe(self) -> str:
        return f"{self.what} conflicts with what is stored: {self.detail}"


@attrs.frozen
class EngineFailed:
    """The container engine is unreachable or refused an operation."""

    detail: str

    def describe(self) -> str:
        return f"container engine: {self.detail}"


@attrs.frozen
class ImagesMissing:
    """Images a version needs that are not present in the engine after loading."""

    images: tuple[str, ...]

    def describe(self) -> str:
        return "images missing after load: " + ", ".join(self.images)


@attrs.frozen
class UntrustedPublisher:
    """Content that is unsigned, or signed by a key the client does not trust."""

    what: str
    detail: str

    def describe(self) -> str:
        return (
            f"{self.what} is not from a trusted publisher: {self.detail}; nothing was written. "
            "Pin the publisher's key (publisher_keys) if you trust it, or ask the publisher to "
            "re-sign and re-upload"
        )


# One alias per concern; the union of all is the closed set.
FormatFailure = CorruptResource | WrongKey | PartMismatch | UnsupportedFormat | LimitExceeded
TrustFailure = UntrustedPublisher
RemoteFailure = (
    NotFound | AccessDenied | AuthFailed | HardwareMismatch | Transient | TimedOut | RemoteError
)
LocalFailure = ConfigInvalid | StorageFailed | Conflict
EngineFailure = EngineFailed | ImagesMissing
Problem = InvalidRef | FormatFailure | TrustFailure | RemoteFailure | LocalFailure | EngineFailure

FAILURE_TYPES: tuple[type, ...] = (
    InvalidRef,
    CorruptResource,
    WrongKey,
    PartMismatch,
    UnsupportedFormat,
    LimitExceeded,
    UntrustedPublisher,
    NotFound,
    AccessDenied,
    AuthFailed,
    HardwareMismatch,
    Transient,
    TimedOut,
    RemoteError,
    ConfigInvalid,
    StorageFailed,
    Conflict,
    EngineFailed,
    ImagesMissing,
)
