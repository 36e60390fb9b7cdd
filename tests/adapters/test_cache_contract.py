"""The Cache contract, run against every Cache adapter (today: the file-system cache).

An entry is handed out only when it matches the expected digest; a fill keeps every segment that
landed and the next one asks only for the holes (also after the process died); a new version
never costs the old entry before it is complete; a bound evicts the least recently used entries
but never one in use; a full disk leaves no partial behind.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters import ranges as ranges_module
from splitvault.adapters.atomic_file import temp_name_for
from splitvault.adapters.file_cache import (
    PROBE_ABOVE_RANGES,
    FileCache,
    file_digest,
    version_of,
)
from splitvault.domain.digest import digest_bytes
from splitvault.domain.errors import PartMismatch, Problem, StorageFailed, Transient
from splitvault.domain.ports import BigPartDigest, Produce, RangeSink, Span
from splitvault.domain.ref import ResourceRef

REF = ResourceRef("models", "resnet [v2].bin")  # glob characters on purpose

# A segmentation like a real resource's: a short first segment, then fixed-size ones.
FIRST_SEGMENT, SEGMENT_SIZE = 1000, 4096
RANGE = 4 * SEGMENT_SIZE


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


def keep_path(path: Path) -> IOResult[Path, Problem]:
    """A ``use`` that only hands the entry's path back."""
    return IOSuccess(path)


class Source:
    """A hand-written fill serving ``data``'s ranges in odd-sized pieces, recording each call.

    ``break_if(low, high)`` makes that range stop half-way (a dropped connection); ``lie``
    claims success anyway.
    """

    def __init__(
        self,
        data: bytes,
        *,
        break_if: Callable[[int, int], bool] | None = None,
        lie: bool = False,
    ) -> None:
        self.data = data
        self.break_if = break_if
        self.lie = lie
        self.calls: list[list[Span]] = []
        self.served = 0

    def __call__(self, ranges: Sequence[Span], sink: RangeSink) -> IOResult[None, Problem]:
        self.calls.append(list(ranges))
        broken = False
        for low, high in ranges:
            end = high
            if self.break_if is not None and self.break_if(low, high):
                end, broken = low + (high - low) // 2, True
            position = low
            while position < end:
                piece = self.data[position : min(position + 3000, end)]
                sink.write(position, piece)
                position += len(piece)
            self.served += end - low
        if broken and not self.lie:
            return IOFailure(Transient("CDN object", "connection reset"))
        return IOSuccess(None)

    @property
    def asked(self) -> int:
        """Bytes asked for, over all calls."""
        return sum(high - low for call in self.calls for low, high in call)


def leftovers(cache: FileCache) -> list[str]:
    """Names of the partial, record and temp files of the ref."""
    folder = cache.ref_dir(REF)
    if not folder.exists():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.endswith((".partial", ".ranges", ".incoming")) or ".tmp-" in p.name
    )


@pytest.fixture
def ranged(tmp_path: Path) -> FileCache:
    """A file cache asking for small ranges, so a part of some KiB takes several."""
    return unsafe_perform_io(FileCache.open(tmp_path / "ranged", range_bytes=RANGE).unwrap())


def test_miss_fills_then_hit_serves_without_filling(cache: FileCache) -> None:
    """The first fetch fills everything; the second finds the verified entry and does not fill."""
    data = blob(3 * 1024 * 1024 + 5, seed=1)
    source = Source(data)
    path = value_of(cache.fetch(REF, digest_of(data), source, keep_path))
    assert path == cache.version_path(REF, digest_of(data))
    assert path.read_bytes() == data
    assert value_of(cache.fetch(REF, digest_of(data), source, keep_path)) == path
    assert source.asked == len(data)
    assert len(source.calls) == 1  # a part of modest length: one call, no probe
    assert leftovers(cache) == []


def test_a_part_of_several_ranges_is_asked_for_in_one_call_of_whole_segments(
    tmp_path: Path,
) -> None:
    """No probe before a part of modest length: one call, its ranges about ``range_bytes`` in
    whole segments (a step a little short of four segments still takes four, not three)."""
    cache = unsafe_perform_io(
        FileCache.open(tmp_path / "c", range_bytes=4 * SEGMENT_SIZE - 64).unwrap()
    )
    data = blob(FIRST_SEGMENT + 10 * SEGMENT_SIZE, seed=21)
    source = Source(data)
    value_of(cache.fetch(REF, digest_of(data), source, keep_path))
    (call,) = source.calls
    ends = [FIRST_SEGMENT + n * SEGMENT_SIZE for n in (3, 7, 10)]
    assert call == [(0, ends[0]), (ends[0], ends[1]), (ends[1], ends[2])]
    assert source.asked == len(data)


