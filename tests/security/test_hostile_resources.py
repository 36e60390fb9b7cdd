"""Hostile resources: lying headers, truncated or random small parts, bad padding, flipped bits.

Every attack must end in a typed failure that is reached before any allocation proportional to
what the attacker claims (measured with ``tracemalloc``), must leave no output file, and for image
archives must never reach the container engine (a recording fake engine shows no ``load``).
Some headers here carry a *valid* MAC: a malicious uploader (or whoever hands you parts to
``splitvault open``) chooses the data key, so a MAC proves nothing about the sizes it covers.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.adapters.directory_cdn import DirectoryCdn
from splitvault.adapters.file_cache import FileCache
from splitvault.app.cli.main import main
from splitvault.app.client import images, pipeline
from splitvault.app.client.usecases import download_resource, write_atomically
from splitvault.domain.archive import seal_legacy_archive_bytes, seal_v1_archive_bytes
from splitvault.domain.errors import (
    CorruptResource,
    LimitExceeded,
    NotFound,
    PartMismatch,
    Problem,
    UnsupportedFormat,
    WrongKey,
)
from splitvault.domain.format_v1 import MAX_CHUNK_SIZE, MAX_PLAINTEXT_LENGTH, Sealer, seal_bytes
from splitvault.domain.legacy import seal_legacy_bytes
from splitvault.domain.ports import ApiFailure, VouchedFragment
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import RecordingEngine, failure, ok
from tests.support.dockerd import handmade_archive

T = TypeVar("T")
MiB = 1 << 20
ALLOCATION_CEILING = 4 * MiB
REF = ResourceRef("models", "victim.onnx")
DEK = bytes(range(32))
FILE_ID = bytes(range(16))
LEGACY_KEY = bytes(range(100, 132))
REGISTRY = "registry.test"
VERSION = "v7"
SERVICE_IMAGE = f"{REGISTRY}/api:{VERSION}"

# Offsets in the fixed header fields (README "Wire format").
CHUNK_SIZE_AT = 12
LENGTH_AT = 16
SMALL_LENGTH_AT = 40
BIG_LENGTH_AT = 44


def peak_of(action: Callable[[], T]) -> tuple[T, int]:
    """Run ``action`` under tracemalloc; return its result and the peak bytes it allocated."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def sealed(plaintext: bytes = b"model weights " * 500) -> tuple[bytes, bytes]:
    """A genuine (small, big) pair of ``REF``."""
    return ok(IOResult.from_result(seal_bytes(REF, plaintext, dek=DEK, file_id=FILE_ID)))


def forged_with_valid_mac(plaintext_length: int, chunk_size: int) -> bytes:
    """A small part whose header claims these sizes under a MAC that verifies (the attacker
    picked the data key), with random ciphertext."""
    sealer = ok(
        IOResult.from_result(
            Sealer.start(REF, plaintext_length, dek=DEK, file_id=FILE_ID, chunk_size=chunk_size)
        )
    )
    small_ct = os.urandom(sealer.layout.small_ciphertext_length)
    return sealer.finish(small_ct, hashlib.sha256(b"whatever").digest())


def patched(small: bytes, at: int, fmt: str, value: int) -> bytes:
    """``small`` with one fixed header field overwritten (the MAC no longer verifies)."""
    data = bytearray(small)
    struct.pack_into(fmt, data, at, value)
    return bytes(data)


def open_into(tmp_path: Path, small: bytes, big: bytes) -> tuple[IOResult[None, Problem], int]:
    """Open ``small`` + ``big`` through the real pipeline into an atomic output; return the
    result and the peak allocation."""
    big_path = tmp_path / "big"
    big_path.write_bytes(big)

    def run() -> IOResult[None, Problem]:
        return write_atomically(
            tmp_path / "out" / "model.onnx",
            lambda temp: pipeline.open_file(small, big_path, temp, expected_ref=REF, workers=2),
        )

    return peak_of(run)


def assert_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


# --- v1 small parts -------------------------------------------------------------------------------


