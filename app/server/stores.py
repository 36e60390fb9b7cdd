"""Opening the server's store: the SQLite file under ``--data`` or PostgreSQL at ``--database-url``.

A data directory written by an older splitvault (``users.json``, ``jwt.key``, ``cdn.yaml``,
``resources/{folder}/{name}.small``, ``keys/{version}.fragment``) is imported into the store the
first time it is opened, in one transaction per item and recorded as done, so a server started
on it keeps its users, tokens, CDN config, small parts and fragments. The old files are left in
place (renaming them is the operator's call once the import is checked).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Final

import yaml
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.postgres_store import PostgresStore
from splitvault.adapters.sqlite_store import SqliteStore
from splitvault.domain.errors import StorageFailed
from splitvault.domain.ports import Account, ResourceVersion, ServerStore, StoreFailure

log = logging.getLogger("splitvault.server.store")

LEGACY_IMPORTED: Final = "legacy_layout_imported"
CDN_SETTING: Final = "cdn_config"
SIGNING_KEY_SETTING: Final = "jwt_signing_key"
LEGACY_PUBLISHER: Final = "imported"


# How many versions of each resource the store keeps (the server and the admin CLI alike, so a
# gc never prunes what the server is configured to keep).
ENV_KEEP_VERSIONS: Final = "SPLITVAULT_KEEP_VERSIONS"
DEFAULT_KEEP_VERSIONS: Final = 3


def kept_versions() -> int:
    """``SPLITVAULT_KEEP_VERSIONS`` (at least 1), else the default of 3."""
    raw = os.environ.get(ENV_KEEP_VERSIONS, "")
    if not raw:
        return DEFAULT_KEEP_VERSIONS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV_KEEP_VERSIONS} must be a whole number of at least 1")
    return int(raw)


def open_store(
    data_dir: Path | None = None,
    database_url: str | None = None,
    *,
    keep_versions: int | None = None,
) -> IOResult[ServerStore, StoreFailure]:
    """PostgreSQL when ``database_url`` is given, else the SQLite store under ``data_dir``;
    keeping ``keep_versions`` versions of each resource (default: ``kept_versions()``)."""
    if keep_versions is None:
        keep_versions = kept_versions()
    if database_url:
        return PostgresStore.open(database_url, keep_versions=keep_versions).map(_as_store)
    if data_dir is None:
        return IOFailure(
            StorageFailed("the server store", "give --data DIR or --database-url", "open")
        )
    return open_data_dir(data_dir, keep_versions=keep_versions)


def _as_store(store: ServerStore) -> ServerStore:
    return store


def open_data_dir(data_dir: Path, *, keep_versions: int = 3) -> IOResult[ServerStore, StoreFailure]:
    """The SQLite store in ``data_dir``, with an old file layout there imported once."""
    opened = SqliteStore.open(data_dir, keep_versions=keep_versions)
    if not is_successful(opened):
        return opened.map(_as_store)
    store = unsafe_perform_io(opened.unwrap())
    if (data_dir / "users.json").exists():
        imported = import_legacy_layout(store, data_dir)
        if not is_successful(imported):
            store.close()
            return imported.map(lambda _: store)
    return IOSuccess(store)


def import_legacy_layout(store: ServerStore, data_dir: Path) -> IOResult[int, StoreFailure]:
    """Copy the old ``users.json``/files layout into ``store`` unless that was done; the count."""
    done = store.get_setting(LEGACY_IMPORTED)
    if not is_successful(done) or unsafe_perform_io(done.unwrap()) is not None:
        return done.map(lambda _: 0)
    try:
        steps = list(_legacy_items(data_dir))
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        return IOFailure(
            StorageFailed(str(data_dir), f"the old layout could not be imported: {exc}", "read")
        )
    for step in steps:
        result = step(store)
        if not is_successful(result):
            return result.map(lambda _: 0)
    log.warning(
        "imported %d items of the old file layout in %s into the store", len(steps), data_dir
    )
    return store.put_setting(LEGACY_IMPORTED, str(time.time()).encode()).map(lambda _: len(steps))


Step = Callable[[ServerStore], IOResult[None, StoreFailure]]


def _legacy_items(data_dir: Path) -> Iterator[Step]:
    users = json.loads((data_dir / "users.json").read_bytes())
    if not isinstance(users, dict):
        raise TypeError("users.json must hold an object")
    for email, entry in users.items():
        # The protocol-1 fingerprint binding is not carried over: a raw fingerprint on the server
        # is half of what a copied-fingerprint attack needs, and protocol 2 binds devices by key.
        account = Account(
            email=str(email),
            role=str(entry["role"]),
            password_hash=str(entry["hash"]),
            salt=secrets.token_bytes(16),
        )
        yield partial(_put_account, account=account)
    key_file = data_dir / "jwt.key"
    if key_file.is_file():
        key = key_file.read_bytes()
        yield partial(_put_setting, name=SIGNING_KEY_SETTING, value=key)
    cdn_file = data_dir / "cdn.yaml"
    if cdn_file.is_file():
        config = yaml.safe_load(cdn_file.read_bytes())
        raw = json.dumps(config).encode()
        yield partial(_put_setting, name=CDN_SETTING, value=raw)
    for small in sorted((data_dir / "resources").glob("*/*.small")):
        data = small.read_bytes()
        version = ResourceVersion(
            folder=small.parent.name,
            name=small.name.removesuffix(".small"),
            version=hashlib.sha256(data).hexdigest()[:32],
            small_part=data,
            publisher=LEGACY_PUBLISHER,
            created_at=small.stat().st_mtime,
        )
        yield partial(_publish, version=version)
    for fragment in sorted((data_dir / "keys").glob("*.fragment")):
        data = fragment.read_bytes()
        name = fragment.name.removesuffix(".fragment")
        yield partial(_put_fragment, version=name, fragment=data)


def _put_account(store: ServerStore, *, account: Account) -> IOResult[None, StoreFailure]:
    return store.put_account(account)


def _put_setting(store: ServerStore, *, name: str, value: bytes) -> IOResult[None, StoreFailure]:
    return store.put_setting(name, value)


def _publish(store: ServerStore, *, version: ResourceVersion) -> IOResult[None, StoreFailure]:
    return store.publish(version)


def _put_fragment(
    store: ServerStore, *, version: str, fragment: bytes
) -> IOResult[None, StoreFailure]:
    # The old layout replaced fragments silently; what is on disk is what archives need.
    return store.put_fragment(version, fragment, replace=True)
