"""The main job over real HTTP and real S3: upload by an uploader, download by a downloader."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.atomic_file import FlushBehind
from splitvault.app.client import usecases
from splitvault.domain.errors import AccessDenied, HardwareMismatch, Problem
from splitvault.domain.ref import ResourceRef
from tests.support.moto_server import MotoS3
from tests.support.stack import (
    DOWNLOADER,
    UPLOADER,
    Stack,
    download,
    running_stack,
    upload,
)

REF = ResourceRef("models", "resnet 50.onnx")
MiB = 1 << 20


def model(path: Path, size: int, seed: bytes = b"w") -> bytes:
    """Write a recognisable plaintext: a repeated marker so leaks are easy to spot."""
    data = (seed * 7 + b"-WEIGHTS-" + os.urandom(16)) * (size // 32 + 1)
    path.write_bytes(data[:size])
    return data[:size]


def ok(result: IOResult[object, Problem]) -> object:
    assert is_successful(result), unsafe_perform_io(result.failure())
    return unsafe_perform_io(result.unwrap())


def failure(result: IOResult[object, Problem]) -> Problem:
    assert not is_successful(result), "expected a failure"
    value: Problem = unsafe_perform_io(result.failure())
    return value


def test_upload_then_download_cold_and_warm(stack: Stack, tmp_path: Path) -> None:
    """The downloader gets the uploader's exact bytes, first from the CDN, then from its cache."""
    plaintext = model(tmp_path / "model.onnx", 3 * MiB + 123)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    reader = stack.client(DOWNLOADER)
    cold = ok(download(reader, REF, tmp_path / "out" / "cold.onnx"))
    warm = ok(download(reader, REF, tmp_path / "out" / "warm.onnx"))
    assert (tmp_path / "out" / "cold.onnx").read_bytes() == plaintext
    assert (tmp_path / "out" / "warm.onnx").read_bytes() == plaintext
    assert cold.cache_hit is False  # type: ignore[attr-defined]
    assert warm.cache_hit is True  # type: ignore[attr-defined]
    # Cold: every chunk (4 of 1 MiB) was opened as its bytes arrived, none from the entry after;
    # warm: all from the entry.
    assert cold.chunks_opened_in_flight == 4  # type: ignore[attr-defined]
    assert warm.chunks_opened_in_flight == 0  # type: ignore[attr-defined]


def test_a_cold_download_flushes_its_output_while_the_bytes_arrive(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output's temp file is fdatasynced during the download (every MiB here, 32 MiB by
    default), so the fsync before its rename has little left; what lands is the right file."""
    plaintext = model(tmp_path / "model.onnx", 3 * MiB + 5)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    monkeypatch.setattr(usecases, "FlushBehind", functools.partial(FlushBehind, every=MiB))
    flushed: list[str] = []
    real = os.fdatasync

    def recorded(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recorded)
    out = tmp_path / "out" / "cold.onnx"
    ok(download(stack.client(DOWNLOADER), REF, out))
    assert out.read_bytes() == plaintext
    assert any(Path(path).name.startswith(f".{out.name}.tmp-") for path in flushed), flushed


def test_small_part_on_the_server_never_holds_plaintext(stack: Stack, tmp_path: Path) -> None:
    """The stored small part and the bucket object contain no 16-byte run of the plaintext."""
    plaintext = model(tmp_path / "model.onnx", 64 * 1024)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    small = stack.small_part(REF)
    big = (
        stack.moto.s3_client()
        .get_object(Bucket=stack.bucket, Key=stack.big_key(REF))["Body"]
        .read()
    )
    assert 0 < len(small) <= 4096
    for start in range(0, 8192, 16):
        window = plaintext[start : start + 16]
        assert window not in small
        assert window not in big


def test_downloader_cannot_upload(stack: Stack, tmp_path: Path) -> None:
    """A downloader's upload is refused and leaves nothing at the API or in the bucket."""
    model(tmp_path / "model.onnx", 100_000)
    result = upload(stack.client(DOWNLOADER), REF, tmp_path / "model.onnx")
    assert isinstance(failure(result), AccessDenied)
    assert not stack.has_small_part(REF)
    listing = stack.moto.s3_client().list_objects_v2(Bucket=stack.bucket)
    assert listing.get("KeyCount", 0) == 0


def test_second_machine_is_refused(stack: Stack, tmp_path: Path) -> None:
    """The account's first device is its only one by default; another gets a 409 that says
    what to do, and nothing is written."""
    model(tmp_path / "model.onnx", 50_000)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    ok(download(stack.client(DOWNLOADER, machine="box-1"), REF, tmp_path / "a.onnx"))
    refused = failure(download(stack.client(DOWNLOADER, machine="box-2"), REF, tmp_path / "b.onnx"))
    assert isinstance(refused, HardwareMismatch)
    assert refused.error_code == "HardwareMismatch"
    assert "revoke" in refused.message
    assert not (tmp_path / "b.onnx").exists()


