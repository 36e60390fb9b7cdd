"""splitvault: distribute valuable files so that no single place holds a usable copy.

This folder (``app/compat/`` in the repository) is installed as the top of the package, so the
original client's module names are ours: ``splitvault.api_client`` (``ApiClient``,
``ApiCredentials``), ``splitvault.cdn_manager`` (``CDNManager``, ``CDNCredentials``) and
``splitvault.binary_split``. Under them live ``splitvault.domain`` (the pure core),
``splitvault.adapters`` (one module per technology) and ``splitvault.app`` (client, server, CLI,
tools). The compat room may import ``splitvault.app.client`` and below, never the server or CLI.

The public names below load on first use, so ``import splitvault`` (and the CLI's ``--help``)
does not pull in boto3, httpx or cryptography.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitvault.api_client import ApiClient, ApiCredentials
    from splitvault.app.client.errors import (
        AuthError,
        ConfigError,
        EngineError,
        HardwareMismatchError,
        IntegrityError,
        InvalidNameError,
        NetworkError,
        NotFoundError,
        SplitvaultError,
        StorageError,
        UntrustedPublisherError,
    )
    from splitvault.cdn_manager import CDNCredentials, CDNManager

__all__ = [
    "ApiClient",
    "ApiCredentials",
    "AuthError",
    "CDNCredentials",
    "CDNManager",
    "ConfigError",
    "EngineError",
    "HardwareMismatchError",
    "IntegrityError",
    "InvalidNameError",
    "NetworkError",
    "NotFoundError",
    "SplitvaultError",
    "StorageError",
    "UntrustedPublisherError",
]

_HOME = {
    "ApiClient": "splitvault.api_client",
    "ApiCredentials": "splitvault.api_client",
    "CDNCredentials": "splitvault.cdn_manager",
    "CDNManager": "splitvault.cdn_manager",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    if name in __all__:
        return getattr(importlib.import_module("splitvault.app.client.errors"), name)
    raise AttributeError(f"module 'splitvault' has no attribute {name!r}")
