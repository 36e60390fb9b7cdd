"""Authority: who may read, who may write, through the real reference server.

Grants are deny-by-default per folder: a stranger (an account granted nothing) is refused the
download, the listing and the key fragments; a rogue uploader (the uploader role, but no write
grant on the folder) is refused the upload and the fragment registration and changes nothing; the
role caps a grant (a downloader granted write still cannot write). Each refusal is a 403 on the
wire and a typed ``AccessDenied`` in the client; nothing is written to the output path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from splitvault.app.client.errors import UntrustedPublisherError
from splitvault.app.server.accounts import add_user, grant
from splitvault.domain import signature, wire
from splitvault.domain.errors import AccessDenied, CorruptResource, PartMismatch, UntrustedPublisher
from splitvault.domain.format_v1 import parse_header, seal_bytes
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import failure, ok
from tests.support.devices import device_token
from tests.support.moto_server import MotoS3
from tests.support.stack import (
    DOWNLOADER,
    PASSWORD,
    UPLOADER,
    Stack,
    download,
    running_stack,
    upload,
    write_model,
)

REF = ResourceRef("models", "guarded.onnx")
STRANGER = "stranger@example.com"
ROGUE = "rogue@example.com"
CAPPED = "capped@example.com"


@pytest.fixture(scope="module")
def world(
    moto_s3: MotoS3, user_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """A stack with one published resource and three extra accounts (Argon2 runs once each)."""
    root = tmp_path_factory.mktemp("authority")
    with running_stack(moto_s3, user_template, root) as stack:
        ok(add_user(stack.store, STRANGER, PASSWORD, "downloader"))
        # The rogue may write somewhere else, never to the victim's folder.
        ok(add_user(stack.store, ROGUE, PASSWORD, "uploader"))
        ok(grant(stack.store, ROGUE, ["rogue-folder"], read=True, write=True))
        ok(grant(stack.store, ROGUE, [REF.folder], read=True, write=False))
        ok(add_user(stack.store, CAPPED, PASSWORD, "downloader"))
        ok(
            grant(
                stack.store,
                CAPPED,
                [REF.folder, wire.FRAGMENTS_GRANT_FOLDER],
                read=True,
                write=True,
            )
        )
        write_model(root / "model.bin", 300_000)
        ok(upload(stack.client(UPLOADER), REF, root / "model.bin"))
        value = stack.small_part(REF)
        assert stack.fragment("v1") is None
        yield stack, value.hex()


def _auth(stack: Stack, email: str) -> dict[str, str]:
    """A device token of ``email`` (protocol 2: log in, then enrol the device)."""
    return {"Authorization": f"Bearer {device_token(stack.url, email, PASSWORD)}"}


def _forbidden(answer: httpx.Response) -> None:
    assert answer.status_code == 403, answer.text
    assert answer.json()[wire.FIELD_ERROR_CODE] == "Forbidden"


def test_a_granted_reader_downloads(world: tuple[Stack, str], tmp_path: Path) -> None:
    """The control: the downloader holds read on the folder and gets the bytes."""
    stack, _ = world
    ok(download(stack.client(DOWNLOADER, cache=tmp_path / "c"), REF, tmp_path / "out"))
    assert (tmp_path / "out").stat().st_size == 300_000


def test_a_stranger_is_refused_download_list_and_fragments(
    world: tuple[Stack, str], tmp_path: Path
) -> None:
    stack, _ = world
    out = tmp_path / "out"
    refused = failure(download(stack.client(STRANGER, cache=tmp_path / "c"), REF, out))
    assert isinstance(refused, AccessDenied), refused
    assert "no read grant" in refused.describe()
    assert not out.exists()
    headers = _auth(stack, STRANGER)
    _forbidden(httpx.get(f"{stack.url}/resources/list/{REF.folder}", headers=headers))
    body = {"file_name": REF.name}
    _forbidden(httpx.post(f"{stack.url}/resources/get/{REF.folder}", json=body, headers=headers))
    ok(stack.store.put_fragment("v-guarded", b"\x07" * 32))
    _forbidden(httpx.get(f"{stack.url}/keys/v-guarded", headers=headers))
    _forbidden(httpx.get(f"{stack.url}/keys", headers=headers))
    # The CDN config stays readable: every role needs it, and the role picks which keys it holds.
    body = {"file_name": "cdn.yaml"}
    answer = httpx.post(f"{stack.url}/resources/get/config", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


def test_a_rogue_uploader_without_write_changes_nothing(
    world: tuple[Stack, str], tmp_path: Path
) -> None:
    stack, before = world
    source = tmp_path / "trojan.bin"
    write_model(source, 200_000, seed=9)
    refused = failure(upload(stack.client(ROGUE, cache=tmp_path / "c"), REF, source))
    assert isinstance(refused, AccessDenied), refused
    assert stack.small_part(REF).hex() == before
    headers = _auth(stack, ROGUE)
    raw = httpx.post(
        f"{stack.url}/resources/{REF.folder}",
        files={"file": (REF.name, b"\x00" * 64)},
        headers=headers,
    )
    _forbidden(raw)
    _forbidden(httpx.put(f"{stack.url}/keys/v-rogue", content=b"\x01" * 32, headers=headers))
    assert stack.small_part(REF).hex() == before
    assert stack.fragment("v-rogue") is None
    # Where it does hold write, the same account publishes: the grant, not the role, decided.
    ok(upload(stack.client(ROGUE, cache=tmp_path / "c2"), ResourceRef("rogue-folder", "x"), source))


def test_the_role_caps_a_grant(world: tuple[Stack, str]) -> None:
    """A downloader granted write on the folder still may not upload or register fragments."""
    stack, before = world
    headers = _auth(stack, CAPPED)
    raw = httpx.post(
        f"{stack.url}/resources/{REF.folder}",
        files={"file": (REF.name, b"\x00" * 64)},
        headers=headers,
    )
    _forbidden(raw)
    _forbidden(httpx.put(f"{stack.url}/keys/v-capped", content=b"\x01" * 32, headers=headers))
    assert stack.small_part(REF).hex() == before
    assert stack.fragment("v-capped") is None
    # Its read grant still reads.
    listed = httpx.get(f"{stack.url}/resources/list/{REF.folder}", headers=headers)
    assert listed.json()["files"] == [REF.name]


def test_a_second_fragment_for_a_version_is_a_409_until_an_admin_replaces_it(
    world: tuple[Stack, str],
) -> None:
    stack, _ = world
    headers = _auth(stack, UPLOADER)
    first = httpx.put(f"{stack.url}/keys/v-once", content=b"\x01" * 32, headers=headers)
    assert first.status_code == 201, first.text
    second = httpx.put(f"{stack.url}/keys/v-once", content=b"\x02" * 32, headers=headers)
    assert second.status_code == 409, second.text
    assert stack.fragment("v-once") == b"\x01" * 32
    ok(stack.store.put_fragment("v-once", b"\x02" * 32, replace=True))
    assert stack.fragment("v-once") == b"\x02" * 32


# --- publisher signatures ---------------------------------------------------------------------

PUBLISHER_SEED = bytes(range(32))
ROGUE_SEED = bytes(range(1, 33))
SIGNED_REF = ResourceRef("models", "signed.onnx")


def _seed_file(directory: Path, name: str, seed: bytes) -> Path:
    path = directory / f"{name}.ed25519"
    path.write_text(seed.hex())
    path.chmod(0o600)
    return path


@pytest.fixture
def signed(stack: Stack, tmp_path: Path) -> tuple[Stack, bytes, Path]:
    """A fresh stack where the uploader published SIGNED_REF signed with PUBLISHER_SEED."""
    key_file = _seed_file(tmp_path, "publisher", PUBLISHER_SEED)
    plaintext = write_model(tmp_path / "src.bin", 250_000, seed=3)
    writer = stack.client(UPLOADER, signing_key_file=key_file, cache=tmp_path / "up")
    ok(upload(writer, SIGNED_REF, tmp_path / "src.bin"))
    ok(add_user(stack.store, ROGUE, PASSWORD, "uploader"))
    ok(grant(stack.store, ROGUE, [SIGNED_REF.folder], read=True, write=True))
    return stack, plaintext, tmp_path


def _pins() -> tuple[bytes, ...]:
    return (signature.PublisherKey.from_seed(PUBLISHER_SEED).public,)


def test_a_signed_upload_downloads_against_the_pinned_key(
    signed: tuple[Stack, bytes, Path],
) -> None:
    stack, plaintext, root = signed
    assert signature.is_signed(stack.small_part(SIGNED_REF))
    out = root / "out.bin"
    reader = stack.client(DOWNLOADER, pinned=_pins(), cache=root / "pinned")
    ok(download(reader, SIGNED_REF, out))
    assert out.read_bytes() == plaintext


def test_a_rogue_with_write_but_not_pinned_is_untrusted(signed: tuple[Stack, bytes, Path]) -> None:
    """The rogue may write the folder and signs with its own key: the server records and vouches
    for that key, but a client that pins the publisher's refuses it and writes nothing."""
    stack, _, root = signed
    rogue_key = _seed_file(root, "rogue", ROGUE_SEED)
    write_model(root / "trojan.bin", 250_000, seed=66)
    rogue = stack.client(ROGUE, signing_key_file=rogue_key, cache=root / "rogue")
    ok(upload(rogue, SIGNED_REF, root / "trojan.bin"))
    out = root / "out.bin"
    pinned = stack.client(DOWNLOADER, pinned=_pins(), cache=root / "pinned")
    refused = failure(download(pinned, SIGNED_REF, out))
    assert isinstance(refused, UntrustedPublisher), refused
    assert not out.exists()
    assert list((root / "pinned").rglob("*.big")) == []  # not a byte of the big part fetched
    assert UntrustedPublisherError.exit_code == 11
    # Without pins the client trusts the server's vouching: the rogue's key is the one recorded.
    ok(download(stack.client(DOWNLOADER, cache=root / "unpinned"), SIGNED_REF, out))


