"""Pytest fixtures for tests that talk to the reference API server directly.

One uvicorn server per test module (``served``) serves a fresh app per test (``world``) over a copy
of the session's user template; ``http`` is a raw httpx client of it. Test modules import the
fixtures they use from here. ``serve_process`` runs ``splitvault serve`` itself as a process
(several of them on one PostgreSQL, or one to SIGKILL).
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
import pytest

from splitvault.adapters.postgres_store import PostgresStore
from splitvault.app.server.accounts import add_user, set_cdn_config
from splitvault.app.server.runner import RunningServer
from splitvault.domain.ports import ServerStore
from tests.support.results import value
from tests.support.server_world import (
    AppSlot,
    ServerWorld,
    grant_test_accounts,
    running_world,
    slot_server,
)
from tests.support.stack import (
    DOWNLOADER,
    OTHER_DOWNLOADER,
    PASSWORD,
    UPLOADER,
    Stack,
    user_template,
)

__all__ = [
    "ServeProcess",
    "http",
    "prepare_database",
    "serve_process",
    "served",
    "user_template",
    "world",
]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[RunningServer, AppSlot]]:
    """A uvicorn server on loopback whose app each test swaps in."""
    with slot_server() as server:
        yield server


@pytest.fixture
def world(
    user_template: Path, tmp_path: Path, served: tuple[RunningServer, AppSlot]
) -> Iterator[ServerWorld]:
    """A fresh reference app over a copy of the user template, served on loopback."""
    with running_world(user_template, tmp_path, served) as running:
        yield running


@pytest.fixture
def http(world: ServerWorld) -> Iterator[httpx.Client]:
    """A raw HTTP client of the world's server."""
    with httpx.Client(base_url=world.url, timeout=30) as client:
        yield client


# --- `splitvault serve` as a real process ---------------------------------------------------

SERVE_START_TIMEOUT = 60.0


@attrs.define
class ServeProcess:
    """A ``splitvault serve`` process on loopback: its URL, its process and its log file."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        """What the server wrote so far (stderr and stdout)."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the crash a store must survive)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


def trust(ca: Path | None) -> ssl.SSLContext | bool:
    """What httpx should verify a served process with: the private CA, or the defaults."""
    return ssl.create_default_context(cafile=str(ca)) if ca is not None else True


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_process(
    log_dir: Path, *store_args: str, name: str = "server", ca: Path | None = None
) -> Iterator[ServeProcess]:
    """Run ``splitvault serve STORE_ARGS`` on a free port until it answers ``/readyz``; stop it
    (SIGTERM, then SIGKILL) afterwards. With ``ca`` the server speaks HTTPS (give ``--tls-*``)
    and is verified against that CA."""
    port = free_port()
    log_path = log_dir / f"{name}-{port}.log"
    argv = [sys.executable, "-m", "splitvault.app.cli.main", "serve", *store_args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*argv, "--port", str(port)], stdout=log_file, stderr=subprocess.STDOUT
        )
    scheme = "https" if ca is not None else "http"
    running = ServeProcess(process, f"{scheme}://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"splitvault serve exited: {running.log()[-2000:]}")
            try:
                ready = httpx.get(f"{running.url}/readyz", timeout=2, verify=trust(ca))
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"splitvault serve did not start: {running.log()[-2000:]}")
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def prepare_database(stack: Stack, url: str, *, endpoint: str | None = None) -> None:
    """Users and the stack's bucket as the CDN config, in the PostgreSQL store at ``url``."""
    with value(PostgresStore.open(url)) as store:
        prepare_store(store, stack, endpoint=endpoint)


def prepare_store(store: ServerStore, stack: Stack, *, endpoint: str | None = None) -> None:
    """The test accounts, their grants and the stack's bucket as the CDN config in ``store``;
    ``endpoint`` points the CDN config at another S3 server (the bucket must exist there)."""
    for email, role in (
        (UPLOADER, "uploader"),
        (DOWNLOADER, "downloader"),
        (OTHER_DOWNLOADER, "downloader"),
    ):
        value(add_user(store, email, PASSWORD, role))
    grant_test_accounts(store)
    value(
        set_cdn_config(
            store,
            {
                "endpoint": endpoint or stack.moto.endpoint_url,
                "bucket": stack.bucket,
                "region": stack.moto.region,
                "read": attrs.asdict(stack.read_keys),
                "write": attrs.asdict(stack.write_keys),
            },
        )
    )
