"""``splitvault admin publishers list|set|clear`` through real subprocesses, on SQLite and
PostgreSQL: what it prints, what it refuses, and what it leaves in the store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from splitvault.adapters.postgres_store import PostgresStore
from splitvault.adapters.sql_store import SqlStore
from splitvault.adapters.sqlite_store import SqliteStore
from splitvault.domain import signature
from splitvault.domain.ports import Account, StoredFragment
from tests.support.postgres import PostgresCluster
from tests.support.results import value

ALICE = "alice@example.com"
OLD = signature.PublisherKey.from_seed(bytes(range(32))).public
NEW = signature.PublisherKey.from_seed(bytes(range(1, 33))).public


@attrs.frozen
class Admin:
    flags: tuple[str, ...]
    kind: str
    location: str = attrs.field(repr=False)

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "splitvault.app.cli.main", "admin", *args, *self.flags],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "splitvault.app.cli.main",
                "--json",
                "admin",
                *args,
                *self.flags,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def store(self) -> SqlStore:
        if self.kind == "sqlite":
            return value(SqliteStore.open(Path(self.location)))
        return value(PostgresStore.open(self.location))


@pytest.fixture(params=["sqlite", "postgres"])
def admin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Admin]:
    """An admin CLI over a store of each kind holding one account whose key was recorded."""
    if request.param == "sqlite":
        where = Admin(("--data", str(tmp_path / "data")), "sqlite", str(tmp_path / "data"))
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database()
        where = Admin(("--database-url", url), "postgres", url)
    with where.store() as store:
        value(store.put_account(Account(ALICE, "uploader", "$argon2id$x", b"s" * 16)))
        value(store.record_publisher_key(ALICE, OLD, 100.0))
    yield where


def test_list_set_and_clear_a_publishers_key(admin: Admin) -> None:
    """list shows the recorded key and its id; set re-keys; clear (with --yes) forgets."""
    listed = admin.json("publishers", "list")["publishers"]
    assert listed == [
        {
            "email": ALICE,
            "public_key": OLD.hex(),
            "key_id": signature.key_id(OLD),
            "recorded_at": 100.0,
        }
    ]
    assert signature.key_id(OLD) in admin.run("publishers", "list", "Alice@Example.com").stdout

    rekeyed = admin.json("publishers", "set", "Alice@Example.com", "--key", NEW.hex())
    assert (rekeyed["email"], rekeyed["replaced"]) == (ALICE, True)
    assert rekeyed["key_id"] == signature.key_id(NEW)
    with admin.store() as store:
        assert value(store.publisher_key(ALICE)) == NEW

    assert "--yes" in admin.run("publishers", "clear", ALICE, expect=7).stderr
    with admin.store() as store:
        assert value(store.publisher_key(ALICE)) == NEW  # nothing happened without --yes
    assert admin.json("publishers", "clear", ALICE, "--yes")["cleared"] is True
    with admin.store() as store:
        assert value(store.publisher_key(ALICE)) is None
    assert admin.run("publishers", "list").stdout.strip() == "no publisher keys"
    assert "publisher key" in admin.run("publishers", "clear", ALICE, "--yes", expect=4).stderr


def test_bad_keys_and_unknown_accounts_are_refused_and_change_nothing(admin: Admin) -> None:
    """A key that is not 64 hex digits (exit 7), an account that does not exist (exit 4)."""
    for bad in ("abc", OLD.hex()[:-1] + "g", OLD.hex() + "00"):
        refused = admin.run("publishers", "set", ALICE, "--key", bad, expect=7)
        assert "64 hex digits" in refused.stderr
    missing = admin.run("publishers", "set", "nobody@example.com", "--key", NEW.hex(), expect=4)
    assert "nobody@example.com" in missing.stderr
    with admin.store() as store:
        assert value(store.list_publishers())[0].public_key == OLD
        assert value(store.publisher_key("nobody@example.com")) is None


def test_fragments_list_names_who_registered_each_and_the_vouched_key(admin: Admin) -> None:
    """``admin fragments list`` shows each version's registering account and the id of the key
    the server vouches for with it (never the fragment)."""
    with admin.store() as store:
        value(store.register_fragment(StoredFragment("2.0", b"\x42" * 32, ALICE, OLD)))
        value(store.put_fragment("1.0", b"\x43" * 32))
    listed = admin.json("fragments", "list")
    assert listed["versions"] == ["1.0", "2.0"]
    assert listed["fragments"] == [
        {"version": "1.0", "publisher": None, "key_id": None},
        {"version": "2.0", "publisher": ALICE, "key_id": signature.key_id(OLD)},
    ]
    assert (b"\x42" * 32).hex() not in json.dumps(listed)