def test_an_uploader_cannot_switch_signing_keys(signed: tuple[Stack, bytes, Path]) -> None:
    """The server records the first key an account signs with and refuses any other."""
    stack, _, root = signed
    before = stack.small_part(SIGNED_REF)
    other = _seed_file(root, "other", ROGUE_SEED)
    writer = stack.client(UPLOADER, signing_key_file=other, cache=root / "other")
    refused = failure(upload(writer, SIGNED_REF, root / "src.bin"))
    assert isinstance(refused, AccessDenied), refused
    assert stack.small_part(SIGNED_REF) == before


@pytest.mark.parametrize("pinned", [True, False])
def test_a_flipped_bit_in_the_signature_is_refused(
    signed: tuple[Stack, bytes, Path], pinned: bool
) -> None:
    stack, _, root = signed
    small = bytearray(stack.small_part(SIGNED_REF))
    small[len(signature.SIGNED_MAGIC) + signature.PUBLIC_KEY_BYTES + 5] ^= 0x10
    stack.put_small_part(SIGNED_REF, bytes(small))
    out = root / "out.bin"
    reader = stack.client(DOWNLOADER, pinned=_pins() if pinned else (), cache=root / "c")
    refused = failure(download(reader, SIGNED_REF, out))
    assert isinstance(refused, UntrustedPublisher), refused
    assert not out.exists()