def _hostile_small_parts() -> Iterator[object]:
    small, _ = sealed()
    huge = MAX_PLAINTEXT_LENGTH
    yield pytest.param(
        forged_with_valid_mac(huge, 1 << 20), PartMismatch, id="valid-mac-claims-1PiB"
    )
    yield pytest.param(
        forged_with_valid_mac(huge, 16), PartMismatch, id="valid-mac-claims-2^46-chunks"
    )
    yield pytest.param(
        forged_with_valid_mac(len(b"model weights " * 500), MAX_CHUNK_SIZE),
        CorruptResource,
        id="valid-mac-claims-64MiB-chunks",
    )
    yield pytest.param(
        patched(small, LENGTH_AT, ">Q", huge), CorruptResource, id="length-without-mac"
    )
    yield pytest.param(
        patched(small, LENGTH_AT, ">Q", huge + 1), LimitExceeded, id="length-over-the-limit"
    )
    yield pytest.param(
        patched(small, CHUNK_SIZE_AT, ">I", 0xFFFFFFFF), LimitExceeded, id="chunk-size-4GiB"
    )
    yield pytest.param(patched(small, CHUNK_SIZE_AT, ">I", 0), LimitExceeded, id="chunk-size-0")
    yield pytest.param(
        patched(small, BIG_LENGTH_AT, ">Q", 2**63), CorruptResource, id="big-length-inconsistent"
    )
    yield pytest.param(
        patched(small, SMALL_LENGTH_AT, ">I", 0xFFFFFFFF), CorruptResource, id="small-length-4GiB"
    )
    yield pytest.param(small[:-1], CorruptResource, id="truncated-by-one")
    yield pytest.param(small[:60], CorruptResource, id="truncated-in-header")
    yield pytest.param(small[:8], CorruptResource, id="magic-only")
    yield pytest.param(os.urandom(len(small)), UnsupportedFormat, id="random-bytes")
    yield pytest.param(b"", UnsupportedFormat, id="empty")
    yield pytest.param(
        b"SPLITVLT" + os.urandom(len(small) - 8),
        (UnsupportedFormat, CorruptResource, LimitExceeded),
        id="magic-then-random",
    )


@pytest.mark.parametrize(("small", "expected"), list(_hostile_small_parts()))
def test_hostile_small_parts_fail_typed_before_large_allocations(
    tmp_path: Path, small: bytes, expected: type | tuple[type, ...]
) -> None:
    """Opening a lying, truncated or random small part fails with a typed failure, allocates
    under 4 MiB whatever the header claims, and leaves no output file."""
    _, big = sealed()
    result, peak = open_into(tmp_path, small, big)
    assert isinstance(failure(result), expected)
    assert peak < ALLOCATION_CEILING, f"{peak} bytes allocated"
    assert_no_output(tmp_path)


def test_a_64mib_chunk_size_does_not_buy_64mib_buffers(tmp_path: Path) -> None:
    """A genuine tiny resource sealed with the largest chunk size opens correctly, and its
    buffers are sized by the data, not by the chunk size the header claims."""
    plaintext = b"tiny model" * 100
    small, big = ok(
        IOResult.from_result(
            seal_bytes(REF, plaintext, dek=DEK, file_id=FILE_ID, chunk_size=MAX_CHUNK_SIZE)
        )
    )
    result, peak = open_into(tmp_path, small, big)
    ok(result)
    assert (tmp_path / "out" / "model.onnx").read_bytes() == plaintext
    assert peak < ALLOCATION_CEILING, f"{peak} bytes allocated for a 1000-byte resource"


class LyingApi:
    """A ``ResourceApi`` (hand-written fake) that answers every download with one small part,
    as a compromised server can: it seals whatever it likes to the device's public key."""

    def __init__(self, small_part: bytes) -> None:
        self.small_part = small_part

    def download_small_part(self, ref: ResourceRef) -> IOResult[bytes, ApiFailure]:
        return IOSuccess(self.small_part)

    def upload_small_part(self, ref: ResourceRef, small_part: bytes) -> IOResult[None, ApiFailure]:
        return IOFailure(NotFound(str(ref)))

    def list_folder(self, folder: str) -> IOResult[tuple[str, ...], ApiFailure]:
        return IOSuccess(())


