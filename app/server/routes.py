"""The resource API's handlers: login, small parts, listings, key fragments, health and metrics.

Handlers parse and check the request, then do their store and Argon2id work in Starlette's thread
pool (the store adapters are synchronous). Every expected problem is a ``Refusal``; the store is
reached only through the ``ServerStore`` port, so the same handlers serve SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeVar

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.result import Failure, Success
from returns.unsafe import unsafe_perform_io
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from splitvault.adapters.config_files import render_cdn_yaml
from splitvault.app.server import tokens
from splitvault.app.server.accounts import (
    WRITE_ROLES,
    canonical_email,
    cdn_config,
    verify_password,
)
from splitvault.app.server.observe import ServerStats
from splitvault.app.server.refusals import Refusal, store_refusal
from splitvault.app.server.throttle import LoginThrottle
from splitvault.domain import keys, signature, wire
from splitvault.domain.config import cdn_config_from_mapping
from splitvault.domain.format_v1 import parse_header
from splitvault.domain.ports import Account, ResourceVersion, ServerStore, StoreFailure
from splitvault.domain.ref import ResourceRef, check_name, parse_folder

log = logging.getLogger("splitvault.server")

T = TypeVar("T")

# Set (to a directory) by `serve --workers N`: the workers' metrics are summed from files there.
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Argon2id runs with 19 MiB each; a bound keeps a login storm from exhausting memory.
ARGON2_CONCURRENCY: Final = 4
HARDWARE_MISMATCH_MESSAGE: Final = (
    "this account is bound to another machine; ask an administrator to reset the binding "
    "(splitvault admin users reset-binding EMAIL)"
)


@attrs.frozen
class Principal:
    """Who made a request, after the token was verified and the account looked up."""

    email: str
    role: str


def stored(result: IOResult[T, StoreFailure]) -> T:
    """The value of a store call, or the refusal that stands for its failure."""
    if not is_successful(result):
        raise store_refusal(unsafe_perform_io(result.failure()))
    return unsafe_perform_io(result.unwrap())


@attrs.define
class ServerState:
    """Everything the handlers share; one per app (``app.state.server``)."""

    store: ServerStore
    signing: tokens.SigningKey
    throttle: LoginThrottle
    stats: ServerStats
    now: Callable[[], float]
    token_lifetime: float
    dummy_hash: str = attrs.field(repr=False)
    argon2_slots: threading.BoundedSemaphore = attrs.field(repr=False)

    # -- authentication --

    def issue_token(self, account: Account) -> str:
        return tokens.issue(self.signing.key, account, self.now(), self.token_lifetime)

    def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > wire.MAX_TOKEN_CHARS:
            raise self._reject("MissingToken", "log in and send the token as 'Bearer <token>'")
        claims = tokens.claims_of(self.signing.key, token.strip())
        if claims is None:
            raise self._reject("InvalidToken", "the token is not valid; log in again")
        exp, sub, gen = claims.get("exp"), claims.get("sub"), claims.get("gen")
        if (
            isinstance(exp, bool)
            or not isinstance(exp, int | float)
            or not isinstance(sub, str)
            or isinstance(gen, bool)
            or not isinstance(gen, int)
        ):
            raise self._reject("InvalidToken", "the token is not valid; log in again")
        if self.now() >= exp:
            raise self._reject("TokenExpired", "the token has expired; log in again")
        account = stored(self.store.get_account(sub))
        if account is None:
            raise self._reject("InvalidToken", "the account no longer exists")
        if gen != account.generation:
            raise self._reject(
                "SessionEnded", "the session ended (password change or binding reset); log in"
            )
        # The stored role, not the token's: a demotion takes effect at once.
        return Principal(email=account.email, role=account.role)

    def _reject(self, code: str, message: str) -> Refusal:
        self.stats.count("rejected_tokens")
        return Refusal(401, code, message, {"WWW-Authenticate": "Bearer"})

    def check_password(self, email: str, password: str) -> Account:
        """The account when ``password`` is right; otherwise a 401 (or 429 when throttled)."""
        wait = self.throttle.wait(email)
        if wait is not None:
            self.stats.count("throttled")
            raise Refusal(
                429,
                wire.ERROR_TOO_MANY_ATTEMPTS,
                "too many wrong passwords for this account; wait and try again",
                {"Retry-After": str(math.ceil(wait))},
            )
        account = stored(self.store.get_account(email))
        # Unknown e-mails are checked against a dummy hash so timing does not reveal accounts.
        with self.argon2_slots:
            ok = verify_password(password, account.password_hash if account else self.dummy_hash)
        if account is None or not ok:
            self.throttle.failed(email)
            self.stats.count("login_failures")
            raise Refusal(401, "InvalidCredentials", "wrong e-mail or password")
        self.throttle.succeeded(email)
        return account

    # -- hardware binding --

    def check_fingerprint(self, account: Account, fingerprint: str) -> None:
        if account.fingerprint not in (None, fingerprint):
            raise Refusal(409, wire.ERROR_HARDWARE_MISMATCH, HARDWARE_MISMATCH_MESSAGE)

    def bind_fingerprint(self, account: Account, fingerprint: str) -> None:
        """Record the first fingerprint (compare-and-set in the store); refuse any other."""
        if account.fingerprint == fingerprint:
            return  # the common case needs no write
        bound = stored(self.store.bind_fingerprint(account.email, fingerprint))
        if bound != fingerprint:
            raise Refusal(409, wire.ERROR_HARDWARE_MISMATCH, HARDWARE_MISMATCH_MESSAGE)
        log.info("bound account to its first hardware fingerprint")

    def cdn_config_for(self, role: str) -> bytes:
        config = stored(cdn_config(self.store))
        if config is None:
            raise Refusal(404, "NotFound", "no CDN configuration on this server")
        parsed = cdn_config_from_mapping(config)
        if isinstance(parsed, Failure):
            raise Refusal(500, "ServerMisconfigured", "the server's CDN configuration is invalid")
        # Least privilege: downloaders never see write keys, whichever shape was stored.
        return render_cdn_yaml(parsed.unwrap(), include_write=role in WRITE_ROLES).encode()


Handler = Callable[[ServerState, Request], Awaitable[Response]]


def endpoint(state: ServerState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint bound to ``state``, named after the handler (the metrics' route)."""

    async def bound(request: Request) -> Response:
        return await handler(state, request)

    bound.__name__ = handler.__name__.lstrip("_")
    return bound


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