def test_a_downloader_holding_the_data_key_cannot_plant_content(
    signed: tuple[Stack, bytes, Path],
) -> None:
    """A downloader opens the small part, takes the data key, seals altered content under it
    (same file id, so the same object key) and plants the big part: the signed header's digest
    refuses it. Planting its own small part too: unsigned, so a pinning client refuses that."""
    stack, plaintext, root = signed
    part = signature.split_signed(stack.small_part(SIGNED_REF))
    assert part is not None
    header, _ = parse_header(part.inner).unwrap()
    assert not header.wrapped
    evil = bytes(b ^ 0x5A for b in plaintext)
    forged_small, forged_big = seal_bytes(
        SIGNED_REF, evil, dek=header.dek_field, file_id=header.file_id
    ).unwrap()
    key = stack.big_key(SIGNED_REF)
    stack.moto.s3_client().put_object(Bucket=stack.bucket, Key=key, Body=forged_big)
    out = root / "out.bin"
    reader = stack.client(DOWNLOADER, pinned=_pins(), cache=root / "c1")
    refused = failure(download(reader, SIGNED_REF, out))
    assert isinstance(refused, PartMismatch | CorruptResource), refused
    assert not out.exists()
    stack.put_small_part(SIGNED_REF, forged_small)
    refused = failure(
        download(stack.client(DOWNLOADER, pinned=_pins(), cache=root / "c2"), SIGNED_REF, out)
    )
    assert isinstance(refused, UntrustedPublisher), refused
    assert not out.exists()
