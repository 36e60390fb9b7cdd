"""The whole product on loopback for integration tests: reference API server + moto S3 server.

``Stack`` holds a moto S3 server (shared per session) with a fresh bucket and real IAM users for
the read and write keys, a reference API server over a fresh copy of a user template (Argon2 runs
once per session), behind its fault switch, and a factory for clients built through the real
composition root with a fixed hardware fingerprint per simulated machine.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io
from starlette.applications import Starlette

from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.adapters.http_api import HttpResourceApi
from splitvault.adapters.sql_store import SqlStore
from splitvault.adapters.system import SystemClock, SystemRandom
from splitvault.app.client.bootstrap import Client, DeviceIdentity, bootstrap
from splitvault.app.client.usecases import DownloadReport, UploadReport
from splitvault.app.server.api import create_app, set_cdn_config
from splitvault.app.server.routes import version_of
from splitvault.app.server.runner import RunningServer
from splitvault.domain.config import ClientConfig, S3Keys
from splitvault.domain.errors import Problem
from splitvault.domain.ports import ResourceVersion
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy
from tests.support.faults import FaultInjector
from tests.support.moto_server import MotoS3
from tests.support.results import value
from tests.support.server_world import (
    DOWNLOADER,
    OTHER_DOWNLOADER,
    PASSWORD,
    UPLOADER,
    make_template,
)

__all__ = [
    "DOWNLOADER",
    "OTHER_DOWNLOADER",
    "PASSWORD",
    "UPLOADER",
    "Stack",
    "running_stack",
    "write_model",
]

QUICK_RETRIES = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=4, budget=5.0)


@attrs.define
class Stack:
    """A running reference server and S3 bucket, and a way to make clients of them."""

    moto: MotoS3
    bucket: str
    read_keys: S3Keys
    write_keys: S3Keys
    data_dir: Path
    app: Starlette
    faults: FaultInjector
    server: RunningServer
    root: Path
    clients: list[Client] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(
        self,
        email: str,
        *,
        machine: str = "machine-a",
        cache: Path | None = None,
        password: str = PASSWORD,
        policy: RetryPolicy = QUICK_RETRIES,
        sleep: Callable[[float], None] | None = None,
        api_url: str | None = None,
        read_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        signing_key_file: Path | None = None,
        pinned: tuple[bytes, ...] = (),
        device_secret: bytes | None = None,
    ) -> Client:
        """A client for ``email`` on the simulated ``machine`` with its own cache.

        ``policy`` drives both the API's and the CDN's retries; ``api_url`` replaces the server's
        URL (a fault proxy in front of it); the timeouts apply to the API and the CDN;
        ``device_secret`` is mixed into the device key as ``device_secret_file`` would.
        """
        cache_dir = cache or self.root / f"cache-{email.split('@', maxsplit=1)[0]}-{machine}"
        url = api_url or self.url
        config = ClientConfig(
            cache_dir=cache_dir,
            api_url=url,
            email=email,
            password=password,
            read_timeout=read_timeout,
            connect_timeout=connect_timeout,
            publisher_signing_key_file=signing_key_file,
            publisher_keys=pinned,
        )
        the_sleep = sleep or (lambda _seconds: None)
        hardware = FixedHardware(machine)
        identity = DeviceIdentity(password, hardware, device_secret)
        api = HttpResourceApi(
            url,
            email,
            password,
            device=identity,
            timeout=read_timeout,
            connect_timeout=connect_timeout,
            policy=policy,
            clock=SystemClock(),
            random=SystemRandom(),
            sleep=the_sleep,
        )
        built = bootstrap(
            config,
            api=api,
            hardware=hardware,
            sleeper=the_sleep,
            retry_policy=policy,
            identity=identity,
        )
        assert is_successful(built), built
        client: Client = unsafe_perform_io(built.unwrap())
        self.clients.append(client)
        return client

    def point_cdn_at(self, endpoint: str) -> None:
        """Serve a ``cdn.yaml`` whose endpoint is ``endpoint`` (a fault proxy in front of S3).

        Clients built afterwards reach the bucket through it; the keys stay the same.
        """
        stored = set_cdn_config(
            self.data_dir,
            {
                "endpoint": endpoint,
                "bucket": self.bucket,
                "region": self.moto.region,
                "read": attrs.asdict(self.read_keys),
                "write": attrs.asdict(self.write_keys),
            },
        )
        assert is_successful(stored), stored

    @property
    def store(self) -> SqlStore:
        """The server's store (the SQLite file in ``data_dir``)."""
        store: SqlStore = self.app.state.store
        return store

    def has_small_part(self, ref: ResourceRef) -> bool:
        """Whether the server has a current small part for ``ref`` (an upload committed)."""
        return value(self.store.current(ref.folder, ref.name)) is not None

    def small_part(self, ref: ResourceRef) -> bytes:
        """The small part the server would hand out for ``ref`` (fails the test without one)."""
        current = value(self.store.current(ref.folder, ref.name))
        assert current is not None, f"no small part for {ref}"
        return current.small_part

    def big_key(self, ref: ResourceRef) -> str:
        """The object key of the current version's big part (the key names the version)."""
        return ref.at(version_of(self.small_part(ref))).key

    def fragment(self, version: str) -> bytes | None:
        """The key fragment the server holds for ``version``, or ``None``."""
        return value(self.store.get_fragment(version))

    def put_small_part(self, ref: ResourceRef, small_part: bytes) -> None:
        """Make ``small_part`` current for ``ref``, behind the API's back (an attacker's write)."""
        version = ResourceVersion(
            ref.folder, ref.name, version_of(small_part), small_part, "planted", time.time()
        )
        value(self.store.publish(version))

    def signing_key(self) -> bytes:
        """The server's token signing key (to forge tokens in attacks)."""
        key: bytes = self.app.state.signing.key
        return key


