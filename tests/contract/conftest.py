"""Fixtures for the contract suites: every adapter of a port, built on real parts.

``cdn`` is parametrised over the S3 adapter (on a moto server on 127.0.0.1) and the directory
adapter; ``cache`` over the file-system cache. A new adapter joins a suite by adding a parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.directory_cdn import DirectoryCdn
from splitvault.adapters.file_cache import FileCache
from splitvault.adapters.s3_cdn import MIB, S3Cdn, S3Tuning
from tests.support.moto_server import ADMIN_KEYS, MotoS3, moto_s3_fixture

moto_s3 = moto_s3_fixture()

# The smallest parts S3 allows, so "more than two parts" stays a ~11 MiB object.
SMALL_PARTS = S3Tuning(
    multipart_threshold=5 * MIB,
    multipart_chunksize=5 * MIB,
    max_concurrency=4,
    connect_timeout=5.0,
    read_timeout=30.0,
    max_attempts=2,
)


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
