"""Enrolment records a publisher's key: a client with a signing key declares it at ``POST
/devices``; the server records it for a writer whose device got in, and refuses (403) an
enrolment declaring another key than the recorded one."""

from __future__ import annotations

from pathlib import Path

import httpx

from splitvault.app.server.accounts import add_user, grant
from splitvault.domain import signature, wire
from splitvault.domain.errors import AccessDenied, HardwareMismatch
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import failure, ok
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack, upload, write_model

FIRST = signature.PublisherKey.from_seed(bytes(range(32)))
OTHER = signature.PublisherKey.from_seed(bytes(range(1, 33)))
FRESH = "fresh-publisher@example.com"


def _key_file(directory: Path, key: signature.PublisherKey, name: str) -> Path:
    path = directory / f"{name}.ed25519"
    path.write_text(key.seed.hex())
    path.chmod(0o600)
    return path


def test_the_first_enrolment_records_the_key_and_another_key_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    """Logging in with a signing key records it before any upload; a later enrolment of the
    same account with another key is a 403 naming both keys, and the record stays."""
    first = stack.client(UPLOADER, signing_key_file=_key_file(tmp_path, FIRST, "first"))
    ok(first.api.login())
    assert ok(stack.store.publisher_key(UPLOADER)) == FIRST.public

    other = stack.client(
        UPLOADER,
        signing_key_file=_key_file(tmp_path, OTHER, "other"),
        cache=tmp_path / "other-cache",
    )
    refused = failure(other.api.login())
    assert isinstance(refused, AccessDenied), refused
    message = refused.describe()
    assert signature.key_id(FIRST.public) in message and signature.key_id(OTHER.public) in message
    assert "admin publishers set" in message
    assert ok(stack.store.publisher_key(UPLOADER)) == FIRST.public
    # The recorded key still publishes.
    write_model(tmp_path / "m.bin", 50_000)
    ok(upload(first, ResourceRef("models", "enrolled.bin"), tmp_path / "m.bin"))


def test_a_reader_with_a_signing_key_records_nothing(stack: Stack, tmp_path: Path) -> None:
    """A downloader's (shared) config may name a signing key: enrolment works, nothing is kept."""
    reader = stack.client(DOWNLOADER, signing_key_file=_key_file(tmp_path, OTHER, "reader"))
    ok(reader.api.login())
    assert ok(stack.store.publisher_key(DOWNLOADER)) is None


def test_a_machine_that_does_not_get_a_device_slot_records_no_key(
    stack: Stack, tmp_path: Path
) -> None:
    """The password alone is not enough to choose the key: a second machine over the device
    limit gets 409 and the account still has no publisher key."""
    ok(add_user(stack.store, FRESH, PASSWORD, "uploader"))
    ok(grant(stack.store, FRESH, ["models"], read=True, write=True))
    ok(stack.client(FRESH, machine="owner", cache=tmp_path / "owner").api.login())
    intruder = stack.client(
        FRESH,
        machine="intruder",
        cache=tmp_path / "intruder",
        signing_key_file=_key_file(tmp_path, OTHER, "intruder"),
    )
    refused = failure(intruder.api.login())
    assert isinstance(refused, HardwareMismatch), refused
    assert ok(stack.store.publisher_key(FRESH)) is None


def test_a_malformed_publisher_key_is_a_400(stack: Stack) -> None:
    """Not 64 hex digits: refused with a message naming the field; nothing enrolled."""
    login = httpx.post(
        f"{stack.url}/{wire.LOGIN}",
        json={wire.FIELD_EMAIL: UPLOADER, wire.FIELD_PASSWORD: PASSWORD},
    )
    assert login.status_code == 200, login.text
    token = login.json()[wire.FIELD_TOKEN]
    devices_before = ok(stack.store.list_devices(UPLOADER))
    answer = httpx.post(
        f"{stack.url}/{wire.DEVICES}",
        json={
            wire.FIELD_PUBLIC_KEY: "11" * 32,
            wire.FIELD_FINGERPRINT_TAG: "22" * 32,
            wire.FIELD_PUBLISHER_KEY: "not hex",
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 400, answer.text
    assert wire.FIELD_PUBLISHER_KEY in answer.json()[wire.FIELD_MESSAGE]
    assert ok(stack.store.list_devices(UPLOADER)) == devices_before
    assert ok(stack.store.publisher_key(UPLOADER)) is None
