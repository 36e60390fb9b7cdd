"""The Cache contract, run against every Cache adapter (today: the file-system cache).

An entry is handed out only when it matches the expected length and SHA-256; a corrupted or stale
entry is discarded and filled again; a fill that stops early is resumed from the partial's size; a
partial that does not verify is never used; two concurrent fetches of one ref fill it once.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path

import pytest
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.file_cache import FileCache, file_digest
from splitvault.domain.digest import digest_bytes
from splitvault.domain.errors import PartMismatch, Problem, StorageFailed, Transient
from splitvault.domain.ports import BigPartDigest, Produce
from splitvault.domain.ref import ResourceRef

REF = ResourceRef("models", "resnet [v2].bin")  # glob characters on purpose


# A segmentation like a real resource's: a short first segment, then fixed-size ones.
FIRST_SEGMENT, SEGMENT_SIZE = 1000, 4096


def digest_of(data: bytes) -> BigPartDigest:
    """What the small part's header would say about ``data``."""
    root = digest_bytes(data, FIRST_SEGMENT, SEGMENT_SIZE)
    return BigPartDigest(len(data), root, FIRST_SEGMENT, SEGMENT_SIZE)


def blob(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def value_of(result: IOResult[Path, Problem]) -> Path:
    """The path inside a successful result."""
    assert is_successful(result), f"expected success, got {result!r}"
    return unsafe_perform_io(result.unwrap())


def failure_of(result: IOResult[Path, Problem]) -> Problem:
    """The failure inside a failed result."""
    assert not is_successful(result), f"expected a failure, got {result!r}"
    return unsafe_perform_io(result.failure())


class Source:
    """A hand-written fill: serves ``data[start:]`` (or a prefix of it) and records each call."""

    def __init__(self, data: bytes, *, stop_at: int | None = None, lie: bool = False) -> None:
        self.data = data
        self.stop_at = stop_at
        self.lie = lie
        self.starts: list[int] = []

    def __call__(self, temp: Path, start: int) -> IOResult[None, Problem]:
        self.starts.append(start)
        end = len(self.data) if self.stop_at is None else self.stop_at
        with temp.open("r+b") as handle:
            handle.seek(start)
            handle.write(self.data[start:end])
        if self.stop_at is not None and not self.lie:
            return IOFailure(Transient("CDN object", "connection reset"))
        return IOSuccess(None)


def partials(cache: FileCache) -> list[str]:
    """Names of the partial and temp files in the ref's folder."""
    folder = cache.root / REF.folder
    return sorted(
        p.name for p in folder.iterdir() if p.name.endswith(".partial") or ".tmp-" in p.name
    )


def test_miss_fills_then_hit_serves_without_filling(cache: FileCache) -> None:
    """The first fetch fills from byte 0; the second finds a verified entry and does not fill."""
    data = blob(3 * 1024 * 1024 + 5, seed=1)
    source = Source(data)
    path = value_of(cache.fetch(REF, digest_of(data), source))
    assert path == cache.root / REF.key
    assert path.read_bytes() == data
    assert value_of(cache.fetch(REF, digest_of(data), source)) == path
    assert source.starts == [0]
    assert partials(cache) == []


def test_corrupted_entry_is_discarded_and_fetched_again(
    cache: FileCache, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped byte in a cached entry is noticed, logged with the reason, and refetched."""
    data = blob(100_000, seed=2)
    path = value_of(cache.fetch(REF, digest_of(data), Source(data)))
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0x01
    path.write_bytes(bytes(raw))
    again = Source(data)
    with caplog.at_level(logging.WARNING, logger="splitvault.file_cache"):
        assert value_of(cache.fetch(REF, digest_of(data), again)).read_bytes() == data
    assert again.starts == [0]
    assert any("digest is" in record.getMessage() for record in caplog.records)


def test_stale_entry_of_another_version_is_replaced(cache: FileCache) -> None:
    """An entry from an older version (other length and hash) is replaced by the expected one."""
    old, new = blob(5000, seed=3), blob(7000, seed=4)
    value_of(cache.fetch(REF, digest_of(old), Source(old)))
    source = Source(new)
    assert value_of(cache.fetch(REF, digest_of(new), source)).read_bytes() == new
    assert source.starts == [0]


def test_truncated_fill_is_never_used(cache: FileCache) -> None:
    """A fill that claims success with half the bytes gives PartMismatch; no entry, no partial."""
    data = blob(64_000, seed=5)
    liar = Source(data, stop_at=32_000, lie=True)
    problem = failure_of(cache.fetch(REF, digest_of(data), liar))
    assert isinstance(problem, PartMismatch)
    assert not (cache.root / REF.key).exists()
    assert partials(cache) == []
    honest = Source(data)
    assert value_of(cache.fetch(REF, digest_of(data), honest)).read_bytes() == data
    assert honest.starts == [0]


def test_interrupted_fill_resumes_from_the_partial_size(cache: FileCache) -> None:
    """A fill that fails after K bytes keeps them; the next fetch asks only for bytes [K:]."""
    data = blob(200_000, seed=6)
    first = Source(data, stop_at=70_000)
    assert isinstance(failure_of(cache.fetch(REF, digest_of(data), first)), Transient)
    assert not (cache.root / REF.key).exists()
    assert len(partials(cache)) == 1
    second = Source(data)
    assert value_of(cache.fetch(REF, digest_of(data), second)).read_bytes() == data
    assert second.starts == [70_000]
    assert partials(cache) == []


def test_resumed_partial_with_wrong_bytes_is_fetched_whole_once(cache: FileCache) -> None:
    """Resuming onto a partial whose early bytes are wrong fails verification; the cache then
    fetches the part whole once more instead of failing the download."""
    data = blob(50_000, seed=7)
    failure_of(cache.fetch(REF, digest_of(data), Source(data, stop_at=10_000)))
    (partial,) = partials(cache)
    spoiled = cache.root / REF.folder / partial
    spoiled.write_bytes(b"\x00" * 10_000)
    source = Source(data)
    assert value_of(cache.fetch(REF, digest_of(data), source)).read_bytes() == data
    assert source.starts == [10_000, 0]
    assert partials(cache) == []


def test_a_part_that_never_verifies_is_a_mismatch(cache: FileCache) -> None:
    """Wrong bytes after the whole fetch too: PartMismatch, and no partial is kept."""
    data = blob(50_000, seed=7)
    failure_of(cache.fetch(REF, digest_of(data), Source(data, stop_at=10_000)))
    wrong = Source(blob(50_000, seed=70))
    assert isinstance(failure_of(cache.fetch(REF, digest_of(data), wrong)), PartMismatch)
    assert wrong.starts == [10_000, 0]
    assert partials(cache) == []


def test_resume_starts_at_the_first_gap_in_the_partial(cache: FileCache) -> None:
    """A partial with later bytes written past a never-written gap (a download killed with
    ranges in flight) resumes at the gap, rounded down to a whole MiB, not at its length."""
    mib = 1024 * 1024
    data = blob(3 * mib, seed=11)
    expected = digest_of(data)
    folder = cache.root / REF.folder
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{REF.name}.big.{expected.root.hex()[:16]}.partial"
    with partial.open("wb") as handle:
        handle.write(data[: 3 * mib // 2])
        handle.seek(2 * mib)  # leaves a hole from 1.5 MiB to 2 MiB
        handle.write(data[2 * mib : 3 * mib - 1])
    source = Source(data)
    assert value_of(cache.fetch(REF, expected, source)).read_bytes() == data
    assert source.starts == [mib]


def test_partial_of_another_version_is_removed(cache: FileCache) -> None:
    """A partial named after another hash is stale: it is removed and the fill starts at 0."""
    old, new = blob(40_000, seed=8), blob(40_000, seed=9)
    failure_of(cache.fetch(REF, digest_of(old), Source(old, stop_at=20_000)))
    (stale,) = partials(cache)
    source = Source(new)
    assert value_of(cache.fetch(REF, digest_of(new), source)).read_bytes() == new
    assert source.starts == [0]
    assert not (cache.root / REF.folder / stale).exists()


def test_partial_longer_than_the_part_starts_over(cache: FileCache) -> None:
    """A partial longer than the expected big part cannot be a prefix of it: fill from 0."""
    data = blob(1000, seed=10)
    failure_of(cache.fetch(REF, digest_of(data), Source(data, stop_at=500)))
    (partial,) = partials(cache)
    (cache.root / REF.folder / partial).write_bytes(b"\x01" * 5000)
    source = Source(data)
    assert value_of(cache.fetch(REF, digest_of(data), source)).read_bytes() == data
    assert source.starts == [0]


def test_empty_big_part_is_cached(cache: FileCache) -> None:
    """An empty big part verifies and is cached like any other."""
    path = value_of(cache.fetch(REF, digest_of(b""), Source(b"")))
    assert path.read_bytes() == b""


def test_stale_temps_are_collected_on_open(tmp_path: Path) -> None:
    """Old temp and partial files go when the cache is opened; fresh ones, entries, locks stay."""
    root = tmp_path / "cache"
    folder = root / "models"
    folder.mkdir(parents=True)
    names = {
        "old_tmp": ".a.bin.big.tmp-0123abcd",
        "old_partial": ".a.bin.big.0123456789abcdef.partial",
        "fresh_partial": ".b.bin.big.fedcba9876543210.partial",
        "entry": "a.bin.big",
        "lock": ".a.bin.lock",
    }
    for name in names.values():
        (folder / name).write_bytes(b"x")
    now = time.time()
    for key in ("old_tmp", "old_partial", "entry", "lock"):
        os.utime(folder / names[key], (now - 3 * 86400, now - 3 * 86400))
    FileCache.open(root, stale_after_seconds=86400, clock=lambda: now).unwrap()
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([names["fresh_partial"], names["entry"], names["lock"]])


def test_two_threads_fetching_one_ref_fill_it_once(cache: FileCache) -> None:
    """Concurrent fetches of one ref: one fills, the other waits and gets the verified entry."""
    data = blob(300_000, seed=11)
    calls: list[int] = []
    second_started = threading.Event()
    calls_lock = threading.Lock()

    def slow_fill(temp: Path, start: int) -> IOResult[None, Problem]:
        with calls_lock:
            calls.append(start)
        second_started.wait(timeout=10)
        time.sleep(0.2)  # scheduling aid only: let the second thread reach the lock
        with temp.open("r+b") as handle:
            handle.seek(start)
            handle.write(data[start:])
        return IOSuccess(None)

    results: list[IOResult[Path, Problem]] = []

    def fetch(signal: threading.Event | None) -> None:
        if signal is not None:
            signal.set()
        results.append(cache.fetch(REF, digest_of(data), slow_fill))

    first = threading.Thread(target=fetch, args=(None,))
    first.start()
    while not calls:
        time.sleep(0.01)
    second = threading.Thread(target=fetch, args=(second_started,))
    second.start()
    first.join()
    second.join()
    assert calls == [0]
    assert [value_of(result).read_bytes() == data for result in results] == [True, True]


def produce_bytes(data: bytes, *, claim: bytes | None = None) -> Produce:
    """A produce function writing ``data`` and reporting the digest of ``claim`` (default: data)."""

    def produce(temp: Path) -> IOResult[BigPartDigest, Problem]:
        temp.write_bytes(data)
        return IOSuccess(digest_of(data if claim is None else claim))

    return produce


def test_store_moves_a_verified_entry_into_place(cache: FileCache) -> None:
    """store writes through a temp file; the entry then serves fetches without a fill."""
    data = blob(123_456, seed=12)
    path = value_of(cache.store(REF, produce_bytes(data)))
    assert path.read_bytes() == data
    assert file_digest(path, FIRST_SEGMENT, SEGMENT_SIZE) == digest_of(data)
    source = Source(data)
    assert value_of(cache.fetch(REF, digest_of(data), source)) == path
    assert source.starts == []
    assert partials(cache) == []


def test_failed_store_keeps_the_previous_entry(cache: FileCache) -> None:
    """A produce that fails, or lies about its digest, leaves the old entry and no temp file."""
    old = blob(1000, seed=13)
    value_of(cache.store(REF, produce_bytes(old)))

    def failing(temp: Path) -> IOResult[BigPartDigest, Problem]:
        temp.write_bytes(b"half")
        return IOFailure(StorageFailed("seal", "disk full"))

    assert failure_of(cache.store(REF, failing)) == StorageFailed("seal", "disk full")
    lying = produce_bytes(blob(1000, seed=14), claim=blob(1000, seed=15))
    assert isinstance(failure_of(cache.store(REF, lying)), PartMismatch)
    assert (cache.root / REF.key).read_bytes() == old
    assert partials(cache) == []


def test_discard_removes_entry_and_partials(cache: FileCache) -> None:
    """discard removes the entry and any partial download; discarding nothing is fine."""
    data = blob(2000, seed=16)
    entry = value_of(cache.fetch(REF, digest_of(data), Source(data)))
    leftover = entry.parent / f".{REF.name}.big.{'ab' * 8}.partial"
    leftover.write_bytes(b"partial")
    cache.discard(REF)
    assert not entry.exists()
    assert not leftover.exists()
    cache.discard(ResourceRef("never", "seen"))
    assert not (cache.root / "never").exists()
