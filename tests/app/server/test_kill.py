"""A SIGKILL of a server (or of ``splitvault admin``) in mid-write leaves the store whole.

For each store (SQLite under ``--data``, PostgreSQL), three rounds: a ``splitvault serve`` process
takes a stream of uploads, key fragment registrations and wrong-password logins while
``splitvault admin users add`` processes run beside it; the server and one admin process are
killed with SIGKILL at a random moment. Afterwards the store opens (SQLite's integrity check
passes), every acknowledged write is there, nothing is torn (each small part and fragment is
exactly one that was sent, each user's hash verifies its password) and a restarted server serves.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest

from splitvault.adapters.postgres_store import PostgresStore
from splitvault.adapters.sql_store import SqlStore
from splitvault.adapters.sqlite_store import DB_FILE, SqliteStore
from splitvault.app.server.accounts import add_user, verify_password
from tests.support.devices import device_login, open_answer
from tests.support.postgres import PostgresCluster
from tests.support.results import value
from tests.support.server_fixtures import serve_process
from tests.support.server_world import grant_test_accounts

UPLOADER = "uploader@example.com"
DOWNLOADER = "downloader@example.com"
PASSWORD = "correct horse battery staple"
WRITERS = 3
# Each writer thread has names of its own, so the uploads of one name are sequential and "sent
# later" means "committed later".
NAMES = {writer: tuple(f"w{writer}-r{index}" for index in range(2)) for writer in range(WRITERS)}
ALL_NAMES = tuple(name for names in NAMES.values() for name in names)
ROUNDS = 3
KEEP = 3


@attrs.define
class Target:
    """Where the store is: the flags for the CLI and a way to open it here."""

    flags: list[str]
    opener: str
    location: str = attrs.field(repr=False)

    def open(self) -> SqlStore:
        if self.opener == "sqlite":
            return value(SqliteStore.open(Path(self.location)))
        return value(PostgresStore.open(self.location))


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A store with an uploader and a downloader, as CLI flags."""
    if request.param == "sqlite":
        data = tmp_path / "data"
        chosen = Target(["--data", str(data)], "sqlite", str(data))
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database()
        chosen = Target(["--database-url", url], "postgres", url)
    with chosen.open() as store:
        value(add_user(store, UPLOADER, PASSWORD, "uploader"))
        value(add_user(store, DOWNLOADER, PASSWORD, "downloader"))
        grant_test_accounts(store)
    yield chosen


@attrs.define
class Ledger:
    """What was sent and what the server acknowledged, in order."""

    sent: dict[str, list[bytes]] = attrs.field(factory=lambda: {n: [] for n in ALL_NAMES})
    acked: dict[str, list[bytes]] = attrs.field(factory=lambda: {n: [] for n in ALL_NAMES})
    fragments_sent: dict[str, bytes] = attrs.field(factory=dict)
    fragments_acked: set[str] = attrs.field(factory=set)
    users_started: dict[str, str] = attrs.field(factory=dict)
    users_acked: set[str] = attrs.field(factory=set)
    users_killed: set[str] = attrs.field(factory=set)
    lock: threading.Lock = attrs.field(factory=threading.Lock)


def _writes(url: str, ledger: Ledger, stop: threading.Event, writer: int, seed: int) -> None:
    """Uploads (of this writer's names) and fragment registrations until the server goes away."""
    rng = random.Random(seed)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            auth = device_login(http, UPLOADER, PASSWORD).headers
            counter = 0
            while not stop.is_set():
                counter += 1
                name = rng.choice(NAMES[writer])
                small = f"{seed}-{counter}-".encode() * rng.randint(50, 2000)
                with ledger.lock:
                    ledger.sent[name].append(small)
                answer = http.post("/resources/models", files={"file": (name, small)}, headers=auth)
                if answer.status_code == 201:
                    with ledger.lock:
                        ledger.acked[name].append(small)
                version = f"v{seed}-{counter}"
                fragment = rng.randbytes(32)
                with ledger.lock:
                    ledger.fragments_sent[version] = fragment
                put = http.put(f"/keys/{version}", content=fragment, headers=auth)
                if put.status_code == 201:
                    with ledger.lock:
                        ledger.fragments_acked.add(version)
    except (httpx.TransportError, ValueError, KeyError):
        return  # the server was killed


def _failed_logins(url: str, stop: threading.Event) -> None:
    """Wrong passwords (throttle records) until the server goes away."""
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                http.post("/login", json={"email": DOWNLOADER, "password": "wrong"})
    except httpx.TransportError:
        return


