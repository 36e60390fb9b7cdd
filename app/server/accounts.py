"""Accounts and the CDN config as operators set them: validation, password hashing, one write each.

These are the operations behind ``splitvault admin`` and the Python helpers tests and the demo use
(``add_user``, ``set_cdn_config``, ``reset_binding``). Each takes a ``ServerStore`` or a data
directory (then the embedded SQLite store in it is opened for the call). Passwords are hashed with
Argon2id at the device key's cost and a random salt; hashes and S3 secrets never leave through
a repr, a log line or an exception message.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.app.server.stores import CDN_SETTING, kept_versions, open_data_dir
from splitvault.domain import keys, wire
from splitvault.domain.config import cdn_config_from_mapping, cdn_config_to_mapping
from splitvault.domain.errors import ConfigInvalid, Conflict, NotFound, StorageFailed
from splitvault.domain.ports import ROLES, Account, Device, Grant, ServerStore, StoreFailure

ROLE_UPLOADER: Final = "uploader"
ROLE_DOWNLOADER: Final = "downloader"
ROLE_ADMIN: Final = "admin"
# Who may publish resources, register fragments and see the CDN write keys.
WRITE_ROLES: Final = frozenset({ROLE_UPLOADER, ROLE_ADMIN})
SALT_BYTES: Final = 16


AccountFailure = ConfigInvalid | StorageFailed | Conflict | NotFound

StoreOrDir = ServerStore | Path


@contextlib.contextmanager
def _opened(where: StoreOrDir) -> Iterator[IOResult[ServerStore, StoreFailure]]:
    if not isinstance(where, Path):
        yield IOSuccess(where)
        return
    opened = open_data_dir(where, keep_versions=kept_versions())
    try:
        yield opened
    finally:
        if is_successful(opened):
            unsafe_perform_io(opened.unwrap()).close()


def canonical_email(email: str) -> str:
    """The key a user is stored under: NFKC, trimmed, case-folded (so each user is one account)."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def _normalised_password(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode()


def hash_password(password: str) -> str:
    """An Argon2id PHC string with the password key's cost parameters and a random salt."""
    kdf = Argon2id(
        salt=secrets.token_bytes(16),
        length=keys.KEY_BYTES,
        iterations=keys.ARGON2_ITERATIONS,
        lanes=keys.ARGON2_LANES,
        memory_cost=keys.ARGON2_MEMORY_KIB,
    )
    return kdf.derive_phc_encoded(_normalised_password(password))


def verify_password(password: str, phc: str) -> bool:
    """Whether ``password`` matches the PHC string (constant-time inside ``cryptography``)."""
    try:
        Argon2id.verify_phc_encoded(_normalised_password(password), phc)
    except InvalidKey:
        return False
    return True


def check_email(email: str) -> ConfigInvalid | None:
    """Why ``email`` (canonical) cannot name an account, or ``None``."""
    if not email or len(email) > wire.MAX_EMAIL_CHARS or "@" not in email:
        return ConfigInvalid("email", "expected an e-mail address like name@example.com")
    if any(unicodedata.category(char).startswith("C") for char in email):
        return ConfigInvalid("email", "must not contain control characters")
    return None


def check_password(password: str) -> ConfigInvalid | None:
    """Why ``password`` cannot be used, or ``None``."""
    if not password or len(password) > wire.MAX_PASSWORD_CHARS:
        return ConfigInvalid("password", f"must be 1 to {wire.MAX_PASSWORD_CHARS} characters")
    return None


def add_user(
    where: StoreOrDir, email: str, password: str, role: str
) -> IOResult[None, AccountFailure]:
    """Create a user, or replace its password and role (its hardware binding is kept).

    Replacing the password of an existing account ends its sessions (the generation is bumped)
    and revokes its devices: their keys were derived from the old password, so the machine
    enrols afresh (as the account's first device) at its next login.
    Fails with ``ConfigInvalid`` naming the field for a bad e-mail, empty password or unknown
    role, and ``StorageFailed`` when the store cannot be written.
    """
    canonical = canonical_email(email)
    problem = check_email(canonical) or check_password(password)
    if problem is not None:
        return IOFailure(problem)
    if role not in ROLES:
        return IOFailure(ConfigInvalid("role", f"expected one of {list(ROLES)}, got {role!r}"))
    password_hash = hash_password(password)
    with _opened(where) as opened:
        return opened.bind(lambda store: _put_user(store, canonical, password_hash, role))


def _put_user(
    store: ServerStore, email: str, password_hash: str, role: str
) -> IOResult[None, StoreFailure]:
    def replace(previous: Account | None) -> IOResult[None, StoreFailure]:
        if previous is None:
            fresh = Account(email, role, password_hash, secrets.token_bytes(SALT_BYTES))
            return store.put_account(fresh)
        changed = attrs.evolve(
            previous,
            role=role,
            password_hash=password_hash,
            generation=previous.generation + 1,
        )
        return store.put_account(changed).bind(
            lambda _: _revoke_devices(store, email).map(lambda _revoked: None)
        )

    return store.get_account(email).bind(replace)


