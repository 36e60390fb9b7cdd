"""The server store contract: every ``ServerStore`` adapter (SQLite, PostgreSQL) behaves alike."""

from __future__ import annotations

import itertools
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.pipeline import is_successful

from splitvault.adapters.postgres_store import redacted
from splitvault.adapters.sql_store import MIGRATIONS, SCHEMA_VERSION, SqlStore
from splitvault.domain.errors import Conflict, NotFound, StorageFailed
from splitvault.domain.ports import Account, Device, Grant, ResourceVersion
from tests.support.results import failure, value

ALICE = "alice@example.com"
BOB = "bob@example.com"


def account(email: str = ALICE, role: str = "uploader", **changes: object) -> Account:
    fields: dict[str, object] = {
        "email": email,
        "role": role,
        "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        "salt": b"s" * 16,
    }
    fields.update(changes)
    return Account(**fields)  # type: ignore[arg-type]


def version(
    name: str, tag: str, small: bytes = b"small", folder: str = "models"
) -> ResourceVersion:
    return ResourceVersion(folder, name, tag, small, ALICE, 1000.0)


def test_schema_version_is_recorded(store: SqlStore) -> None:
    """A fresh store reports this code's schema version; migrating again changes nothing."""
    assert value(store.ping()) == SCHEMA_VERSION
    assert value(store.migrate()) == SCHEMA_VERSION


def test_accounts_round_trip_and_are_replaced_whole(store: SqlStore) -> None:
    """put/get/list/remove of accounts; a second put replaces role, hash and salt."""
    assert value(store.get_account(ALICE)) is None
    value(store.put_account(account()))
    value(store.put_account(account(BOB, "downloader")))
    assert value(store.get_account(ALICE)) == account()
    value(store.put_account(account(role="admin", salt=b"t" * 16)))
    stored = value(store.get_account(ALICE))
    assert stored is not None and stored.role == "admin" and stored.salt == b"t" * 16
    assert [a.email for a in value(store.list_accounts())] == [ALICE, BOB]
    assert value(store.remove_account(ALICE)) is True
    assert value(store.remove_account(ALICE)) is False
    assert value(store.get_account(ALICE)) is None


def test_removing_an_account_removes_its_grants_and_devices(store: SqlStore) -> None:
    """Nothing of a removed account is left behind for a new account of the same e-mail."""
    value(store.put_account(account()))
    value(store.put_grant(Grant(ALICE, "models", read=True, write=False)))
    value(store.put_device(Device("d1", ALICE, b"pk", b"fh", "active", 1.0)))
    value(store.remove_account(ALICE))
    assert value(store.list_grants(ALICE)) == ()
    assert value(store.list_devices(ALICE)) == ()


def test_generation_bumps(store: SqlStore) -> None:
    """Each bump adds one to the session generation; an unknown account is ``NotFound``."""
    value(store.put_account(account()))
    assert value(store.bump_generation(ALICE)) == 1
    assert value(store.bump_generation(ALICE)) == 2
    stored = value(store.get_account(ALICE))
    assert stored is not None and stored.generation == 2
    assert isinstance(failure(store.bump_generation(BOB)), NotFound)


