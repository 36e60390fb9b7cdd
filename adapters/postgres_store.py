"""``PostgresStore``: the server store in PostgreSQL (psycopg 3), shared by several API servers.

Every server process keeps a small pool of connections; each store method borrows one for one
transaction. Migrations take a transaction-scoped advisory lock, so servers started together
migrate once. A connection that broke (the database restarted) is dropped from the pool and the
next call opens a fresh one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from returns.io import IOFailure, IOResult
from returns.pipeline import is_successful

from splitvault.adapters.sql_store import DEFAULT_KEEP_VERSIONS, Cursor, SqlStore
from splitvault.domain.errors import StorageFailed
from splitvault.domain.ports import StoreFailure

POOL_SIZE: Final = 8
CONNECT_TIMEOUT_S: Final = 10
# Any constant: it only has to be the same in every splitvault process.
SCHEMA_LOCK_ID: Final = 0x5F11_7FA0


def redacted(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` parameter)."""
    parts = urlsplit(url)
    if parts.query:
        # libpq also reads passwords from the query; keep the other parameters readable.
        kept = [
            (key, "***" if key.lower() in ("password", "sslpassword") else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(kept, safe="*"))
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


class _PostgresCursor:
    """psycopg's cursor with ``?`` placeholders (the SQL in ``sql_store`` is written once)."""

    def __init__(self, cursor: psycopg.Cursor[tuple[object, ...]]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> object:
        return self._cursor.execute(sql.replace("?", "%s"), params)

    def fetchone(self) -> object:
        return self._cursor.fetchone()

    def fetchall(self) -> object:
        return self._cursor.fetchall()


class _PostgresBackend:
    errors: tuple[type[Exception], ...] = (psycopg.Error,)
    types: dict[str, str] = {  # noqa: RUF012 - read-only
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
        "serial": "BIGSERIAL PRIMARY KEY",
    }

    def __init__(self, url: str, pool_size: int) -> None:
        self._url = url
        self._idle: queue.LifoQueue[psycopg.Connection[tuple[object, ...]]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False

    def _borrow(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        if connection.closed or connection.broken:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        return connection

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._slots:
            connection = self._borrow()
            healthy = False
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    yield _PostgresCursor(cursor)
                healthy = True
            finally:
                if healthy or not (connection.closed or connection.broken):
                    if self._closed:
                        connection.close()
                    else:
                        self._idle.put(connection)
                else:
                    connection.close()

    def lock_schema(self, cursor: Cursor) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_ID,))

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class PostgresStore(SqlStore):
    """The server store in the PostgreSQL database at a ``postgresql://`` URL.

    Build it with ``PostgresStore.open(url)``, which connects once and migrates the schema.
    """

    @classmethod
    def open(
        cls, url: str, *, keep_versions: int = DEFAULT_KEEP_VERSIONS, pool_size: int = POOL_SIZE
    ) -> IOResult[PostgresStore, StoreFailure]:
        """Open the store at ``url``.

        Fails with ``StorageFailed`` when the database cannot be reached (the message names the
        URL without its password), and ``Conflict`` when its schema is newer than this code.
        """
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            return IOFailure(StorageFailed(redacted(url), "expected a postgresql:// URL", "open"))
        store = cls(_PostgresBackend(url, pool_size), redacted(url), keep_versions=keep_versions)
        migrated = store.migrate()
        if not is_successful(migrated):
            store.close()
        return migrated.map(lambda _: store)
