"""Every upload is signed, with no key file: the account's default publisher key.

Without ``publisher_signing_key_file`` a client signs with the key derived from the account's
password key at login (README "Device keys and envelopes": ``signer``). Checked through the real
server and S3: the stored small part carries that key's signature; a second, fresh client of the
same account (a CI container: no saved state) signs alike, so the server's recorded key does not
refuse it; a downloader that pins the key downloads, one that pins another key gets nothing; the
original call (``upload_big_small_resource``) signs too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from splitvault import ApiClient
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.app.client.errors import UntrustedPublisherError
from splitvault.domain import device, signature
from splitvault.domain.config import ApiCredentials
from splitvault.domain.errors import UntrustedPublisher
from splitvault.domain.ref import ResourceRef
from tests.support.results import failure, value
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack, download, upload, write_model


def _default_key(stack: Stack, email: str) -> bytes:
    """The public key the account's password and stored salt derive (what the server cannot
    compute without the password)."""
    account = value(stack.app.state.store.get_account(email))
    assert account is not None
    seed = device.publisher_seed(device.password_key(PASSWORD, account.salt))
    return signature.PublisherKey.from_seed(seed).public


def _signer(stack: Stack, ref: ResourceRef) -> bytes:
    current = value(stack.app.state.store.current(ref.folder, ref.name))
    assert current is not None
    signed = signature.split_signed(current.small_part)
    assert signed is not None, "the stored small part is not signed"
    return signed.public


def test_uploads_without_a_key_file_are_signed_by_the_account_key(
    stack: Stack, tmp_path: Path
) -> None:
    ref = ResourceRef("models", "signed-by-default.bin")
    data = write_model(tmp_path / "model.bin", 3 << 20)
    value(upload(stack.client(UPLOADER, cache=tmp_path / "ci-1"), ref, tmp_path / "model.bin"))
    expected = _default_key(stack, UPLOADER)
    assert _signer(stack, ref) == expected
    # A fresh container of the same account: no saved state, the same key, accepted.
    write_model(tmp_path / "model-2.bin", 2 << 20, seed=7)
    value(upload(stack.client(UPLOADER, cache=tmp_path / "ci-2"), ref, tmp_path / "model-2.bin"))
    assert _signer(stack, ref) == expected
    pinned = stack.client(DOWNLOADER, cache=tmp_path / "pinned", pinned=(expected,))
    value(download(pinned, ref, tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "model-2.bin").read_bytes()
    assert data != (tmp_path / "out.bin").read_bytes()
    stranger = bytes(32)  # pinning another key refuses, and writes nothing
    other = stack.client(DOWNLOADER, cache=tmp_path / "other", pinned=(stranger,))
    refused = failure(download(other, ref, tmp_path / "refused.bin"))
    assert isinstance(refused, UntrustedPublisher)
    assert not (tmp_path / "refused.bin").exists()


def _facade(stack: Stack, email: str, tmp_path: Path, cache: str, pins: str = "") -> ApiClient:
    environ = {"HOME": str(tmp_path)}
    if pins:
        environ["SPLITVAULT_PUBLISHER_KEYS"] = pins
    return ApiClient(
        ApiCredentials(stack.url, email, PASSWORD),
        cache_dir=tmp_path / cache,
        hardware=FixedHardware("machine-a"),
        environ=environ,
    )


def test_the_original_upload_call_signs_too(stack: Stack, tmp_path: Path) -> None:
    """``upload_big_small_resource`` from a path and from bytes: both signed by the account key;
    a reader pinning it loads, a reader pinning another key gets ``UntrustedPublisherError``."""
    data = write_model(tmp_path / "legacy.bin", 1 << 20)
    with _facade(stack, UPLOADER, tmp_path, "up") as client:
        client.upload_big_small_resource(str(tmp_path / "legacy.bin"), "legacy.bin", "models")
        client.upload_big_small_resource(data, "legacy-bytes.bin", "models")
    expected = _default_key(stack, UPLOADER)
    assert _signer(stack, ResourceRef("models", "legacy.bin")) == expected
    assert _signer(stack, ResourceRef("models", "legacy-bytes.bin")) == expected
    with _facade(stack, DOWNLOADER, tmp_path, "down", pins=expected.hex()) as reader:
        assert reader.load_big_small_resource("legacy-bytes.bin", "models") == data
        assert reader.load_big_small_resource("legacy.bin", "models") == data
    with (
        _facade(stack, DOWNLOADER, tmp_path, "down-2", pins=bytes(32).hex()) as wrong,
        pytest.raises(UntrustedPublisherError),
    ):
        wrong.load_big_small_resource("legacy-bytes.bin", "models")
