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
from splitvault.app.server.throttle import LoginThrottle, account_key, address_key
from splitvault.domain import device as envelopes
from splitvault.domain import signature, wire
from splitvault.domain.config import cdn_config_from_mapping
from splitvault.domain.errors import Conflict
from splitvault.domain.format_v1 import parse_header
from splitvault.domain.ports import (
    Account,
    Device,
    ResourceVersion,
    ServerStore,
    StoredFragment,
    StoreFailure,
)
from splitvault.domain.ref import ResourceRef, check_name, parse_folder

log = logging.getLogger("splitvault.server")

T = TypeVar("T")

# Set (to a directory) by `serve --workers N`: the workers' metrics are summed from files there.
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Argon2id runs with 19 MiB each; a bound keeps a login storm from exhausting memory.
ARGON2_CONCURRENCY: Final = 4
# An enrolment token only lets a client enrol its device: a short life is all it needs.
ENROLMENT_TOKEN_LIFETIME: Final = 300.0


@attrs.frozen
class DevicePolicy:
    """Who may add a device to an account that has one: ``approve`` keeps further devices
    pending until an operator approves them; otherwise up to ``limit`` devices are active.
    The default, one, is the original client's "per user and per hardware" binding."""

    limit: int = 1
    approve: bool = False


@attrs.frozen
class Principal:
    """Who made a request, after the token was verified and the account looked up."""

    email: str
    role: str
    device: Device | None = None  # None only for an enrolment token at ``POST /devices``


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
    throttle: LoginThrottle  # per (account, source address)
    address_throttle: LoginThrottle  # per source address, before any Argon2id
    stats: ServerStats
    now: Callable[[], float]
    token_lifetime: float
    dummy_hash: str = attrs.field(repr=False)
    argon2_slots: threading.BoundedSemaphore = attrs.field(repr=False)
    devices: DevicePolicy = DevicePolicy()

    # -- authentication --

    def issue_token(self, account: Account, device: str = "") -> str:
        lifetime = (
            self.token_lifetime if device else min(self.token_lifetime, ENROLMENT_TOKEN_LIFETIME)
        )
        return tokens.issue(self.signing.key, account, self.now(), lifetime, device)

    def authenticate(self, request: Request, *, enrolling: bool = False) -> Principal:
        """The caller of a device token (or, with ``enrolling``, of any token of ours)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > wire.MAX_TOKEN_CHARS:
            raise self._reject("MissingToken", "log in and send the token as 'Bearer <token>'")
        claims = tokens.claims_of(self.signing.key, token.strip())
        if claims is None:
            raise self._reject("InvalidToken", "the token is not valid; log in again")
        exp, sub, gen = claims.get("exp"), claims.get("sub"), claims.get("gen")
        dev = claims.get("dev")
        if (
            isinstance(exp, bool)
            or not isinstance(exp, int | float)
            or not isinstance(sub, str)
            or not isinstance(dev, str)
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
                "SessionEnded",
                "the session ended (password change, device revocation or binding reset); log in",
            )
        device = None
        if dev:
            device = self.device_of(account.email, dev)
            if device is None or device.status != "active":
                raise self._reject(
                    wire.ERROR_DEVICE_REVOKED, "this device is no longer enrolled; log in again"
                )
        elif not enrolling:
            raise self._reject(
                wire.ERROR_NOT_ENROLLED, "enrol this device (POST /devices) before using the API"
            )
        # The stored role, not the token's: a demotion takes effect at once.
        return Principal(email=account.email, role=account.role, device=device)

    def _put_device(self, fresh: Device) -> Device | None:
        """Store a new device; the store re-checks the limit in its write, so two machines
        enrolling at once cannot both get in (the check above only spares the write)."""
        first = not self.devices.approve
        limit = self.devices.limit if first else 1  # approve mode: only the first is let in
        put = self.store.put_device(fresh, active_limit=limit if fresh.status == "active" else None)
        if not is_successful(put):
            if isinstance(unsafe_perform_io(put.failure()), Conflict):
                return self.device_of(fresh.email, fresh.device_id)  # a concurrent enrolment
            raise store_refusal(unsafe_perform_io(put.failure()))
        if unsafe_perform_io(put.unwrap()):
            log.info("enrolled device %s (%s)", fresh.device_id, fresh.status)
            return fresh
        if self.devices.approve:  # another machine became the first meanwhile: wait in line
            return self._put_device(attrs.evolve(fresh, status="pending"))
        raise self._limit_refusal()

    def _limit_refusal(self) -> Refusal:
        return Refusal(
            409,
            wire.ERROR_HARDWARE_MISMATCH,
            f"this account is enrolled on another machine (a limit of {self.devices.limit}"
            " device(s)); ask an operator to revoke it (splitvault admin devices revoke "
            "ID) or to reset the binding (splitvault admin users reset-binding EMAIL)",
        )

    def device_of(self, email: str, device_id: str) -> Device | None:
        found = stored(self.store.list_devices(email))
        return next((device for device in found if device.device_id == device_id), None)

    def _reject(self, code: str, message: str) -> Refusal:
        self.stats.count("rejected_tokens")
        return Refusal(401, code, message, {"WWW-Authenticate": "Bearer"})

    def check_password(self, email: str, password: str, source: str) -> Account:
        """The account when ``password`` is right; otherwise a 401 (or 429 when throttled).

        Throttled per source address first (before Argon2id), then per (account, address):
        failures from one address never shut the account's owner out anywhere else.
        """
        for throttle, key in (
            (self.address_throttle, address_key(source)),
            (self.throttle, account_key(email, source)),
        ):
            wait = throttle.wait(key)
            if wait is not None:
                self.stats.count("throttled")
                raise Refusal(
                    429,
                    wire.ERROR_TOO_MANY_ATTEMPTS,
                    "too many wrong passwords from this address; wait and try again",
                    {"Retry-After": str(math.ceil(wait))},
                )
        account = stored(self.store.get_account(email))
        # Unknown e-mails are checked against a dummy hash so timing does not reveal accounts.
        with self.argon2_slots:
            ok = verify_password(password, account.password_hash if account else self.dummy_hash)
        if account is None or not ok:
            self.address_throttle.failed(address_key(source))
            self.throttle.failed(account_key(email, source))
            self.stats.count("login_failures")
            raise Refusal(401, "InvalidCredentials", "wrong e-mail or password")
        self.throttle.succeeded(account_key(email, source))
        return account

    # -- devices --

    def enrol(self, principal: Principal, public_key: bytes, tag: bytes) -> Device:
        """The device for ``public_key``, enrolled now when new (by the account's policy)."""
        device_id = envelopes.device_id(public_key)
        # One read for both questions: a second read could see this very device, enrolled by a
        # concurrent login of the same machine, and count it against the limit.
        devices = stored(self.store.list_devices(principal.email))
        known = next((d for d in devices if d.device_id == device_id), None)
        if known is None:
            live = [d for d in devices if d.status in ("active", "pending")]
            active = [d for d in live if d.status == "active"]
            if live and not self.devices.approve and len(active) >= self.devices.limit:
                raise self._limit_refusal()
            status = "pending" if live and self.devices.approve else "active"
            known = self._put_device(
                Device(device_id, principal.email, public_key, tag, status, self.now())
            )
        if known is None or known.email != principal.email:
            raise Refusal(409, "Conflict", "this device key is enrolled for another account")
        if known.status == "pending":
            raise Refusal(
                409,
                wire.ERROR_DEVICE_PENDING,
                f"device {device_id} waits for an operator's approval "
                f"(splitvault admin devices approve {device_id}); try again after it",
            )
        if known.status == "revoked":
            raise Refusal(
                403,
                wire.ERROR_DEVICE_REVOKED,
                f"device {device_id} was revoked; an operator can approve it again "
                f"(splitvault admin devices approve {device_id})",
            )
        return known

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


def require_publisher_key(state: ServerState, principal: Principal, public_key: bytes) -> None:
    """Refuse (403) unless ``public_key`` is the account's recorded publisher key.

    The key is recorded on the account's first use of one (trust on first use); an operator
    re-keys an account with ``splitvault admin publishers set|clear``. Runs in the thread pool.
    """
    recorded = stored(state.store.record_publisher_key(principal.email, public_key, state.now()))
    if recorded != public_key:
        raise Refusal(
            403,
            "UntrustedPublisher",
            f"this account publishes with key {signature.key_id(recorded)}, not "
            f"{signature.key_id(public_key)}; sign with it, or ask an administrator to re-key "
            f"it (splitvault admin publishers set {principal.email} --key HEX)",
        )


def check_publisher(state: ServerState, principal: Principal, small_part: bytes) -> None:
    """Refuse a signed small part unless it verifies under the uploader's recorded key.

    This is what the server vouches for: a download's signer is the publisher it accepted, and
    the signed part itself (its framing names the key) is the per-version record, so versions
    signed before an operator re-keyed the account keep verifying under the key they carry.
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
    require_publisher_key(state, principal, part.public)


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


def _source(request: Request) -> str:
    """The peer's address: what throttling counts by. Proxy headers are not trusted (a client
    could write any address there); a deployment behind a proxy must throttle at the proxy."""
    return request.client.host if request.client is not None else "unknown"


def _hex_field(body: Mapping[str, object], field: str, size: int) -> bytes:
    value = body.get(field)
    if isinstance(value, str) and len(value) == 2 * size:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise Refusal(400, "BadRequest", f"{field!r} must be {2 * size} hex digits")


async def login(state: ServerState, request: Request) -> Response:
    """``POST /login``: the only request with the password. Answers an enrolment token and the
    account's salt (the client derives its device key from both)."""
    body = await _json_object(request)
    email = canonical_email(_text_field(body, wire.FIELD_EMAIL, wire.MAX_EMAIL_CHARS))
    password = _text_field(body, wire.FIELD_PASSWORD, wire.MAX_PASSWORD_CHARS)
    source = _source(request)

    def work() -> tuple[str, bytes]:
        account = state.check_password(email, password, source)
        return state.issue_token(account), account.salt

    token, salt = await run_in_threadpool(work)
    state.stats.count("logins")
    return JSONResponse(
        {wire.FIELD_TOKEN: token, wire.FIELD_SALT: salt.hex()},
        headers={"Cache-Control": "no-store"},
    )


