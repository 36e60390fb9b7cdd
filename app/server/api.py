"""The reference resource API server: small parts, key fragments and ``cdn.yaml`` behind logins.

An ASGI app (Starlette) that implements the resource API for real. Users have Argon2id password
hashes and a role (``uploader`` or ``downloader``); ``POST /login`` hands out short-lived HS256
JWTs. Small parts are stored on disk and handed out only inside a transport envelope sealed for the
user's password and the machine's hardware fingerprint; the first fingerprint a user downloads with
is recorded and any other is refused with 409. Everything lives under one data directory::

    {data}/users.json                    {email: {"hash", "role", "fingerprint"}}
    {data}/jwt.key                       32 random bytes, 0600, created on first start
    {data}/cdn.yaml                      the CDN config, rendered per role on download
    {data}/resources/{folder}/{name}.small
    {data}/keys/{version}.fragment

Every write is atomic (temp file in the same directory, fsync, ``os.replace``); read-modify-write of
``users.json`` is serialised by a thread lock plus an ``flock`` so ``splitvault users add`` may run
while the server does. Errors are JSON ``{"ErrorCode", "Message"}`` and never carry a traceback or
a secret. Argon2id and disk work run in Starlette's thread pool.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import tempfile
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import jwt
import yaml
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from splitvault.adapters.atomic_file import atomic_path
from splitvault.adapters.config_files import render_cdn_yaml
from splitvault.adapters.http_key_fragments import LATEST_VERSION_HEADER
from splitvault.domain import keys
from splitvault.domain.config import cdn_config_from_mapping
from splitvault.domain.errors import ConfigInvalid, StorageFailed
from splitvault.domain.ref import ResourceRef, check_name, parse_folder

log = logging.getLogger("splitvault.server")

T = TypeVar("T")

ROLE_UPLOADER: Final = "uploader"
ROLE_DOWNLOADER: Final = "downloader"
ROLES: Final = frozenset({ROLE_UPLOADER, ROLE_DOWNLOADER})

CONFIG_FOLDER: Final = "config"
CDN_CONFIG_NAME: Final = "cdn.yaml"

MAX_BODY_BYTES: Final = 1 << 20
MAX_EMAIL_CHARS: Final = 320
MAX_PASSWORD_CHARS: Final = 1024  # Argon2id hashes any length; a bound keeps requests cheap
MAX_FINGERPRINT_CHARS: Final = 512
MAX_TOKEN_CHARS: Final = 4096
SIGNING_KEY_BYTES: Final = 32
# Argon2id runs with 19 MiB each; a bound keeps a login storm from exhausting memory.
ARGON2_CONCURRENCY: Final = 4
THROTTLE_MAX_TRACKED: Final = 10_000

USERS_FILE: Final = "users.json"
SIGNING_KEY_FILE: Final = "jwt.key"
CDN_CONFIG_FILE: Final = "cdn.yaml"


# --- refusals: every expected error becomes one JSON answer -------------------------------------


class Refusal(Exception):
    """An expected refusal, turned into ``{"ErrorCode", "Message"}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error answer."""
    return JSONResponse(
        {"ErrorCode": code, "Message": message},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


# --- atomic files --------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(path, mode=mode) as temp:
        temp.write_bytes(data)


# --- users ---------------------------------------------------------------------------------------


def canonical_email(email: str) -> str:
    """The key a user is stored under: NFKC, trimmed, case-folded (as the transport salt does)."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def _normalised_password(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode()


def hash_password(password: str) -> str:
    """An Argon2id PHC string with the transport key's cost parameters and a random salt."""
    kdf = Argon2id(
        salt=secrets.token_bytes(16),
        length=keys.KEY_BYTES,
        iterations=keys.ARGON2_ITERATIONS,
        lanes=keys.ARGON2_LANES,
        memory_cost=keys.ARGON2_MEMORY_KIB,
    )
    return kdf.derive_phc_encoded(_normalised_password(password))


def verify_password(password: str, phc: str) -> bool:
    """Whether ``password`` matches the PHC string (constant-time inside ``cryptography``)."""
    try:
        Argon2id.verify_phc_encoded(_normalised_password(password), phc)
    except InvalidKey:
        return False
    return True


@attrs.frozen
class User:
    """One account as stored in ``users.json``; the hash never appears in a repr."""

    email: str
    role: str
    password_hash: str = attrs.field(repr=False)
    fingerprint: str | None = None


