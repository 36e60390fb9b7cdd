"""``splitvault serve``: the reference API under uvicorn, as one process or several workers.

Every worker builds its own app from the environment (``api.app_from_environment``), so the store
must be one all of them can share: the SQLite file under ``--data`` for workers on one host, or
PostgreSQL for servers on several. The store is opened (and migrated) once here first, so a wrong
URL or a schema newer than this build stops the command with a clear message before any worker
starts. uvicorn handles SIGTERM and SIGINT by refusing new connections and finishing the requests
in flight (up to ``graceful_seconds``); TLS, keep-alive and a concurrency limit are uvicorn's,
the request-head deadline ours (``head_timeout``).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

import attrs
import uvicorn
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.app.server.api import (
    ENV_APPROVE_DEVICES,
    ENV_DATA,
    ENV_DATABASE_URL,
    ENV_DEVICE_LIMIT,
    ENV_TOKEN_LIFETIME,
)
from splitvault.app.server.head_timeout import (
    DEFAULT_HEADER_TIMEOUT,
    ENV_HEADER_TIMEOUT,
    HEAD_TIMEOUT_PROTOCOL,
)
from splitvault.app.server.routes import MULTIPROCESS_ENV
from splitvault.app.server.stores import open_store
from splitvault.domain.errors import ConfigInvalid
from splitvault.domain.ports import StoreFailure

FACTORY: Final = "splitvault.app.server.api:app_from_environment"


@attrs.frozen
class ServeOptions:
    """How to run the server.

    ``database_url`` wins over ``data``; ``tls_cert``/``tls_key`` switch on HTTPS;
    ``concurrency`` caps open connections (uvicorn answers 503 past it); ``keep_alive`` closes idle
    connections after that many seconds; ``header_timeout`` closes a connection whose request
    head is not complete that many seconds after it began (slowloris); ``graceful_seconds``
    bounds the drain on shutdown; ``device_limit`` and ``approve_devices`` are the device policy
    for accounts that already have one device (up to that many active, or every further one
    pending an operator's approval).
    """

    data: Path | None = None
    database_url: str | None = attrs.field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    concurrency: int | None = 1024
    keep_alive: float = 5.0
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    graceful_seconds: float = 30.0
    token_lifetime: float = 900.0
    device_limit: int = 1
    approve_devices: bool = False


def check(options: ServeOptions) -> ConfigInvalid | StoreFailure | None:
    """Why ``options`` cannot serve (bad flags, unreachable or too-new store), or ``None``."""
    if options.workers < 1:
        return ConfigInvalid("--workers", "must be at least 1")
    if not options.header_timeout > 0:
        return ConfigInvalid("--header-timeout", "must be a positive number of seconds")
    if options.device_limit < 1:
        return ConfigInvalid(
            "--device-limit", "must be at least 1 (the first device of an account)"
        )
    if (options.tls_cert is None) != (options.tls_key is None):
        return ConfigInvalid("--tls-cert", "give --tls-cert and --tls-key together")
    for flag, path in (("--tls-cert", options.tls_cert), ("--tls-key", options.tls_key)):
        if path is not None and not path.is_file():
            return ConfigInvalid(flag, f"{path} is not a readable file")
    opened = open_store(options.data, options.database_url)
    if not is_successful(opened):
        return unsafe_perform_io(opened.failure())
    unsafe_perform_io(opened.unwrap()).close()
    return None


def log_config() -> dict[str, Any]:
    """uvicorn's logging plus our loggers (the access log included) on stderr, in every worker."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["splitvault"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(options: ServeOptions) -> None:
    """Run until SIGTERM/SIGINT; requests in flight are finished first."""
    # Workers are fresh processes: the environment is how they learn where the store is.
    if options.database_url:
        os.environ[ENV_DATABASE_URL] = options.database_url
        os.environ.pop(ENV_DATA, None)
    elif options.data is not None:
        os.environ[ENV_DATA] = str(options.data.resolve())
        os.environ.pop(ENV_DATABASE_URL, None)
    os.environ[ENV_TOKEN_LIFETIME] = str(options.token_lifetime)
    os.environ[ENV_DEVICE_LIMIT] = str(options.device_limit)
    os.environ[ENV_APPROVE_DEVICES] = "1" if options.approve_devices else "0"
    os.environ[ENV_HEADER_TIMEOUT] = str(options.header_timeout)
    metrics_dir = None
    if options.workers > 1:
        # Each worker counts into files here and /metrics sums them, whichever worker answers.
        metrics_dir = tempfile.mkdtemp(prefix="splitvault-metrics-")
        os.environ[MULTIPROCESS_ENV] = metrics_dir
    try:
        _run(options)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run(options: ServeOptions) -> None:
    uvicorn.run(
        FACTORY,
        factory=True,
        host=options.host,
        port=options.port,
        workers=options.workers,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        limit_concurrency=options.concurrency,
        timeout_keep_alive=int(options.keep_alive),
        http=HEAD_TIMEOUT_PROTOCOL,
        timeout_graceful_shutdown=int(options.graceful_seconds),
        lifespan="off",
        access_log=False,  # ours (splitvault.server.access) names routes, never raw paths
        log_config=log_config(),
        server_header=False,
        proxy_headers=False,
    )
