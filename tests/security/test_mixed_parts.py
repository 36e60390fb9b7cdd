"""Mixed parts: a small part with a big part it was not sealed with.

An attacker who can write to the bucket or the API's store (or hands you files) pairs the small
part of one resource with the big part of another of the same length, or with an older version of
the same resource. v1 refuses every such pair before any plaintext is written. The legacy suite
cannot: the last test pins that documented weakness.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from returns.io import IOResult

from splitvault.app.cli.main import main
from splitvault.app.client import pipeline
from splitvault.app.client.usecases import write_atomically
from splitvault.domain.errors import CorruptResource, PartMismatch
from splitvault.domain.format_v1 import seal_bytes
from splitvault.domain.legacy import open_legacy_bytes, seal_legacy_bytes
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import failure, ok
from tests.support.stack import DOWNLOADER, UPLOADER, Stack, download, upload

A = ResourceRef("models", "alpha.onnx")
B = ResourceRef("models", "beta.onnx")
SIZE = 100_000


def _model(path: Path, marker: bytes) -> bytes:
    data = (marker * 64 + os.urandom(64)) * (SIZE // (len(marker) * 64 + 64) + 1)
    path.write_bytes(data[:SIZE])
    return data[:SIZE]


def _big_object(stack: Stack, ref: ResourceRef) -> bytes:
    body: bytes = (
        stack.moto.s3_client()
        .get_object(Bucket=stack.bucket, Key=stack.big_key(ref))["Body"]
        .read()
    )
    return body


def _put_big_object(stack: Stack, ref: ResourceRef, data: bytes) -> None:
    stack.moto.s3_client().put_object(Bucket=stack.bucket, Key=stack.big_key(ref), Body=data)


def _refused_cold_download(stack: Stack, tmp_path: Path, attempt: str) -> None:
    """A downloader with an empty cache is refused A, and is left with no output and no entry."""
    reader = stack.client(DOWNLOADER, cache=tmp_path / f"cache-{attempt}")
    out = tmp_path / f"out-{attempt}" / "alpha.onnx"
    refused = failure(download(reader, A, out))
    assert isinstance(refused, PartMismatch | CorruptResource), refused
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert not reader.cache.entry_path(A).exists()  # type: ignore[attr-defined]


def test_parts_of_another_resource_are_refused(stack: Stack, tmp_path: Path) -> None:
    """B's big part under A's key, or B's small part in A's place on the server, is refused
    with nothing written; the genuine pair still downloads afterwards."""
    alpha = _model(tmp_path / "alpha.onnx", b"A")
    _model(tmp_path / "beta.onnx", b"B")
    writer = stack.client(UPLOADER)
    ok(upload(writer, A, tmp_path / "alpha.onnx"))
    ok(upload(writer, B, tmp_path / "beta.onnx"))
    big_a, big_b = _big_object(stack, A), _big_object(stack, B)
    assert len(big_a) == len(big_b) and big_a != big_b

    _put_big_object(stack, A, big_b)
    _refused_cold_download(stack, tmp_path, "big-of-b")
    _put_big_object(stack, A, big_a)

    kept = stack.small_part(A)
    stack.put_small_part(A, stack.small_part(B))
    _refused_cold_download(stack, tmp_path, "small-of-b")
    stack.put_small_part(A, kept)

    fine = stack.client(DOWNLOADER, cache=tmp_path / "cache-fine")
    ok(download(fine, A, tmp_path / "fine.onnx"))
    assert (tmp_path / "fine.onnx").read_bytes() == alpha


def test_parts_of_an_older_version_are_refused(stack: Stack, tmp_path: Path) -> None:
    """After A is re-uploaded, its old big part planted at the new version's key is refused; its
    old small part restored on the server names its own version's big part (kept beside the new
    one), so it opens whole as the old version: a rollback cannot mix versions."""
    _model(tmp_path / "v1.onnx", b"1")
    second = _model(tmp_path / "v2.onnx", b"2")
    writer = stack.client(UPLOADER)
    ok(upload(writer, A, tmp_path / "v1.onnx"))
    old_big, old_small = _big_object(stack, A), stack.small_part(A)
    ok(upload(writer, A, tmp_path / "v2.onnx"))
    new_big, new_small = _big_object(stack, A), stack.small_part(A)
    assert len(old_big) == len(new_big) and old_big != new_big

    _put_big_object(stack, A, old_big)
    _refused_cold_download(stack, tmp_path, "old-big")
    _put_big_object(stack, A, new_big)

    stack.put_small_part(A, old_small)
    old = stack.client(DOWNLOADER, cache=tmp_path / "cache-old")
    ok(download(old, A, tmp_path / "old.onnx"))
    assert (tmp_path / "old.onnx").read_bytes() != second  # the old version, whole
    stack.put_small_part(A, new_small)

    fine = stack.client(DOWNLOADER, cache=tmp_path / "cache-fine")
    ok(download(fine, A, tmp_path / "fine.onnx"))
    assert (tmp_path / "fine.onnx").read_bytes() == second


@pytest.mark.parametrize("verify_hash", [True, False])
def test_offline_open_refuses_a_mixed_pair(tmp_path: Path, verify_hash: bool) -> None:
    """The pipeline refuses A's small part with B's big part of the same length, whether or not
    it hashes the big part: the first chunk does not authenticate under A's header."""
    dek, file_id = os.urandom(32), os.urandom(16)
    small_a, _ = ok(IOResult.from_result(seal_bytes(A, b"a" * SIZE, dek=dek, file_id=file_id)))
    _, big_b = ok(IOResult.from_result(seal_bytes(A, b"b" * SIZE, dek=dek, file_id=file_id)))
    (tmp_path / "big").write_bytes(big_b)
    out = tmp_path / "out" / "alpha.onnx"
    refused = failure(
        write_atomically(
            out,
            lambda temp: pipeline.open_file(
                small_a, tmp_path / "big", temp, verify_big_digest=verify_hash
            ),
        )
    )
    assert isinstance(refused, PartMismatch | CorruptResource)
    assert list(out.parent.iterdir()) == []