_PROCESS_LOCKS: dict[Path, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(data_dir: Path) -> threading.Lock:
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(data_dir.resolve(), threading.Lock())


class UserStore:
    """``users.json`` under a data directory; reads are lock-free (files are replaced whole)."""

    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir
        self._path = data_dir / USERS_FILE
        self._lock = _process_lock(data_dir)

    def load(self) -> dict[str, User]:
        """Every user, keyed by canonical e-mail; a missing file is no users."""
        try:
            raw = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return {}
        if not isinstance(raw, dict):
            raise TypeError(f"{USERS_FILE} must hold an object")
        users = {}
        for email, entry in raw.items():
            if not isinstance(entry, dict):
                raise TypeError(f"{USERS_FILE}: entry for a user is not an object")
            fingerprint = entry.get("fingerprint")
            users[email] = User(
                email=email,
                role=str(entry["role"]),
                password_hash=str(entry["hash"]),
                fingerprint=fingerprint if isinstance(fingerprint, str) else None,
            )
        return users

    def get(self, email: str) -> User | None:
        """The user with this (canonical) e-mail, if any."""
        return self.load().get(email)

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, User]]:
        """Read-modify-write under the thread lock and a cross-process ``flock``."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, open(self._dir / ".users.lock", "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            users = self.load()
            yield users
            payload = {
                user.email: {
                    "hash": user.password_hash,
                    "role": user.role,
                    "fingerprint": user.fingerprint,
                }
                for user in users.values()
            }
            atomic_write(self._path, json.dumps(payload, indent=2, sort_keys=True).encode())


def add_user(
    data_dir: Path, email: str, password: str, role: str
) -> IOResult[None, ConfigInvalid | StorageFailed]:
    """Create a user, or replace its password and role (its hardware binding is kept).

    Fails with ``ConfigInvalid`` naming the field for a bad e-mail, empty password or unknown role,
    and ``StorageFailed`` when the data directory cannot be written.
    """
    canonical = canonical_email(email)
    if not canonical or len(canonical) > MAX_EMAIL_CHARS or "@" not in canonical:
        return IOFailure(ConfigInvalid("email", "expected an e-mail address like name@example.com"))
    if any(unicodedata.category(char).startswith("C") for char in canonical):
        return IOFailure(ConfigInvalid("email", "must not contain control characters"))
    if not password or len(password) > MAX_PASSWORD_CHARS:
        return IOFailure(ConfigInvalid("password", f"must be 1 to {MAX_PASSWORD_CHARS} characters"))
    if role not in ROLES:
        return IOFailure(ConfigInvalid("role", f"expected one of {sorted(ROLES)}, got {role!r}"))
    password_hash = hash_password(password)
    try:
        with UserStore(data_dir).editing() as users:
            previous = users.get(canonical)
            users[canonical] = User(
                email=canonical,
                role=role,
                password_hash=password_hash,
                fingerprint=previous.fingerprint if previous else None,
            )
    except OSError as exc:
        return IOFailure(StorageFailed(str(data_dir / USERS_FILE), exc.strerror or str(exc)))
    return IOSuccess(None)


def reset_binding(data_dir: Path, email: str) -> IOResult[bool, StorageFailed]:
    """Forget the hardware fingerprint bound to a user; ``True`` when one was recorded."""
    canonical = canonical_email(email)
    try:
        with UserStore(data_dir).editing() as users:
            user = users.get(canonical)
            if user is None or user.fingerprint is None:
                return IOSuccess(False)
            users[canonical] = attrs.evolve(user, fingerprint=None)
    except OSError as exc:
        return IOFailure(StorageFailed(str(data_dir / USERS_FILE), exc.strerror or str(exc)))
    return IOSuccess(True)


def set_cdn_config(
    data_dir: Path, mapping: Mapping[str, Any]
) -> IOResult[None, ConfigInvalid | StorageFailed]:
    """Store the CDN config served as ``config/cdn.yaml``.

    Shape: ``{endpoint, bucket, region, read: {access_key_id, secret_access_key}, write: {...}}``;
    ``write`` is optional; the original client's fields are accepted too (``domain.config``).
    Fails with ``ConfigInvalid`` naming the first bad field, or ``StorageFailed`` when the file
    cannot be written.
    """
    parsed = cdn_config_from_mapping(mapping)
    if isinstance(parsed, Failure):
        return IOFailure(parsed.failure())
    path = data_dir / CDN_CONFIG_FILE
    try:
        atomic_write(path, render_cdn_yaml(parsed.unwrap(), include_write=True).encode())
    except OSError as exc:
        return IOFailure(StorageFailed(str(path), exc.strerror or str(exc)))
    return IOSuccess(None)


# --- login throttling ----------------------------------------------------------------------------


class LoginThrottle:
    """Counts password failures per e-mail in a sliding window; refuses past ``attempts``."""

    def __init__(self, attempts: int, window: float, now: Callable[[], float]) -> None:
        self._attempts = attempts
        self._window = window
        self._now = now
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, email: str) -> float | None:
        """Seconds until ``email`` may try again, or ``None`` when it may try now."""
        with self._lock:
            now = self._now()
            failures = self._prune(email, now)
            if len(failures) < self._attempts:
                return None
            return max(1.0, failures[0] + self._window - now)

    def failed(self, email: str) -> None:
        """Record one wrong password for ``email``."""
        with self._lock:
            now = self._now()
            if email not in self._failures and len(self._failures) >= THROTTLE_MAX_TRACKED:
                self._evict(now)
            self._failures.setdefault(email, collections.deque()).append(now)
            self._prune(email, now)

    def succeeded(self, email: str) -> None:
        """Forget the failures of ``email`` after a correct password."""
        with self._lock:
            self._failures.pop(email, None)

    def _prune(self, email: str, now: float) -> collections.deque[float]:
        failures = self._failures.get(email, collections.deque())
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        while len(failures) > self._attempts:
            failures.popleft()
        if not failures:
            self._failures.pop(email, None)
        return failures

    def _evict(self, now: float) -> None:
        # Bounded memory under a spray of distinct e-mails: drop expired entries, then the oldest.
        for email in list(self._failures):
            self._prune(email, now)
        while len(self._failures) >= THROTTLE_MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))


# --- tokens --------------------------------------------------------------------------------------


class SigningKey:
    """The HS256 key in ``{data}/jwt.key``; ``rotate`` logs every session out."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / SIGNING_KEY_FILE
        self._lock = threading.Lock()
        self._key = self._load_or_create()

    def __repr__(self) -> str:
        return f"SigningKey({str(self._path)!r})"

    @property
    def key(self) -> bytes:
        """The current key."""
        with self._lock:
            return self._key

    def rotate(self) -> None:
        """Replace the key: every token issued so far stops verifying."""
        with self._lock:
            key = secrets.token_bytes(SIGNING_KEY_BYTES)
            atomic_write(self._path, key)
            self._key = key

    def _load_or_create(self) -> bytes:
        try:
            key = self._path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(SIGNING_KEY_BYTES)
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temp_name = tempfile.mkstemp(dir=self._path.parent, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(key)
                    handle.flush()
                    os.fsync(handle.fileno())
                # link, not replace: two servers starting together must agree on one key.
                os.link(temp_name, self._path)
            except FileExistsError:
                key = self._path.read_bytes()
            finally:
                os.unlink(temp_name)
        if len(key) != SIGNING_KEY_BYTES:
            raise ValueError(f"{self._path} must hold {SIGNING_KEY_BYTES} bytes")
        return key


@attrs.frozen
class Principal:
    """Who made a request, after the token was verified and the account looked up."""

    email: str
    role: str


# --- counters tests and operators can read -------------------------------------------------------


@attrs.define
class ServerStats:
    """Counters of what the server did; read by tests (``app.state.stats``) and operators."""

    logins: int = 0
    login_failures: int = 0
    throttled: int = 0
    rejected_tokens: int = 0
    downloads: int = 0
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False, eq=False)

    def count(self, name: str) -> None:
        """Add one to the counter ``name``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


# --- request body limit --------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body grows past the limit."""


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.limit:
                    response = _too_large(self.limit) if declared >= 0 else _bad_length()
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, "TooLarge", f"request body is over the limit of {limit} bytes")