def test_expired_token_is_refreshed_transparently(
    moto_s3: MotoS3, user_template: Path, tmp_path: Path
) -> None:
    """With 1-second tokens, a download after expiry logs in again by itself and succeeds."""
    with running_stack(moto_s3, user_template, tmp_path, token_lifetime=1.0) as short:
        plaintext = model(tmp_path / "model.onnx", 20_000)
        ok(upload(short.client(UPLOADER), REF, tmp_path / "model.onnx"))
        reader = short.client(DOWNLOADER)
        ok(download(reader, REF, tmp_path / "first.onnx"))
        logins = reader.api.logins
        # Whole-second claims: a 1-second token lives 1-2 s, so 2.5 s is past any expiry.
        time.sleep(2.5)
        ok(download(reader, REF, tmp_path / "second.onnx"))
        assert reader.api.logins > logins
        assert (tmp_path / "second.onnx").read_bytes() == plaintext


def test_a_5xx_burst_is_retried(stack: Stack, tmp_path: Path) -> None:
    """Three 503s in a row from the API are retried and the download succeeds."""
    plaintext = model(tmp_path / "model.onnx", 20_000)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    reader = stack.client(DOWNLOADER)
    ok(reader.api.login())
    stack.faults.fail_next(3, status=503)
    ok(download(reader, REF, tmp_path / "out.onnx"))
    assert stack.faults.injected == 3
    assert (tmp_path / "out.onnx").read_bytes() == plaintext


def test_stale_cache_entry_is_replaced(stack: Stack, tmp_path: Path) -> None:
    """After a re-upload, the cached big part no longer matches and is fetched again."""
    model(tmp_path / "v1.onnx", 300_000, seed=b"1")
    second = model(tmp_path / "v2.onnx", 300_000, seed=b"2")
    writer = stack.client(UPLOADER)
    reader = stack.client(DOWNLOADER)
    ok(upload(writer, REF, tmp_path / "v1.onnx"))
    ok(download(reader, REF, tmp_path / "out1.onnx"))
    ok(upload(writer, REF, tmp_path / "v2.onnx"))
    report = ok(download(reader, REF, tmp_path / "out2.onnx"))
    assert report.cache_hit is False  # type: ignore[attr-defined]
    assert (tmp_path / "out2.onnx").read_bytes() == second


def test_corrupted_cache_entry_is_refetched(stack: Stack, tmp_path: Path) -> None:
    """A flipped byte in the cached big part is detected and the entry fetched again."""
    plaintext = model(tmp_path / "model.onnx", 300_000)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    reader = stack.client(DOWNLOADER)
    first = ok(download(reader, REF, tmp_path / "a.onnx"))
    cached: Path = first.cache_path  # type: ignore[attr-defined]
    with cached.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0x40]))
    again = ok(download(reader, REF, tmp_path / "b.onnx"))
    assert again.cache_hit is False  # type: ignore[attr-defined]
    assert (tmp_path / "b.onnx").read_bytes() == plaintext


def test_least_privilege_keys_work_end_to_end(stack: Stack, tmp_path: Path) -> None:
    """With IAM enforced, the uploader's write keys upload and the downloader's read keys
    download; the downloader's client never holds the write keys."""
    plaintext = model(tmp_path / "model.onnx", 6 * MiB)
    with stack.moto.enforce_iam():
        ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
        reader = stack.client(DOWNLOADER)
        ok(download(reader, REF, tmp_path / "out.onnx"))
        cdn = ok(reader.cdn(write=False))
        assert stack.write_keys.secret_access_key not in repr(vars(cdn))
        assert not getattr(cdn, "writable", True)
    assert (tmp_path / "out.onnx").read_bytes() == plaintext


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden"])
def test_hostile_names_never_reach_the_server(name: str) -> None:
    """Names that could escape a directory are refused before any request is made."""
    assert not is_successful(ResourceRef.parse("models", name).map(lambda ref: ref))


def test_tampering_that_hides_from_the_stamp_is_caught_on_open(
    stack: Stack, tmp_path: Path
) -> None:
    """An entry changed in place with its mtime restored passes the cheap stamp check, fails
    chunk authentication on open, and is fetched again: the output is still the right bytes."""
    plaintext = model(tmp_path / "model.onnx", 300_000)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    reader = stack.client(DOWNLOADER)
    first = ok(download(reader, REF, tmp_path / "a.onnx"))
    cached: Path = first.cache_path  # type: ignore[attr-defined]
    before = cached.stat()
    with cached.open("r+b") as handle:
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = ok(download(reader, REF, tmp_path / "b.onnx"))
    assert again.cache_hit is False  # type: ignore[attr-defined]
    assert (tmp_path / "b.onnx").read_bytes() == plaintext