async def enrol_device(state: ServerState, request: Request) -> Response:
    """``POST /devices``: enrol (or find) this account's device key; answers a device token."""
    principal = await run_in_threadpool(lambda: state.authenticate(request, enrolling=True))
    body = await _json_object(request)
    public_key = _hex_field(body, wire.FIELD_PUBLIC_KEY, envelopes.PUBLIC_KEY_BYTES)
    tag = _hex_field(body, wire.FIELD_FINGERPRINT_TAG, 32)
    declared = None
    if body.get(wire.FIELD_PUBLISHER_KEY) is not None:
        declared = _hex_field(body, wire.FIELD_PUBLISHER_KEY, signature.PUBLIC_KEY_BYTES)
    if principal.role not in WRITE_ROLES:
        declared = None  # a reader publishes nothing; its (shared) config may still name a key

    def work() -> tuple[Device, str]:
        if declared is not None:
            held = stored(state.store.publisher_key(principal.email))
            if held is not None and held != declared:
                require_publisher_key(state, principal, declared)  # refuses, saying why
        device = state.enrol(principal, public_key, tag)
        # Recorded only once the device is in: a password alone (no device slot, or a device
        # waiting for approval) must not choose the account's publisher key.
        if declared is not None:
            require_publisher_key(state, principal, declared)
        account = stored(state.store.get_account(principal.email))
        if account is None:
            raise Refusal(401, "InvalidToken", "the account no longer exists")
        return device, state.issue_token(account, device.device_id)

    device, token = await run_in_threadpool(work)
    return JSONResponse(
        {wire.FIELD_TOKEN: token, wire.FIELD_DEVICE: device.device_id, wire.FIELD_STATUS: "active"},
        headers={"Cache-Control": "no-store"},
    )