def _require_writer(principal: Principal, action: str) -> None:
    if principal.role not in WRITE_ROLES:
        raise Refusal(403, "Forbidden", f"the {principal.role} role may not {action}")


def require_grant(state: ServerState, principal: Principal, folder: str, right: str) -> None:
    """Refuse (403) unless the account holds ``right`` (``read`` or ``write``) on ``folder``.

    Deny by default: no grant, no access. The role caps what a grant gives, so a downloader with
    a write grant still cannot write. Runs in the thread pool (a store read).
    """
    if right == "write":
        _require_writer(principal, f"write to {folder!r}")
    grants = stored(state.store.list_grants(principal.email))
    held = next((grant for grant in grants if grant.folder == folder), None)
    if held is None or not (held.write if right == "write" else held.read):
        state.stats.count("denied_by_grant")
        raise Refusal(
            403,
            "Forbidden",
            f"this account has no {right} grant on {folder!r}; ask an administrator "
            f"(splitvault admin grants add EMAIL {folder} --{right})",
        )


def _ref(folder: object, name: object) -> ResourceRef:
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, Failure):
        raise Refusal(400, "InvalidName", parsed.failure().describe())
    return parsed.unwrap()


PUBLISHER_KEY_SETTING: Final = "publisher-key:"


def check_publisher(state: ServerState, principal: Principal, small_part: bytes) -> None:
    """Refuse a signed small part unless it verifies under the uploader's recorded key.

    The key is recorded on the account's first signed upload (trust on first use; an
    administrator removes the setting to rotate it); every later upload must be signed by it.
    This is what the server vouches for: a download's signer is the publisher it accepted.
    Unsigned parts (the original client's, older uploads) are stored as they are; clients that
    pin publisher keys refuse them.
    """
    part = signature.split_signed(small_part)
    if part is None:
        return
    parsed = parse_header(part.inner)
    if isinstance(parsed, Failure):
        raise Refusal(400, "BadRequest", "the signed small part holds no valid v1 header")
    if signature.signed_public(part, parsed.unwrap()[1]) is None:
        raise Refusal(400, "BadSignature", "the publisher signature does not verify")
    name = PUBLISHER_KEY_SETTING + principal.email
    recorded = stored(state.store.setting_or_create(name, part.public))
    if recorded != part.public:
        raise Refusal(
            403,
            "UntrustedPublisher",
            f"this account publishes with key {signature.key_id(recorded)}, not "
            f"{signature.key_id(part.public)}; sign with it, or ask an administrator to rotate it",
        )