def test_a_part_of_very_many_ranges_is_probed_at_its_end_first(tmp_path: Path) -> None:
    """Past ``PROBE_ABOVE_RANGES`` ranges the last segment is fetched alone first: it proves the
    object is as long as the header says before the rest is listed."""
    cache = unsafe_perform_io(FileCache.open(tmp_path / "c", range_bytes=SEGMENT_SIZE).unwrap())
    data = blob(FIRST_SEGMENT + (PROBE_ABOVE_RANGES + 3) * SEGMENT_SIZE, seed=22)
    source = Source(data)
    value_of(cache.fetch(REF, digest_of(data), source, keep_path))
    probe, rest = source.calls
    assert probe == [(len(data) - SEGMENT_SIZE, len(data))]
    assert rest[0] == (0, FIRST_SEGMENT)
    assert len(rest) == PROBE_ABOVE_RANGES + 3
    assert source.asked == len(data)


def test_use_result_is_returned_and_its_failure_kept(cache: FileCache) -> None:
    """What ``use`` returns is what fetch returns; a failing use leaves the entry in place."""
    data = blob(10_000, seed=2)
    failed = cache.fetch(
        REF, digest_of(data), Source(data), lambda _: IOFailure(StorageFailed("out", "full"))
    )
    assert failure_of(failed) == StorageFailed("out", "full")
    assert cache.version_path(REF, digest_of(data)).read_bytes() == data


