"""Fixtures for integration tests: one moto S3 server per session, a fresh stack per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.moto_server import MotoS3, moto_s3_fixture
from tests.support.stack import Stack, running_stack, user_template

moto_s3 = moto_s3_fixture()

__all__ = ["moto_s3", "stack", "user_template"]


@pytest.fixture
def stack(moto_s3: MotoS3, user_template: Path, tmp_path: Path) -> Iterator[Stack]:
    """The reference API server and a fresh bucket with IAM read and write keys."""
    with running_stack(moto_s3, user_template, tmp_path) as running:
        yield running
