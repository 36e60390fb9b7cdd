"""The ``KeyFragments`` port over the resource API's ``/keys/{version}`` with a bearer token.

``GET /keys/{version}`` answers the fragment sealed with HPKE to the token's device (protocol 2,
``domain.device``; the device and version in ``X-Splitvault-Device``/``X-Splitvault-Version``, and
the publisher key the server vouches for in ``X-Splitvault-Publisher-Key``, which the envelope's
``info`` binds), which this adapter opens with the device key it is given; ``PUT`` stores one
(uploader role), declaring the key that signed the archive; ``GET /keys`` answers the latest
registered one. This adapter is the plain, token-holding client
the original ``download_key_fragment(url, token)`` needs: it makes one request per call and does
not retry or log in again (the full resource API client does both). Errors map onto the API
failures of ``domain.errors``; the token and the fragment never reach a log line or a failure value.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure

from splitvault.adapters.lean_httpx import httpx
from splitvault.domain import signature, wire
from splitvault.domain.device import DeviceKey, Sealed, open_delivered
from splitvault.domain.errors import (
    AccessDenied,
    AuthFailed,
    HardwareMismatch,
    NotFound,
    RemoteError,
    TimedOut,
    Transient,
    WrongKey,
)
from splitvault.domain.ports import ApiFailure, VouchedFragment
from splitvault.domain.retry import TRANSIENT_STATUSES

log = logging.getLogger("splitvault.http_key_fragments")

DEFAULT_TIMEOUT = 30.0
MAX_FRAGMENT_BYTES = wire.MAX_FRAGMENT_BYTES
LATEST_VERSION_HEADER = wire.LATEST_VERSION_HEADER
_MAX_MESSAGE = wire.MAX_MESSAGE_CHARS


@attrs.frozen
class _Answer:
    status: int
    body: bytes = attrs.field(repr=False)
    retry_after: float | None
    version: str | None = None
    device: str = ""
    publisher: str = ""


def _error_body(answer: _Answer) -> tuple[str, str]:
    """``(ErrorCode, Message)`` of an API error answer, or a best effort from its text."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get(wire.FIELD_ERROR_CODE)
        message = body.get(wire.FIELD_MESSAGE)
        if isinstance(message, str):
            return (code if isinstance(code, str) else "", message[:_MAX_MESSAGE])
    text = answer.body.decode("utf-8", "replace").strip()[:_MAX_MESSAGE]
    return "", text or f"HTTP {answer.status}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class HttpKeyFragments:
    """Key fragments at ``{base_url}/keys/{version}``, authorised by a bearer token.

    Args:
        base_url: the resource API's root URL.
        token: a device token from ``/login`` and ``/devices`` (kept out of every repr and
            message).
        device: the device key the token's session enrolled; without it a fetched fragment
            cannot be opened (``WrongKey``).
        timeout: seconds per request.
        transport: an httpx transport to use instead of the network (tests, proxies).

    Fails with ``AuthFailed`` (401), ``AccessDenied`` (403), ``NotFound`` (404),
    ``HardwareMismatch`` (409 with an error code), ``Transient`` (connection errors, 408, 429,
    5xx), ``TimedOut`` and ``RemoteError`` for any other answer (a 409 ``FragmentExists``
    included: fragments are write-once).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        device: DeviceKey | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._device = device
        self._timeout = timeout
        self._transport = transport

    def __repr__(self) -> str:
        return f"HttpKeyFragments(base_url={self._base_url!r})"

    def _request(
        self,
        method: str,
        version: str | None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> IOResult[_Answer, ApiFailure]:
        # No version: the latest registered one (the original's call had no version).
        path = f"/{wire.KEYS}" if version is None else f"/{wire.KEYS}/{quote(version, safe='')}"
        what = f"{method} {path}"
        try:
            with (
                httpx.Client(
                    base_url=self._base_url,
                    timeout=self._timeout,
                    transport=self._transport,
                    headers={"Authorization": f"Bearer {self._token}"},
                ) as client,
                # The version goes in as one path segment, whatever it contains.
                client.stream(method, path, content=content, headers=headers) as response,
            ):
                body = bytearray()
                for piece in response.iter_bytes():
                    body += piece
                    if len(body) > MAX_FRAGMENT_BYTES:
                        return IOFailure(
                            RemoteError(what, response.status_code, "answer too large")
                        )
                return IOSuccess(
                    _Answer(
                        response.status_code,
                        bytes(body),
                        _retry_after(response),
                        response.headers.get(LATEST_VERSION_HEADER),
                        response.headers.get(wire.DEVICE_HEADER, "")[:64],
                        response.headers.get(wire.PUBLISHER_KEY_HEADER, "")[:128],
                    )
                )
        except httpx.TimeoutException:
            return IOFailure(TimedOut(what, self._timeout))
        except httpx.TransportError as error:
            return IOFailure(Transient(what, f"{type(error).__name__}: {error}"))

    def _failure(self, what: str, version: str, answer: _Answer) -> ApiFailure:
        code, message = _error_body(answer)
        status = answer.status
        if status == 401:
            return AuthFailed(f"{what}: {message}; log in again for a fresh token", status)
        if status == 403:
            return AccessDenied(f"the key fragment of version {version}", message)
        if status == 404:
            return NotFound(f"the key fragment of version {version}")
        if status == 409 and code == wire.ERROR_FRAGMENT_EXISTS:
            # Write-once: not a machine problem, and retrying cannot help.
            return RemoteError(what, status, message)
        if status == 409 and code:
            return HardwareMismatch(code, message)
        if status in TRANSIENT_STATUSES:
            return Transient(what, f"HTTP {status}: {message}", answer.retry_after)
        return RemoteError(what, status, message)

    def _open(self, answer: _Answer, version: str) -> IOResult[VouchedFragment, ApiFailure]:
        vouched = signature.public_key_from_hex(answer.publisher) if answer.publisher else None
        if answer.publisher and vouched is None:
            return IOFailure(
                RemoteError(f"GET /keys/{version}", answer.status, "a malformed publisher key")
            )
        if self._device is None:
            return IOFailure(
                WrongKey(
                    f"the key fragment of version {version} (sealed to device "
                    f"{answer.device!r}; this client was given no device key)"
                )
            )
        sealed = Sealed(answer.body, answer.device, version, vouched or b"")
        opened = open_delivered(sealed, self._device, "key-fragment", version)
        if isinstance(opened, Failure):
            return IOFailure(opened.failure())
        return IOSuccess(VouchedFragment(opened.unwrap(), vouched))

    def get_fragment(self, version: str) -> IOResult[bytes, ApiFailure]:
        """``GET /keys/{version}``: the fragment that unlocks the version's archive."""
        return self.vouched_fragment(version).map(lambda vouched: vouched.fragment)

    def vouched_fragment(self, version: str) -> IOResult[VouchedFragment, ApiFailure]:
        """``GET /keys/{version}``: the fragment and the publisher key the server vouches for."""
        what = f"GET /keys/{version}"

        def outcome(answer: _Answer) -> IOResult[VouchedFragment, ApiFailure]:
            if answer.status != httpx.codes.OK:
                return IOFailure(self._failure(what, version, answer))
            if not answer.body:
                return IOFailure(RemoteError(what, answer.status, "an empty fragment"))
            log.info("fetched the key fragment of version %s", version)
            return self._open(answer, version)

        return self._request("GET", version).bind(outcome)

    def get_latest_fragment(self) -> IOResult[tuple[str, bytes], ApiFailure]:
        """``GET /keys``: the most recently registered version and its fragment."""
        what = "GET /keys"

        def outcome(answer: _Answer) -> IOResult[tuple[str, bytes], ApiFailure]:
            if answer.status != httpx.codes.OK:
                return IOFailure(self._failure(what, "(latest)", answer))
            if not answer.body or not answer.version:
                return IOFailure(RemoteError(what, answer.status, "no fragment or no version"))
            latest = answer.version
            log.info("fetched the key fragment of the latest version, %s", latest)
            return self._open(answer, latest).map(lambda vouched: (latest, vouched.fragment))

        return self._request("GET", None).bind(outcome)

    def put_fragment(
        self, version: str, fragment: bytes, publisher_key: bytes | None = None
    ) -> IOResult[None, ApiFailure]:
        """``PUT /keys/{version}``: register the fragment of a newly sealed archive, declaring
        the publisher key that signed it (``None``: an unsigned archive)."""
        what = f"PUT /keys/{version}"
        headers = {} if publisher_key is None else {wire.PUBLISHER_KEY_HEADER: publisher_key.hex()}

        def outcome(answer: _Answer) -> IOResult[None, ApiFailure]:
            if not 200 <= answer.status < 300:
                return IOFailure(self._failure(what, version, answer))
            log.info("registered the key fragment of version %s", version)
            return IOSuccess(None)

        return self._request("PUT", version, fragment, headers).bind(outcome)
