"""``SqliteStore``: the server store in one SQLite file (standard library ``sqlite3``, WAL).

The embedded default (``splitvault serve --data DIR`` keeps ``DIR/splitvault.db``). WAL lets
readers run while one writer commits; writes take the database lock up front (``BEGIN
IMMEDIATE``) so two writers queue instead of failing half-way, and ``synchronous=FULL`` makes a
commit durable before it is acknowledged. Several processes on one host may share the file (the
``--workers`` case); several hosts need ``PostgresStore``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from returns.io import IOFailure, IOResult
from returns.pipeline import is_successful

from splitvault.adapters.sql_store import DEFAULT_KEEP_VERSIONS, Cursor, SqlStore
from splitvault.domain.errors import StorageFailed
from splitvault.domain.ports import StoreFailure

DB_FILE: Final = "splitvault.db"
BUSY_TIMEOUT_MS: Final = 30_000


class _SqliteBackend:
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    types: dict[str, str] = {  # noqa: RUF012 - read-only
        "blob": "BLOB",
        "real": "REAL",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
    }

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # One connection per thread (sqlite3 objects are not to be shared while in use);
            # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
            connection = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA synchronous = FULL")
            self._local.connection = connection
            with self._guard:
                self._all.append(connection)
        return connection

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield connection.cursor()
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def lock_schema(self, cursor: Cursor) -> None:
        pass  # BEGIN IMMEDIATE already holds the only write lock

    def close(self) -> None:
        with self._guard:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()
        self._local = threading.local()


class SqliteStore(SqlStore):
    """The server store in ``{directory}/splitvault.db``.

    Build it with ``SqliteStore.open(directory)``, which creates the directory (0700) and the
    file (0600), switches on WAL and migrates the schema.
    """

    @classmethod
    def open(
        cls, directory: Path, *, keep_versions: int = DEFAULT_KEEP_VERSIONS
    ) -> IOResult[SqliteStore, StoreFailure]:
        """Open (creating) the store under ``directory``.

        Fails with ``StorageFailed`` when the directory or file cannot be used, and ``Conflict``
        when the file's schema is newer than this code.
        """
        path = directory / DB_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            # The file holds password hashes and keys: create it private before sqlite opens it.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as conn:
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
        except (OSError, sqlite3.Error) as exc:
            return IOFailure(_open_failed(path, exc))
        store = cls(_SqliteBackend(path), str(path), keep_versions=keep_versions)
        migrated = store.migrate()
        if not is_successful(migrated):
            store.close()
        return migrated.map(lambda _: store)


def _open_failed(path: Path, exc: Exception) -> StoreFailure:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return StorageFailed(str(path), detail, "open")
