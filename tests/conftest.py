"""The one conftest: fixtures shared by every suite, built on real parts.

- ``moto_s3``: one moto S3 server on 127.0.0.1 per session;
- contract suites: ``cdn`` is parametrised over the S3 adapter (on that moto server) and the
  directory adapter, ``cache`` over the file-system cache; a new adapter joins a suite by adding
  a parameter; ``store`` runs over SQLite and a real PostgreSQL (``postgres_cluster``, one private
  cluster per session);
- integration and security: ``stack`` (the reference API server and a fresh bucket with IAM read
  and write keys, per test), ``shared_stack`` (one per module, for attacks that must change
  nothing), and fault proxies in front of the S3 server and the API server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.directory_cdn import DirectoryCdn
from splitvault.adapters.file_cache import FileCache
from splitvault.adapters.postgres_store import PostgresStore
from splitvault.adapters.s3_cdn import S3Cdn
from splitvault.adapters.sql_store import SqlStore
from splitvault.adapters.sqlite_store import SqliteStore
from tests.support.fault_proxy import FaultProxy
from tests.support.moto_server import ADMIN_KEYS, SMALL_PARTS, MotoS3, moto_s3_fixture
from tests.support.postgres import PostgresCluster, postgres_cluster_fixture
from tests.support.stack import Stack, running_stack, user_template

moto_s3 = moto_s3_fixture()
postgres_cluster = postgres_cluster_fixture()

__all__ = ["moto_s3", "postgres_cluster", "user_template"]


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> str:
    """A fresh, empty bucket on the moto server."""
    return moto_s3.create_bucket()


@pytest.fixture
def s3_cdn(moto_s3: MotoS3, s3_bucket: str) -> Iterator[S3Cdn]:
    """An S3 writer on the moto server (IAM not enforced), tuned to 5 MiB parts."""
    cdn = S3Cdn.writer(
        moto_s3.endpoint_url, s3_bucket, ADMIN_KEYS, region=moto_s3.region, tuning=SMALL_PARTS
    )
    yield cdn
    cdn.close()


@pytest.fixture(params=["s3", "directory"])
def cdn(request: pytest.FixtureRequest, tmp_path: Path) -> S3Cdn | DirectoryCdn:
    """Each Cdn adapter in turn, able to read and write."""
    if request.param == "s3":
        s3: S3Cdn = request.getfixturevalue("s3_cdn")
        return s3
    return DirectoryCdn(tmp_path / "cdn-root")


@pytest.fixture(params=["file"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> FileCache:
    """Each Cache adapter in turn, on an empty root."""
    assert request.param == "file"
    return unsafe_perform_io(FileCache.open(tmp_path / "cache").unwrap())


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """Each server store adapter in turn, empty and migrated (PostgreSQL: a fresh database)."""
    opened: SqlStore
    if request.param == "sqlite":
        opened = unsafe_perform_io(SqliteStore.open(tmp_path / "store").unwrap())
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        opened = unsafe_perform_io(PostgresStore.open(cluster.new_database()).unwrap())
    yield opened
    opened.close()


@pytest.fixture
def stack(moto_s3: MotoS3, user_template: Path, tmp_path: Path) -> Iterator[Stack]:
    """The reference API server and a fresh bucket with IAM read and write keys."""
    with running_stack(moto_s3, user_template, tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def shared_stack(
    moto_s3: MotoS3, user_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One reference server and bucket for a whole module (tests must leave it as they found it)."""
    with running_stack(moto_s3, user_template, tmp_path_factory.mktemp("shared-stack")) as running:
        yield running


@pytest.fixture
def s3_proxy(stack: Stack) -> Iterator[FaultProxy]:
    """A fault proxy in front of the moto server; the stack's ``cdn.yaml`` points at it."""
    port = urlsplit(stack.moto.endpoint_url).port
    assert port is not None
    with FaultProxy(port) as proxy:
        stack.point_cdn_at(proxy.url)
        yield proxy


@pytest.fixture
def api_proxy(stack: Stack) -> Iterator[FaultProxy]:
    """A fault proxy in front of the reference API server (pass ``api_url=proxy.url``)."""
    with FaultProxy(stack.server.port) as proxy:
        yield proxy