def sealed_response(
    principal: Principal,
    kind: envelopes.Kind,
    subject: str,
    version: str,
    plaintext: bytes,
    *,
    publisher: bytes | None = None,
) -> Response:
    """``plaintext`` sealed with HPKE to the token's device, ``info`` binding kind, subject,
    version and (a key fragment's) the publisher key vouched for; the headers name the device,
    version and publisher key a client needs to rebuild ``info``."""
    device = principal.device
    if device is None:  # authenticate() gives no device-less principal beyond enrolment
        raise Refusal(401, wire.ERROR_NOT_ENROLLED, "enrol this device before downloading")
    info = envelopes.envelope_info(kind, device.device_id, subject, version, publisher or b"")
    headers = {
        "Cache-Control": "no-store",
        wire.VERSION_HEADER: version,
        wire.DEVICE_HEADER: device.device_id,
    }
    if publisher:
        headers[wire.PUBLISHER_KEY_HEADER] = publisher.hex()
    return Response(
        envelopes.seal(plaintext, device.public_key, info),
        media_type="application/octet-stream",
        headers=headers,
    )


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

    def work() -> Response:
        # Every account may fetch the CDN config (the role picks its keys); the rest needs read.
        if ref.folder != wire.CONFIG_FOLDER:
            require_grant(state, principal, ref.folder, "read")
        small_part, version = _load_small_part(state, ref, principal.role)
        kind: envelopes.Kind = "cdn-config" if ref == wire.CONFIG_REF else "small-part"
        return sealed_response(principal, kind, str(ref), version, small_part)

    answer = await run_in_threadpool(work)
    state.stats.count("downloads")
    return answer