@pytest.mark.parametrize(
    "small",
    [
        pytest.param(forged_with_valid_mac(MAX_PLAINTEXT_LENGTH, 1 << 20), id="claims-1PiB"),
        pytest.param(forged_with_valid_mac(MAX_PLAINTEXT_LENGTH, 16), id="claims-2^46-chunks"),
    ],
)
def test_a_lying_api_cannot_make_a_download_allocate_or_write(tmp_path: Path, small: bytes) -> None:
    """A compromised API (it holds the device public keys, so it can seal envelopes) that
    serves a header claiming a petabyte gets a typed failure: no output, no cache entry, and
    allocations stay under 4 MiB."""
    _, big = sealed()
    cdn_root = tmp_path / "cdn"
    (cdn_root / REF.at(FILE_ID.hex()).key).parent.mkdir(parents=True)
    (cdn_root / REF.at(FILE_ID.hex()).key).write_bytes(big)
    cache = ok(FileCache.open(tmp_path / "cache"))
    out = tmp_path / "out" / "model.onnx"

    def run() -> IOResult[object, Problem]:
        return download_resource(
            REF,
            out,
            api=LyingApi(small),
            cdn=DirectoryCdn(cdn_root),
            cache=cache,
        )

    result, peak = peak_of(run)
    assert isinstance(failure(result), PartMismatch)
    assert peak < ALLOCATION_CEILING
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert not cache.entry_path(REF).exists()


def test_cli_open_refuses_a_hostile_pair_with_exit_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``splitvault open`` of a forged small part exits 5 (integrity), says why, writes nothing."""
    _, big = sealed()
    (tmp_path / "x.small").write_bytes(forged_with_valid_mac(MAX_PLAINTEXT_LENGTH, 1 << 20))
    (tmp_path / "x.big").write_bytes(big)
    out = tmp_path / "out.onnx"
    code = main(["open", str(tmp_path / "x.small"), str(tmp_path / "x.big"), "--out", str(out)])
    assert code == 5
    assert "do not belong together" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.big", "x.small"]


# --- the legacy suite -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 0x01]), WrongKey, id="bad-padding"),
        pytest.param(lambda b: b[:-5], CorruptResource, id="not-whole-blocks"),
        # The split rule still holds (the small part is at its cap), so only the padding of
        # what is now the last block is left to notice.
        pytest.param(lambda b: b[:-16], (WrongKey, PartMismatch), id="a-block-short"),
        pytest.param(lambda b: b"", (CorruptResource, PartMismatch), id="empty-big-part"),
    ],
)
def test_legacy_parts_with_bad_padding_or_length_write_nothing(
    tmp_path: Path, mangle: Callable[[bytes], bytes], expected: type | tuple[type, ...]
) -> None:
    """A legacy pair whose last block does not unpad, or whose length cannot be legacy, fails
    typed before any output is written."""
    small, big = seal_legacy_bytes(b"legacy model " * 1000, LEGACY_KEY, bytes(16))
    big_path = tmp_path / "big"
    big_path.write_bytes(mangle(big))

    def run() -> IOResult[None, Problem]:
        return write_atomically(
            tmp_path / "out" / "model.onnx",
            lambda temp: pipeline.open_file_legacy(small, big_path, temp, key=LEGACY_KEY),
        )

    result, peak = peak_of(run)
    assert isinstance(failure(result), expected)
    assert peak < ALLOCATION_CEILING
    assert_no_output(tmp_path)


def test_cli_open_of_a_legacy_pair_with_the_wrong_key_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A legacy pair opened with another key fails the padding check (or the check names the
    key) with exit 5 and no output."""
    small, big = seal_legacy_bytes(b"legacy model " * 1000, LEGACY_KEY, bytes(16))
    (tmp_path / "x.small").write_bytes(small)
    (tmp_path / "x.big").write_bytes(big)
    # A key whose decryption of the last block does not unpad (checked, so the test is stable).
    wrong = next(
        key
        for key in (hashlib.sha256(bytes([i])).digest() for i in range(256))
        if key != LEGACY_KEY
        and isinstance(
            failure(
                write_atomically(
                    tmp_path / "probe",
                    lambda temp, key=key: pipeline.open_file_legacy(  # type: ignore[misc]
                        small, tmp_path / "x.big", temp, key=key
                    ),
                )
            ),
            WrongKey,
        )
    )
    (tmp_path / "wrong.key").write_bytes(wrong)
    out = tmp_path / "out.onnx"
    argv = ["open", str(tmp_path / "x.small"), str(tmp_path / "x.big"), "--out", str(out)]
    code = main([*argv, "--legacy-key", str(tmp_path / "wrong.key")])
    assert code == 5
    assert "padding" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "probe").exists()


