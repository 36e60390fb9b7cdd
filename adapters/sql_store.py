"""The server store over SQL: one implementation of ``ServerStore`` for SQLite and PostgreSQL.

``SqliteStore`` and ``PostgresStore`` differ in how they connect, how a write transaction is
opened and a few column types; every query is written once here, in the SQL both speak
(``INSERT … ON CONFLICT``, ``?`` placeholders that the PostgreSQL backend rewrites). Each public
method is one transaction, so a process killed at any instant leaves the store as it was before or
after that method, never between. The schema version lives in the store; opening it migrates
forward and refuses a schema newer than this code.
"""

# ruff: noqa: S608 - the only f-string parts are the column lists below; values are parameters
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.domain.errors import Conflict, NotFound, StorageFailed
from splitvault.domain.ports import (
    DEVICE_STATUSES,
    Account,
    Device,
    Grant,
    Publisher,
    ResourceVersion,
    StoredFragment,
    StoreFailure,
)

log = logging.getLogger("splitvault.store")

T = TypeVar("T")

DEFAULT_KEEP_VERSIONS: Final = 3

Row = Sequence[Any]


class Cursor(Protocol):
    """What both drivers' cursors offer (and all this module uses)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


class Backend(Protocol):
    """A driver: transactions, the column types of its dialect, the exceptions it raises."""

    errors: tuple[type[Exception], ...]
    types: dict[str, str]

    def transaction(self, *, write: bool) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor inside one transaction, committed on a clean exit and rolled back otherwise."""
        ...

    def lock_schema(self, cursor: Cursor) -> None:
        """Serialise migrations of several processes opening the store at once."""
        ...

    def close(self) -> None:
        """Release every connection."""
        ...


