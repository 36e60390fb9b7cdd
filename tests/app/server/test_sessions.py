"""Sessions and devices end to end: what ends a session, who gets an envelope, who is throttled.

Every test runs the reference server on loopback; the operator's actions go through the real
``splitvault admin`` CLI in a separate process (as an operator runs it), the client's through the
HTTP adapter or raw HTTP (``tests.support.devices``). The source address is the peer address, and
the whole of 127/8 is loopback on Linux: a client bound to 127.0.0.2 is "another address".
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from splitvault.app.server.runner import RunningServer
from splitvault.domain import device
from splitvault.domain.errors import AccessDenied, AuthFailed, HardwareMismatch, WrongKey
from splitvault.domain.ref import ResourceRef
from tests.support.devices import derive, device_login, enrol, login_answer, sealed_of
from tests.support.results import failure, value
from tests.support.server_fixtures import served, user_template  # noqa: F401 - fixtures
from tests.support.server_world import (
    DOWNLOADER,
    PASSWORD,
    UPLOADER,
    AppSlot,
    ServerWorld,
    running_world,
)

REF = ResourceRef("models", "session.small")
NEW_PASSWORD = "a brand new password"


@pytest.fixture
def world(
    user_template: Path, tmp_path: Path, served: tuple[RunningServer, AppSlot]
) -> Iterator[ServerWorld]:
    with running_world(user_template, tmp_path, served) as running:
        value(running.client(UPLOADER).upload_small_part(REF, b"the small part"))
        yield running


def _admin(world: ServerWorld, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``splitvault admin --data DIR ARGV`` in its own process, as an operator runs it."""
    command = [sys.executable, "-m", "splitvault.app.cli.main", "admin", *argv]
    done = subprocess.run(
        [*command, "--data", str(world.data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def _download(http: httpx.Client, token: str) -> httpx.Response:
    return http.post(
        f"/resources/get/{REF.folder}",
        json={"file_name": REF.name},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_a_password_change_through_the_cli_ends_old_sessions(world: ServerWorld) -> None:
    """After ``admin users passwd``: the old token is 401 SessionEnded, the client with the old
    password fails as AuthFailed (no retry loop), the new password logs in on the same machine
    (its device enrols afresh: the old key came from the old password) and downloads."""
    old_client = world.client(DOWNLOADER)
    assert value(old_client.download_small_part(REF)) == b"the small part"
    with httpx.Client(base_url=world.url, timeout=30) as http:
        old = device_login(http, DOWNLOADER, PASSWORD)
        assert _download(http, old.token).status_code == 200
        _admin(world, "users", "passwd", DOWNLOADER, stdin=NEW_PASSWORD + "\n")
        ended = _download(http, old.token)
        assert ended.status_code == 401 and ended.json()["ErrorCode"] == "SessionEnded"
    assert isinstance(failure(old_client.download_small_part(REF)), AuthFailed)
    fresh = world.client(DOWNLOADER, NEW_PASSWORD)
    assert value(fresh.download_small_part(REF)) == b"the small part"


def test_revoking_a_device_through_the_cli_ends_its_sessions(world: ServerWorld) -> None:
    """After ``admin devices revoke``: the token is 401, the client's re-login is refused at
    enrolment (403 DeviceRevoked: AccessDenied, never an envelope), and ``approve`` lets it
    back in."""
    client = world.client(DOWNLOADER)
    assert value(client.download_small_part(REF)) == b"the small part"
    key = client.device_key()
    assert key is not None
    with httpx.Client(base_url=world.url, timeout=30) as http:
        login = device_login(http, DOWNLOADER, PASSWORD)  # the same machine: the same device
        assert login.key.device_id == key.device_id
        _admin(world, "devices", "revoke", key.device_id, "--yes")
        assert _download(http, login.token).status_code == 401
    refused = failure(client.download_small_part(REF))
    assert isinstance(refused, AccessDenied) and "revoked" in refused.detail
    _admin(world, "devices", "approve", key.device_id)
    assert value(client.download_small_part(REF)) == b"the small part"


def test_a_token_from_device_a_gets_envelopes_only_a_can_open(world: ServerWorld) -> None:
    """A's token used from elsewhere still gets envelopes sealed to A: B's key (the same account
    and password, another machine) does not open them; a never-enrolled machine gets no device
    token at all (409 at enrolment)."""
    with httpx.Client(base_url=world.url, timeout=30) as http:
        a = device_login(http, DOWNLOADER, PASSWORD, machine="machine-a")
        stolen = _download(http, a.token)
        assert stolen.status_code == 200
        sealed = sealed_of(stolen)
        assert sealed.device == a.key.device_id
        b = derive(PASSWORD, a.salt, "machine-b")
        forged = device.Sealed(sealed.envelope, b.device_id, sealed.version)  # lie about it
        assert isinstance(
            device.open_delivered(sealed, b, "small-part", str(REF)).failure(), WrongKey
        )
        assert isinstance(
            device.open_delivered(forged, b, "small-part", str(REF)).failure(), WrongKey
        )
        assert device.open_delivered(sealed, a.key, "small-part", str(REF)).unwrap() == (
            b"the small part"
        )
        login = login_answer(http, DOWNLOADER, PASSWORD).json()
        never = enrol(http, login["token"], b)
        assert never.status_code == 409 and never.json()["ErrorCode"] == "HardwareMismatch"
        assert _download(http, login["token"]).status_code == 401  # the enrolment token


def test_a_pending_device_waits_for_the_operator(
    user_template: Path, tmp_path: Path, served: tuple[RunningServer, AppSlot]
) -> None:
    """With ``approve_devices``, a second machine is 409 DevicePending with the command to run;
    after ``admin devices approve`` it downloads."""
    with running_world(user_template, tmp_path, served, approve_devices=True) as world:
        value(world.client(UPLOADER).upload_small_part(REF, b"the small part"))
        value(world.client(DOWNLOADER, machine="first").download_small_part(REF))
        second = world.client(DOWNLOADER, machine="second")
        pending = failure(second.download_small_part(REF))
        assert isinstance(pending, HardwareMismatch) and pending.error_code == "DevicePending"
        assert "splitvault admin devices approve" in pending.message
        device_id = pending.message.split("approve ", 1)[1].split(")", 1)[0]
        _admin(world, "devices", "approve", device_id)
        assert value(second.download_small_part(REF)) == b"the small part"


def test_100_wrong_passwords_from_one_address_lock_nobody_else_out(world: ServerWorld) -> None:
    """100 wrong passwords for the owner's account from 127.0.0.2: Argon2id runs for the first
    few only (then 429 before it), the owner logs in from 127.0.0.1, and a token issued before
    keeps downloading throughout."""
    owner = world.client(DOWNLOADER)
    assert value(owner.download_small_part(REF)) == b"the small part"
    attacker = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=world.url, transport=attacker, timeout=30) as http:
        statuses = [
            http.post("/login", json={"email": DOWNLOADER, "password": f"guess-{n}"}).status_code
            for n in range(100)
        ]
    assert set(statuses) == {401, 429} and statuses[:5] == [401] * 5
    assert world.stats.login_failures == 5  # Argon2id ran five times, not a hundred
    assert value(owner.download_small_part(REF)) == b"the small part"  # the old token
    fresh = world.client(DOWNLOADER)
    value(fresh.login())
    assert value(fresh.download_small_part(REF)) == b"the small part"


def test_concurrent_logins_of_one_machine_are_one_device(world: ServerWorld) -> None:
    """Eight logins of the same machine at once all enrol (the same device, never counted
    against the account's limit of one): one device in the store."""
    with httpx.Client(base_url=world.url, timeout=30) as http:
        login = login_answer(http, DOWNLOADER, PASSWORD).json()
    key = derive(PASSWORD, bytes.fromhex(login["salt"]), "machine-a")
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def enrol_once() -> None:
        with httpx.Client(base_url=world.url, timeout=30) as http:
            token = login_answer(http, DOWNLOADER, PASSWORD).json()["token"]
            barrier.wait(timeout=30)
            statuses.append(enrol(http, token, key).status_code)

    threads = [threading.Thread(target=enrol_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 8
    assert [d.device_id for d in value(world.store.list_devices(DOWNLOADER))] == [key.device_id]


def test_eight_machines_enrolling_at_once_get_one_device_in(world: ServerWorld) -> None:
    """Eight *different* machines of one account enrolling at the same instant under the limit
    of one: exactly one gets in (200), seven get 409 HardwareMismatch, one device is stored."""
    with httpx.Client(base_url=world.url, timeout=30) as http:
        login = login_answer(http, DOWNLOADER, PASSWORD).json()
    salt = bytes.fromhex(login["salt"])
    keys = [derive(PASSWORD, salt, f"machine-{index}") for index in range(8)]
    barrier = threading.Barrier(8)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def enrol_once(index: int) -> None:
        with httpx.Client(base_url=world.url, timeout=30) as http:
            token = login_answer(http, DOWNLOADER, PASSWORD).json()["token"]
            barrier.wait(timeout=30)
            answer = enrol(http, token, keys[index])
            code = answer.json().get("ErrorCode", "") if answer.status_code != 200 else ""
            with lock:
                answers.append((answer.status_code, code))

    threads = [threading.Thread(target=enrol_once, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answers) == [(200, "")] + [(409, "HardwareMismatch")] * 7
    assert len(value(world.store.list_devices(DOWNLOADER))) == 1
