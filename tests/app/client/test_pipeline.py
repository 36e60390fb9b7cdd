"""The file-to-file pipeline: same bytes as the in-memory format, typed failures, bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.app.client.pipeline import (
    SealedParts,
    open_file,
    open_file_legacy,
    open_with,
    seal_file,
    seal_file_legacy,
)
from splitvault.app.tools.bench import render, report_json, run_bench, targets
from splitvault.domain import errors
from splitvault.domain.digest import digest_bytes
from splitvault.domain.digest import root as digest_root
from splitvault.domain.errors import CorruptResource, NotFound, PartMismatch, WrongKey
from splitvault.domain.format_v1 import Opener, Sealer, parse_header, seal_bytes
from splitvault.domain.legacy import open_legacy_bytes, seal_legacy_bytes
from splitvault.domain.ref import ResourceRef

T = TypeVar("T")

REF = ResourceRef("models", "resnet")
DEK = bytes(range(32))
FILE_ID = bytes(range(16))
OTHER_DEK = bytes(range(1, 33))
OTHER_FILE_ID = bytes(range(2, 18))
LEGACY_KEY = bytes(range(64, 96))
LEGACY_IV = bytes(range(100, 116))
CHUNK = 4096
CT_CHUNK = CHUNK + 16

# Around chunk boundaries (plaintext and ciphertext) and the small/big cut (3 KiB of ciphertext).
EDGE_SIZES = [0, 1, 15, 16, 17, 3055, 3056, 3057, CHUNK - 1, CHUNK, CHUNK + 1]
EDGE_SIZES += [2 * CHUNK - 1, 2 * CHUNK, 2 * CHUNK + 1, 10 * CHUNK + 7, 24 * CHUNK]


def _ok(result: IOResult[T, errors.Problem]) -> T:
    assert is_successful(result), result
    return unsafe_perform_io(result.unwrap())


def _failure(result: IOResult[object, errors.Problem]) -> errors.Problem:
    assert not is_successful(result), result
    return unsafe_perform_io(result.failure())


def _data(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _seal(
    directory: Path,
    data: bytes,
    *,
    chunk_size: int = CHUNK,
    workers: int = 4,
    dek: bytes = DEK,
    file_id: bytes = FILE_ID,
    publisher_key: bytes | None = None,
    wrap_nonce: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[SealedParts, Path]:
    source = directory / "source"
    source.write_bytes(data)
    big = directory / f"big-{workers}"
    parts = _ok(
        seal_file(
            source,
            big,
            ref=REF,
            dek=dek,
            file_id=file_id,
            chunk_size=chunk_size,
            publisher_key=publisher_key,
            wrap_nonce=wrap_nonce,
            workers=workers,
            progress=progress,
        )
    )
    return parts, big


@pytest.mark.parametrize("size", EDGE_SIZES)
@pytest.mark.parametrize("workers", [1, 4])
def test_seal_file_matches_seal_bytes_and_opens(tmp_path: Path, size: int, workers: int) -> None:
    """Sealing a file gives exactly seal_bytes' parts for any worker count, and opens back."""
    data = _data(size)
    parts, big = _seal(tmp_path, data, workers=workers)
    small_expected, big_expected = seal_bytes(
        REF, data, dek=DEK, file_id=FILE_ID, chunk_size=CHUNK
    ).unwrap()
    assert parts.small_part == small_expected
    assert big.read_bytes() == big_expected
    assert parts.big_digest.length == len(big_expected)
    header, _ = parse_header(parts.small_part).unwrap()
    first, segment = header.layout.big_segmentation()
    assert (parts.big_digest.first_segment, parts.big_digest.segment_size) == (first, segment)
    assert parts.big_digest.root == digest_bytes(big_expected, first, segment)
    out = tmp_path / "out"
    assert _ok(open_file(parts.small_part, big, out, expected_ref=REF, workers=workers)) is None
    assert out.read_bytes() == data


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(min_value=0, max_value=20_000),
    chunk_size=st.sampled_from([16, 100, 1024, 4096]),
    workers=st.sampled_from([1, 2, 4]),
)
def test_any_size_and_chunking_round_trips(
    tmp_path: Path, size: int, chunk_size: int, workers: int
) -> None:
    """Any size and chunk size (even chunks wholly in the small part) gives the serial bytes."""
    data = _data(size, seed=size)
    parts, big = _seal(tmp_path, data, chunk_size=chunk_size, workers=workers)
    small_expected, big_expected = seal_bytes(
        REF, data, dek=DEK, file_id=FILE_ID, chunk_size=chunk_size
    ).unwrap()
    assert (parts.small_part, big.read_bytes()) == (small_expected, big_expected)
    out = tmp_path / "out"
    _ok(open_file(parts.small_part, big, out, workers=workers))
    assert out.read_bytes() == data