def test_corrupted_entry_is_discarded_and_fetched_again(
    cache: FileCache, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped byte in a cached entry is noticed, logged with the reason, and refetched."""
    data = blob(100_000, seed=2)
    path = value_of(cache.fetch(REF, digest_of(data), Source(data), keep_path))
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0x01
    path.write_bytes(bytes(raw))
    again = Source(data)
    with caplog.at_level(logging.WARNING, logger="splitvault.file_cache"):
        got = value_of(cache.fetch(REF, digest_of(data), again, keep_path))
    assert got.read_bytes() == data
    assert again.asked == len(data)
    assert any("digest is" in record.getMessage() for record in caplog.records)


def test_a_new_version_replaces_the_old_only_once_complete(ranged: FileCache) -> None:
    """While the new version's fill fails the old entry stays and serves; once the new one is
    complete the old one is gone."""
    old, new = blob(50_000, seed=3), blob(70_000, seed=4)
    old_path = value_of(ranged.fetch(REF, digest_of(old), Source(old), keep_path))
    broken = Source(new, break_if=lambda low, _high: low >= 30_000)
    assert isinstance(failure_of(ranged.fetch(REF, digest_of(new), broken, keep_path)), Transient)
    assert old_path.read_bytes() == old
    assert value_of(ranged.fetch(REF, digest_of(old), Source(old), keep_path)) == old_path
    new_path = value_of(ranged.fetch(REF, digest_of(new), Source(new), keep_path))
    assert new_path.read_bytes() == new
    assert new_path != old_path
    assert not old_path.exists()
    assert leftovers(ranged) == []


def test_a_failed_range_costs_only_its_missing_segments(ranged: FileCache) -> None:
    """One range that breaks half-way: every other range is kept, and the retry in the same
    process asks only for the bytes of the broken range that had not arrived."""
    data = blob(200_000, seed=6)
    expected = digest_of(data)
    victim = 100_000

    def breaks(low: int, high: int) -> bool:
        return low <= victim < high

    first = Source(data, break_if=breaks)
    assert isinstance(failure_of(ranged.fetch(REF, expected, first, keep_path)), Transient)
    assert leftovers(ranged) == sorted(
        [f".{version_of(expected)}.partial", f".{version_of(expected)}.ranges"]
    )
    second = Source(data)
    assert value_of(ranged.fetch(REF, expected, second, keep_path)).read_bytes() == data
    (asked,) = second.calls
    # Exactly the rest of the broken range: it continues at the byte where it broke off.
    ((low, high),) = [span for call in first.calls for span in call if breaks(*span)]
    assert asked == [(low + (high - low) // 2, high)]
    assert leftovers(ranged) == []


def test_a_fill_that_claims_success_short_is_asked_again_for_the_rest(ranged: FileCache) -> None:
    """A fill that says it succeeded but left holes: transient, the holes asked for next."""
    data = blob(64_000, seed=5)
    liar = Source(data, break_if=lambda low, _high: low == 0, lie=True)
    assert isinstance(failure_of(ranged.fetch(REF, digest_of(data), liar, keep_path)), Transient)
    honest = Source(data)
    assert value_of(ranged.fetch(REF, digest_of(data), honest, keep_path)).read_bytes() == data
    assert honest.asked < RANGE


def test_a_new_process_resumes_from_what_is_on_disk(tmp_path: Path) -> None:
    """After the process died mid-fill, a cache opened afresh asks only for the missing segments,
    re-hashing the recorded ones once and fetching again any that did not hold up."""
    root = tmp_path / "cache"
    data = blob(300_000, seed=7)
    expected = digest_of(data)
    first = unsafe_perform_io(FileCache.open(root, range_bytes=RANGE).unwrap())
    dies = Source(data, break_if=lambda low, _high: 150_000 <= low < 250_000)
    failure_of(first.fetch(REF, expected, dies, keep_path))
    # A recorded segment whose bytes did not survive (the record is written before any fsync).
    partial = first.ref_dir(REF) / f".{version_of(expected)}.partial"
    with partial.open("r+b") as handle:
        handle.seek(FIRST_SEGMENT + 10)
        handle.write(b"\x00" * 16)
    again = unsafe_perform_io(FileCache.open(root, range_bytes=RANGE).unwrap())
    source = Source(data)
    assert value_of(again.fetch(REF, expected, source, keep_path)).read_bytes() == data
    (asked,) = source.calls
    assert asked[0] == (FIRST_SEGMENT, FIRST_SEGMENT + SEGMENT_SIZE)  # the spoiled segment
    assert source.asked <= 100_000 + RANGE + SEGMENT_SIZE


def test_a_part_that_never_verifies_is_a_mismatch(cache: FileCache) -> None:
    """Wrong bytes: PartMismatch, no entry and no partial kept."""
    data = blob(50_000, seed=7)
    wrong = Source(blob(50_000, seed=70))
    assert isinstance(failure_of(cache.fetch(REF, digest_of(data), wrong, keep_path)), PartMismatch)
    assert not cache.version_path(REF, digest_of(data)).exists()
    assert leftovers(cache) == []


def test_resumed_bytes_that_do_not_add_up_are_fetched_whole_once(ranged: FileCache) -> None:
    """A resumed fill whose root does not match (the object changed between attempts) is
    fetched whole once more instead of failing the download."""
    data = blob(50_000, seed=8)
    other = blob(50_000, seed=80)
    failure_of(
        ranged.fetch(REF, digest_of(data), Source(other, break_if=lambda lo, _h: lo > 0), keep_path)
    )
    source = Source(data)
    assert value_of(ranged.fetch(REF, digest_of(data), source, keep_path)).read_bytes() == data
    assert len(source.calls) == 2
    assert source.calls[1][0][0] == 0
    assert leftovers(ranged) == []


def test_partial_of_another_version_is_removed(cache: FileCache) -> None:
    """A partial of another version is debris: the next fill of the ref removes it."""
    old, new = blob(40_000, seed=8), blob(40_000, seed=9)
    failure_of(cache.fetch(REF, digest_of(old), Source(old, break_if=lambda *_: True), keep_path))
    stale = cache.ref_dir(REF) / f".{version_of(digest_of(old))}.partial"
    assert stale.exists()
    assert value_of(cache.fetch(REF, digest_of(new), Source(new), keep_path)).read_bytes() == new
    assert not stale.exists()
    assert leftovers(cache) == []


def test_empty_big_part_is_cached(cache: FileCache) -> None:
    """An empty big part verifies and is cached like any other."""
    path = value_of(cache.fetch(REF, digest_of(b""), Source(b""), keep_path))
    assert path.read_bytes() == b""


def test_dead_writers_temps_go_at_once_live_ones_stay(cache: FileCache) -> None:
    """The next fill removes a temp whose writer is gone (its lock free) whatever its age, and
    keeps one whose writer still holds its lock."""
    folder = cache.ref_dir(REF)
    folder.mkdir(parents=True)
    dead = folder / temp_name_for("x.big", "0123456789abcdef")
    live = folder / temp_name_for("y.big", "fedcba9876543210")
    dead.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = blob(5000, seed=10)
        value_of(cache.fetch(REF, digest_of(data), Source(data), keep_path))
        assert not dead.exists()
        assert live.exists()
    finally:
        os.close(fd)


def test_two_threads_fetching_one_ref_fill_it_once(cache: FileCache) -> None:
    """Concurrent fetches of one ref: one fills, the other waits and gets the verified entry."""
    data = blob(300_000, seed=11)
    calls: list[int] = []  # the thread of each fill call
    second_started = threading.Event()
    calls_lock = threading.Lock()
    source = Source(data)

    def slow_fill(ranges: Sequence[Span], sink: RangeSink) -> IOResult[None, Problem]:
        with calls_lock:
            calls.append(threading.get_ident())
        second_started.wait(timeout=10)
        time.sleep(0.2)  # scheduling aid only: let the second thread reach the lock
        return source(ranges, sink)

    results: list[IOResult[Path, Problem]] = []

    def fetch(signal: threading.Event | None) -> None:
        if signal is not None:
            signal.set()
        results.append(cache.fetch(REF, digest_of(data), slow_fill, keep_path))

    first = threading.Thread(target=fetch, args=(None,))
    first.start()
    while not calls:
        time.sleep(0.01)
    second = threading.Thread(target=fetch, args=(second_started,))
    second.start()
    first.join()
    second.join()
    assert len(set(calls)) == 1
    assert [value_of(result).read_bytes() == data for result in results] == [True, True]


def refs(count: int) -> list[ResourceRef]:
    return [ResourceRef("models", f"m{index}.bin") for index in range(count)]


def test_the_bound_evicts_the_least_recently_used(tmp_path: Path) -> None:
    """With room for three parts, a fourth evicts the one used longest ago; the bytes held
    never pass the bound."""
    size = 20_000
    cache = unsafe_perform_io(FileCache.open(tmp_path / "c", max_bytes=3 * size).unwrap())
    parts = {ref: blob(size, seed=index) for index, ref in enumerate(refs(4))}
    a, b, c, d = parts
    for ref in (a, b, c):
        value_of(cache.fetch(ref, digest_of(parts[ref]), Source(parts[ref]), keep_path))
        time.sleep(0.01)
    value_of(cache.fetch(a, digest_of(parts[a]), Source(parts[a]), keep_path))  # a is used again
    value_of(cache.fetch(d, digest_of(parts[d]), Source(parts[d]), keep_path))
    held = {item.name for item in cache.items() if item.kind == "entry"}
    assert held == {a.name, c.name, d.name}
    assert cache.usage() <= 3 * size


def test_an_entry_in_use_is_never_evicted(tmp_path: Path) -> None:
    """While one reader uses an entry, fills that need its room evict others instead, and when
    nothing else can go the pinned entry still stays."""
    size = 20_000
    cache = unsafe_perform_io(FileCache.open(tmp_path / "c", max_bytes=2 * size).unwrap())
    parts = {ref: blob(size, seed=index) for index, ref in enumerate(refs(3))}
    a, b, c = parts
    inside, release = threading.Event(), threading.Event()

    def hold(path: Path) -> IOResult[Path, Problem]:
        inside.set()
        release.wait(timeout=10)
        return IOSuccess(path) if path.exists() else IOFailure(StorageFailed(str(path), "gone"))

    results: list[IOResult[Path, Problem]] = []
    reader = threading.Thread(
        target=lambda: results.append(cache.fetch(a, digest_of(parts[a]), Source(parts[a]), hold))
    )
    reader.start()
    assert inside.wait(timeout=10)
    try:
        for ref in (b, c):  # each needs room that only a's eviction could give
            value_of(cache.fetch(ref, digest_of(parts[ref]), Source(parts[ref]), keep_path))
        assert cache.version_path(a, digest_of(parts[a])).exists()
        in_use = {item.name for item in cache.items() if item.in_use}
        assert in_use == {a.name}
    finally:
        release.set()
        reader.join()
    assert value_of(results[0]).read_bytes() == parts[a]


def test_prune_and_clear_skip_what_is_in_use(tmp_path: Path) -> None:
    """prune removes what was last used before the cutoff; clear removes everything not in use."""
    now = [1_000_000.0]
    cache = unsafe_perform_io(FileCache.open(tmp_path / "c", clock=lambda: now[0]).unwrap())
    parts = {ref: blob(3000, seed=index) for index, ref in enumerate(refs(3))}
    for ref, data in parts.items():
        value_of(cache.fetch(ref, digest_of(data), Source(data), keep_path))
    old, recent, pinned = parts
    for ref, age in ((old, 7200), (recent, 10), (pinned, 7200)):
        stamp = cache.ref_dir(ref) / f".{version_of(digest_of(parts[ref]))}.verified"
        os.utime(stamp, (now[0] - age, now[0] - age))
    fd = os.open(cache.version_path(pinned, digest_of(parts[pinned])), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        removed = cache.prune(older_than=3600)
        assert [item.name for item in removed] == [old.name]
        cleared = cache.prune()
        assert [item.name for item in cleared] == [recent.name]
    finally:
        os.close(fd)
    assert [item.name for item in cache.items()] == [pinned.name]


def test_a_full_disk_removes_the_partial_and_names_it(
    ranged: FileCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while filling: the partial and its record go, the old entry stays, and the error
    names the file that filled."""
    old, new = blob(20_000, seed=12), blob(60_000, seed=13)
    old_path = value_of(ranged.fetch(REF, digest_of(old), Source(old), keep_path))
    real = ranges_module.write_all

    def full(fd: int, data: bytes | memoryview, offset: int) -> None:
        if offset > 30_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data, offset)

    monkeypatch.setattr(ranges_module, "write_all", full)
    problem = failure_of(ranged.fetch(REF, digest_of(new), Source(new), keep_path))
    assert isinstance(problem, StorageFailed)
    partial = ranged.ref_dir(REF) / f".{version_of(digest_of(new))}.partial"
    assert problem.what == str(partial)
    assert "No space left" in problem.describe()
    assert not partial.exists()
    assert leftovers(ranged) == []
    assert old_path.read_bytes() == old


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
    assert value_of(cache.fetch(REF, digest_of(data), source, keep_path)) == path
    assert source.calls == []
    assert leftovers(cache) == []