def grant(
    where: StoreOrDir, email: str, folders: Iterable[str], *, read: bool, write: bool
) -> IOResult[None, AccountFailure]:
    """Give the account ``read`` and/or ``write`` on each folder (replacing its grant there).

    Access is denied by default; this is how the demo, the test stacks and an operator's script
    grant explicitly (the admin CLI's ``grants add`` is the same write).
    """
    canonical = canonical_email(email)
    chosen = tuple(folders)

    def put_all(store: ServerStore) -> IOResult[None, StoreFailure]:
        for folder in chosen:
            done = store.put_grant(Grant(canonical, folder, read=read, write=write))
            if not is_successful(done):
                return done
        return IOSuccess(None)

    with _opened(where) as opened:
        return opened.bind(put_all)


def change_password(where: StoreOrDir, email: str, password: str) -> IOResult[None, AccountFailure]:
    """Set a new password for an existing account; its sessions end and its devices are revoked
    (their keys came from the old password; the machine enrols afresh). ``NotFound`` without
    it."""
    canonical = canonical_email(email)
    problem = check_password(password)
    if problem is not None:
        return IOFailure(problem)
    password_hash = hash_password(password)
    with _opened(where) as opened:

        def replace(store: ServerStore) -> IOResult[None, StoreFailure]:
            def put(previous: Account | None) -> IOResult[None, StoreFailure]:
                if previous is None:
                    return IOFailure(NotFound(f"the account {canonical}"))
                return store.put_account(
                    attrs.evolve(
                        previous,
                        password_hash=password_hash,
                        generation=previous.generation + 1,
                    )
                ).bind(lambda _: _revoke_devices(store, canonical).map(lambda _revoked: None))

            return store.get_account(canonical).bind(put)

        return opened.bind(replace)


def reset_binding(where: StoreOrDir, email: str) -> IOResult[bool, StoreFailure]:
    """Revoke every enrolled device of a user (ending its sessions), so that the next device to
    enrol is the account's first and is let in; ``True`` when one was enrolled, ``False`` when
    none was or the account does not exist. (A revoked device comes back only through
    ``splitvault admin devices approve``.)"""
    canonical = canonical_email(email)
    with _opened(where) as opened:
        return opened.bind(lambda store: _revoke_devices(store, canonical))


def _revoke_devices(store: ServerStore, email: str) -> IOResult[bool, StoreFailure]:
    """Revoke every live device of ``email`` (each revocation bumps the generation); ``True``
    when there was one."""

    def revoke(devices: tuple[Device, ...]) -> IOResult[bool, StoreFailure]:
        live = [d for d in devices if d.status != "revoked"]
        for device in live:
            revoked = store.set_device_status(device.device_id, "revoked")
            if not is_successful(revoked):
                return revoked.map(lambda _: False)
        return IOSuccess(bool(live))

    return store.list_devices(email).bind(revoke)


# --- the CDN config ----------------------------------------------------------------------------


def cdn_config_from(mapping: Mapping[str, Any]) -> IOResult[dict[str, Any], ConfigInvalid]:
    """Our canonical CDN mapping from either our fields or the original ``cdn.yaml`` fields.

    One parser for both sides: ``domain.config.cdn_config_from_mapping`` (the original's ``host``,
    ``downloader_*``, ``uploader_*``, with an optional ``bucket``; without one, a bucket per
    folder). Fails with ``ConfigInvalid`` naming the first bad field, never repeating a value.
    """
    parsed = cdn_config_from_mapping(mapping).map(
        lambda config: cdn_config_to_mapping(config, include_write=True)
    )
    return IOResult.from_result(parsed)


def set_cdn_config(
    where: StoreOrDir, mapping: Mapping[str, Any]
) -> IOResult[None, ConfigInvalid | StorageFailed | Conflict | NotFound]:
    """Store the CDN config served as ``config/cdn.yaml`` (either field set, see
    ``cdn_config_from``). Fails with ``ConfigInvalid`` naming the first bad field, or
    ``StorageFailed`` when the store cannot be written."""
    checked = cdn_config_from(mapping)
    if not is_successful(checked):
        return checked.map(lambda _: None)
    config = unsafe_perform_io(checked.unwrap())
    with _opened(where) as opened:
        return opened.bind(
            lambda store: store.put_setting(CDN_SETTING, json.dumps(config).encode())
        )


def cdn_config(store: ServerStore) -> IOResult[dict[str, Any] | None, StoreFailure]:
    """The stored CDN config, or ``None``."""

    def parse(raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        loaded = json.loads(raw)
        return loaded if isinstance(loaded, dict) else None

    return store.get_setting(CDN_SETTING).map(parse)
