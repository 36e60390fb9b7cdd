"""The seed-compatible facade over real HTTP and S3: original names, typed exceptions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splitvault import ApiClient, ApiCredentials
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.app.client.errors import (
    AuthError,
    HardwareMismatchError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
)
from splitvault.domain.ref import ResourceRef
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack


def client(stack: Stack, email: str, tmp_path: Path, machine: str = "m1") -> ApiClient:
    return ApiClient(
        ApiCredentials(stack.url, email, PASSWORD),
        cache_dir=tmp_path / f"cache-{email}-{machine}",
        hardware=FixedHardware(machine),
        environ={"HOME": str(tmp_path)},
    )


def test_original_methods_round_trip(stack: Stack, tmp_path: Path) -> None:
    """upload_big_small_resource / load_big_small_resource / list_files / upload_file /
    load_bytes work under their original names."""
    data = os.urandom(2_000_000)
    (tmp_path / "weights.bin").write_bytes(data)
    (tmp_path / "labels.txt").write_bytes(b"cat\ndog\n")
    with client(stack, UPLOADER, tmp_path) as up:
        up.login()
        up.upload_big_small_resource(tmp_path / "weights.bin", "weights.bin", "models")
        up.upload_file("labels.txt", b"cat\ndog\n", "models")
    with client(stack, DOWNLOADER, tmp_path) as down:
        assert set(down.list_files("models")) >= {"weights.bin", "labels.txt"}
        assert down.load_big_small_resource("weights.bin", "models") == data
        assert down.load_bytes("labels.txt", "models") == b"cat\ndog\n"
        report = down.download_resource_file("weights.bin", "models", tmp_path / "o" / "w.bin")
        assert report.cache_hit is True
        assert (tmp_path / "o" / "w.bin").read_bytes() == data


def test_facade_raises_typed_exceptions(stack: Stack, tmp_path: Path) -> None:
    """Wrong password, unknown resource, bad name, second machine: each its own exception."""
    with (
        ApiClient(
            ApiCredentials(stack.url, DOWNLOADER, "wrong password"),
            cache_dir=tmp_path / "c",
            environ={"HOME": str(tmp_path)},
        ) as bad,
        pytest.raises(AuthError),
    ):
        bad.login()
    with client(stack, UPLOADER, tmp_path) as up:
        up.upload_file("anything", b"bound", "models")
    with client(stack, DOWNLOADER, tmp_path) as down:
        # A fingerprinted request binds the account to m1 (a download that misses the cache
        # no longer fetches cdn.yaml first, so a missing resource binds nothing).
        assert down.load_bytes("anything", "models") == b"bound"
        with pytest.raises(NotFoundError):
            down.download_resource_file("absent.bin", "models", tmp_path / "x.bin")
        with pytest.raises(InvalidNameError):
            down.download_resource_file("../etc/passwd", "models", tmp_path / "x.bin")
        assert not (tmp_path / "x.bin").exists()
    with client(stack, DOWNLOADER, tmp_path, machine="m2") as other:
        with pytest.raises(HardwareMismatchError) as raised:
            other.load_bytes("anything", "models")
        assert raised.value.failure.error_code == "HardwareMismatch"  # type: ignore[union-attr]


def test_direct_cdn_transfers_and_switching_accounts(stack: Stack, tmp_path: Path) -> None:
    """upload_to_cdn/download_from_cdn move raw objects; set_credentials_from_dict(email,
    password) switches the account, whose role then decides the CDN keys."""
    blob = os.urandom(100_000)
    with client(stack, UPLOADER, tmp_path) as up:
        up.upload_to_cdn("scratch", "raw.bin.big", blob)
        assert up.download_from_cdn("scratch", "raw.bin.big") == blob
    s3 = stack.moto.s3_client()
    assert s3.get_object(Bucket=stack.bucket, Key="scratch/raw.bin.big")["Body"].read() == blob
    with client(stack, DOWNLOADER, tmp_path) as down:
        assert down.download_from_cdn("scratch", "raw.bin") == blob
        with pytest.raises(AuthError):
            down.upload_to_cdn("scratch", "evil.big", b"x")
        down.set_credentials_from_dict(UPLOADER, PASSWORD)
        down.upload_to_cdn("scratch", "now-allowed.big", b"y")
        with pytest.raises(AuthError):
            down.set_credentials_from_dict(UPLOADER, "wrong password")


def test_tampered_download_raises_integrity_error(stack: Stack, tmp_path: Path) -> None:
    """A big part changed on the CDN is refused with IntegrityError and no output file."""
    (tmp_path / "m.bin").write_bytes(os.urandom(500_000))
    with client(stack, UPLOADER, tmp_path) as up:
        up.upload_resource_file(tmp_path / "m.bin", "m.bin", "models")
    s3 = stack.moto.s3_client()
    key = stack.big_key(ResourceRef("models", "m.bin"))
    body = bytearray(s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(Bucket=stack.bucket, Key=key, Body=bytes(body))
    with client(stack, DOWNLOADER, tmp_path) as down, pytest.raises(IntegrityError):
        down.download_resource_file("m.bin", "models", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
