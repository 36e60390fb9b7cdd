"""Fixtures for the security suite: the shared stack, plus a module-wide one for read-only attacks.

``stack`` (a fresh reference server and bucket per test) and ``moto_s3``/``user_template`` come
from the integration suite. ``shared_stack`` is one stack per module, for attacks that must change
nothing: each such test checks that it did not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import moto_s3, stack, user_template
from tests.support.moto_server import MotoS3
from tests.support.stack import Stack, running_stack

__all__ = ["moto_s3", "shared_stack", "stack", "user_template"]


@pytest.fixture(scope="module")
def shared_stack(
    moto_s3: MotoS3, user_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One reference server and bucket for a whole module (tests must leave it as they found it)."""
    with running_stack(moto_s3, user_template, tmp_path_factory.mktemp("shared-stack")) as running:
        yield running