def _load_small_part(state: ServerState, ref: ResourceRef, role: str) -> tuple[bytes, str]:
    """The small part (or ``cdn.yaml``) and its version: the store's, or for ``cdn.yaml`` a
    digest of the text handed out."""
    if ref.folder == wire.CONFIG_FOLDER:
        if ref.name != wire.CDN_CONFIG_NAME:
            raise Refusal(404, "NotFound", f"{ref} does not exist")
        text = state.cdn_config_for(role)
        return text, hashlib.sha256(text).hexdigest()[:32]
    current = stored(state.store.current(ref.folder, ref.name))
    if current is None:
        raise Refusal(404, "NotFound", f"{ref} does not exist")
    return current.small_part, current.version


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
    found = await run_in_threadpool(lambda: stored(state.store.fragment_record(None)))
    if found is None:
        raise Refusal(404, "NotFound", "no key fragment is registered yet")
    return _fragment_response(principal, found)


def _fragment_response(principal: Principal, found: StoredFragment) -> Response:
    # The publisher key recorded with the fragment is what the server vouches for: the archive
    # of this version must be signed by it (loaders that pin keys check their own instead).
    version = found.version
    return sealed_response(
        principal, "key-fragment", version, version, found.fragment, publisher=found.publisher_key
    )


def _declared_key(request: Request) -> bytes | None:
    """The publisher key a ``PUT /keys/{version}`` declares, or ``None`` (an unsigned archive)."""
    text = request.headers.get(wire.PUBLISHER_KEY_HEADER)
    if text is None:
        return None
    public = signature.public_key_from_hex(text)
    if public is None:
        raise Refusal(
            400,
            "BadRequest",
            f"{wire.PUBLISHER_KEY_HEADER} must be {2 * signature.PUBLIC_KEY_BYTES} hex digits",
        )
    return public


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
        found = await run_in_threadpool(lambda: stored(state.store.fragment_record(version)))
        if found is None:
            raise Refusal(404, "NotFound", f"no key fragment for version {version}")
        return _fragment_response(principal, found)
    await run_in_threadpool(require_grant, state, principal, wire.FRAGMENTS_GRANT_FOLDER, "write")
    declared = _declared_key(request)
    fragment = await request.body()
    if not fragment:
        raise Refusal(400, "BadRequest", "a key fragment is never empty")
    if len(fragment) > wire.MAX_FRAGMENT_BYTES:
        raise Refusal(413, "TooLarge", f"a key fragment is at most {wire.MAX_FRAGMENT_BYTES} bytes")
    record = StoredFragment(version, fragment, principal.email, declared)

    def register() -> None:
        # The declared key must be the account's (recorded now if it has none): the server
        # vouches for this version's archive with it, and only for this account's key.
        if declared is not None:
            require_publisher_key(state, principal, declared)
        stored(state.store.register_fragment(record))

    await run_in_threadpool(register)
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