def test_progress_reports_deltas_that_add_up_to_the_bytes_moved(tmp_path: Path) -> None:
    """Progress is one delta per chunk with one worker, summing to the plaintext size (seal and
    open); with several workers the deltas are whole chunks' worth and add up the same."""
    data = _data(5 * CHUNK + 9)
    seen: list[int] = []
    parts, big = _seal(tmp_path, data, progress=seen.append, workers=1)
    assert seen == [CHUNK] * 5 + [9]
    opened: list[int] = []
    _ok(open_file(parts.small_part, big, tmp_path / "out", progress=opened.append, workers=1))
    assert opened == seen
    for workers in (2, 4):
        both: list[int] = []
        parts, big = _seal(tmp_path, data, progress=both.append, workers=workers)
        _ok(open_file(parts.small_part, big, tmp_path / "out", progress=both.append))
        assert sum(both) == 2 * len(data)
        assert all(delta > 0 and delta % CHUNK in {0, 9} for delta in both)


def test_progress_is_reported_on_the_callers_thread(tmp_path: Path) -> None:
    """The progress callback runs on the thread that called seal or open, whatever the workers."""
    data = _data(64 * CHUNK)
    threads: set[int] = set()

    def note(_: int) -> None:
        threads.add(threading.get_ident())

    parts, big = _seal(tmp_path, data, progress=note, workers=4)
    _ok(open_file(parts.small_part, big, tmp_path / "out", progress=note, workers=4))
    assert threads == {threading.get_ident()}


def test_legacy_progress_adds_up_to_the_bytes_moved(tmp_path: Path) -> None:
    """The legacy suite reports deltas too; open's last call is the padded block's plaintext."""
    data = _data(3 * CHUNK + 5)
    source = tmp_path / "source"
    source.write_bytes(data)
    sealed: list[int] = []
    parts = _ok(
        seal_file_legacy(
            source,
            tmp_path / "big",
            key=LEGACY_KEY,
            iv=LEGACY_IV,
            chunk_size=CHUNK,
            progress=sealed.append,
        )
    )
    assert sum(sealed) == len(data)
    opened: list[int] = []
    _ok(
        open_file_legacy(
            parts.small_part,
            tmp_path / "big",
            tmp_path / "out",
            key=LEGACY_KEY,
            chunk_size=CHUNK,
            progress=opened.append,
        )
    )
    assert sum(opened) == len(data) and (tmp_path / "out").read_bytes() == data


