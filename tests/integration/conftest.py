"""Fixtures for integration tests: one moto S3 server per session, a fresh stack per test, and
fault proxies in front of the stack's S3 server and API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.moto_server import MotoS3, moto_s3_fixture
from tests.support.stack import Stack, running_stack, user_template

moto_s3 = moto_s3_fixture()

__all__ = ["api_proxy", "moto_s3", "s3_proxy", "stack", "user_template"]


@pytest.fixture
def stack(moto_s3: MotoS3, user_template: Path, tmp_path: Path) -> Iterator[Stack]:
    """The reference API server and a fresh bucket with IAM read and write keys."""
    with running_stack(moto_s3, user_template, tmp_path) as running:
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
