"""The store contract for publisher keys and vouched fragments, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading

from splitvault.adapters.sql_store import MIGRATIONS, SCHEMA_VERSION, SqlStore
from splitvault.domain.errors import Conflict
from splitvault.domain.ports import Account, Publisher, StoredFragment
from tests.support.results import failure, value

ALICE = "alice@example.com"
BOB = "bob@example.com"
KEY_A = b"\xaa" * 32
KEY_B = b"\xbb" * 32


def _account(email: str) -> Account:
    return Account(email, "uploader", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", b"s" * 16)


def test_the_first_key_is_recorded_and_kept(store: SqlStore) -> None:
    """Trust on first use: the first key offered is recorded; another offered later is not."""
    assert value(store.publisher_key(ALICE)) is None
    assert value(store.record_publisher_key(ALICE, KEY_A, 10.0)) == KEY_A
    assert value(store.record_publisher_key(ALICE, KEY_B, 11.0)) == KEY_A
    assert value(store.publisher_key(ALICE)) == KEY_A
    assert value(store.list_publishers()) == (Publisher(ALICE, KEY_A, 10.0),)


def test_operators_re_key_and_clear(store: SqlStore) -> None:
    """set replaces (True when one was recorded), clear forgets; the next use records afresh."""
    assert value(store.set_publisher_key(BOB, KEY_B, 5.0)) is False
    value(store.record_publisher_key(ALICE, KEY_A, 1.0))
    assert value(store.set_publisher_key(ALICE, KEY_B, 2.0)) is True
    assert value(store.publisher_key(ALICE)) == KEY_B
    assert value(store.list_publishers()) == (
        Publisher(ALICE, KEY_B, 2.0),
        Publisher(BOB, KEY_B, 5.0),
    )
    assert value(store.set_publisher_key(ALICE, None, 3.0)) is True
    assert value(store.set_publisher_key(ALICE, None, 3.0)) is False
    assert value(store.publisher_key(ALICE)) is None
    assert value(store.record_publisher_key(ALICE, KEY_A, 4.0)) == KEY_A


def test_a_removed_account_leaves_no_publisher_key(store: SqlStore) -> None:
    """A new account of the same e-mail does not inherit the old one's key."""
    value(store.put_account(_account(ALICE)))
    value(store.record_publisher_key(ALICE, KEY_A, 1.0))
    assert value(store.remove_account(ALICE)) is True
    assert value(store.publisher_key(ALICE)) is None


def test_concurrent_first_keys_agree_on_one(store: SqlStore) -> None:
    """Eight first uses with eight keys at once: every caller is told the same recorded key."""
    told: list[bytes] = []
    lock = threading.Lock()

    def offer(index: int) -> None:
        recorded = value(store.record_publisher_key(ALICE, bytes([index]) * 32, float(index)))
        with lock:
            told.append(recorded)

    threads = [threading.Thread(target=offer, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(told) == 8 and len(set(told)) == 1
    assert value(store.publisher_key(ALICE)) == told[0]


def test_fragments_keep_their_publisher_write_once(store: SqlStore) -> None:
    """A registered fragment keeps who registered it under which key; a retry (same bytes and
    key) succeeds; the same bytes under another key, or other bytes, are a Conflict."""
    signed = StoredFragment("v1", b"\x01" * 32, ALICE, KEY_A)
    value(store.register_fragment(signed))
    value(store.register_fragment(signed))
    for other in (
        StoredFragment("v1", b"\x01" * 32, BOB, KEY_B),
        StoredFragment("v1", b"\x01" * 32, BOB, None),
        StoredFragment("v1", b"\x02" * 32, ALICE, KEY_A),
    ):
        assert isinstance(failure(store.register_fragment(other)), Conflict)
    assert value(store.fragment_record("v1")) == signed
    assert value(store.get_fragment("v1")) == b"\x01" * 32
    unsigned = StoredFragment("v2", b"\x03" * 32, BOB, None)
    value(store.register_fragment(unsigned))
    assert value(store.fragment_record(None)) == unsigned  # the latest registered
    assert value(store.fragment_record("v9")) is None


def test_re_keying_keeps_what_earlier_fragments_vouch_for(store: SqlStore) -> None:
    """A fragment registered before a re-key still carries the key it was registered under."""
    value(store.record_publisher_key(ALICE, KEY_A, 1.0))
    value(store.register_fragment(StoredFragment("old", b"\x01" * 32, ALICE, KEY_A)))
    value(store.set_publisher_key(ALICE, KEY_B, 2.0))
    value(store.register_fragment(StoredFragment("new", b"\x02" * 32, ALICE, KEY_B)))
    old, new = value(store.fragment_record("old")), value(store.fragment_record("new"))
    assert old is not None and old.publisher_key == KEY_A
    assert new is not None and new.publisher_key == KEY_B


def test_an_administrators_replacement_vouches_for_no_publisher(store: SqlStore) -> None:
    """``put_fragment(replace=True)`` (admin) drops the old publisher: it signed nothing new."""
    value(store.register_fragment(StoredFragment("v1", b"\x01" * 32, ALICE, KEY_A)))
    value(store.put_fragment("v1", b"\x02" * 32, replace=True))
    assert value(store.fragment_record("v1")) == StoredFragment("v1", b"\x02" * 32, "", None)
    value(store.put_fragment("v0", b"\x03" * 32))
    assert value(store.fragment_record("v0")) == StoredFragment("v0", b"\x03" * 32, "", None)


def test_schema_2_publisher_settings_move_into_the_publishers_table(store: SqlStore) -> None:
    """A store written by schema 2 (keys as ``publisher-key:<e-mail>`` settings, fragments
    without publishers) migrates: keys listed, settings gone, fragments vouch for nobody."""
    _rewind_to_schema_2(store)
    value(store.put_setting("publisher-key:alice@example.com", KEY_A))
    value(store.put_setting("unrelated", b"kept"))
    _raw(store, "INSERT INTO fragments (version, fragment) VALUES ('v1', ?)", b"\x05" * 32)

    assert value(store.migrate()) == 2

    assert value(store.ping()) == SCHEMA_VERSION
    assert value(store.list_publishers()) == (Publisher(ALICE, KEY_A, 0.0),)
    assert value(store.get_setting("publisher-key:alice@example.com")) is None
    assert value(store.get_setting("unrelated")) == b"kept"
    assert value(store.fragment_record("v1")) == StoredFragment("v1", b"\x05" * 32, "", None)


def _raw(store: SqlStore, sql: str, *params: object) -> None:
    def work(cursor: object) -> None:
        cursor.execute(sql, params)  # type: ignore[attr-defined]

    value(store._run(True, work))


def _rewind_to_schema_2(store: SqlStore) -> None:
    """Undo migration 3 by hand: what a store written by the previous release looks like."""
    assert len(MIGRATIONS) == SCHEMA_VERSION == 3
    _raw(store, "DROP TABLE publishers")
    _raw(store, "DROP TABLE fragments")
    for statement in MIGRATIONS[0]:
        if "CREATE TABLE fragments" in statement:
            _raw(store, statement.format(**store._backend.types))
    _raw(store, "UPDATE schema_version SET version = 2")