def _enrol_at_once(store: SqlStore, email: str, machines: int, limit: int) -> list[bool]:
    """``machines`` threads enrolling a device each for ``email`` at the same instant."""
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(machines)

    def enrol(index: int) -> None:
        key = bytes([index]) * 32
        fresh = Device(f"{email}-{index}", email, key, b"fh", "active", 2.0)
        start.wait(timeout=30)
        entered = value(store.put_device(fresh, active_limit=limit))
        with lock:
            results.append(entered)

    threads = [threading.Thread(target=enrol, args=(i,)) for i in range(machines)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_the_active_device_limit_holds_under_concurrent_enrolments(store: SqlStore) -> None:
    """Eight machines enrolling at once under a limit of two, five times over: exactly two get
    in each time, the others are refused (``False``) and leave nothing behind; pending devices
    do not count. (Without the store's row lock PostgreSQL let three or more in.)"""
    for round_ in range(5):
        email = f"round-{round_}@example.com"
        value(store.put_account(account(email)))
        value(store.put_device(Device(f"wait-{round_}", email, b"w" * 32, b"fh", "pending", 1.0)))
        results = _enrol_at_once(store, email, machines=8, limit=2)
        assert sorted(results) == [False] * 6 + [True] * 2
        devices = value(store.list_devices(email))
        assert sorted(d.status for d in devices) == ["active", "active", "pending"]


def test_devices_enrol_once_and_revocation_ends_sessions(store: SqlStore) -> None:
    """A device id enrols once; approve/revoke change its status; revoke bumps the generation."""
    value(store.put_account(account()))
    device = Device("dev-1", ALICE, b"\x01" * 32, b"\x02" * 32, "pending", 5.0)
    value(store.put_device(device))
    assert isinstance(failure(store.put_device(device)), Conflict)
    assert value(store.list_devices(ALICE)) == (device,)
    assert value(store.set_device_status("dev-1", "active")).status == "active"
    assert value(store.set_device_status("dev-1", "revoked")).status == "revoked"
    stored = value(store.get_account(ALICE))
    assert stored is not None and stored.generation == 1
    assert isinstance(failure(store.set_device_status("nope", "active")), NotFound)
    assert value(store.list_devices()) == (
        Device("dev-1", ALICE, device.public_key, device.fingerprint_hash, "revoked", 5.0),
    )


def test_grants_are_replaced_listed_and_removed(store: SqlStore) -> None:
    """One grant per (account, folder); listing by account or all."""
    value(store.put_grant(Grant(ALICE, "models", read=True, write=False)))
    value(store.put_grant(Grant(ALICE, "models", read=True, write=True)))
    value(store.put_grant(Grant(BOB, "images", read=True, write=False)))
    assert value(store.list_grants(ALICE)) == (Grant(ALICE, "models", read=True, write=True),)
    assert len(value(store.list_grants())) == 2
    assert value(store.remove_grant(ALICE, "models")) is True
    assert value(store.remove_grant(ALICE, "models")) is False


def test_publish_switches_current_and_keeps_the_last_n(store: SqlStore) -> None:
    """Each publish becomes current; only the newest three versions are kept."""
    for index in range(5):
        value(store.publish(version("bert", f"v{index}", f"small-{index}".encode())))
    current = value(store.current("models", "bert"))
    assert current is not None and current.version == "v4" and current.small_part == b"small-4"
    assert [v.version for v in value(store.versions("models", "bert"))] == ["v4", "v3", "v2"]
    value(store.publish(version("gpt", "g1")))
    assert value(store.names("models")) == ("bert", "gpt")
    assert value(store.names("other")) == ()
    assert value(store.current("models", "nope")) is None


def test_republishing_a_version_makes_it_newest(store: SqlStore) -> None:
    """Publishing an older version again (a rollback) makes it current with its new bytes."""
    value(store.publish(version("bert", "v1", b"one")))
    value(store.publish(version("bert", "v2", b"two")))
    value(store.publish(version("bert", "v1", b"one-again")))
    current = value(store.current("models", "bert"))
    assert current is not None and (current.version, current.small_part) == ("v1", b"one-again")
    assert [v.version for v in value(store.versions("models", "bert"))] == ["v1", "v2"]


def test_remove_resource_and_gc(store: SqlStore) -> None:
    """rm deletes every version; gc finds nothing left to collect after it."""
    value(store.publish(version("bert", "v1")))
    value(store.publish(version("bert", "v2")))
    assert value(store.remove_resource("models", "bert")) == 2
    assert value(store.current("models", "bert")) is None
    assert value(store.names("models")) == ()
    assert value(store.collect_garbage()) == 0


def test_fragments_are_write_once_unless_replaced(store: SqlStore) -> None:
    """The same bytes again succeed (a retry); other bytes are a Conflict unless replaced."""
    value(store.put_fragment("v1", b"\x00" * 32))
    value(store.put_fragment("v1", b"\x00" * 32))
    conflict = failure(store.put_fragment("v1", b"\x01" * 32))
    assert isinstance(conflict, Conflict) and "administrator" in conflict.describe()
    assert value(store.get_fragment("v1")) == b"\x00" * 32
    value(store.put_fragment("v1", b"\x01" * 32, replace=True))
    assert value(store.get_fragment("v1")) == b"\x01" * 32
    value(store.put_fragment("v0", b"\x02"))
    assert value(store.fragment_versions()) == ("v0", "v1")
    assert value(store.remove_fragment("v1")) is True
    assert value(store.get_fragment("v1")) is None


def test_concurrent_fragment_registrations_have_one_winner(store: SqlStore) -> None:
    """Eight different fragments for one version at once: exactly one is stored, seven conflict."""
    outcomes: list[bool] = []
    lock = threading.Lock()

    def put(index: int) -> None:
        result = store.put_fragment("race", bytes([index]) * 32)
        with lock:
            outcomes.append(is_successful(result))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 1
    stored = value(store.get_fragment("race"))
    assert stored is not None and len(set(stored)) == 1


def test_settings_and_agreed_creation(store: SqlStore) -> None:
    """setting_or_create keeps the first value; put replaces it."""
    assert value(store.get_setting("jwt")) is None
    assert value(store.setting_or_create("jwt", b"first")) == b"first"
    assert value(store.setting_or_create("jwt", b"second")) == b"first"
    value(store.put_setting("jwt", b"third"))
    assert value(store.get_setting("jwt")) == b"third"


def test_login_failures_window(store: SqlStore) -> None:
    """Failures are counted per key after a time, cleared per key and forgotten when old."""
    value(store.record_failure("a", 10.0, forget_before=0.0))
    value(store.record_failure("a", 20.0, forget_before=0.0))
    value(store.record_failure("b", 20.0, forget_before=0.0))
    assert value(store.failures_since("a", 5.0)) == (10.0, 20.0)
    assert value(store.failures_since("a", 15.0)) == (20.0,)
    value(store.record_failure("b", 30.0, forget_before=15.0))  # drops a@10
    assert value(store.failures_since("a", 0.0)) == (20.0,)
    value(store.clear_failures("a"))
    assert value(store.failures_since("a", 0.0)) == ()
    assert value(store.failures_since("b", 0.0)) == (20.0, 30.0)


def test_a_newer_schema_is_refused(store: SqlStore) -> None:
    """A store written by a newer splitvault is refused with a message saying what to do."""
    bump = _raw_write(store, f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    assert bump
    refused = failure(store.migrate())
    assert isinstance(refused, Conflict)
    assert "newer than this splitvault" in refused.describe() and "upgrade" in refused.describe()


def _raw_write(store: SqlStore, sql: str) -> bool:
    def work(cursor: object) -> bool:
        cursor.execute(sql)  # type: ignore[attr-defined]
        return True

    return value(store._run(True, work))


def test_failures_are_typed_and_name_no_password(store: SqlStore) -> None:
    """A broken query comes back as StorageFailed naming the store, never its password."""
    broken = store._run(True, lambda cursor: cursor.execute("SELECT * FROM no_such_table"))
    problem = failure(broken)
    assert isinstance(problem, StorageFailed)
    assert problem.what == f"the store at {store.where}"
    assert ":***@" in store.where or "://" not in store.where


def test_an_older_store_is_migrated_forward_and_then_refused_by_older_code(
    store: SqlStore,
) -> None:
    """A build with one more schema step migrates this store (1 -> 2, data kept); this build then
    refuses the migrated store instead of misreading it."""
    value(store.put_grant(Grant(ALICE, "models", read=True, write=False)))
    step = ("ALTER TABLE grants ADD COLUMN note TEXT",)
    newer_code = type("NewerStore", (SqlStore,), {"migrations": (*MIGRATIONS, step)})
    newer = newer_code(store._backend, store.where, keep_versions=3)
    assert value(newer.migrate()) == SCHEMA_VERSION
    assert value(newer.ping()) == SCHEMA_VERSION + 1
    assert value(newer.list_grants(ALICE)) == (Grant(ALICE, "models", read=True, write=False),)
    assert _raw_write(store, "UPDATE grants SET note = 'kept'")
    refused = failure(store.migrate())
    assert isinstance(refused, Conflict)


_published = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["v1", "v2", "v3", "v4", "v5"])),
        min_size=1,
        max_size=10,
    )
)
def test_publishing_keeps_the_newest_n_distinct_versions(
    store: SqlStore, steps: list[tuple[str, str]]
) -> None:
    """After any sequence of publishes, each name's current version is the last published and the
    kept versions are the newest three distinct ones, newest first (a model says which)."""
    folder = f"f{next(_published)}"
    model: dict[str, list[str]] = {}
    for name, tag in steps:
        value(store.publish(version(name, tag, f"{name}{tag}".encode(), folder=folder)))
        history = [t for t in model.get(name, []) if t != tag]
        model[name] = [tag, *history][:3]
    for name, kept in model.items():
        current = value(store.current(folder, name))
        assert current is not None and current.version == kept[0]
        assert current.small_part == f"{name}{kept[0]}".encode()
        assert [v.version for v in value(store.versions(folder, name))] == kept
    assert value(store.names(folder)) == tuple(sorted(model))


def test_postgres_urls_are_named_without_their_password() -> None:
    """The password leaves a URL whether it is in the user part or a query parameter."""
    assert redacted("postgresql://u:s3cret@db:5432/sv") == "postgresql://u:***@db:5432/sv"
    assert redacted("postgresql://db/sv?password=s3cret&sslmode=require") == (
        "postgresql://db/sv?password=***&sslmode=require"
    )
    assert redacted("postgresql://db/sv") == "postgresql://db/sv"
