"""``SqliteStore``: the server store in one SQLite file (standard library ``sqlite3``).

The embedded default (``splitvault serve --data DIR`` keeps ``DIR/splitvault.db``). Each process
uses one connection, one transaction at a time; writes take the database lock up front (``BEGIN
IMMEDIATE``) so two writers queue instead of failing half-way, and ``synchronous=FULL`` makes a
commit durable before it is acknowledged. Several processes on one host may share the file (the
``--workers`` case, ``splitvault admin`` beside a server); several hosts need ``PostgresStore``.

The journal is the rollback journal, not WAL. WAL was the first choice (readers never wait), but
with SQLite 3.40 here, a server SIGKILLed while other processes kept writing lost acknowledged
commits or left "database disk image is malformed" for the next opener in about one run in
fifteen of ``tests/app/server/test_kill.py``; with the rollback journal the same test holds. The
cost is that readers wait (``busy_timeout``) while a commit is written, which is short next to the
Argon2id on every login and download.
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
        self._connection: sqlite3.Connection | None = None
        # One connection per process, one transaction at a time: the store's calls are short
        # next to the Argon2id around them, and a single connection rules out the races between
        # connections of one process (checkpoints against writes) that SIGKILL tests exposed.
        self._lock = threading.RLock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
            connection = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA synchronous = FULL")
            self._connection = connection
        return self._connection

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield connection.cursor()
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def lock_schema(self, cursor: Cursor) -> None:
        pass  # BEGIN IMMEDIATE already holds the only write lock

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class SqliteStore(SqlStore):
    """The server store in ``{directory}/splitvault.db``.

    Build it with ``SqliteStore.open(directory)``, which creates the directory (0700) and the
    file (0600), sets the rollback journal and migrates the schema.
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
            _create_private(path)
            with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as conn:
                # Persistent (stored in the file); see the module docstring for why not WAL.
                conn.execute("PRAGMA journal_mode = DELETE")
        except (OSError, sqlite3.Error) as exc:
            return IOFailure(_open_failed(path, exc))
        store = cls(_SqliteBackend(path), str(path), keep_versions=keep_versions)
        migrated = store.migrate()
        if not is_successful(migrated):
            store.close()
        return migrated.map(lambda _: store)


def _create_private(path: Path) -> None:
    # The file holds password hashes and keys: create it 0600 before sqlite opens it. An existing
    # file is left alone: closing a descriptor of it would drop this process's POSIX locks on it,
    # which SQLite's other connections here rely on.
    if path.exists():
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))


def _open_failed(path: Path, exc: Exception) -> StoreFailure:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return StorageFailed(str(path), detail, "open")