def version_of(small_part: bytes) -> str:
    """A small part's version: its header's file id, or (a legacy part) a digest of its bytes."""
    part = signature.split_signed(small_part)
    if part is not None:
        small_part = part.inner
    parsed = parse_header(small_part)
    if isinstance(parsed, Success):
        file_id: bytes = parsed.unwrap()[0].file_id
        return file_id.hex()
    return hashlib.sha256(small_part).hexdigest()[:32]


async def login(state: ServerState, request: Request) -> Response:
    body = await _json_object(request)
    email = canonical_email(_text_field(body, wire.FIELD_EMAIL, wire.MAX_EMAIL_CHARS))
    password = _text_field(body, wire.FIELD_PASSWORD, wire.MAX_PASSWORD_CHARS)

    def work() -> str:
        return state.issue_token(state.check_password(email, password))

    token = await run_in_threadpool(work)
    state.stats.count("logins")
    return JSONResponse({wire.FIELD_TOKEN: token}, headers={"Cache-Control": "no-store"})


async def upload_resource(state: ServerState, request: Request) -> Response:
    principal = await run_in_threadpool(state.authenticate, request)
    _require_writer(principal, "upload resources")
    folder = request.path_params["folder"]
    if folder == wire.CONFIG_FOLDER:
        raise Refusal(
            403, "ReservedFolder", f"the {wire.CONFIG_FOLDER!r} folder is managed by the server"
        )
    problem = check_name("folder", folder)
    if problem is not None:
        raise Refusal(400, "InvalidName", problem.describe())
    # Checked before the body is read: a rogue uploader changes nothing and costs little.
    await run_in_threadpool(require_grant, state, principal, folder, "write")
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get(wire.UPLOAD_FILE_FIELD)
        if not isinstance(upload, UploadFile):
            raise Refusal(400, "BadRequest", "expected a multipart field 'file' with a filename")
        ref = _ref(folder, upload.filename)
        data = await upload.read()
    if not data:
        raise Refusal(400, "BadRequest", "a small part is never empty")
    await run_in_threadpool(check_publisher, state, principal, data)
    version = ResourceVersion(
        folder=ref.folder,
        name=ref.name,
        version=version_of(data),
        small_part=data,
        publisher=principal.email,
        created_at=state.now(),
    )
    await run_in_threadpool(lambda: stored(state.store.publish(version)))
    log.info("published %s version %s (%d bytes)", ref, version.version, len(data))
    return JSONResponse({wire.FIELD_NAME: ref.name}, status_code=201)


