"""Pytest fixtures for tests that talk to the reference API server directly.

One uvicorn server per test module (``served``) serves a fresh app per test (``world``) over a copy
of the session's user template; ``http`` is a raw httpx client of it. Test modules import the
fixtures they use from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from splitvault.app.server.runner import RunningServer
from tests.support.server_world import AppSlot, ServerWorld, running_world, slot_server
from tests.support.stack import user_template

__all__ = ["http", "served", "user_template", "world"]


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