def test_cli_open_of_a_mixed_pair_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``splitvault open`` with A's small part and B's big part exits 5 and writes nothing."""
    dek, file_id = os.urandom(32), os.urandom(16)
    small_a, _ = ok(IOResult.from_result(seal_bytes(A, b"a" * SIZE, dek=dek, file_id=file_id)))
    _, big_b = ok(IOResult.from_result(seal_bytes(B, b"b" * SIZE, dek=dek, file_id=file_id)))
    (tmp_path / "a.small").write_bytes(small_a)
    (tmp_path / "b.big").write_bytes(big_b)
    code = main(
        ["open", str(tmp_path / "a.small"), str(tmp_path / "b.big"), "--out", str(tmp_path / "o")]
    )
    assert code == 5
    assert "tampered" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_legacy_suite_cannot_tell_mixed_parts_and_leaks_through_its_big_part() -> None:
    """The documented weakness of the legacy suite, pinned: a mixed pair of the same length opens
    without complaint into the wrong bytes, and the big part plus the shared key alone yields
    every plaintext byte after the small part (no integrity, one key for everything)."""
    key, plaintext_a, plaintext_b = os.urandom(32), os.urandom(SIZE), os.urandom(SIZE)
    small_a, _ = seal_legacy_bytes(plaintext_a, key, os.urandom(16))
    small_b, big_b = seal_legacy_bytes(plaintext_b, key, os.urandom(16))
    mixed = ok(IOResult.from_result(open_legacy_bytes(small_a, big_b, key)))
    assert mixed not in (plaintext_a, plaintext_b)  # wrong output, and no error

    # The big part starts on a block boundary: its first block is the IV of the rest.
    decryptor = Cipher(algorithms.AES(key), modes.CBC(big_b[:16])).decryptor()
    padded = decryptor.update(big_b[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    recovered = unpadder.update(padded) + unpadder.finalize()
    assert recovered == plaintext_b[len(small_b) :]
    assert len(recovered) / len(plaintext_b) > 0.96