async def get_resource(state: ServerState, request: Request) -> Response:
    principal = await run_in_threadpool(state.authenticate, request)
    body = await _json_object(request)
    name = body.get(wire.FIELD_FILE_NAME)
    ref = _ref(request.path_params["folder"], name)
    password = _text_field(body, wire.FIELD_PASSWORD, wire.MAX_PASSWORD_CHARS)
    fingerprint = _text_field(body, wire.FIELD_FINGERPRINT, wire.MAX_FINGERPRINT_CHARS)
    if not fingerprint.isprintable():
        raise Refusal(400, "BadRequest", f"{wire.FIELD_FINGERPRINT!r} must be printable text")

    def work() -> bytes:
        # Every account may fetch the CDN config (the role picks its keys); the rest needs read.
        if ref.folder != wire.CONFIG_FOLDER:
            require_grant(state, principal, ref.folder, "read")
        # The download password is checked like a login: throttled, against the stored hash.
        account = state.check_password(principal.email, password)
        state.check_fingerprint(account, fingerprint)
        small_part = _load_small_part(state, ref, principal.role)
        state.bind_fingerprint(account, fingerprint)
        with state.argon2_slots:
            key = keys.transport_key(password, principal.email, fingerprint)
        return keys.seal_envelope(
            key, secrets.token_bytes(keys.NONCE_BYTES), small_part, context=str(ref)
        )

    envelope = await run_in_threadpool(work)
    state.stats.count("downloads")
    return Response(
        envelope, media_type="application/octet-stream", headers={"Cache-Control": "no-store"}
    )


def _load_small_part(state: ServerState, ref: ResourceRef, role: str) -> bytes:
    if ref.folder == wire.CONFIG_FOLDER:
        if ref.name != wire.CDN_CONFIG_NAME:
            raise Refusal(404, "NotFound", f"{ref} does not exist")
        return state.cdn_config_for(role)
    current = stored(state.store.current(ref.folder, ref.name))
    if current is None:
        raise Refusal(404, "NotFound", f"{ref} does not exist")
    return current.small_part


async def list_resources(state: ServerState, request: Request) -> Response:
    principal = await run_in_threadpool(state.authenticate, request)
    parsed = parse_folder(request.path_params["folder"])
    if isinstance(parsed, Failure):
        raise Refusal(400, "InvalidName", parsed.failure().describe())
    folder = parsed.unwrap()

    def names() -> list[str]:
        if folder == wire.CONFIG_FOLDER:
            exists = stored(cdn_config(state.store)) is not None
            return [wire.CDN_CONFIG_NAME] if exists else []
        require_grant(state, principal, folder, "read")
        return list(stored(state.store.names(folder)))

    return JSONResponse({wire.FIELD_FILES: await run_in_threadpool(names)})


async def list_versions(state: ServerState, request: Request) -> Response:
    """The kept versions of one resource, newest (current) first."""
    principal = await run_in_threadpool(state.authenticate, request)
    body = await _json_object(request)
    ref = _ref(request.path_params["folder"], body.get(wire.FIELD_FILE_NAME))

    def kept() -> list[dict[str, object]]:
        require_grant(state, principal, ref.folder, "read")
        current = stored(state.store.current(ref.folder, ref.name))
        return [
            {
                wire.FIELD_VERSION: kept.version,
                "publisher": kept.publisher,
                "created_at": kept.created_at,
                "current": current is not None and kept.version == current.version,
            }
            for kept in stored(state.store.versions(ref.folder, ref.name))
        ]

    versions = await run_in_threadpool(kept)
    if not versions:
        raise Refusal(404, "NotFound", f"{ref} does not exist")
    return JSONResponse({wire.FIELD_VERSIONS: versions}, headers={"Cache-Control": "no-store"})