# --- image archives -------------------------------------------------------------------------------


class Fragments:
    """A ``KeyFragments`` fake holding one fragment."""

    def __init__(self, fragment: bytes) -> None:
        self.fragment = fragment

    def get_fragment(self, version: str) -> IOResult[bytes, ApiFailure]:
        return IOSuccess(self.fragment)

    def vouched_fragment(self, version: str) -> IOResult[VouchedFragment, ApiFailure]:
        return IOSuccess(VouchedFragment(self.fragment, None))

    def put_fragment(
        self, version: str, fragment: bytes, publisher_key: bytes | None = None
    ) -> IOResult[None, ApiFailure]:
        return IOSuccess(None)


@pytest.fixture(scope="module")
def image_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A structurally complete ``docker save`` tar naming the service's image."""
    path = tmp_path_factory.mktemp("tar") / "images.tar"
    return handmade_archive(path, SERVICE_IMAGE, config=b"{}").read_bytes()


def unlock(
    tmp_path: Path, archive: bytes, fragment: bytes
) -> tuple[IOResult[images.UnlockReport, Problem], RecordingEngine, int]:
    """Unlock ``archive`` with a recording engine; return the result, the engine and the peak."""
    path = tmp_path / "images.svlt"
    path.write_bytes(archive)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    engine = RecordingEngine(present=[SERVICE_IMAGE])

    def run() -> IOResult[images.UnlockReport, Problem]:
        return images.unlock_images(
            path,
            VERSION,
            fragments=Fragments(fragment),
            engine=engine,
            services=["api"],
            registry=REGISTRY,
            workdir=work,
        )

    result, peak = peak_of(run)
    assert list(work.iterdir()) == [], "a decrypted tar was left behind"
    return result, engine, peak


def test_a_genuine_archive_is_loaded(tmp_path: Path, image_tar: bytes) -> None:
    """The control: an untouched v1 archive reaches the engine exactly once."""
    fragment = os.urandom(32)
    archive = ok(
        IOResult.from_result(seal_v1_archive_bytes(VERSION, image_tar, fragment, FILE_ID, 4096))
    )
    result, engine, _ = unlock(tmp_path, archive, fragment)
    ok(result)
    assert len(engine.loads) == 1 and engine.loaded_bytes == [len(image_tar)]


def test_a_genuine_archive_with_64mib_chunks_does_not_buy_64mib_buffers(
    tmp_path: Path, image_tar: bytes
) -> None:
    """An archive sealed with the largest chunk size unlocks with buffers sized by its data."""
    fragment = os.urandom(32)
    archive = ok(
        IOResult.from_result(
            seal_v1_archive_bytes(VERSION, image_tar, fragment, FILE_ID, MAX_CHUNK_SIZE)
        )
    )
    result, engine, peak = unlock(tmp_path, archive, fragment)
    ok(result)
    assert len(engine.loads) == 1
    assert peak < ALLOCATION_CEILING, f"{peak} bytes allocated"


