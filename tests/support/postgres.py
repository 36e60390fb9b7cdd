"""A private PostgreSQL cluster for the test run: ``initdb`` into a temp dir, loopback only.

``postgres_cluster`` (session-scoped) finds Debian's binaries (``/usr/lib/postgresql/*/bin``),
runs ``initdb`` with SCRAM password auth into a temp directory owned by an unprivileged user
(PostgreSQL refuses to run as root), starts it on 127.0.0.1 and a free port with its socket in
that directory, and stops it (``pg_ctl stop -m fast``) at the end. Each test that wants a clean
database calls ``new_database()``. When the binaries are missing the tests are skipped — or fail
when ``CI`` is set, since CI installs the ``postgresql`` package and a skip would hide that.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import psycopg
import pytest

START_TIMEOUT = 60.0
SUPERUSER = "splitvault"
RUN_AS = "postgres"


class PostgresUnavailable(Exception):
    """The binaries are missing or the cluster did not start; the message says why."""


@attrs.define
class PostgresCluster:
    """A running private cluster; ``new_database()`` gives each test its own database."""

    port: int
    password: str = attrs.field(repr=False)
    root: Path
    _count: int = 0

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL (with the password) for ``database``."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        self._count += 1
        name = f"test_{os.getpid()}_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def find_binaries() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with ``initdb`` and ``pg_ctl``."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_user(argv: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(argv)
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", RUN_AS], check=True, capture_output=True
        )
    return ["runuser", "-u", RUN_AS, "--", *argv]


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """Start a private cluster and stop it afterwards."""
    binaries = find_binaries()
    root = Path(tempfile.mkdtemp(prefix="sv-pg-"))
    data, log_path = root / "data", root / "server.log"
    password = secrets.token_urlsafe(18)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    for path in (root, pwfile):
        _chown(path)
    port = _free_port()
    try:
        initdb = subprocess.run(
            _as_user(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-sync",  # a throw-away cluster: durability of initdb does not matter
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if initdb.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {initdb.stderr.strip()[-500:]}")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=on"
        started = subprocess.run(
            _as_user(
                [
                    str(binaries / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log_path),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT)),
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if started.returncode != 0:
            tail = log_path.read_text(errors="replace")[-800:] if log_path.exists() else ""
            raise PostgresUnavailable(f"PostgreSQL did not start: {started.stderr.strip()} {tail}")
        cluster = PostgresCluster(port=port, password=password, root=root)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(cluster.url(), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable("PostgreSQL did not accept connections") from None
                time.sleep(0.1)
        try:
            yield cluster
        finally:
            subprocess.run(
                _as_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                capture_output=True,
                check=False,
                timeout=60,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def postgres_cluster_fixture() -> object:
    """The session fixture (registered by the root conftest)."""

    @pytest.fixture(scope="session")
    def postgres_cluster() -> Iterator[PostgresCluster]:
        """A private PostgreSQL cluster per session; skipped (failed under CI) if absent."""
        try:
            context = running_cluster()
            cluster = context.__enter__()
        except PostgresUnavailable as error:
            if os.environ.get("CI"):
                pytest.fail(f"CI needs a real PostgreSQL: {error}", pytrace=False)
            pytest.skip(f"no private PostgreSQL: {error}")
        try:
            yield cluster
        finally:
            context.__exit__(None, None, None)

    return postgres_cluster