async def rollback(state: ServerState, request: Request) -> Response:
    """Make a kept version current again: the same commit point as a publish, no new bytes.

    Its big part is still on the CDN (``gc`` never deletes one a kept version references), so
    cold caches fetch it and warm ones still hold its entry.
    """
    principal = await run_in_threadpool(state.authenticate, request)
    body = await _json_object(request)
    ref = _ref(request.path_params["folder"], body.get(wire.FIELD_FILE_NAME))
    wanted = _text_field(body, wire.FIELD_VERSION, 64)

    def work() -> None:
        require_grant(state, principal, ref.folder, "write")
        kept = stored(state.store.versions(ref.folder, ref.name))
        found = next((each for each in kept if each.version == wanted), None)
        if found is None:
            raise Refusal(
                404,
                "NotFound",
                f"{ref} keeps no version {wanted}; list them with splitvault ls --versions",
            )
        stored(state.store.publish(found))

    await run_in_threadpool(work)
    log.info("rolled %s back to version %s", ref, wanted)
    return JSONResponse({wire.FIELD_NAME: ref.name, wire.FIELD_VERSION: wanted})


async def latest_key_fragment(state: ServerState, request: Request) -> Response:
    """``GET /keys``: the latest registered fragment, its version in a header (the original's
    no-version ``download_key_fragment(url, token)``)."""
    principal = await run_in_threadpool(state.authenticate, request)
    await run_in_threadpool(require_grant, state, principal, wire.FRAGMENTS_GRANT_FOLDER, "read")
    found = await run_in_threadpool(lambda: stored(state.store.latest_fragment()))
    if found is None:
        raise Refusal(404, "NotFound", "no key fragment is registered yet")
    version, fragment = found
    return Response(
        fragment,
        media_type="application/octet-stream",
        headers={"Cache-Control": "no-store", wire.LATEST_VERSION_HEADER: version},
    )


async def key_fragment(state: ServerState, request: Request) -> Response:
    principal = await run_in_threadpool(state.authenticate, request)
    version = request.path_params["version"]
    problem = check_name("version", version)
    if problem is not None:
        raise Refusal(400, "InvalidName", problem.describe())
    if request.method == "GET":
        await run_in_threadpool(
            require_grant, state, principal, wire.FRAGMENTS_GRANT_FOLDER, "read"
        )
        fragment = await run_in_threadpool(lambda: stored(state.store.get_fragment(version)))
        if fragment is None:
            raise Refusal(404, "NotFound", f"no key fragment for version {version}")
        return Response(
            fragment, media_type="application/octet-stream", headers={"Cache-Control": "no-store"}
        )
    await run_in_threadpool(require_grant, state, principal, wire.FRAGMENTS_GRANT_FOLDER, "write")
    fragment = await request.body()
    if not fragment:
        raise Refusal(400, "BadRequest", "a key fragment is never empty")
    if len(fragment) > wire.MAX_FRAGMENT_BYTES:
        raise Refusal(413, "TooLarge", f"a key fragment is at most {wire.MAX_FRAGMENT_BYTES} bytes")
    await run_in_threadpool(lambda: stored(state.store.put_fragment(version, fragment)))
    log.info("stored key fragment for version %s", version)
    return JSONResponse({wire.FIELD_VERSION: version}, status_code=201)


async def healthz(_state: ServerState, _request: Request) -> Response:
    """Alive: the process answers (a load balancer's liveness probe)."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(state: ServerState, _request: Request) -> Response:
    """Ready: the store answers (a load balancer's readiness probe)."""
    reached = await run_in_threadpool(state.store.ping)
    if not is_successful(reached):
        log.error("readiness: %s", unsafe_perform_io(reached.failure()).describe())
        return JSONResponse(
            {"status": "unavailable", "store": "not answering"},
            status_code=503,
            headers={"Cache-Control": "no-store"},
        )
    schema = unsafe_perform_io(reached.unwrap())
    return JSONResponse(
        {"status": "ready", "schema": schema}, headers={"Cache-Control": "no-store"}
    )


async def metrics(state: ServerState, _request: Request) -> Response:
    """The Prometheus text exposition: of this process, or of every worker of ``serve
    --workers N`` (prometheus_client's multiprocess mode, switched on by ``serving``)."""
    registry = state.stats.registry
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