def _flip(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    "where", ["magic", "version-byte", "length", "header-mac", "first-chunk", "middle", "last-byte"]
)
def test_a_v1_archive_with_a_flipped_bit_never_reaches_docker(
    tmp_path: Path, image_tar: bytes, where: str
) -> None:
    """One flipped bit anywhere in a v1 archive is a typed failure, the engine is never asked to
    load, no decrypted tar is left, and allocations stay small."""
    fragment = os.urandom(32)
    archive = ok(
        IOResult.from_result(seal_v1_archive_bytes(VERSION, image_tar, fragment, FILE_ID, 4096))
    )
    positions = {
        "magic": 0,
        "version-byte": 8,
        "length": LENGTH_AT + 7,
        "header-mac": 200,
        "first-chunk": 400,
        "middle": len(archive) // 2,
        "last-byte": len(archive) - 1,
    }
    result, engine, peak = unlock(tmp_path, _flip(archive, positions[where]), fragment)
    assert isinstance(
        failure(result), CorruptResource | UnsupportedFormat | WrongKey | LimitExceeded
    )
    assert engine.loads == []
    assert peak < ALLOCATION_CEILING


@pytest.mark.parametrize(
    "archive",
    [
        pytest.param(os.urandom(4096 + 16), id="random-bytes-as-legacy"),
        pytest.param(b"SPLITVLT" + os.urandom(2000), id="magic-then-random"),
        pytest.param(b"SPLITVLT", id="magic-only"),
        pytest.param(b"", id="empty"),
    ],
)
def test_random_archives_never_reach_docker(tmp_path: Path, archive: bytes) -> None:
    """Random bytes, with or without the v1 magic, are refused and nothing is loaded."""
    result, engine, peak = unlock(tmp_path, archive, os.urandom(32))
    assert isinstance(failure(result), CorruptResource | UnsupportedFormat | WrongKey)
    assert engine.loads == []
    assert peak < ALLOCATION_CEILING


def test_a_legacy_archive_with_bad_padding_never_reaches_docker(
    tmp_path: Path, image_tar: bytes
) -> None:
    """A legacy archive whose last byte changed fails its padding check; nothing is loaded."""
    fragment = os.urandom(32)
    archive = seal_legacy_archive_bytes(image_tar, fragment, os.urandom(16))
    result, engine, _ = unlock(tmp_path, _flip(archive, len(archive) - 1), fragment)
    assert isinstance(failure(result), WrongKey)
    assert engine.loads == []


def test_a_v1_archive_header_claiming_huge_sizes_fails_before_allocating(
    tmp_path: Path, image_tar: bytes
) -> None:
    """A v1 archive whose header claims 64 MiB chunks and a petabyte, without the fragment's MAC,
    fails typed with small allocations and no engine call."""
    fragment = os.urandom(32)
    archive = ok(
        IOResult.from_result(seal_v1_archive_bytes(VERSION, image_tar, fragment, FILE_ID, 4096))
    )
    lying = patched(archive, CHUNK_SIZE_AT, ">I", MAX_CHUNK_SIZE)
    lying = patched(lying, LENGTH_AT, ">Q", MAX_PLAINTEXT_LENGTH)
    result, engine, peak = unlock(tmp_path, lying, fragment)
    assert isinstance(failure(result), CorruptResource)
    assert engine.loads == []
    assert peak < ALLOCATION_CEILING


def test_cli_unlock_of_a_missing_archive_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``unlock-images`` of an archive that does not exist exits 4 naming it (no traceback)."""
    for key, value in {
        "SPLITVAULT_API_URL": "http://127.0.0.1:9",
        "SPLITVAULT_EMAIL": "loader@example.com",
        "SPLITVAULT_PASSWORD": "irrelevant",
        "SPLITVAULT_CACHE_DIR": str(tmp_path / "cache"),
        "SPLITVAULT_CONFIG": str(tmp_path / "absent.yaml"),
        "SPLITVAULT_IMAGE_REGISTRY": REGISTRY,
        "SPLITVAULT_IMAGE_SERVICES": "api",
    }.items():
        monkeypatch.setenv(key, value)
    missing = tmp_path / "missing.svlt"
    code = main(["unlock-images", str(missing), "--version", VERSION])
    err = capsys.readouterr().err
    assert code == 4, err
    assert str(missing) in err and "Traceback" not in err
