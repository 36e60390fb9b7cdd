"""The reference resource API server: small parts, key fragments and ``cdn.yaml`` behind logins.

An ASGI app (Starlette) that implements the resource API for real. Users have Argon2id password
hashes, a random salt and a role (``uploader``, ``downloader`` or ``admin``). ``POST /login``
(the only request that carries the password) answers an enrolment token and the salt; the client
derives its device key and enrols the public key with ``POST /devices``, which answers an HS256
JWT naming the device and carrying the account's session generation. Small parts, ``cdn.yaml``
and key fragments are handed out only sealed with HPKE to that device's public key
(``domain.device``); no Argon2id runs on the download path. Everything the server keeps is in a
``ServerStore`` (``stores.open_store``): the SQLite file under a data directory, or PostgreSQL
shared by several servers. ``/healthz``, ``/readyz`` and ``/metrics`` serve load balancers and
Prometheus.

The rooms: ``accounts`` (users and the CDN config as operators set them), ``stores`` (opening a
store, importing the old file layout), ``tokens``, ``throttle``, ``limits``, ``refusals``,
``observe`` (metrics, access log), ``routes`` (the handlers), ``serving`` (``splitvault serve``).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from splitvault.app.server import routes
from splitvault.app.server.accounts import (
    ROLE_DOWNLOADER,
    ROLE_UPLOADER,
    add_user,
    canonical_email,
    change_password,
    grant,
    hash_password,
    reset_binding,
    set_cdn_config,
    verify_password,
)
from splitvault.app.server.limits import BodyLimit, BodyTooLarge, too_large
from splitvault.app.server.observe import Observe, ServerStats
from splitvault.app.server.refusals import Refusal, error_response
from splitvault.app.server.stores import open_store
from splitvault.app.server.throttle import LoginThrottle
from splitvault.app.server.tokens import SigningKey
from splitvault.domain import wire
from splitvault.domain.ports import ServerStore

log = logging.getLogger("splitvault.server")

MAX_BODY_BYTES: Final = wire.MAX_BODY_BYTES
# Environment of `splitvault serve` worker processes (uvicorn builds the app once per worker).
ENV_DATA: Final = "SPLITVAULT_SERVER_DATA"
ENV_DATABASE_URL: Final = "SPLITVAULT_SERVER_DATABASE_URL"
ENV_TOKEN_LIFETIME: Final = "SPLITVAULT_SERVER_TOKEN_LIFETIME"  # noqa: S105 - a variable name
ENV_DEVICE_LIMIT: Final = "SPLITVAULT_SERVER_DEVICE_LIMIT"
ENV_APPROVE_DEVICES: Final = "SPLITVAULT_SERVER_APPROVE_DEVICES"

__all__ = [
    "ROLE_DOWNLOADER",
    "ROLE_UPLOADER",
    "Refusal",
    "ServerStats",
    "add_user",
    "app_from_environment",
    "canonical_email",
    "change_password",
    "create_app",
    "error_response",
    "grant",
    "hash_password",
    "reset_binding",
    "set_cdn_config",
    "verify_password",
]


def create_app(
    where: Path | ServerStore,
    *,
    token_lifetime: float = 900.0,
    now: Callable[[], float] = time.time,
    max_body_bytes: int = MAX_BODY_BYTES,
    login_attempts: int = 5,
    login_window: float = 300.0,
    address_attempts: int = 20,
    device_limit: int = 1,
    approve_devices: bool = False,
) -> Starlette:
    """The reference resource API as an ASGI app.

    Args:
        where: the store, or a data directory whose SQLite store is opened (and kept open for the
            app's life; an old ``users.json`` layout there is imported first).
        token_lifetime: seconds a login token is valid.
        now: the wall clock used for token times and throttling (tests pass a fake).
        max_body_bytes: larger request bodies are refused with 413.
        login_attempts, login_window: wrong passwords allowed per (e-mail, source address) per
            window before 429; ``address_attempts`` per source address whatever the e-mail
            (checked before Argon2id runs). A valid token is never throttled.
        device_limit, approve_devices: the device policy for accounts that already have one:
            up to ``device_limit`` active devices, or (``approve_devices``) every further one
            pending until ``splitvault admin devices approve``.

    Raises:
        OSError: when the data directory's store cannot be opened (the message says why).
        ValueError: when the stored signing key has the wrong length.
        Refusal: (503) when the store cannot be read for the signing key.
    """
    if isinstance(where, Path):
        opened = open_store(where)
        if not is_successful(opened):
            raise OSError(unsafe_perform_io(opened.failure()).describe())
        store = unsafe_perform_io(opened.unwrap())
    else:
        store = where
    state = routes.ServerState(
        store=store,
        signing=SigningKey(store),
        throttle=LoginThrottle(store, login_attempts, login_window, now),
        address_throttle=LoginThrottle(store, address_attempts, login_window, now),
        stats=ServerStats(),
        now=now,
        token_lifetime=token_lifetime,
        # Made up front so the first unknown e-mail costs the same as every later one.
        dummy_hash=hash_password(secrets.token_urlsafe(16)),
        argon2_slots=threading.BoundedSemaphore(routes.ARGON2_CONCURRENCY),
        devices=routes.DevicePolicy(limit=device_limit, approve=approve_devices),
    )

    def route(path: str, handler: routes.Handler, methods: list[str]) -> Route:
        return Route(path, routes.endpoint(state, handler), methods=methods)

    resources = f"/{wire.RESOURCES}"
    app = Starlette(
        routes=[
            route(f"/{wire.LOGIN}", routes.login, ["POST"]),
            route(f"/{wire.DEVICES}", routes.enrol_device, ["POST"]),
            route(f"{resources}/{wire.GET}/{{folder}}", routes.get_resource, ["POST"]),
            route(f"{resources}/{wire.LIST}/{{folder}}", routes.list_resources, ["GET"]),
            route(f"{resources}/{wire.VERSIONS}/{{folder}}", routes.list_versions, ["POST"]),
            route(f"{resources}/{wire.ROLLBACK}/{{folder}}", routes.rollback, ["POST"]),
            route(f"{resources}/{{folder}}", routes.upload_resource, ["POST"]),
            route(f"/{wire.KEYS}", routes.latest_key_fragment, ["GET"]),
            route(f"/{wire.KEYS}/{{version}}", routes.key_fragment, ["GET", "PUT"]),
            route(wire.HEALTH_PATH, routes.healthz, ["GET"]),
            route(wire.READY_PATH, routes.readyz, ["GET"]),
            route(wire.METRICS_PATH, routes.metrics, ["GET"]),
        ],
        exception_handlers={
            Refusal: _on_refusal,
            HTTPException: _on_http_exception,
            BodyTooLarge: _on_too_large(max_body_bytes),
            Exception: _on_crash,
        },
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(Observe, stats=state.stats)  # outermost: sees every answer, 413s too
    app.state.server = state
    app.state.stats = state.stats
    app.state.signing = state.signing
    app.state.store = store
    return app


def app_from_environment() -> Starlette:
    """The app a ``splitvault serve`` worker runs, configured by its environment (a factory)."""
    url = os.environ.get(ENV_DATABASE_URL)
    data = os.environ.get(ENV_DATA)
    opened = open_store(Path(data) if data else None, url)
    if not is_successful(opened):
        raise SystemExit(f"splitvault serve: {unsafe_perform_io(opened.failure()).describe()}")
    lifetime = float(os.environ.get(ENV_TOKEN_LIFETIME, "900"))
    return create_app(
        unsafe_perform_io(opened.unwrap()),
        token_lifetime=lifetime,
        device_limit=int(os.environ.get(ENV_DEVICE_LIMIT, "1")),
        approve_devices=os.environ.get(ENV_APPROVE_DEVICES) == "1",
    )


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
        return too_large(limit)

    return handler


async def _on_crash(_request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log (Starlette re-raises), never into the body.
    log.error("request failed: %s", type(exc).__name__)
    return error_response(500, "InternalError", "the server failed; the operator can see why")