def _admin_users(target: Target, ledger: Ledger, round_: int, stop: threading.Event) -> None:
    """``admin users add`` processes one after the other (each ~0.3 s); the second and fourth
    are SIGKILLed at a random moment of their run."""
    rng = random.Random(round_)
    for index in range(4):
        email = f"u{round_}-{index}@example.com"
        password = f"password {round_} {index}"
        with ledger.lock:
            ledger.users_started[email] = password
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "splitvault.app.cli.main",
                "admin",
                "users",
                "add",
                email,
                "--role",
                "downloader",
                *target.flags,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdin is not None
        process.stdin.write(password.encode() + b"\n")
        process.stdin.close()
        if index in (1, 3):
            time.sleep(rng.uniform(0.05, 0.35))  # in start-up, hashing or the write
            process.send_signal(signal.SIGKILL)
        status = process.wait(timeout=120)
        with ledger.lock:
            if status == 0:
                ledger.users_acked.add(email)
            elif status == -signal.SIGKILL:
                ledger.users_killed.add(email)


def _check_consistent(target: Target, ledger: Ledger) -> None:
    if target.opener == "sqlite":
        with sqlite3.connect(Path(target.location) / DB_FILE) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with target.open() as store:
        for name in ALL_NAMES:
            current = value(store.current("models", name))
            sent, acked = ledger.sent[name], ledger.acked[name]
            if current is None:
                assert acked == [], f"{name}: an acknowledged upload was lost"
                continue
            assert current.small_part in sent, f"{name}: the small part is torn or foreign"
            if acked:
                # What is current is the last acknowledged upload or a later one.
                assert sent.index(current.small_part) >= sent.index(acked[-1])
            kept = value(store.versions("models", name))
            assert 1 <= len(kept) <= KEEP and kept[0].version == current.version
            assert all(version.small_part in sent for version in kept)
        stored = value(store.fragment_versions())
        assert ledger.fragments_acked <= set(stored), "an acknowledged fragment was lost"
        for version in stored:
            assert value(store.get_fragment(version)) == ledger.fragments_sent[version]
        for email, password in ledger.users_started.items():
            account = value(store.get_account(email))
            if account is None:
                assert email not in ledger.users_acked, f"{email} was acknowledged but lost"
                continue
            assert verify_password(password, account.password_hash), f"{email} is torn"
            assert len(account.salt) == 16


@pytest.mark.slow
def test_sigkill_during_writes_leaves_a_consistent_store(target: Target, tmp_path: Path) -> None:
    """Three rounds of SIGKILL mid-write; after each the store is whole and a server serves it."""
    ledger = Ledger()
    rng = random.Random(14)
    for round_ in range(ROUNDS):
        with serve_process(tmp_path, *target.flags, name=f"round{round_}") as server:
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=_writes, args=(server.url, ledger, stop, writer, round_ * 10 + writer)
                )
                for writer in range(WRITERS)
            ]
            threads.append(threading.Thread(target=_failed_logins, args=(server.url, stop)))
            threads.append(
                threading.Thread(target=_admin_users, args=(target, ledger, round_, stop))
            )
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(1.5, 3.0))
            server.kill()
            stop.set()
            for thread in threads:
                thread.join(timeout=180)
            assert not any(thread.is_alive() for thread in threads)
        _check_consistent(target, ledger)
    assert ledger.users_killed  # some admin processes really died mid-run
    with target.open() as store:
        kept_killed = sum(
            value(store.get_account(email)) is not None for email in ledger.users_killed
        )
    uploads = sum(len(acked) for acked in ledger.acked.values())
    assert uploads > 0 and ledger.fragments_acked  # writes did happen
    print(
        f"\n{target.opener}: {ROUNDS} kills; {uploads} uploads and {len(ledger.fragments_acked)} "
        f"fragments acknowledged of {sum(map(len, ledger.sent.values()))} and "
        f"{len(ledger.fragments_sent)} sent; {len(ledger.users_acked)} of "
        f"{len(ledger.users_started)} admin user additions completed, {len(ledger.users_killed)} "
        f"killed ({kept_killed} of those left a whole account, the others none)"
    )
    with serve_process(tmp_path, *target.flags, name="after") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            login = device_login(http, UPLOADER, PASSWORD)
        auth = login.headers
        listed = httpx.get(f"{server.url}/resources/list/models", headers=auth).json()["files"]
        assert {name for name in ALL_NAMES if ledger.acked[name]} <= set(listed) <= set(ALL_NAMES)
        version = sorted(ledger.fragments_acked)[0]
        fragment = httpx.get(f"{server.url}/keys/{version}", headers=auth)
        opened = open_answer(fragment, login.key, "key-fragment", version)
        assert opened == ledger.fragments_sent[version]