def _bad_length() -> JSONResponse:
    return error_response(400, "BadRequest", "Content-Length is not a number")


# --- the app -------------------------------------------------------------------------------------


@attrs.define
class ServerState:
    """Everything the handlers share; one per app (``app.state.server``)."""

    data_dir: Path
    users: UserStore
    signing: SigningKey
    throttle: LoginThrottle
    stats: ServerStats
    now: Callable[[], float]
    token_lifetime: float
    dummy_hash: str = attrs.field(repr=False)
    argon2_slots: threading.BoundedSemaphore = attrs.field(repr=False)

    # -- authentication --

    def issue_token(self, user: User) -> str:
        issued = int(self.now())
        claims = {
            "sub": user.email,
            "role": user.role,
            "iat": issued,
            "exp": issued + max(1, math.ceil(self.token_lifetime)),
            "jti": secrets.token_hex(16),
        }
        return jwt.encode(claims, self.signing.key, algorithm="HS256")

    def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise self._reject("MissingToken", "log in and send the token as 'Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(),
                self.signing.key,
                algorithms=["HS256"],  # pinned: no "none", no key confusion
                # Times are checked below against the server's (injectable) clock, not PyJWT's.
                options={
                    "require": ["exp", "iat", "sub", "jti"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise self._reject("InvalidToken", "the token is not valid; log in again") from None
        exp, sub = claims.get("exp"), claims.get("sub")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not isinstance(sub, str):
            raise self._reject("InvalidToken", "the token is not valid; log in again")
        if self.now() >= exp:
            raise self._reject("TokenExpired", "the token has expired; log in again")
        user = self.users.get(sub)
        if user is None:
            raise self._reject("InvalidToken", "the account no longer exists")
        # The stored role, not the token's: a demotion takes effect at once.
        return Principal(email=user.email, role=user.role)

    def _reject(self, code: str, message: str) -> Refusal:
        self.stats.count("rejected_tokens")
        return Refusal(401, code, message, {"WWW-Authenticate": "Bearer"})

    def check_password(self, email: str, password: str) -> User:
        """The user when ``password`` is right; otherwise a 401 (or 429 when throttled)."""
        wait = self.throttle.wait(email)
        if wait is not None:
            self.stats.count("throttled")
            raise Refusal(
                429,
                "TooManyAttempts",
                "too many wrong passwords for this account; wait and try again",
                {"Retry-After": str(math.ceil(wait))},
            )
        user = self.users.get(email)
        # Unknown e-mails are checked against a dummy hash so timing does not reveal accounts.
        with self.argon2_slots:
            ok = verify_password(password, user.password_hash if user else self.dummy_hash)
        if user is None or not ok:
            self.throttle.failed(email)
            self.stats.count("login_failures")
            raise Refusal(401, "InvalidCredentials", "wrong e-mail or password")
        self.throttle.succeeded(email)
        return user

    # -- storage --

    def resource_path(self, ref: ResourceRef) -> Path:
        return self.data_dir / "resources" / ref.folder / f"{ref.name}.small"

    def fragment_path(self, version: str) -> Path:
        return self.data_dir / "keys" / f"{version}.fragment"

    def bind_fingerprint(self, email: str, fingerprint: str) -> None:
        """Record the first fingerprint; refuse any other with 409."""
        user = self.users.get(email)
        if user is not None and user.fingerprint == fingerprint:
            return  # the common case needs no write
        with self.users.editing() as users:
            current = users.get(email)
            if current is None:
                raise Refusal(401, "InvalidToken", "the account no longer exists")
            if current.fingerprint is None:
                users[email] = attrs.evolve(current, fingerprint=fingerprint)
                log.info("bound account to its first hardware fingerprint")
            elif current.fingerprint != fingerprint:
                raise Refusal(
                    409,
                    "HardwareMismatch",
                    "this account is bound to another machine; ask an administrator to reset "
                    "the binding",
                )

    def check_fingerprint(self, email: str, fingerprint: str) -> None:
        user = self.users.get(email)
        if user is not None and user.fingerprint not in (None, fingerprint):
            raise Refusal(
                409,
                "HardwareMismatch",
                "this account is bound to another machine; ask an administrator to reset "
                "the binding",
            )

    def cdn_config_for(self, role: str) -> bytes:
        try:
            config = yaml.safe_load((self.data_dir / CDN_CONFIG_FILE).read_bytes())
        except FileNotFoundError:
            raise Refusal(404, "NotFound", "no CDN configuration on this server") from None
        parsed = cdn_config_from_mapping(config)
        if isinstance(parsed, Failure):
            raise Refusal(500, "ServerMisconfigured", "the server's CDN configuration is invalid")
        # Least privilege: downloaders never see write keys, whichever shape the file has.
        return render_cdn_yaml(parsed.unwrap(), include_write=role == ROLE_UPLOADER).encode()


def create_app(
    data_dir: Path,
    *,
    token_lifetime: float = 900.0,
    now: Callable[[], float] = time.time,
    max_body_bytes: int = MAX_BODY_BYTES,
    login_attempts: int = 5,
    login_window: float = 300.0,
) -> Starlette:
    """The reference resource API as an ASGI app.

    Args:
        data_dir: where users, the signing key, small parts and key fragments live.
        token_lifetime: seconds a login token is valid.
        now: the wall clock used for token times and throttling (tests pass a fake).
        max_body_bytes: larger request bodies are refused with 413.
        login_attempts, login_window: wrong passwords allowed per e-mail per window before 429.

    Raises:
        ValueError: when ``jwt.key`` exists with the wrong length.
        OSError: when the data directory cannot be created.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = ServerState(
        data_dir=data_dir,
        users=UserStore(data_dir),
        signing=SigningKey(data_dir),
        throttle=LoginThrottle(login_attempts, login_window, now),
        stats=ServerStats(),
        now=now,
        token_lifetime=token_lifetime,
        # Made up front so the first unknown e-mail costs the same as every later one.
        dummy_hash=hash_password(secrets.token_urlsafe(16)),
        argon2_slots=threading.BoundedSemaphore(ARGON2_CONCURRENCY),
    )
    routes = [
        Route("/login", _handler(state, _login), methods=["POST"]),
        Route("/resources/get/{folder}", _handler(state, _get_resource), methods=["POST"]),
        Route("/resources/list/{folder}", _handler(state, _list_resources), methods=["GET"]),
        Route("/resources/{folder}", _handler(state, _upload_resource), methods=["POST"]),
        Route("/keys", _handler(state, _latest_key_fragment), methods=["GET"]),
        Route("/keys/{version}", _handler(state, _key_fragment), methods=["GET", "PUT"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            Refusal: _on_refusal,
            HTTPException: _on_http_exception,
            BodyTooLarge: _on_too_large(max_body_bytes),
            Exception: _on_crash,
        },
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.state.server = state
    app.state.stats = state.stats
    app.state.signing = state.signing
    return app


Handler = Callable[[ServerState, Request], Awaitable[Response]]


def _handler(state: ServerState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(state, request)

    endpoint.__name__ = handler.__name__.lstrip("_")
    return endpoint


async def _on_refusal(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _on_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}
    message = exc.detail if exc.status_code == 400 else "no such endpoint or method"
    return error_response(
        exc.status_code, codes.get(exc.status_code, "HttpError"), message, exc.headers
    )


def _on_too_large(limit: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(_request: Request, _exc: Exception) -> Response:
        return _too_large(limit)

    return handler


async def _on_crash(_request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log (Starlette re-raises), never into the body.
    log.error("request failed: %s", type(exc).__name__)
    return error_response(500, "InternalError", "the server failed; the operator can see why")


async def _json_object(request: Request) -> dict[str, object]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a body of deeply nested brackets is garbage, not a server failure.
        raise Refusal(400, "BadRequest", "expected a JSON object") from None
    if not isinstance(body, dict):
        raise Refusal(400, "BadRequest", "expected a JSON object")
    return body


def _text_field(body: Mapping[str, object], field: str, limit: int) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Refusal(400, "BadRequest", f"{field!r} must be text of 1 to {limit} characters")
    return value


def _require_uploader(principal: Principal, action: str) -> None:
    if principal.role != ROLE_UPLOADER:
        raise Refusal(403, "Forbidden", f"the {principal.role} role may not {action}")


def _ref(folder: object, name: object) -> ResourceRef:
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, Failure):
        raise Refusal(400, "InvalidName", parsed.failure().describe())
    return parsed.unwrap()


async def _login(state: ServerState, request: Request) -> Response:
    body = await _json_object(request)
    email = canonical_email(_text_field(body, "email", MAX_EMAIL_CHARS))
    password = _text_field(body, "password", MAX_PASSWORD_CHARS)
    user = await run_in_threadpool(state.check_password, email, password)
    state.stats.count("logins")
    return JSONResponse({"token": state.issue_token(user)}, headers={"Cache-Control": "no-store"})


async def _upload_resource(state: ServerState, request: Request) -> Response:
    principal = state.authenticate(request)
    _require_uploader(principal, "upload resources")
    folder = request.path_params["folder"]
    if folder == CONFIG_FOLDER:
        raise Refusal(
            403, "ReservedFolder", f"the {CONFIG_FOLDER!r} folder is managed by the server"
        )
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Refusal(400, "BadRequest", "expected a multipart field 'file' with a filename")
        ref = _ref(folder, upload.filename)
        data = await upload.read()
    if not data:
        raise Refusal(400, "BadRequest", "a small part is never empty")
    await run_in_threadpool(atomic_write, state.resource_path(ref), data)
    log.info("stored small part %s (%d bytes)", ref, len(data))
    return JSONResponse({"name": ref.name}, status_code=201)


async def _get_resource(state: ServerState, request: Request) -> Response:
    principal = state.authenticate(request)
    body = await _json_object(request)
    name = body.get("file_name")
    ref = _ref(request.path_params["folder"], name)
    password = _text_field(body, "password", MAX_PASSWORD_CHARS)
    fingerprint = _text_field(body, "hardware_fingerprint", MAX_FINGERPRINT_CHARS)
    if not fingerprint.isprintable():
        raise Refusal(400, "BadRequest", "'hardware_fingerprint' must be printable text")

    def work() -> bytes:
        # The download password is checked like a login: throttled, against the stored hash.
        state.check_password(principal.email, password)
        state.check_fingerprint(principal.email, fingerprint)
        stored = _load_small_part(state, ref, principal.role)
        state.bind_fingerprint(principal.email, fingerprint)
        with state.argon2_slots:
            key = keys.transport_key(password, principal.email, fingerprint)
        return keys.seal_envelope(
            key, secrets.token_bytes(keys.NONCE_BYTES), stored, context=str(ref)
        )

    envelope = await run_in_threadpool(work)
    state.stats.count("downloads")
    return Response(
        envelope, media_type="application/octet-stream", headers={"Cache-Control": "no-store"}
    )


def _load_small_part(state: ServerState, ref: ResourceRef, role: str) -> bytes:
    if ref.folder == CONFIG_FOLDER:
        if ref.name != CDN_CONFIG_NAME:
            raise Refusal(404, "NotFound", f"{ref} does not exist")
        return state.cdn_config_for(role)
    try:
        return state.resource_path(ref).read_bytes()
    except FileNotFoundError:
        raise Refusal(404, "NotFound", f"{ref} does not exist") from None


async def _list_resources(state: ServerState, request: Request) -> Response:
    state.authenticate(request)
    parsed = parse_folder(request.path_params["folder"])
    if isinstance(parsed, Failure):
        raise Refusal(400, "InvalidName", parsed.failure().describe())
    folder = parsed.unwrap()

    def names() -> list[str]:
        if folder == CONFIG_FOLDER:
            exists = (state.data_dir / CDN_CONFIG_FILE).is_file()
            return [CDN_CONFIG_NAME] if exists else []
        directory = state.data_dir / "resources" / folder
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(
            entry.removesuffix(".small")
            for entry in entries
            if entry.endswith(".small") and not entry.startswith(".")
        )

    return JSONResponse({"files": await run_in_threadpool(names)})


def _latest_fragment(keys_dir: Path) -> tuple[str, bytes] | None:
    """The most recently registered fragment and its version (the original's no-version call)."""
    try:
        entries = [
            (entry.stat().st_mtime_ns, entry.name, entry)
            for entry in keys_dir.iterdir()
            if entry.name.endswith(".fragment") and not entry.name.startswith(".")
        ]
    except FileNotFoundError:
        return None
    if not entries:
        return None
    _, name, path = max(entries)
    return name.removesuffix(".fragment"), path.read_bytes()


async def _latest_key_fragment(state: ServerState, request: Request) -> Response:
    state.authenticate(request)
    found = await run_in_threadpool(_latest_fragment, state.data_dir / "keys")
    if found is None:
        raise Refusal(404, "NotFound", "no key fragment is registered yet")
    version, fragment = found
    return Response(
        fragment,
        media_type="application/octet-stream",
        headers={"Cache-Control": "no-store", LATEST_VERSION_HEADER: version},
    )


async def _key_fragment(state: ServerState, request: Request) -> Response:
    principal = state.authenticate(request)
    version = request.path_params["version"]
    problem = check_name("version", version)
    if problem is not None:
        raise Refusal(400, "InvalidName", problem.describe())
    path = state.fragment_path(version)
    if request.method == "GET":
        try:
            fragment = await run_in_threadpool(path.read_bytes)
        except FileNotFoundError:
            raise Refusal(404, "NotFound", f"no key fragment for version {version}") from None
        return Response(
            fragment, media_type="application/octet-stream", headers={"Cache-Control": "no-store"}
        )
    _require_uploader(principal, "register key fragments")
    fragment = await request.body()
    if not fragment:
        raise Refusal(400, "BadRequest", "a key fragment is never empty")
    await run_in_threadpool(atomic_write, path, fragment)
    log.info("stored key fragment for version %s", version)
    return JSONResponse({"version": version}, status_code=201)
