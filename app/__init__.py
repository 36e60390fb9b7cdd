"""Use cases, the seed-compatible facade, the reference API server and the CLI.

``app.ApiClient`` and friends are loaded on first use so that importing a submodule (the CLI, the
server) does not pull in boto3 and httpx.
"""

from __future__ import annotations

from typing import Any

_FACADE = ("ApiClient", "ApiCredentials", "CDNCredentials", "CDNManager")


def __getattr__(name: str) -> Any:
    if name in _FACADE:
        from app import facade  # noqa: PLC0415 - deferred on purpose

        return getattr(facade, name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
