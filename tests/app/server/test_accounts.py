"""The operator's operations on accounts and the CDN config, over a real SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from splitvault.adapters.sqlite_store import SqliteStore
from splitvault.app.server.accounts import (
    add_user,
    canonical_email,
    cdn_config,
    cdn_config_from,
    change_password,
    reset_binding,
    set_cdn_config,
    verify_password,
)
from splitvault.domain.device import derive_device_key
from splitvault.domain.errors import ConfigInvalid, NotFound
from splitvault.domain.ports import Device
from tests.support.results import failure, value

ORIGINAL = {
    "host": "https://s3.example.com",
    "bucket": "models",
    "downloader_access_key": "RK",
    "downloader_access_secret": "rs",
    "uploader_access_key": "WK",
    "uploader_access_secret": "ws",
}


def test_the_original_cdn_yaml_fields_map_onto_ours() -> None:
    """host/downloader_*/uploader_* become endpoint/read/write; region defaults to us-east-1."""
    assert value(cdn_config_from(ORIGINAL)) == {
        "endpoint": "https://s3.example.com",
        "bucket": "models",
        "region": "us-east-1",
        "read": {"access_key_id": "RK", "secret_access_key": "rs"},
        "write": {"access_key_id": "WK", "secret_access_key": "ws"},
    }
    read_only = {k: v for k, v in ORIGINAL.items() if not k.startswith("uploader")}
    assert "write" not in value(cdn_config_from({**read_only, "region": "eu-west-1"}))


def test_a_missing_field_is_named_in_the_callers_words() -> None:
    """The field named is the file's own: 'host' in the original shape, 'endpoint' in ours."""
    without_host = {k: v for k, v in ORIGINAL.items() if k != "host"}
    assert failure(cdn_config_from(without_host)).field == "host"  # type: ignore[attr-defined]
    without_secret = {k: v for k, v in ORIGINAL.items() if k != "downloader_access_secret"}
    problem = failure(cdn_config_from(without_secret))
    assert isinstance(problem, ConfigInvalid) and problem.field == "downloader_access_secret"
    assert failure(cdn_config_from({"bucket": "b"})).field == "endpoint"  # type: ignore[attr-defined]


@given(
    secret=st.text(min_size=8, max_size=40).filter(str.strip), field=st.sampled_from(list(ORIGINAL))
)
def test_no_refusal_repeats_a_value(secret: str, field: str) -> None:
    """Whatever value is wrong or missing, the refusal names the field and never quotes a value."""
    broken: dict[str, Any] = {**ORIGINAL, "downloader_access_secret": secret}
    broken[field] = 12345 if field != "downloader_access_secret" else None
    problem = failure(cdn_config_from(broken))
    assert isinstance(problem, ConfigInvalid)
    assert secret not in problem.describe() and "12345" not in problem.describe()


def test_users_are_created_replaced_and_reset(tmp_path: Path) -> None:
    """add_user canonicalises the e-mail; re-adding or a new password bumps the generation; a
    binding reset revokes the enrolled devices and bumps it again."""
    data = tmp_path / "data"
    value(add_user(data, "  Alice@Example.COM ", "first", "uploader"))
    value(add_user(data, "alice@example.com", "second", "admin"))
    value(change_password(data, "ALICE@example.com", "third"))
    assert isinstance(failure(change_password(data, "nobody@example.com", "x")), NotFound)
    with value(SqliteStore.open(data)) as store:
        alice = value(store.get_account(canonical_email("Alice@Example.com")))
        assert alice is not None and alice.role == "admin" and alice.generation == 2
        assert verify_password("third", alice.password_hash)
        assert not verify_password("second", alice.password_hash)
        key = derive_device_key(bytes(32), "fp")
        device = Device(key.device_id, alice.email, key.public, b"tag", "active", 0.0)
        value(store.put_device(device))
    assert value(reset_binding(data, "alice@example.com")) is True
    assert value(reset_binding(data, "alice@example.com")) is False
    assert value(reset_binding(data, "nobody@example.com")) is False
    with value(SqliteStore.open(data)) as store:
        alice = value(store.get_account("alice@example.com"))
        assert alice is not None and alice.generation == 3
        assert [d.status for d in value(store.list_devices(alice.email))] == ["revoked"]


def test_the_cdn_config_is_stored_in_our_shape(tmp_path: Path) -> None:
    """set_cdn_config from the original fields stores our shape, read back by cdn_config."""
    data = tmp_path / "data"
    value(set_cdn_config(data, ORIGINAL))
    with value(SqliteStore.open(data)) as store:
        stored = value(cdn_config(store))
    assert stored is not None and stored["endpoint"] == "https://s3.example.com"
    assert stored["write"] == {"access_key_id": "WK", "secret_access_key": "ws"}
