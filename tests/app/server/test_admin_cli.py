"""``splitvault admin`` through real subprocesses, on SQLite and on PostgreSQL.

Every command's stdout and stderr are collected and searched for every secret the store holds
(passwords, hashes, salts, S3 secrets, the token signing key, a bound fingerprint): none may appear.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from splitvault.adapters.postgres_store import PostgresStore
from splitvault.adapters.sql_store import SCHEMA_VERSION, SqlStore
from splitvault.adapters.sqlite_store import DB_FILE, SqliteStore
from splitvault.app.server.accounts import hash_password, verify_password
from splitvault.app.server.stores import SIGNING_KEY_SETTING
from splitvault.domain.device import derive_device_key
from splitvault.domain.ports import Device, ResourceVersion
from tests.support.postgres import PostgresCluster
from tests.support.results import value

ALICE_PASSWORD = "alice's long passphrase 1"
BOB_PASSWORD = "bob's other passphrase 2"
NEW_PASSWORD = "a third passphrase 3"
READ_SECRET = "read-secret-0a1b2c3d4e5f"
WRITE_SECRET = "write-secret-9f8e7d6c5b4a"
FINGERPRINT = "fp-7c1e0d5b9a"


@attrs.define
class Admin:
    """Runs ``splitvault admin`` against one store and keeps everything it printed."""

    flags: list[str]
    opener: str
    location: str = attrs.field(repr=False)
    printed: list[str] = attrs.field(factory=list)

    def run(self, *args: str, stdin: str = "", expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "splitvault.app.cli.main", "admin", *args, *self.flags],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
        self.printed += [done.stdout, done.stderr]
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str, stdin: str = "") -> dict[str, Any]:
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
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.printed += [done.stdout, done.stderr]
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        answer: dict[str, Any] = json.loads(done.stdout)
        assert answer["ok"] is True
        return answer

    def store(self) -> SqlStore:
        if self.opener == "sqlite":
            return value(SqliteStore.open(Path(self.location)))
        return value(PostgresStore.open(self.location))


@pytest.fixture(params=["sqlite", "postgres"])
def admin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Admin]:
    """An admin CLI bound to an empty store of each kind."""
    if request.param == "sqlite":
        yield Admin(["--data", str(tmp_path / "data")], "sqlite", str(tmp_path / "data"))
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database()
        yield Admin(["--database-url", url], "postgres", url)


def _secrets(admin: Admin) -> list[str]:
    with admin.store() as store:
        accounts = value(store.list_accounts())
        key = value(store.get_setting(SIGNING_KEY_SETTING))
    found = [ALICE_PASSWORD, BOB_PASSWORD, NEW_PASSWORD, READ_SECRET, WRITE_SECRET, FINGERPRINT]
    for account in accounts:
        found += [account.password_hash, account.password_hash.split("$")[-1], account.salt.hex()]
    if key is not None:
        found += [key.hex()]
    if admin.opener == "postgres":
        found.append(admin.location.split(":")[2].split("@")[0])  # the database password
    return found


def test_the_operator_cli_manages_everything_and_prints_no_secret(
    admin: Admin, tmp_path: Path
) -> None:
    """users, grants, devices, cdn (original field names), fragments and resources, each through
    a subprocess; destructive commands need --yes; no output holds a secret."""
    admin.run("users", "add", "Alice@Example.com", "--role", "uploader", stdin=ALICE_PASSWORD)
    admin.run("users", "add", "bob@example.com", "--role", "downloader", stdin=BOB_PASSWORD)
    admin.run("users", "add", "root@example.com", "--role", "admin", stdin=BOB_PASSWORD)
    listed = admin.json("users", "list")["users"]
    assert [(u["email"], u["role"], u["bound"]) for u in listed] == [
        ("alice@example.com", "uploader", False),
        ("bob@example.com", "downloader", False),
        ("root@example.com", "admin", False),
    ]
    assert set(listed[0]) == {"email", "role", "bound", "generation"}
    empty = admin.run("users", "add", "eve@example.com", "--role", "downloader", expect=7)
    assert "empty password" in empty.stderr

    admin.run("users", "passwd", "alice@example.com", stdin=NEW_PASSWORD)
    with admin.store() as store:
        alice = value(store.get_account("alice@example.com"))
        assert alice is not None and verify_password(NEW_PASSWORD, alice.password_hash)
        assert alice.generation == 1
        key = derive_device_key(bytes(32), FINGERPRINT)
        bobs = Device(key.device_id, "bob@example.com", key.public, b"tag", "active", 0.0)
        value(store.put_device(bobs))
    refused = admin.run("users", "reset-binding", "bob@example.com", expect=7)
    assert "--yes" in refused.stderr
    assert admin.json("users", "reset-binding", "bob@example.com", "--yes")["was_bound"] is True
    assert admin.json("users", "list")["users"][1]["bound"] is False

    admin.run("grants", "add", "bob@example.com", "models", "--read")
    admin.run("grants", "add", "alice@example.com", "models", "--read", "--write")
    assert admin.run("grants", "add", "bob@example.com", "models", expect=7)
    assert admin.run("grants", "add", "nobody@example.com", "models", "--read", expect=4)
    grants = admin.json("grants", "list")["grants"]
    assert grants == [
        {"email": "alice@example.com", "folder": "models", "read": True, "write": True},
        {"email": "bob@example.com", "folder": "models", "read": True, "write": False},
    ]
    admin.run("grants", "remove", "bob@example.com", "models")
    assert admin.json("grants", "list", "bob@example.com")["grants"] == []

    with admin.store() as store:
        value(
            store.put_device(
                Device("dev-1", "bob@example.com", b"\x07" * 32, b"\x09" * 32, "pending", 1.0)
            )
        )
    listed_devices = admin.json("devices", "list")["devices"]
    assert [d["status"] for d in listed_devices if d["id"] == "dev-1"] == ["pending"]
    admin.run("devices", "approve", "dev-1")
    admin.run("devices", "revoke", "dev-1", expect=7)
    revoked = admin.json("devices", "revoke", "dev-1", "--yes")
    assert revoked["status"] == "revoked" and "fingerprint_hash" not in json.dumps(revoked)
    assert (b"\x09" * 32).hex() not in "".join(admin.printed)

    original = tmp_path / "cdn.yaml"
    original.write_text(
        "host: http://127.0.0.1:9000\nbucket: models\n"
        f"downloader_access_key: READKEY\ndownloader_access_secret: {READ_SECRET}\n"
        f"uploader_access_key: WRITEKEY\nuploader_access_secret: {WRITE_SECRET}\n"
    )
    admin.run("cdn", "set", str(original))
    shown = admin.json("cdn", "show")["cdn"]
    assert shown == {
        "endpoint": "http://127.0.0.1:9000",
        "bucket": "models",
        "region": "us-east-1",
        "read": {"access_key_id": "READKEY", "secret_access_key": "(set)"},
        "write": {"access_key_id": "WRITEKEY", "secret_access_key": "(set)"},
    }
    ours = tmp_path / "ours.yaml"
    ours.write_text(
        "endpoint: https://s3.example.com\nbucket: b\nregion: eu-west-1\n"
        f"read: {{access_key_id: R2, secret_access_key: {READ_SECRET}}}\n"
    )
    admin.run("cdn", "set", str(ours))
    assert admin.json("cdn", "show")["cdn"]["write"] is None
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"host: http://x\ndownloader_access_secret: {READ_SECRET}\n")
    bad = admin.run("cdn", "set", str(broken), expect=7)
    assert "'bucket'" in bad.stderr or "downloader_access_key" in bad.stderr

    with admin.store() as store:
        value(store.put_fragment("v1", b"\x01" * 32))
        for tag in ("a1", "a2"):
            value(store.publish(ResourceVersion("models", "bert", tag, b"s" * 9, "alice", 2.0)))
    assert admin.json("fragments", "list")["versions"] == ["v1"]
    admin.run("fragments", "remove", "v1", expect=7)
    admin.run("fragments", "remove", "v1", "--yes")
    assert admin.json("fragments", "list")["versions"] == []
    kept = admin.json("resources", "ls", "models", "--versions")["resources"]
    assert [(r["version"], r["current"]) for r in kept] == [("a2", True), ("a1", False)]
    assert admin.json("resources", "ls", "models")["resources"][0]["bytes"] == 9
    assert admin.json("resources", "rm", "models", "bert", "--yes")["versions_removed"] == 2
    assert admin.json("resources", "gc", "--yes")["versions_removed"] == 0
    admin.run("resources", "rm", "models", "bert", "--yes", expect=4)

    admin.run("users", "remove", "root@example.com", expect=7)
    admin.run("users", "remove", "root@example.com", "--yes")
    admin.run("users", "remove", "root@example.com", "--yes", expect=4)

    printed = "".join(admin.printed)
    for secret in _secrets(admin):
        assert secret not in printed, "a secret reached the output"


def test_a_store_from_a_newer_splitvault_is_refused(tmp_path: Path) -> None:
    """The CLI refuses a store whose schema is newer than the code, saying what to do."""
    data = tmp_path / "data"
    value(SqliteStore.open(data)).close()
    with sqlite3.connect(data / DB_FILE) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    admin = Admin(["--data", str(data)], "sqlite", str(data))
    refused = admin.run("users", "list", expect=7)
    assert "newer than this splitvault" in refused.stderr and "upgrade" in refused.stderr


def test_an_old_data_directory_is_imported_on_first_open(tmp_path: Path) -> None:
    """users.json, jwt.key, cdn.yaml, resources/*/*.small and keys/*.fragment move into the store
    on first open; the old password still verifies, the fingerprint binding is kept."""
    data = tmp_path / "old"
    (data / "resources" / "models").mkdir(parents=True)
    (data / "keys").mkdir()
    old_hash = hash_password(ALICE_PASSWORD)
    (data / "users.json").write_text(
        json.dumps(
            {
                "alice@example.com": {
                    "hash": old_hash,
                    "role": "uploader",
                    "fingerprint": FINGERPRINT,
                }
            }
        )
    )
    (data / "jwt.key").write_bytes(b"k" * 32)
    (data / "cdn.yaml").write_text(
        "endpoint: http://127.0.0.1:9\nbucket: m\nregion: r\n"
        f"read: {{access_key_id: R, secret_access_key: {READ_SECRET}}}\n"
    )
    (data / "resources" / "models" / "bert.small").write_bytes(b"old small part")
    (data / "keys" / "v7.fragment").write_bytes(b"\x05" * 32)
    admin = Admin(["--data", str(data)], "sqlite", str(data))
    users = admin.json("users", "list")["users"]
    assert users == [
        # A protocol-1 fingerprint binding has no device key: the machine enrols afresh.
        {"email": "alice@example.com", "role": "uploader", "bound": False, "generation": 0}
    ]
    assert admin.json("fragments", "list")["versions"] == ["v7"]
    assert [r["name"] for r in admin.json("resources", "ls", "models")["resources"]] == ["bert"]
    assert admin.json("cdn", "show")["cdn"]["bucket"] == "m"
    with admin.store() as store:
        alice = value(store.get_account("alice@example.com"))
        assert alice is not None and verify_password(ALICE_PASSWORD, alice.password_hash)
        assert value(store.get_setting(SIGNING_KEY_SETTING)) == b"k" * 32
        current = value(store.current("models", "bert"))
        assert current is not None and current.small_part == b"old small part"
        value(store.put_fragment("v7", b"\x05" * 32))  # still write-once, same bytes
    admin.json("users", "list")  # a second open imports nothing again
    with admin.store() as store:
        assert len(value(store.list_accounts())) == 1
    assert READ_SECRET not in "".join(admin.printed)
    # The protocol-1 fingerprint binding is not carried into the store (not even its value).
    database = b"".join(path.read_bytes() for path in data.rglob("splitvault.db*"))
    assert FINGERPRINT.encode() not in database
