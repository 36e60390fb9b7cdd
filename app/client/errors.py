"""The facade's exceptions: one hierarchy, each carrying the failure value it came from.

Inside, everything returns ``Result``/``IOResult``; scripts that embed splitvault get ordinary
exceptions instead. ``raise_failure`` is the single place that converts one into the other, and
``exit_code`` gives the CLI a number per kind of failure.
"""

from __future__ import annotations

from typing import TypeVar

from returns.io import IOResult
from returns.pipeline import is_successful
from returns.result import Result
from returns.unsafe import unsafe_perform_io

from splitvault.domain import errors as e

T = TypeVar("T")


class SplitvaultError(Exception):
    """Base of every splitvault exception; ``failure`` is the value that describes it."""

    exit_code = 1

    def __init__(self, failure: e.Problem) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class InvalidNameError(SplitvaultError, ValueError):
    """A folder or resource name that cannot be used."""

    exit_code = 2


class IntegrityError(SplitvaultError):
    """Corrupt, tampered, mismatched or wrongly keyed data; nothing was written."""

    exit_code = 5


class NotFoundError(SplitvaultError):
    """The resource or object does not exist."""

    exit_code = 4


class AuthError(SplitvaultError):
    """Login failed, or the account may not do this."""

    exit_code = 3


class HardwareMismatchError(AuthError):
    """The account is bound to another machine."""

    exit_code = 8


class NetworkError(SplitvaultError):
    """A remote service stayed unreachable, slow or erroneous through the retries."""

    exit_code = 6


class ConfigError(SplitvaultError):
    """Configuration that is missing or malformed."""

    exit_code = 7


class StorageError(SplitvaultError):
    """A local write failed (disk full, permissions)."""

    exit_code = 9


class EngineError(SplitvaultError):
    """The container engine failed or images are missing."""

    exit_code = 10


class UntrustedPublisherError(IntegrityError):
    """Unsigned content, or content signed by a key that is not trusted; nothing was written."""

    exit_code = 11


_BY_TYPE: dict[type, type[SplitvaultError]] = {
    e.InvalidRef: InvalidNameError,
    e.CorruptResource: IntegrityError,
    e.WrongKey: IntegrityError,
    e.PartMismatch: IntegrityError,
    e.UnsupportedFormat: IntegrityError,
    e.LimitExceeded: IntegrityError,
    e.UntrustedPublisher: UntrustedPublisherError,
    e.NotFound: NotFoundError,
    e.AccessDenied: AuthError,
    e.AuthFailed: AuthError,
    e.HardwareMismatch: HardwareMismatchError,
    e.Transient: NetworkError,
    e.TimedOut: NetworkError,
    e.RemoteError: NetworkError,
    e.ConfigInvalid: ConfigError,
    e.StorageFailed: StorageError,
    e.EngineFailed: EngineError,
    e.ImagesMissing: EngineError,
}


def to_exception(failure: e.Problem) -> SplitvaultError:
    """The exception that stands for ``failure``."""
    return _BY_TYPE[type(failure)](failure)


def unwrap_or_raise(result: IOResult[T, e.Problem] | Result[T, e.Problem]) -> T:
    """Unwrap a ``Result`` or ``IOResult`` at the edge, raising the matching ``SplitvaultError``.

    The one place where containers turn into values or exceptions: the facade, the CLI and the
    tools call it once per operation instead of unwrapping by hand.
    """
    if isinstance(result, IOResult):
        if is_successful(result):
            return unsafe_perform_io(result.unwrap())
        raise to_exception(unsafe_perform_io(result.failure()))
    if is_successful(result):
        return result.unwrap()
    raise to_exception(result.failure())