def test_failed_store_keeps_the_previous_entry(cache: FileCache) -> None:
    """A produce that fails, or wrote another length than it reported, leaves the old entry
    and no temp file."""
    old = blob(1000, seed=13)
    old_path = value_of(cache.store(REF, produce_bytes(old)))

    def failing(temp: Path) -> IOResult[BigPartDigest, Problem]:
        temp.write_bytes(b"half")
        return IOFailure(StorageFailed("seal", "disk full"))

    assert failure_of(cache.store(REF, failing)) == StorageFailed("seal", "disk full")
    short = produce_bytes(blob(999, seed=14), claim=blob(1000, seed=15))
    mismatch = failure_of(cache.store(REF, short))
    assert isinstance(mismatch, PartMismatch)
    assert "999 bytes" in mismatch.describe()
    assert old_path.read_bytes() == old
    assert leftovers(cache) == []


def test_store_trusts_the_producers_digest_without_reading_the_part(
    cache: FileCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """store files the entry under the digest its producer computed while writing: the part is
    not read again before the upload's commit point (the producer hashed it as it wrote it)."""
    data = blob(300_000, seed=16)
    reads: list[int] = []
    real_preadv = os.preadv

    def counting_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        reads.append(offset)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting_preadv)
    path = value_of(cache.store(REF, produce_bytes(data)))
    assert reads == []
    assert path == cache.version_path(REF, digest_of(data))
    assert path.read_bytes() == data


def test_discard_removes_entries_and_partials(ranged: FileCache) -> None:
    """discard removes every entry and partial of the ref; discarding nothing is fine."""
    data, other = blob(20_000, seed=16), blob(40_000, seed=17)
    entry = value_of(ranged.fetch(REF, digest_of(data), Source(data), keep_path))
    failure_of(
        ranged.fetch(REF, digest_of(other), Source(other, break_if=lambda *_: True), keep_path)
    )
    assert leftovers(ranged)
    ranged.discard(REF)
    assert not entry.exists()
    assert leftovers(ranged) == []
    ranged.discard(ResourceRef("never", "seen"))
    assert not (ranged.root / "never").exists()
