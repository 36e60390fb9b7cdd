"""A reference server world for tests of the API server and its HTTP adapter.

``ServerWorld`` bundles a data directory, a fresh
reference app (behind its own fault switch) and a factory for clients bound to it. One uvicorn
server per test module serves every test's app through an ``AppSlot``: starting and stopping
uvicorn costs ~0.2 s, a new app costs nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import attrs
from returns.pipeline import is_successful
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.adapters.http_api import HttpResourceApi
from splitvault.adapters.sql_store import SqlStore
from splitvault.app.client.bootstrap import DeviceIdentity
from splitvault.app.server.accounts import StoreOrDir
from splitvault.app.server.api import ServerStats, add_user, create_app, grant, set_cdn_config
from splitvault.app.server.runner import RunningServer
from splitvault.domain import wire
from splitvault.domain.retry import RetryPolicy
from tests.fakes import FakeClock, FakeRandom, FakeSleep, ServerClock
from tests.support.faults import FaultInjector

UPLOADER = "uploader@example.com"
DOWNLOADER = "downloader@example.com"
OTHER_DOWNLOADER = "other@example.com"
# Access is denied by default: the test accounts are granted these folders explicitly (the key
# fragments' pseudo-folder among them). A test of grants makes its own accounts.
TEST_FOLDERS = (
    "models",
    "images",
    "bench",
    "m",
    "x",
    "data",
    "nothing-here",
    "odd folder %",
    "configs",
    wire.FRAGMENTS_GRANT_FOLDER,
)


def grant_test_accounts(where: StoreOrDir) -> None:
    """The uploader reads and writes the test folders; the downloaders read them."""
    assert is_successful(grant(where, UPLOADER, TEST_FOLDERS, read=True, write=True))
    for email in (DOWNLOADER, OTHER_DOWNLOADER):
        assert is_successful(grant(where, email, TEST_FOLDERS, read=True, write=False))


PASSWORD = "correct horse battery staple"

CDN_CONFIG = {
    "endpoint": "http://127.0.0.1:9",
    "bucket": "models",
    "region": "us-east-1",
    "read": {"access_key_id": "READKEY", "secret_access_key": "read-secret-value"},
    "write": {"access_key_id": "WRITEKEY", "secret_access_key": "write-secret-value"},
}

T = TypeVar("T")

FAST_RETRIES = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=4, budget=5.0)


def make_template(directory: Path) -> Path:
    """A data directory with three users and a CDN config (Argon2 runs once per session)."""
    for email, role in (
        (UPLOADER, "uploader"),
        (DOWNLOADER, "downloader"),
        (OTHER_DOWNLOADER, "downloader"),
    ):
        assert is_successful(add_user(directory, email, PASSWORD, role))
    grant_test_accounts(directory)
    assert is_successful(set_cdn_config(directory, CDN_CONFIG))
    return directory


class AppSlot:
    """An ASGI app that forwards every request to whichever app a test has put in it."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            raise RuntimeError("no app in the slot")
        await self.app(scope, receive, send)


@contextmanager
def slot_server() -> Iterator[tuple[RunningServer, AppSlot]]:
    """A uvicorn server on loopback whose app each test swaps in (see ``running_world``)."""
    slot = AppSlot()
    with RunningServer(slot) as server:
        yield server, slot


@attrs.define
class ServerWorld:
    """A fresh reference app over a copy of the template data directory, served on loopback."""

    data_dir: Path
    app: Starlette
    faults: FaultInjector
    server: RunningServer
    server_clock: ServerClock
    clock: FakeClock
    sleep: FakeSleep
    clients: list[HttpResourceApi] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> SqlStore:
        """The app's store (the SQLite file in ``data_dir``)."""
        store: SqlStore = self.app.state.store
        return store

    def signing_key(self) -> bytes:
        """The server's token signing key (to forge tokens in tests)."""
        key: bytes = self.app.state.signing.key
        return key

    @property
    def stats(self) -> ServerStats:
        stats: ServerStats = self.app.state.stats
        return stats

    def client(
        self,
        email: str = UPLOADER,
        password: str = PASSWORD,
        *,
        policy: RetryPolicy = FAST_RETRIES,
        machine: str = "machine-a",
        device_secret: bytes | None = None,
        **kwargs: object,
    ) -> HttpResourceApi:
        """A client of this server on the simulated ``machine``, sharing the world's fake clock
        and sleep."""
        api = HttpResourceApi(
            self.url,
            email,
            password,
            device=DeviceIdentity(password, FixedHardware(machine), device_secret),
            policy=policy,
            clock=self.clock,
            random=FakeRandom(),
            sleep=self.sleep,
            **kwargs,  # type: ignore[arg-type]
        )
        self.clients.append(api)
        return api


@contextmanager
def running_world(
    template: Path,
    tmp_path: Path,
    served: tuple[RunningServer, AppSlot],
    *,
    token_lifetime: float = 900.0,
    **app_options: object,
) -> Iterator[ServerWorld]:
    """Copy the template, put a new app in the slot, close every client at the end;
    ``app_options`` go to ``create_app`` (the device policy, say)."""
    server, slot = served
    data_dir = tmp_path / "server-data"
    shutil.copytree(template, data_dir)
    clock = FakeClock()
    server_clock = ServerClock(clock.wall())
    app = create_app(
        data_dir,
        token_lifetime=token_lifetime,
        now=server_clock,
        **app_options,  # type: ignore[arg-type]
    )
    faults = FaultInjector(app)
    slot.app = faults
    world = ServerWorld(data_dir, app, faults, server, server_clock, clock, FakeSleep(clock))
    try:
        yield world
    finally:
        for api in world.clients:
            api.close()
        slot.app = None
