"""The resource API over HTTP (httpx): ``ResourceApi`` and ``KeyFragments``, with login and retries.

``HttpResourceApi`` speaks the wire protocol of ``app.server.api``: ``POST /login``, multipart
upload to ``POST /resources/{folder}``, ``POST /resources/get/{folder}`` for the HPKE envelope,
``GET /resources/list/{folder}`` and ``GET|PUT /keys/{version}``. Tokens are handled by
``LoginTokenAuth``, an ``httpx.Auth`` flow: it logs in on first use, refreshes before the token's
lifetime runs out (``domain.token``), re-logs in once on 401/403 and does all of that under one lock
so that many threads sharing a client log in once. Transient failures (connect/read errors,
timeouts, 408/429/5xx) are retried as ``domain.retry.decide`` says, within a time budget.

Every request this adapter makes is safe to repeat, which is why all of them are retried: login and
listing are reads, enrolling the same device again finds it enrolled, and an
upload of a small part or a key fragment overwrites the object with the same bytes (PUT-like).
httpx types never leave this module: every method returns an ``IOResult`` whose failure is one of
``domain.ports.ApiFailure``. Passwords and tokens are never logged and never appear in a repr.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import ssl
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar
from urllib.parse import quote

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure

from splitvault.adapters.lean_httpx import httpx
from splitvault.domain import signature, wire
from splitvault.domain.config import ApiCredentials
from splitvault.domain.device import DeviceKey, Kind, Sealed, open_delivered
from splitvault.domain.errors import (
    AccessDenied,
    AuthFailed,
    ConfigInvalid,
    HardwareMismatch,
    NotFound,
    RemoteError,
    TimedOut,
    Transient,
)
from splitvault.domain.ports import ApiFailure, Clock, Random, VouchedFragment
from splitvault.domain.ref import ResourceRef, check_name, parse_folder
from splitvault.domain.retry import (
    GiveUp,
    HttpStatus,
    Outcome,
    Retry,
    RetryPolicy,
    TransportFault,
    decide,
    is_transient,
    parse_retry_after,
)
from splitvault.domain.token import TokenTiming, plan_refresh

log = logging.getLogger("splitvault.http_api")

T = TypeVar("T")

MAX_ENVELOPE_BYTES: Final = wire.MAX_ENVELOPE_BYTES
MAX_FRAGMENT_BYTES: Final = wire.MAX_FRAGMENT_BYTES
MAX_SMALL_BODY_BYTES: Final = wire.MAX_SMALL_BODY_BYTES
MAX_MESSAGE_CHARS: Final = wire.MAX_MESSAGE_CHARS
CONFIG_REF: Final = wire.CONFIG_REF

# What the client enrols, from the salt ``/login`` answers: the device key pair and the keyed
# fingerprint tag (``domain.device``). The composition root derives both (Argon2id once).
Enrolment = tuple[DeviceKey, str]
DeviceDeriver = Callable[[bytes], Enrolment]


class LoginRefused(Exception):
    """Raised out of the auth flow when a login did not yield a token.

    ``outcome`` is set when the refusal is transient (the caller's retry loop decides);
    ``failure`` is what to report if it gives up.
    """

    def __init__(self, failure: ApiFailure, outcome: Outcome | None = None) -> None:
        super().__init__(failure.describe())
        self.failure = failure
        self.outcome = outcome


class LoginTokenAuth(httpx.Auth):
    """Bearer tokens from ``POST /login``, for a sync ``httpx.Client`` shared by many threads.

    A login is two requests: ``POST /login`` (the password; answers an enrolment token and the
    account's salt) then ``POST /devices`` (the device public key derived from the salt and a
    keyed fingerprint tag; answers the device token every other request carries).
    The flow logs in when there is no token or ``domain.token`` says it is due for refresh, sends
    the request, and on 401/403 logs in once more and resends (unless the 403 came with a token
    fetched by this very flow: that is a role problem, not a stale session). All token work is
    under one lock, so concurrent requests trigger one login. A login that does not produce a
    token raises ``LoginRefused``.

    Args:
        login_url: the absolute URL of ``/login``.
        email, password: the account's credentials.
        device: derives the device key and fingerprint tag from the login's salt.
        devices_url: the absolute URL of ``/devices``.
        clock: the monotonic clock times refreshes; the wall clock is only a fallback.
        timeout: the login request's timeouts (requests built outside a client carry none).
    """

    requires_request_body = True  # the body is resent after a re-login

    def __init__(
        self,
        login_url: httpx.URL,
        email: str,
        password: str,
        clock: Clock,
        timeout: httpx.Timeout,
        *,
        device: DeviceDeriver,
        devices_url: httpx.URL,
    ) -> None:
        self._login_url = login_url
        self._devices_url = devices_url
        self._derive = device
        self._device: DeviceKey | None = None
        self._timeout = timeout
        self._credentials = ApiCredentials(str(login_url), email, password)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._timing: TokenTiming | None = None
        self._publisher_key: bytes | None = None
        self.logins = 0  # successful logins by this client; observable, not secret

    def __repr__(self) -> str:
        return f"LoginTokenAuth({str(self._login_url)!r}, email={self._credentials.email!r})"

    def login_request(self) -> httpx.Request:
        """The ``POST /login`` request (holds the password; never log it)."""
        return httpx.Request(
            "POST",
            self._login_url,
            extensions={"timeout": self._timeout.as_dict()},
            json={
                wire.FIELD_EMAIL: self._credentials.email,
                wire.FIELD_PASSWORD: self._credentials.password,
            },
            # No compression: the size check on the answer must hold for the decoded bytes.
            headers={"Accept-Encoding": "identity"},
        )

    def accept_login(self, response: httpx.Response) -> tuple[str, bytes]:
        """The enrolment token and salt of a login answer, or raise ``LoginRefused``."""
        body = _read_login_answer(response)
        status = response.status_code
        if status == 200 and body is not None:
            token = _json_field(body, wire.FIELD_TOKEN)
            salt = _json_field(body, wire.FIELD_SALT) or ""
            if token and len(salt) == 32:
                try:
                    return token, bytes.fromhex(salt)
                except ValueError:
                    pass
            raise LoginRefused(RemoteError("login", status, "the answer carried no token or salt"))
        raise _refusal("login", status, body, response, self._clock)

    def enrol_request(self, login: tuple[str, bytes]) -> httpx.Request:
        """The ``POST /devices`` request for the device the login's salt yields."""
        token, salt = login
        key, tag = self._derive(salt)
        self._device = key
        body = {wire.FIELD_PUBLIC_KEY: key.public.hex(), wire.FIELD_FINGERPRINT_TAG: tag}
        if self._publisher_key is not None:
            body[wire.FIELD_PUBLISHER_KEY] = self._publisher_key.hex()
        return httpx.Request(
            "POST",
            self._devices_url,
            extensions={"timeout": self._timeout.as_dict()},
            json=body,
            headers={"Accept-Encoding": "identity", "Authorization": f"Bearer {token}"},
        )

    def declare_publisher_key(self, public: bytes | None) -> None:
        """Send ``public`` (the signing key's public half) with every enrolment from now on."""
        self._publisher_key = public

    def accept_enrolment(self, response: httpx.Response) -> None:
        """Install the device token of an enrolment answer, or raise ``LoginRefused``."""
        body = _read_login_answer(response)
        status = response.status_code
        if status == 200 and body is not None:
            token = _json_field(body, wire.FIELD_TOKEN)
            if token:
                self._token = token
                self._timing = plan_refresh(
                    token,
                    received_monotonic=self._clock.monotonic(),
                    received_wall=self._clock.wall(),
                )
                self.logins += 1
                log.debug(
                    "logged in; refresh due in %.0f s",
                    self._timing.refresh_at - self._timing.received_at,
                )
                return
            raise LoginRefused(RemoteError("device enrolment", status, "no token in the answer"))
        raise _refusal("device enrolment", status, body, response, self._clock)

    def device_key(self) -> DeviceKey | None:
        """The device key of the current session (``None`` before the first login)."""
        return self._device

    def _login_flow(self) -> Generator[httpx.Request, httpx.Response, None]:
        login = self.accept_login((yield self.login_request()))
        self.accept_enrolment((yield self.enrol_request(login)))

    def token(self) -> str | None:
        """The current bearer token, or None when a login is due (never log it)."""
        with self._lock:
            return None if self._due() else self._token

    def install(self, response: httpx.Response) -> None:
        """Accept an enrolment answer fetched outside a flow (explicit ``login()``)."""
        with self._lock:
            self.accept_enrolment(response)

    def _due(self) -> bool:
        return (
            self._token is None
            or self._timing is None
            or self._timing.should_refresh(self._clock.monotonic())
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Log in if needed, send, and on 401/403 log in once more and resend."""
        request.read()
        fresh = False
        with self._lock:
            if self._due():
                yield from self._login_flow()
                fresh = True
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code not in (401, 403):
            return
        if response.status_code == 403 and fresh:
            return  # a token from a moment ago: the role is wrong, a new login changes nothing
        with self._lock:
            if self._token == token:  # nobody else has renewed it while we waited
                yield from self._login_flow()
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Not supported: the lock is a thread lock; use a sync ``httpx.Client``."""
        raise RuntimeError("LoginTokenAuth works with httpx.Client only")
        yield request  # pragma: no cover - makes this an async generator


@attrs.frozen
class _Answer:
    """A final (non-transient) HTTP answer, its body read up to a cap."""

    status: int
    body: bytes
    device: str = ""  # of a sealed answer: the device and version its envelope binds
    version: str = ""
    publisher: str = ""  # of a key fragment: the publisher key the server vouches for (hex)


@attrs.frozen
class _Retryable:
    outcome: Outcome
    failure: ApiFailure


@attrs.frozen
class _Final:
    failure: ApiFailure


class HttpResourceApi:
    """The resource API over HTTPS (or HTTP on loopback), with login, refresh and retries.

    Implements ``ResourceApi`` and ``KeyFragments``. Thread-safe: share one instance.

    Args:
        base_url: where the API lives, e.g. ``https://api.example.com``; plain ``http://`` only
            to loopback unless ``allow_insecure_http`` (``ValueError`` otherwise: check with
            ``insecure_http_problem`` first).
        email, password: the account (the password goes to ``/login`` only).
        device: derives this machine's device key and fingerprint tag from the account's salt.
        ca_bundle: a PEM file of CA certificates to trust instead of the system's.
        timeout: seconds for reads, writes and pool waits; ``connect_timeout`` for connecting.
        policy: how hard to retry transient failures.
        clock, random, sleep: time, jitter and waiting, passed in.
        transport: an httpx transport to use instead of the network (tests).

    Failures: ``AuthFailed`` (wrong credentials, or 401 after a fresh login), ``AccessDenied``
    (wrong role), ``HardwareMismatch`` (409), ``NotFound`` (404), ``RemoteError`` (400/413, other
    statuses, TLS verification, oversized answers), ``TimedOut`` and ``Transient`` once retries
    are exhausted.
    """

    def __init__(
        self,
        base_url: str,
        email: str,
        password: str,
        *,
        device: DeviceDeriver,
        allow_insecure_http: bool = False,
        ca_bundle: Path | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - a frozen value, not an adapter
        clock: Clock,
        random: Random,
        sleep: Callable[[float], None],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base_url = httpx.URL(base_url.rstrip("/") + "/")
        problem = insecure_http_problem(base_url, allow_insecure_http)
        if problem is not None:
            raise ValueError(problem.describe())
        if self._base_url.scheme == "http" and not _is_loopback(self._base_url.host):
            log.warning(
                "the API at %s is plain HTTP to another host, as allowed: the login's password "
                "and the tokens cross the network in the clear",
                self._base_url,
            )
        self._email = email
        self._password = password
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._policy = policy
        self._clock = clock
        self._random = random
        self._sleep = sleep
        verify: ssl.SSLContext | bool = True
        if ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(ca_bundle))
        elif self._base_url.scheme == "http":
            # Plain HTTP to one fixed host, redirects refused: no handshake ever happens. A
            # context that trusts no CA (any TLS would fail closed) spares loading certifi's
            # bundle, 0.06 CPU-s of every process's start.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        timeouts = httpx.Timeout(timeout, connect=connect_timeout)
        self._auth = LoginTokenAuth(
            self._base_url.join(wire.LOGIN),
            email,
            password,
            clock,
            timeouts,
            device=device,
            devices_url=self._base_url.join(wire.DEVICES),
        )
        self._client = httpx.Client(
            verify=verify,
            timeout=timeouts,
            auth=self._auth,
            follow_redirects=False,  # a redirect would resend the password somewhere else
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HttpResourceApi({str(self._base_url)!r}, email={self._email!r})"

    @property
    def logins(self) -> int:
        """How many times this client has logged in (for diagnostics and tests)."""
        return self._auth.logins

    # -- the ports ---------------------------------------------------------------------------

    def login(self) -> IOResult[None, ApiFailure]:
        """Log in and enrol now, checking the credentials; the token is kept for later."""
        got: list[tuple[str, bytes]] = []

        def accept(answer: httpx.Response) -> None:
            got.append(self._auth.accept_login(answer))

        def enrolled(answer: httpx.Response) -> None:
            self._auth.install(answer)

        return (
            self._exchange("login", self._auth.login_request, authenticated=False, on_login=accept)
            .bind(
                lambda _: self._exchange(
                    "device enrolment",
                    lambda: self._auth.enrol_request(got[-1]),
                    authenticated=False,
                    on_login=enrolled,
                )
            )
            .map(lambda _answer: None)
        )

    def device_key(self) -> DeviceKey | None:
        """This session's device key (``None`` before the first login; never log it)."""
        return self._auth.device_key()

    def declare_publisher_key(self, public: bytes | None) -> None:
        """Have enrolment declare this publisher key, so the server records it (first use) or
        refuses the enrolment when the account is recorded with another (403)."""
        self._auth.declare_publisher_key(public)

    def session_token(self) -> IOResult[str, ApiFailure]:
        """This session's bearer token, logging in first when there is none or it is due.

        For callers that talk to the API with the token themselves (the original
        ``download_key_fragment(url, token)``); it is a secret: never log it.
        """
        current = self._auth.token()
        if current is not None:
            return IOSuccess(current)

        def fresh(_: None) -> IOResult[str, ApiFailure]:
            token = self._auth.token()
            if token is None:
                return IOFailure(RemoteError("login", 200, "the login produced no usable token"))
            return IOSuccess(token)

        return self.login().bind(fresh)

    def upload_small_part(self, ref: ResourceRef, small_part: bytes) -> IOResult[None, ApiFailure]:
        """Store a small part; an existing one of the same name is replaced."""
        what = f"upload of {ref}"
        url = self._url(wire.RESOURCES, ref.folder)
        content, content_type = _multipart_file(ref.name, small_part)

        def build() -> httpx.Request:
            return self._client.build_request(
                "POST", url, content=content, headers={"Content-Type": content_type}
            )

        return self._exchange(what, build).bind(
            lambda answer: _expect(what, str(ref), answer, 201, None)
        )

    def download_small_part(self, ref: ResourceRef) -> IOResult[bytes, ApiFailure]:
        """The small part, opened from the HPKE envelope the API sealed to this device."""
        what = f"download of {ref}"
        url = self._url(wire.RESOURCES, wire.GET, ref.folder)
        payload = {wire.FIELD_FILE_NAME: ref.name}
        kind: Kind = "cdn-config" if ref == CONFIG_REF else "small-part"

        def build() -> httpx.Request:
            return self._client.build_request("POST", url, json=payload)

        return (
            self._exchange(what, build, body_cap=MAX_ENVELOPE_BYTES)
            .bind(lambda answer: _expect(what, str(ref), answer, 200, answer))
            .bind(lambda answer: self._open(answer, kind, str(ref)))
        )

    def versions(self, ref: ResourceRef) -> IOResult[tuple[dict[str, object], ...], ApiFailure]:
        """The kept versions of ``ref``, newest first: version, publisher, created_at, current."""
        what = f"versions of {ref}"
        url = self._url(wire.RESOURCES, wire.VERSIONS, ref.folder)
        payload = {wire.FIELD_FILE_NAME: ref.name}

        def parse(answer: _Answer) -> IOResult[tuple[dict[str, object], ...], ApiFailure]:
            if answer.status != 200:
                return IOFailure(_failure_for(what, str(ref), answer))
            try:
                data = json.loads(answer.body)
            except (ValueError, UnicodeDecodeError):
                data = None
            kept = data.get(wire.FIELD_VERSIONS) if isinstance(data, dict) else None
            if not isinstance(kept, list) or not all(isinstance(each, dict) for each in kept):
                return IOFailure(RemoteError(what, 200, "the answer is not {'versions': [...]}"))
            return IOSuccess(tuple(kept))

        return self._exchange(
            what, lambda: self._client.build_request("POST", url, json=payload)
        ).bind(parse)

    def rollback(self, ref: ResourceRef, version: str) -> IOResult[None, ApiFailure]:
        """Make the kept ``version`` of ``ref`` current again (write grant)."""
        what = f"rollback of {ref} to {version}"
        url = self._url(wire.RESOURCES, wire.ROLLBACK, ref.folder)
        payload = {wire.FIELD_FILE_NAME: ref.name, wire.FIELD_VERSION: version}
        return self._exchange(
            what, lambda: self._client.build_request("POST", url, json=payload)
        ).bind(lambda answer: _expect(what, str(ref), answer, 200, None))

    def download_cdn_config(self) -> IOResult[bytes, ApiFailure]:
        """``config/cdn.yaml`` for this user's role."""
        return self.download_small_part(CONFIG_REF)

    def _open(
        self, answer: _Answer, kind: Kind, subject: str, publisher: bytes = b""
    ) -> IOResult[bytes, ApiFailure]:
        key = self._auth.device_key()
        if key is None:
            return IOFailure(RemoteError(subject, answer.status, "a sealed answer before a login"))
        opened = open_delivered(
            Sealed(answer.body, answer.device, answer.version, publisher), key, kind, subject
        )
        if isinstance(opened, Failure):
            return IOFailure(opened.failure())
        return IOSuccess(opened.unwrap())

    def list_folder(self, folder: str) -> IOResult[tuple[str, ...], ApiFailure]:
        """Names of the resources in ``folder``, sorted.

        Raises:
            ValueError: for an invalid folder (validate with ``domain.ref.parse_folder`` first).
        """
        if isinstance(parse_folder(folder), Failure):
            raise ValueError(  # noqa: TRY004 - a bad value from the caller, not a bad type
                f"invalid folder {folder!r}; validate with parse_folder first"
            )
        what = f"listing of {folder}"
        url = self._url(wire.RESOURCES, wire.LIST, folder)
        return self._exchange(what, lambda: self._client.build_request("GET", url)).bind(
            lambda answer: _names(what, f"folder {folder}", answer)
        )

    def get_fragment(self, version: str) -> IOResult[bytes, ApiFailure]:
        """The key fragment of an image archive version."""
        return self.vouched_fragment(version).map(lambda vouched: vouched.fragment)

    def vouched_fragment(self, version: str) -> IOResult[VouchedFragment, ApiFailure]:
        """The key fragment of a version and the publisher key the server vouches for with it
        (bound by the envelope's ``info``: a changed or stripped header does not open)."""
        what = f"key fragment {version}"
        url = self._url(wire.KEYS, _checked_version(version))

        def opened(answer: _Answer) -> IOResult[VouchedFragment, ApiFailure]:
            vouched = signature.public_key_from_hex(answer.publisher) if answer.publisher else None
            if answer.publisher and vouched is None:
                return IOFailure(RemoteError(what, answer.status, "a malformed publisher key"))
            return self._open(answer, "key-fragment", version, vouched or b"").map(
                lambda fragment: VouchedFragment(fragment, vouched)
            )

        return (
            self._exchange(
                what, lambda: self._client.build_request("GET", url), body_cap=MAX_ENVELOPE_BYTES
            )
            .bind(lambda answer: _expect(what, what, answer, 200, answer))
            .bind(opened)
        )

    def put_fragment(
        self, version: str, fragment: bytes, publisher_key: bytes | None = None
    ) -> IOResult[None, ApiFailure]:
        """Register the key fragment of a version (uploader role), declaring the publisher key
        that signed its archive (checked by the server against the account's recorded key)."""
        what = f"key fragment {version}"
        url = self._url(wire.KEYS, _checked_version(version))
        headers = {"Content-Type": "application/octet-stream"}
        if publisher_key is not None:
            headers[wire.PUBLISHER_KEY_HEADER] = publisher_key.hex()

        def build() -> httpx.Request:
            return self._client.build_request("PUT", url, content=fragment, headers=headers)

        return self._exchange(what, build).bind(
            lambda answer: _expect(what, what, answer, 201, None)
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> HttpResourceApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the retry loop ----------------------------------------------------------------------

    def _url(self, *segments: str) -> httpx.URL:
        # Every segment is percent-encoded whole: names may hold '%', '#', '?' or spaces.
        return self._base_url.join("/".join(quote(segment, safe="") for segment in segments))

    def _exchange(
        self,
        what: str,
        build: Callable[[], httpx.Request],
        *,
        authenticated: bool = True,
        body_cap: int = MAX_SMALL_BODY_BYTES,
        on_login: Callable[[httpx.Response], None] | None = None,
    ) -> IOResult[_Answer, ApiFailure]:
        """Send until a final answer, retrying transient failures per ``domain.retry``."""
        started = self._clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            step = self._attempt(what, build(), authenticated, body_cap, on_login)
            if isinstance(step, _Answer):
                return IOSuccess(step)
            if isinstance(step, _Final):
                return IOFailure(step.failure)
            decision = decide(
                self._policy,
                attempt=attempt,
                elapsed=max(0.0, self._clock.monotonic() - started),
                outcome=step.outcome,
                jitter=self._jitter(),
            )
            if isinstance(decision, Retry):
                log.info(
                    "%s: %s; retry %d in %.2f s",
                    what,
                    step.failure.describe(),
                    attempt,
                    decision.delay,
                )
                self._sleep(decision.delay)
                continue
            reason = decision.reason if isinstance(decision, GiveUp) else "re-login did not help"
            log.warning("%s: giving up: %s", what, reason)
            return IOFailure(_exhausted(step.failure, reason))

    def _jitter(self) -> float:
        value = self._random.uniform()
        return min(max(value, 0.0), 0.999_999)

    def _attempt(
        self,
        what: str,
        request: httpx.Request,
        authenticated: bool,
        body_cap: int,
        on_login: Callable[[httpx.Response], None] | None,
    ) -> _Answer | _Retryable | _Final:
        try:
            response = self._client.send(
                request, stream=True, auth=httpx.USE_CLIENT_DEFAULT if authenticated else None
            )
        except LoginRefused as refused:
            return _step_for(refused)
        except httpx.HTTPError as exc:
            return self._transport_failure(what, exc)
        try:
            if on_login is not None:
                try:
                    on_login(response)
                except LoginRefused as refused:
                    return _step_for(refused)
                return _Answer(response.status_code, b"")
            status = response.status_code
            cap = body_cap if 200 <= status < 300 else MAX_SMALL_BODY_BYTES
            body = _read_capped(response, cap)
        except httpx.HTTPError as exc:
            return self._transport_failure(what, exc)
        finally:
            response.close()
        outcome = HttpStatus(
            status, parse_retry_after(response.headers.get("retry-after"), self._clock.wall())
        )
        if body is None:
            if 200 <= status < 300:
                return _Final(RemoteError(what, status, f"the answer is larger than {cap} bytes"))
            body = b""
        if is_transient(outcome):
            return _Retryable(
                outcome,
                Transient(what, f"HTTP {status}: {_error_message(body)}", outcome.retry_after),
            )
        headers = response.headers
        return _Answer(
            status,
            body,
            _clean(headers.get(wire.DEVICE_HEADER, "")),
            _clean(headers.get(wire.VERSION_HEADER, "")),
            _clean(headers.get(wire.PUBLISHER_KEY_HEADER, "")),
        )

    def _transport_failure(self, what: str, exc: httpx.HTTPError) -> _Retryable | _Final:
        if isinstance(exc, httpx.TimeoutException):
            seconds = (
                self._connect_timeout if isinstance(exc, httpx.ConnectTimeout) else self._timeout
            )
            return _Retryable(TransportFault("timeout"), TimedOut(what, seconds))
        if isinstance(exc, httpx.ConnectError):
            tls = _tls_problem(exc)
            if tls is not None:
                return _Final(
                    RemoteError(
                        what,
                        0,
                        f"TLS verification failed ({tls}); trust the server's CA with ca_bundle",
                    )
                )
            return _Retryable(
                TransportFault("connect"), Transient(what, f"could not connect: {exc}")
            )
        kinds: tuple[tuple[type[httpx.HTTPError], str], ...] = (
            (httpx.ReadError, "read"),
            (httpx.WriteError, "write"),
            (httpx.CloseError, "reset"),
            (httpx.RemoteProtocolError, "protocol"),
        )
        for kind, name in kinds:
            if isinstance(exc, kind):
                return _Retryable(TransportFault(name), Transient(what, f"{name} error: {exc}"))
        return _Final(RemoteError(what, 0, f"{type(exc).__name__}: {exc}"))


# --- helpers: pure functions over answers --------------------------------------------------------


def insecure_http_problem(base_url: str, allowed: bool) -> ConfigInvalid | None:
    """Why ``base_url`` may not be used, or ``None``: plain HTTP beyond loopback exposes the
    login's password and every token to anyone on the path."""
    url = httpx.URL(base_url)
    if url.scheme == "http" and not _is_loopback(url.host) and not allowed:
        return ConfigInvalid(
            "api_url",
            f"is plain http:// to {url.host}, which would send the password and tokens in the "
            "clear; use https://, or allow it with allow_insecure_http / --insecure-http",
        )
    return None


def _refusal(
    what: str, status: int, body: bytes | None, response: httpx.Response, clock: Clock
) -> LoginRefused:
    """The refusal a failed login or enrolment answer stands for (transient ones retried)."""
    message = _error_message(body)
    if status == 401:
        return LoginRefused(AuthFailed(f"the server refused the {what}: {message}", 401))
    if status == 403:
        return LoginRefused(AccessDenied(what, message))
    if status == 409:
        return LoginRefused(HardwareMismatch(_error_code(body or b""), message))
    outcome = HttpStatus(
        status, parse_retry_after(response.headers.get("retry-after"), clock.wall())
    )
    if is_transient(outcome):
        return LoginRefused(
            Transient(what, f"HTTP {status}: {message}", outcome.retry_after), outcome
        )
    return LoginRefused(RemoteError(what, status, message))


def _step_for(refused: LoginRefused) -> _Retryable | _Final:
    """A refused login is retried when transient, final otherwise."""
    if refused.outcome is not None:
        return _Retryable(refused.outcome, refused.failure)
    return _Final(refused.failure)


def _checked_version(version: str) -> str:
    problem = check_name("version", version)
    if problem is not None:
        raise ValueError(problem.describe())
    return version


def _multipart_file(name: str, data: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one field ``file`` whose filename is ``name``.

    Built by hand because httpx writes '"' in a filename as '%22' (the HTML form convention), which
    the server cannot tell from a literal '%22'; a quoted-string escape round-trips exactly.
    """
    boundary = secrets.token_hex(16)
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{wire.UPLOAD_FILE_FIELD}"; filename="{quoted}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def _read_login_answer(response: httpx.Response) -> bytes | None:
    """A login answer's body, or ``None`` when it declares more than a login answer can be.

    Read with ``read()``, not a capped iteration: inside an auth flow httpx reads the response
    again after the flow yields its next request, and a stream read once cannot be read twice.
    """
    declared = response.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_SMALL_BODY_BYTES):
        return None
    body = response.read()
    return body if len(body) <= MAX_SMALL_BODY_BYTES else None


def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The body, or ``None`` when it is longer than ``cap`` (stops reading there)."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json_field(body: bytes, field: str) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _clean(text: str) -> str:
    # The peer's words end up in logs and terminals: printable characters only, bounded.
    printable = "".join(char if char.isprintable() else "?" for char in text)
    return printable[:MAX_MESSAGE_CHARS]


def _error_message(body: bytes | None) -> str:
    if not body:
        return "no details"
    message = _json_field(body, wire.FIELD_MESSAGE)
    return _clean(message) if message else "no details"


def _error_code(body: bytes) -> str:
    code = _json_field(body, wire.FIELD_ERROR_CODE)
    return _clean(code) if code else "Unknown"


def _expect(
    what: str, subject: str, answer: _Answer, status: int, value: T
) -> IOResult[T, ApiFailure]:
    """``value`` when the answer has the expected status, else the failure it stands for."""
    if answer.status == status:
        return IOSuccess(value)
    return IOFailure(_failure_for(what, subject, answer))


def _failure_for(what: str, subject: str, answer: _Answer) -> ApiFailure:
    """The typed failure for a final answer; ``subject`` is the thing a 404 did not find."""
    message = _error_message(answer.body)
    if answer.status == 401:
        return AuthFailed(f"{what} was refused after a fresh login: {message}", 401)
    if answer.status == 403:
        return AccessDenied(what, message)
    if answer.status == 404:
        return NotFound(subject)
    if answer.status == 409:
        return HardwareMismatch(_error_code(answer.body), message)
    return RemoteError(what, answer.status, message)


def _names(what: str, subject: str, answer: _Answer) -> IOResult[tuple[str, ...], ApiFailure]:
    if answer.status != 200:
        return IOFailure(_failure_for(what, subject, answer))
    try:
        data = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        data = None
    files = data.get(wire.FIELD_FILES) if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return IOFailure(RemoteError(what, 200, "the answer is not {'files': [names]}"))
    return IOSuccess(tuple(files))


def _exhausted(failure: ApiFailure, reason: str) -> ApiFailure:
    if isinstance(failure, Transient):
        return Transient(failure.what, f"{failure.detail}; {reason}", failure.retry_after)
    return failure


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_problem(exc: BaseException) -> str | None:
    """The TLS error behind a connect error, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return (
                getattr(current, "verify_message", None)
                or getattr(current, "reason", None)
                or "handshake failed"
            )
        current = current.__cause__ or current.__context__
    return None