def upload(client: Client, ref: ResourceRef, source: Path) -> IOResult[UploadReport, Problem]:
    """Upload through the client's use case (write-capable CDN)."""
    return client.upload(ref, source)


def download(client: Client, ref: ResourceRef, out: Path) -> IOResult[DownloadReport, Problem]:
    """Download through the client's use case (read-only CDN)."""
    return client.download(ref, out)


@pytest.fixture(scope="session")
def user_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server data directory with an uploader and two downloaders (Argon2 runs once)."""
    return make_template(tmp_path_factory.mktemp("users-template"))


@contextmanager
def running_stack(
    moto: MotoS3, template: Path, root: Path, *, token_lifetime: float = 900.0
) -> Iterator[Stack]:
    """A fresh bucket with IAM read/write keys and a fresh reference server over ``template``."""
    bucket = moto.create_bucket()
    read_keys = moto.create_keys("reader", ["s3:GetObject", "s3:ListBucket"], bucket)
    write_keys = moto.create_keys(
        "writer",
        [
            "s3:GetObject",
            "s3:PutObject",
            "s3:ListBucket",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
            "s3:ListBucketMultipartUploads",  # the next upload aborts a killed one's parts
        ],
        bucket,
    )
    data_dir = root / "server-data"
    shutil.copytree(template, data_dir)
    stored = set_cdn_config(
        data_dir,
        {
            "endpoint": moto.endpoint_url,
            "bucket": bucket,
            "region": moto.region,
            "read": attrs.asdict(read_keys),
            "write": attrs.asdict(write_keys),
        },
    )
    assert is_successful(stored), stored
    app = create_app(data_dir, token_lifetime=token_lifetime)
    faults = FaultInjector(app)
    with RunningServer(faults) as server:
        stack = Stack(moto, bucket, read_keys, write_keys, data_dir, app, faults, server, root)
        try:
            yield stack
        finally:
            for client in stack.clients:
                client.close()


def write_model(path: Path, size: int, seed: int = 0) -> bytes:
    """Write ``size`` pseudo-random bytes (fast, reproducible from ``seed``) and return them."""
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data