# Each entry takes the store from version i to i + 1. Never edit a released entry: add one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE accounts (
            email TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            salt {blob} NOT NULL,
            generation BIGINT NOT NULL DEFAULT 0,
            fingerprint TEXT
        )""",
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            email TEXT NOT NULL,
            public_key {blob} NOT NULL,
            fingerprint_hash {blob} NOT NULL,
            status TEXT NOT NULL,
            created_at {real} NOT NULL
        )""",
        "CREATE INDEX devices_by_email ON devices (email)",
        """CREATE TABLE grants (
            email TEXT NOT NULL,
            folder TEXT NOT NULL,
            can_read INTEGER NOT NULL,
            can_write INTEGER NOT NULL,
            PRIMARY KEY (email, folder)
        )""",
        """CREATE TABLE resource_versions (
            seq {serial},
            folder TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            small_part {blob} NOT NULL,
            publisher TEXT NOT NULL,
            created_at {real} NOT NULL,
            UNIQUE (folder, name, version)
        )""",
        """CREATE TABLE resources (
            folder TEXT NOT NULL,
            name TEXT NOT NULL,
            current_seq BIGINT NOT NULL,
            PRIMARY KEY (folder, name)
        )""",
        # seq orders registrations: the original's download_key_fragment(url, token) asks for the
        # latest registered fragment, not the greatest version string.
        """CREATE TABLE fragments (
            seq {serial},
            version TEXT NOT NULL UNIQUE,
            fragment {blob} NOT NULL
        )""",
        "CREATE TABLE settings (name TEXT PRIMARY KEY, value {blob} NOT NULL)",
        """CREATE TABLE login_failures (
            id {serial},
            throttle_key TEXT NOT NULL,
            at {real} NOT NULL
        )""",
        "CREATE INDEX login_failures_by_key ON login_failures (throttle_key, at)",
        "CREATE INDEX login_failures_by_time ON login_failures (at)",
    ),
    # 2: no hardware fingerprint is kept on the server any more (protocol 2 binds a device by
    # its enrolled key); scrub the values a protocol-1 import copied from users.json.
    ("UPDATE accounts SET fingerprint = NULL",),
    # 3: publisher keys get a table of their own (they were settings named
    # "publisher-key:<e-mail>", which an operator could not list or re-key), and each fragment
    # records who registered it under which key, so the server vouches per version and a
    # re-keyed publisher's earlier versions keep the key they were signed with.
    (
        """CREATE TABLE publishers (
            email TEXT PRIMARY KEY,
            public_key {blob} NOT NULL,
            recorded_at {real} NOT NULL
        )""",
        # No LIKE: a '%' would be a placeholder to the PostgreSQL driver.
        "INSERT INTO publishers (email, public_key, recorded_at) "
        "SELECT SUBSTR(name, 15), value, 0 FROM settings "
        "WHERE SUBSTR(name, 1, 14) = 'publisher-key:'",
        "DELETE FROM settings WHERE SUBSTR(name, 1, 14) = 'publisher-key:'",
        "ALTER TABLE fragments ADD COLUMN publisher TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE fragments ADD COLUMN publisher_key {blob}",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_ACCOUNT_COLUMNS = "email, role, password_hash, salt, generation"
_DEVICE_COLUMNS = "device_id, email, public_key, fingerprint_hash, status, created_at"
_VERSION_COLUMNS = "v.folder, v.name, v.version, v.small_part, v.publisher, v.created_at"
_FRAGMENT_COLUMNS = "version, fragment, publisher, publisher_key"


def _account(row: Row) -> Account:
    return Account(
        email=row[0],
        role=row[1],
        password_hash=row[2],
        salt=bytes(row[3]),
        generation=int(row[4]),
    )


def _device(row: Row) -> Device:
    return Device(
        device_id=row[0],
        email=row[1],
        public_key=bytes(row[2]),
        fingerprint_hash=bytes(row[3]),
        status=row[4],
        created_at=float(row[5]),
    )


def _fragment(row: Row) -> StoredFragment:
    return StoredFragment(
        version=str(row[0]),
        fragment=bytes(row[1]),
        publisher=str(row[2]),
        publisher_key=None if row[3] is None else bytes(row[3]),
    )


def _version(row: Row) -> ResourceVersion:
    return ResourceVersion(
        folder=row[0],
        name=row[1],
        version=row[2],
        small_part=bytes(row[3]),
        publisher=row[4],
        created_at=float(row[5]),
    )


class SqlStore:
    """``ServerStore`` over a ``Backend``; build it through ``SqliteStore`` or ``PostgresStore``.

    Args:
        backend: the driver.
        where: how the store is named in errors (never with a password).
        keep_versions: how many versions of each resource are kept.

    Every method returns ``StorageFailed`` when the database fails (its message names the store
    and the driver's reason), ``Conflict`` for write-once violations, ``NotFound`` where it says.
    """

    # The schema steps this code knows; a subclass in a test may add one.
    migrations: tuple[tuple[str, ...], ...] = MIGRATIONS

    def __init__(self, backend: Backend, where: str, *, keep_versions: int) -> None:
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1")
        self._backend = backend
        self._where = where
        self._keep = keep_versions

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r})"

    @property
    def where(self) -> str:
        """The store's name in messages (a path, or a URL without its password)."""
        return self._where

    # -- plumbing --

    def _run(self, write: bool, work: Callable[[Cursor], T]) -> IOResult[T, StoreFailure]:
        try:
            with self._backend.transaction(write=write) as cursor:
                return IOSuccess(work(cursor))
        except _Refused as refused:
            return IOFailure(refused.failure)
        except self._backend.errors as exc:
            detail = f"{type(exc).__name__}: {exc}".strip()
            action = "write to" if write else "read from"
            return IOFailure(StorageFailed(f"the store at {self._where}", detail, action))

    def migrate(self) -> IOResult[int, StoreFailure]:
        """Bring the schema to this code's version (returns the version found); a newer schema
        is a ``Conflict``. All steps run in one transaction: a crash leaves the old schema."""
        latest = len(self.migrations)

        def work(cursor: Cursor) -> int:
            self._backend.lock_schema(cursor)
            cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            cursor.execute("SELECT version FROM schema_version")
            row = cursor.fetchone()
            current = int(row[0]) if row else 0
            if current > latest:
                raise _Refused(
                    Conflict(
                        f"the store at {self._where}",
                        f"its schema version {current} is newer than this splitvault's "
                        f"({latest}); upgrade splitvault, or point it at another store",
                    )
                )
            for step in self.migrations[current:]:
                for statement in step:
                    cursor.execute(statement.format(**self._backend.types))
            if row is None:
                cursor.execute("INSERT INTO schema_version (version) VALUES (?)", (latest,))
            elif current != latest:
                cursor.execute("UPDATE schema_version SET version = ?", (latest,))
            if current != latest:
                log.info("store schema migrated from version %d to %d", current, latest)
            return current

        return self._run(True, work)

    def ping(self) -> IOResult[int, StoreFailure]:
        def work(cursor: Cursor) -> int:
            cursor.execute("SELECT version FROM schema_version")
            row = cursor.fetchone()
            return int(row[0]) if row else 0

        return self._run(False, work)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- accounts and sessions --

    def get_account(self, email: str) -> IOResult[Account | None, StoreFailure]:
        def work(cursor: Cursor) -> Account | None:
            cursor.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE email = ?", (email,))
            row = cursor.fetchone()
            return _account(row) if row else None

        return self._run(False, work)

    def put_account(self, account: Account) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            cursor.execute(
                f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (email) DO UPDATE SET role = excluded.role, "
                "password_hash = excluded.password_hash, salt = excluded.salt, "
                "generation = excluded.generation",
                (
                    account.email,
                    account.role,
                    account.password_hash,
                    account.salt,
                    account.generation,
                ),
            )

        return self._run(True, work)

    def remove_account(self, email: str) -> IOResult[bool, StoreFailure]:
        def work(cursor: Cursor) -> bool:
            cursor.execute("DELETE FROM grants WHERE email = ?", (email,))
            cursor.execute("DELETE FROM devices WHERE email = ?", (email,))
            cursor.execute("DELETE FROM publishers WHERE email = ?", (email,))
            cursor.execute("DELETE FROM accounts WHERE email = ?", (email,))
            return cursor.rowcount > 0

        return self._run(True, work)

    def list_accounts(self) -> IOResult[tuple[Account, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[Account, ...]:
            cursor.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY email")
            return tuple(_account(row) for row in cursor.fetchall())

        return self._run(False, work)

    def bump_generation(self, email: str) -> IOResult[int, StoreFailure]:
        def work(cursor: Cursor) -> int:
            return _bump(cursor, email)

        return self._run(True, work)

    # -- devices and grants --

    def put_device(
        self, device: Device, *, active_limit: int | None = None
    ) -> IOResult[bool, StoreFailure]:
        def work(cursor: Cursor) -> bool:
            _check_status(device.status)
            if active_limit is not None and device.status == "active":
                # A no-op update locks the account's row (PostgreSQL; SQLite's BEGIN IMMEDIATE
                # already holds its only write lock), so concurrent enrolments of one account
                # count one after the other.
                cursor.execute(
                    "UPDATE accounts SET generation = generation WHERE email = ?", (device.email,)
                )
                # The same device enrolled meanwhile (a concurrent login of this machine) is a
                # Conflict, as below, never a refusal by the limit it would count towards.
                cursor.execute("SELECT 1 FROM devices WHERE device_id = ?", (device.device_id,))
                if cursor.fetchone() is not None:
                    raise _Refused(Conflict(f"device {device.device_id}", "it is already enrolled"))
                cursor.execute(
                    "SELECT COUNT(*) FROM devices WHERE email = ? AND status = 'active'",
                    (device.email,),
                )
                if int(cursor.fetchone()[0]) >= active_limit:
                    return False
            cursor.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO NOTHING",
                (
                    device.device_id,
                    device.email,
                    device.public_key,
                    device.fingerprint_hash,
                    device.status,
                    device.created_at,
                ),
            )
            if cursor.rowcount == 0:
                raise _Refused(Conflict(f"device {device.device_id}", "it is already enrolled"))
            return True

        return self._run(True, work)

    def list_devices(self, email: str | None = None) -> IOResult[tuple[Device, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[Device, ...]:
            if email is None:
                cursor.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY email, created_at")
            else:
                cursor.execute(
                    f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE email = ? ORDER BY created_at",
                    (email,),
                )
            return tuple(_device(row) for row in cursor.fetchall())

        return self._run(False, work)

    def set_device_status(self, device_id: str, status: str) -> IOResult[Device, StoreFailure]:
        def work(cursor: Cursor) -> Device:
            _check_status(status)
            cursor.execute("UPDATE devices SET status = ? WHERE device_id = ?", (status, device_id))
            cursor.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)
            )
            row = cursor.fetchone()
            if row is None:
                raise _Refused(NotFound(f"device {device_id}"))
            device = _device(row)
            if status == "revoked":
                # In the same transaction: no token of the account outlives the revocation.
                _bump(cursor, device.email)
            return device

        return self._run(True, work)

    def put_grant(self, grant: Grant) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            cursor.execute(
                "INSERT INTO grants (email, folder, can_read, can_write) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (email, folder) DO UPDATE SET can_read = excluded.can_read, "
                "can_write = excluded.can_write",
                (grant.email, grant.folder, int(grant.read), int(grant.write)),
            )

        return self._run(True, work)

    def remove_grant(self, email: str, folder: str) -> IOResult[bool, StoreFailure]:
        def work(cursor: Cursor) -> bool:
            cursor.execute("DELETE FROM grants WHERE email = ? AND folder = ?", (email, folder))
            return cursor.rowcount > 0

        return self._run(True, work)

    def list_grants(self, email: str | None = None) -> IOResult[tuple[Grant, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[Grant, ...]:
            columns = "SELECT email, folder, can_read, can_write FROM grants"
            if email is None:
                cursor.execute(f"{columns} ORDER BY email, folder")
            else:
                cursor.execute(f"{columns} WHERE email = ? ORDER BY folder", (email,))
            return tuple(
                Grant(email=row[0], folder=row[1], read=bool(row[2]), write=bool(row[3]))
                for row in cursor.fetchall()
            )

        return self._run(False, work)

    # -- resources --

    def publish(self, version: ResourceVersion) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            key = (version.folder, version.name)
            # Re-publishing the same version replaces it and makes it the newest.
            cursor.execute(
                "DELETE FROM resource_versions WHERE folder = ? AND name = ? AND version = ?",
                (*key, version.version),
            )
            cursor.execute(
                "INSERT INTO resource_versions "
                "(folder, name, version, small_part, publisher, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*key, version.version, version.small_part, version.publisher, version.created_at),
            )
            cursor.execute(
                "SELECT seq FROM resource_versions WHERE folder = ? AND name = ? AND version = ?",
                (*key, version.version),
            )
            seq = cursor.fetchone()[0]
            cursor.execute(
                "INSERT INTO resources (folder, name, current_seq) VALUES (?, ?, ?) "
                "ON CONFLICT (folder, name) DO UPDATE SET current_seq = excluded.current_seq",
                (*key, seq),
            )
            self._prune(cursor, *key)

        return self._run(True, work)

    def _prune(self, cursor: Cursor, folder: str, name: str) -> int:
        # The current version is the newest, so keeping the newest N always keeps it.
        cursor.execute(
            "DELETE FROM resource_versions WHERE folder = ? AND name = ? AND seq NOT IN ("
            "SELECT seq FROM resource_versions WHERE folder = ? AND name = ? "
            "ORDER BY seq DESC LIMIT ?)",
            (folder, name, folder, name, self._keep),
        )
        return max(cursor.rowcount, 0)

    def current(self, folder: str, name: str) -> IOResult[ResourceVersion | None, StoreFailure]:
        def work(cursor: Cursor) -> ResourceVersion | None:
            cursor.execute(
                f"SELECT {_VERSION_COLUMNS} FROM resources r "
                "JOIN resource_versions v ON v.seq = r.current_seq "
                "WHERE r.folder = ? AND r.name = ?",
                (folder, name),
            )
            row = cursor.fetchone()
            return _version(row) if row else None

        return self._run(False, work)

    def names(self, folder: str) -> IOResult[tuple[str, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[str, ...]:
            cursor.execute("SELECT name FROM resources WHERE folder = ? ORDER BY name", (folder,))
            return tuple(str(row[0]) for row in cursor.fetchall())

        return self._run(False, work)

    def versions(
        self, folder: str, name: str | None = None
    ) -> IOResult[tuple[ResourceVersion, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[ResourceVersion, ...]:
            query = f"SELECT {_VERSION_COLUMNS} FROM resource_versions v WHERE v.folder = ?"
            if name is None:
                cursor.execute(f"{query} ORDER BY v.name, v.seq DESC", (folder,))
            else:
                cursor.execute(f"{query} AND v.name = ? ORDER BY v.seq DESC", (folder, name))
            return tuple(_version(row) for row in cursor.fetchall())

        return self._run(False, work)

    def remove_resource(self, folder: str, name: str) -> IOResult[int, StoreFailure]:
        def work(cursor: Cursor) -> int:
            cursor.execute("DELETE FROM resources WHERE folder = ? AND name = ?", (folder, name))
            cursor.execute(
                "DELETE FROM resource_versions WHERE folder = ? AND name = ?", (folder, name)
            )
            return max(cursor.rowcount, 0)

        return self._run(True, work)

    def collect_garbage(self) -> IOResult[int, StoreFailure]:
        def work(cursor: Cursor) -> int:
            cursor.execute(
                "DELETE FROM resource_versions WHERE NOT EXISTS (SELECT 1 FROM resources r "
                "WHERE r.folder = resource_versions.folder AND r.name = resource_versions.name)"
            )
            removed = max(cursor.rowcount, 0)
            cursor.execute("SELECT folder, name FROM resources")
            for folder, name in cursor.fetchall():
                removed += self._prune(cursor, folder, name)
            return removed

        return self._run(True, work)

    # -- fragments --

    def put_fragment(
        self, version: str, fragment: bytes, *, replace: bool = False
    ) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            if replace:
                # An administrator's fragment vouches for no publisher: whoever signed the old
                # archive did not sign one under this fragment.
                cursor.execute(
                    "INSERT INTO fragments (version, fragment) VALUES (?, ?) "
                    "ON CONFLICT (version) DO UPDATE SET fragment = excluded.fragment, "
                    "publisher = '', publisher_key = NULL",
                    (version, fragment),
                )
                return
            # Insert-if-absent, then compare: race-free on both databases.
            cursor.execute(
                "INSERT INTO fragments (version, fragment) VALUES (?, ?) "
                "ON CONFLICT (version) DO NOTHING",
                (version, fragment),
            )
            cursor.execute("SELECT fragment FROM fragments WHERE version = ?", (version,))
            if bytes(cursor.fetchone()[0]) != fragment:
                raise _Refused(
                    Conflict(
                        f"the key fragment of version {version}",
                        "another fragment is registered; archives of that version need it, so "
                        "only an administrator may replace it",
                    )
                )

        return self._run(True, work)

    def get_fragment(self, version: str) -> IOResult[bytes | None, StoreFailure]:
        def work(cursor: Cursor) -> bytes | None:
            cursor.execute("SELECT fragment FROM fragments WHERE version = ?", (version,))
            row = cursor.fetchone()
            return bytes(row[0]) if row else None

        return self._run(False, work)

    def latest_fragment(self) -> IOResult[tuple[str, bytes] | None, StoreFailure]:
        def work(cursor: Cursor) -> tuple[str, bytes] | None:
            cursor.execute("SELECT version, fragment FROM fragments ORDER BY seq DESC LIMIT 1")
            row = cursor.fetchone()
            return (str(row[0]), bytes(row[1])) if row else None

        return self._run(False, work)

    def fragment_versions(self) -> IOResult[tuple[str, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[str, ...]:
            cursor.execute("SELECT version FROM fragments ORDER BY version")
            return tuple(str(row[0]) for row in cursor.fetchall())

        return self._run(False, work)

    def remove_fragment(self, version: str) -> IOResult[bool, StoreFailure]:
        def work(cursor: Cursor) -> bool:
            cursor.execute("DELETE FROM fragments WHERE version = ?", (version,))
            return cursor.rowcount > 0

        return self._run(True, work)

    def register_fragment(self, fragment: StoredFragment) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            cursor.execute(
                f"INSERT INTO fragments ({_FRAGMENT_COLUMNS}) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (version) DO NOTHING",
                (
                    fragment.version,
                    fragment.fragment,
                    fragment.publisher,
                    fragment.publisher_key,
                ),
            )
            cursor.execute(
                f"SELECT {_FRAGMENT_COLUMNS} FROM fragments WHERE version = ?",
                (fragment.version,),
            )
            held = _fragment(cursor.fetchone())
            # A retry sends the same bytes and key; the same bytes under another key would let
            # whoever read the fragment re-register it as theirs and take the vouching over.
            if (held.fragment, held.publisher_key) != (fragment.fragment, fragment.publisher_key):
                raise _Refused(
                    Conflict(
                        f"the key fragment of version {fragment.version}",
                        "another fragment (or publisher key) is registered; archives of that "
                        "version need it, so only an administrator may replace it",
                    )
                )

        return self._run(True, work)

    def fragment_record(self, version: str | None) -> IOResult[StoredFragment | None, StoreFailure]:
        def work(cursor: Cursor) -> StoredFragment | None:
            if version is None:
                cursor.execute(
                    f"SELECT {_FRAGMENT_COLUMNS} FROM fragments ORDER BY seq DESC LIMIT 1"
                )
            else:
                cursor.execute(
                    f"SELECT {_FRAGMENT_COLUMNS} FROM fragments WHERE version = ?", (version,)
                )
            row = cursor.fetchone()
            return _fragment(row) if row else None

        return self._run(False, work)

    # -- publisher keys --

    def record_publisher_key(
        self, email: str, public_key: bytes, at: float
    ) -> IOResult[bytes, StoreFailure]:
        def work(cursor: Cursor) -> bytes:
            # Insert-if-absent, then read: of two first uploads under different keys, one wins.
            cursor.execute(
                "INSERT INTO publishers (email, public_key, recorded_at) VALUES (?, ?, ?) "
                "ON CONFLICT (email) DO NOTHING",
                (email, public_key, at),
            )
            cursor.execute("SELECT public_key FROM publishers WHERE email = ?", (email,))
            return bytes(cursor.fetchone()[0])

        return self._run(True, work)

    def publisher_key(self, email: str) -> IOResult[bytes | None, StoreFailure]:
        def work(cursor: Cursor) -> bytes | None:
            cursor.execute("SELECT public_key FROM publishers WHERE email = ?", (email,))
            row = cursor.fetchone()
            return bytes(row[0]) if row else None

        return self._run(False, work)

    def set_publisher_key(
        self, email: str, public_key: bytes | None, at: float
    ) -> IOResult[bool, StoreFailure]:
        def work(cursor: Cursor) -> bool:
            cursor.execute("DELETE FROM publishers WHERE email = ?", (email,))
            existed = cursor.rowcount > 0
            if public_key is not None:
                cursor.execute(
                    "INSERT INTO publishers (email, public_key, recorded_at) VALUES (?, ?, ?)",
                    (email, public_key, at),
                )
            return existed

        return self._run(True, work)

    def list_publishers(self) -> IOResult[tuple[Publisher, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[Publisher, ...]:
            cursor.execute("SELECT email, public_key, recorded_at FROM publishers ORDER BY email")
            return tuple(
                Publisher(email=str(row[0]), public_key=bytes(row[1]), recorded_at=float(row[2]))
                for row in cursor.fetchall()
            )

        return self._run(False, work)

    # -- settings --

    def get_setting(self, name: str) -> IOResult[bytes | None, StoreFailure]:
        def work(cursor: Cursor) -> bytes | None:
            cursor.execute("SELECT value FROM settings WHERE name = ?", (name,))
            row = cursor.fetchone()
            return bytes(row[0]) if row else None

        return self._run(False, work)

    def put_setting(self, name: str, value: bytes) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            cursor.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        return self._run(True, work)

    def setting_or_create(self, name: str, value: bytes) -> IOResult[bytes, StoreFailure]:
        def work(cursor: Cursor) -> bytes:
            cursor.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            cursor.execute("SELECT value FROM settings WHERE name = ?", (name,))
            return bytes(cursor.fetchone()[0])

        return self._run(True, work)

    # -- login failures --

    def record_failure(
        self, key: str, at: float, *, forget_before: float
    ) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            cursor.execute("DELETE FROM login_failures WHERE at < ?", (forget_before,))
            cursor.execute("INSERT INTO login_failures (throttle_key, at) VALUES (?, ?)", (key, at))

        return self._run(True, work)

    def failures_since(self, key: str, since: float) -> IOResult[tuple[float, ...], StoreFailure]:
        def work(cursor: Cursor) -> tuple[float, ...]:
            cursor.execute(
                "SELECT at FROM login_failures WHERE throttle_key = ? AND at > ? ORDER BY at",
                (key, since),
            )
            return tuple(float(row[0]) for row in cursor.fetchall())

        return self._run(False, work)

    def clear_failures(self, key: str) -> IOResult[None, StoreFailure]:
        def work(cursor: Cursor) -> None:
            cursor.execute("DELETE FROM login_failures WHERE throttle_key = ?", (key,))

        return self._run(True, work)


class _Refused(Exception):
    """Carries an expected failure out of a transaction (which it rolls back)."""

    def __init__(self, failure: StoreFailure) -> None:
        super().__init__(failure)
        self.failure = failure


def _bump(cursor: Cursor, email: str) -> int:
    cursor.execute("UPDATE accounts SET generation = generation + 1 WHERE email = ?", (email,))
    cursor.execute("SELECT generation FROM accounts WHERE email = ?", (email,))
    row = cursor.fetchone()
    if row is None:
        raise _Refused(NotFound(f"the account {email}"))
    return int(row[0])


def _check_status(status: str) -> None:
    if status not in DEVICE_STATUSES:
        raise ValueError(f"device status must be one of {DEVICE_STATUSES}, got {status!r}")