def test_open_with_runs_on_a_checked_opener(tmp_path: Path) -> None:
    """A caller that checked the small part once passes the opener down, not the bytes."""
    data = _data(3 * CHUNK + 1)
    parts, big = _seal(tmp_path, data)
    opener = Opener.start(parts.small_part, expected_ref=REF).unwrap()
    _ok(open_with(opener, big, tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == data


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, as a full disk fails with ENOSPC."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_full_output_names_the_output_not_the_input(tmp_path: Path) -> None:
    """Seal and open, v1 and legacy: when the output cannot grow, the message names the output."""
    data = _data(8 * CHUNK)
    parts, big = _seal(tmp_path, data)
    source = tmp_path / "source"
    legacy = _ok(seal_file_legacy(source, tmp_path / "lbig", key=LEGACY_KEY, iv=LEGACY_IV))
    sealed_out, opened_out = tmp_path / "sealed-out", tmp_path / "opened-out"
    with _file_size_limit(CHUNK):
        problems = [
            _failure(seal_file(source, sealed_out, ref=REF, dek=DEK, file_id=FILE_ID)),
            _failure(open_file(parts.small_part, big, opened_out)),
            _failure(seal_file_legacy(source, sealed_out, key=LEGACY_KEY, iv=LEGACY_IV)),
            _failure(
                open_file_legacy(legacy.small_part, tmp_path / "lbig", opened_out, key=LEGACY_KEY)
            ),
        ]
    expected = [sealed_out, opened_out, sealed_out, opened_out]
    for problem, out in zip(problems, expected, strict=True):
        assert isinstance(problem, errors.StorageFailed), problem
        assert (problem.what, problem.action) == (str(out), "write"), problem


def test_a_failed_read_names_the_input_as_read(tmp_path: Path) -> None:
    """A source that cannot be read is a read failure of the source, not a write of the output."""
    unreadable = tmp_path / "a directory"
    unreadable.mkdir()
    (unreadable / "x").write_bytes(b"x")
    problem = _failure(seal_file(unreadable, tmp_path / "big", ref=REF, dek=DEK, file_id=FILE_ID))
    # A directory opens read-only but has no bytes to read: fstat says 4096, pread says EISDIR.
    assert isinstance(problem, errors.StorageFailed), problem
    assert (problem.what, problem.action) == (str(unreadable), "read"), problem


def test_publisher_key_wraps_and_opens(tmp_path: Path) -> None:
    """A DEK wrapped under a publisher key opens with it and is WrongKey without it."""
    data = _data(3 * CHUNK)
    publisher = bytes(range(7, 39))
    parts, big = _seal(tmp_path, data, publisher_key=publisher, wrap_nonce=b"n" * 12)
    expected = seal_bytes(
        REF,
        data,
        dek=DEK,
        file_id=FILE_ID,
        chunk_size=CHUNK,
        publisher_key=publisher,
        wrap_nonce=b"n" * 12,
    ).unwrap()
    assert (parts.small_part, big.read_bytes()) == expected
    _ok(open_file(parts.small_part, big, tmp_path / "out", publisher_key=publisher))
    assert (tmp_path / "out").read_bytes() == data
    assert isinstance(_failure(open_file(parts.small_part, big, tmp_path / "o2")), WrongKey)


@pytest.mark.parametrize("position", [0, 5000, -1])
def test_flipped_byte_in_big_part_is_corrupt(tmp_path: Path, position: int) -> None:
    """A single flipped bit anywhere in the big part fails to authenticate."""
    parts, big = _seal(tmp_path, _data(6 * CHUNK))
    tampered = bytearray(big.read_bytes())
    tampered[position] ^= 0x01
    big.write_bytes(bytes(tampered))
    failure = _failure(open_file(parts.small_part, big, tmp_path / "out"))
    assert isinstance(failure, CorruptResource)


def test_swapped_big_parts_do_not_open(tmp_path: Path) -> None:
    """Big parts of two same-size resources swapped: each small part refuses the other's."""
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first, first_big = _seal(first_dir, _data(6 * CHUNK, seed=1))
    second, second_big = _seal(
        second_dir, _data(6 * CHUNK, seed=2), dek=OTHER_DEK, file_id=OTHER_FILE_ID
    )
    assert first_big.stat().st_size == second_big.stat().st_size
    for small, big in ((first.small_part, second_big), (second.small_part, first_big)):
        failure = _failure(open_file(small, big, tmp_path / "out"))
        assert isinstance(failure, CorruptResource | PartMismatch)


@pytest.mark.parametrize("cut", [1, CT_CHUNK, "all"])
def test_truncated_or_extended_big_part_is_part_mismatch(tmp_path: Path, cut: int | str) -> None:
    """A big part of the wrong length is refused before anything is decrypted."""
    parts, big = _seal(tmp_path, _data(6 * CHUNK))
    content = big.read_bytes()
    big.write_bytes(b"" if cut == "all" else content[: -int(cut)])
    assert isinstance(_failure(open_file(parts.small_part, big, tmp_path / "out")), PartMismatch)
    big.write_bytes(content + b"\x00")
    assert isinstance(_failure(open_file(parts.small_part, big, tmp_path / "out")), PartMismatch)


def test_big_part_hash_differing_from_header_is_part_mismatch(tmp_path: Path) -> None:
    """A header (validly MACed) naming another big-part hash is caught by the streamed SHA-256."""
    data = _data(4 * CHUNK)
    parts, big = _seal(tmp_path, data)
    sealer = Sealer.start(REF, len(data), dek=DEK, file_id=FILE_ID, chunk_size=CHUNK).unwrap()
    small_ct = parts.small_part[-sealer.layout.small_ciphertext_length :]
    lying = sealer.finish(small_ct, b"\x00" * 32)
    failure = _failure(open_file(lying, big, tmp_path / "out"))
    assert isinstance(failure, PartMismatch)
    assert "digest" in failure.detail


def test_skipping_the_sha256_still_authenticates_every_chunk(tmp_path: Path) -> None:
    """Without the SHA-256 check the hash is not consulted, but a flipped bit still fails."""
    data = _data(4 * CHUNK)
    parts, big = _seal(tmp_path, data)
    sealer = Sealer.start(REF, len(data), dek=DEK, file_id=FILE_ID, chunk_size=CHUNK).unwrap()
    small_ct = parts.small_part[-sealer.layout.small_ciphertext_length :]
    lying = sealer.finish(small_ct, b"\x00" * 32)
    out = tmp_path / "out"
    _ok(open_file(lying, big, out, verify_big_digest=False))
    assert out.read_bytes() == data
    tampered = bytearray(big.read_bytes())
    tampered[len(tampered) // 2] ^= 0x80
    big.write_bytes(bytes(tampered))
    failure = _failure(open_file(parts.small_part, big, out, verify_big_digest=False))
    assert isinstance(failure, CorruptResource)


def test_missing_files_are_not_found(tmp_path: Path) -> None:
    """A missing source or big part is NotFound, not an exception."""
    missing = tmp_path / "missing"
    sealed = seal_file(missing, tmp_path / "big", ref=REF, dek=DEK, file_id=FILE_ID)
    assert isinstance(_failure(sealed), NotFound)
    parts, _ = _seal(tmp_path, _data(100))
    assert isinstance(_failure(open_file(parts.small_part, missing, tmp_path / "out")), NotFound)


def test_bad_worker_count_is_a_programming_error(tmp_path: Path) -> None:
    """Zero workers raise instead of hanging."""
    (tmp_path / "source").write_bytes(b"x")
    with pytest.raises(ValueError, match="workers"):
        seal_file(
            tmp_path / "source", tmp_path / "big", ref=REF, dek=DEK, file_id=FILE_ID, workers=0
        )


# --- legacy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", EDGE_SIZES)
@pytest.mark.parametrize("workers", [1, 4])
def test_legacy_matches_in_memory_suite(tmp_path: Path, size: int, workers: int) -> None:
    """Legacy seal_file/open_file give and take exactly the in-memory legacy suite's parts."""
    data = _data(size)
    source = tmp_path / "source"
    source.write_bytes(data)
    big = tmp_path / "big"
    parts = _ok(
        seal_file_legacy(
            source, big, key=LEGACY_KEY, iv=LEGACY_IV, chunk_size=1024, workers=workers
        )
    )
    small_expected, big_expected = seal_legacy_bytes(data, LEGACY_KEY, LEGACY_IV)
    assert (parts.small_part, big.read_bytes()) == (small_expected, big_expected)
    whole = [hashlib.sha256(big_expected).digest()] if big_expected else []
    assert parts.big_digest.root == digest_root(len(big_expected), whole)
    out = tmp_path / "out"
    _ok(
        open_file_legacy(
            parts.small_part, big, out, key=LEGACY_KEY, chunk_size=1024, workers=workers
        )
    )
    assert out.read_bytes() == data
    assert open_legacy_bytes(small_expected, big_expected, LEGACY_KEY).unwrap() == data


def test_legacy_wrong_key_is_wrong_key(tmp_path: Path) -> None:
    """Bad padding under another key is WrongKey, found before the output is written."""
    source = tmp_path / "source"
    source.write_bytes(_data(10_000))
    parts = _ok(seal_file_legacy(source, tmp_path / "big", key=LEGACY_KEY, iv=LEGACY_IV))
    out = tmp_path / "out"
    failure = _failure(open_file_legacy(parts.small_part, tmp_path / "big", out, key=bytes(32)))
    assert isinstance(failure, WrongKey)
    assert not out.exists()


def test_legacy_truncated_or_mismatched_parts_fail(tmp_path: Path) -> None:
    """A big part cut mid-block is corrupt; a small part of the wrong length is a mismatch."""
    source = tmp_path / "source"
    source.write_bytes(_data(20_000))
    big = tmp_path / "big"
    parts = _ok(seal_file_legacy(source, big, key=LEGACY_KEY, iv=LEGACY_IV))
    content = big.read_bytes()
    big.write_bytes(content[:-1])
    failure = _failure(open_file_legacy(parts.small_part, big, tmp_path / "out", key=LEGACY_KEY))
    assert isinstance(failure, CorruptResource)
    big.write_bytes(content)
    failure = _failure(
        open_file_legacy(parts.small_part[:-16], big, tmp_path / "out", key=LEGACY_KEY)
    )
    assert isinstance(failure, PartMismatch)


# --- memory -----------------------------------------------------------------------------------

_MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from returns.pipeline import is_successful
    from returns.unsafe import unsafe_perform_io
    from splitvault.app.tools.bench import generate_file, peak_rss_of
    from splitvault.app.client.pipeline import open_file, seal_file
    from splitvault.domain.ref import ResourceRef

    size, directory = int(sys.argv[1]), Path(sys.argv[2])
    if size:
        source, big, out = directory / "source", directory / "big", directory / "out"
        generate_file(source, size)
        sealed = seal_file(source, big, ref=ResourceRef("m", "n"), dek=bytes(32),
                           file_id=bytes(16), workers=2)
        small = unsafe_perform_io(sealed.unwrap()).small_part
        assert is_successful(open_file(small, big, out, workers=2))
        assert out.stat().st_size == size
        for path in (source, big, out):
            path.unlink()
    print(json.dumps(peak_rss_of()))
    """
)


def _peak_rss(size: int, directory: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(size), str(directory)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    peak = json.loads(done.stdout)
    assert isinstance(peak, int)
    return peak


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Seal+open of 64 MiB and 256 MiB peak within a few MiB of each other, far under the size."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the peak RSS")
    baseline = _peak_rss(0, tmp_path)
    small_file = _peak_rss(64 << 20, tmp_path)
    large_file = _peak_rss(256 << 20, tmp_path)
    assert abs(large_file - small_file) < 16 << 20
    assert large_file - baseline < 64 << 20


# --- the bench's plumbing (speed itself is never asserted) ---------------------------------------


@pytest.mark.slow
def test_bench_runs_every_operation_and_reports(tmp_path: Path) -> None:
    """A tiny offline bench run measures every row, verifies outputs, renders text and JSON."""
    report = run_bench(256 << 10, repetitions=1, workdir=tmp_path, online_size=None)
    names = [m.name for m in report.measurements]
    assert names[:3] == ["dd bs=1M copy", "v1 seal", "v1 open"]
    assert "splitvault --help" in names
    copy = report.measurements[0]
    assert copy.ratio_to_copy == 1.0
    assert all(m.peak_rss > 0 and m.seconds > 0 and m.cpu_seconds > 0 for m in report.measurements)
    assert report.baseline_rss > 0
    text = render(report)
    assert "v1 seal" in text and "x copy" in text and "CPU/GiB" in text
    assert "online rows not asked for" in text
    data = json.loads(json.dumps(report_json(report)))
    assert data["size"] == 256 << 10
    assert {t["what"] for t in data["targets"]} >= {"splitvault --help CPU s (< 0.15)"}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bench_online_rows_run_against_moto(tmp_path: Path) -> None:
    """With moto installed, upload and cold download sit next to boto3 in the same run."""
    report = run_bench(1 << 20, repetitions=1, workdir=tmp_path, online_size=6 << 20)
    names = {m.name for m in report.measurements}
    assert {"splitvault upload", "boto3 upload_file", "splitvault cold download"} <= names
    assert {"boto3 download_file", "warm download 8 MiB"} <= names
    whats = {what for what, *_ in targets(report)}
    assert "splitvault upload wall / boto3 upload_file (<= 1.05)" in whats
