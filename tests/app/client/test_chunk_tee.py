"""``pipeline.ChunkTee``: chunks opened into the output while a fill's bytes land.

The fill is played by hand here (ranges delivered in pieces, out of order, across chunk
boundaries) into a recording sink that stands in for the cache's; the end-to-end download with the
tee in place is in ``tests/integration/test_end_to_end.py``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.app.client import pipeline
from splitvault.domain.errors import CorruptResource, Problem
from splitvault.domain.format_v1 import Opener, seal_bytes
from splitvault.domain.ref import ResourceRef

REF = ResourceRef("models", "tee.bin")
CHUNK = 1000


class RecordingSink:
    """The cache's sink as the tee sees it: it keeps what it is given, or refuses (disk full)."""

    def __init__(self, size: int, *, fail_at: int | None = None) -> None:
        self.data = bytearray(size)
        self.fail_at = fail_at

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
            raise OSError(28, "No space left on device")
        self.data[offset : offset + len(data)] = data

    def landed(self) -> int:
        return 0


def sealed(size: int = 10 * CHUNK + 123) -> tuple[bytes, Opener, bytes]:
    """A plaintext, the opener of its small part and its big part (1000-byte chunks)."""
    plaintext = os.urandom(size)
    made = seal_bytes(REF, plaintext, dek=os.urandom(32), file_id=os.urandom(16), chunk_size=CHUNK)
    small, big = made.unwrap()
    return plaintext, Opener.start(small).unwrap(), big


def deliver(sink: object, big: bytes, ranges: list[tuple[int, int]], piece: int, seed: int) -> None:
    """Each range in pieces from its start, the ranges interleaved in a shuffled order."""
    streams = [list(range(low, high, piece)) for low, high in ranges]
    order = [i for i, stream in enumerate(streams) for _ in stream]
    random.Random(seed).shuffle(order)
    cursors = [0] * len(streams)
    for i in order:
        offset = streams[i][cursors[i]]
        cursors[i] += 1
        end = min(offset + piece, ranges[i][1])
        sink.write(offset, memoryview(big)[offset:end])  # type: ignore[attr-defined]


def tee_for(
    opener: Opener, out: Path, max_pending: int | None = None
) -> tuple[pipeline.ChunkTee, int]:
    """A tee on a new output file, and the file's descriptor (the caller closes it)."""
    fd = pipeline.new_output(out)
    return pipeline.ChunkTee(opener, fd, max_pending=max_pending), fd


def open_the_rest(
    opener: Opener, entry: Path, out: Path, opened: frozenset[int]
) -> IOResult[None, Problem]:
    """What a download does after the fill: open from the entry what the tee did not."""
    return pipeline.open_with(
        opener, entry, out, verify_big_digest=False, output_exists=True, already_open=opened
    )


@pytest.mark.parametrize("seed", range(5))
def test_every_chunk_is_opened_as_it_lands_across_ranges(tmp_path: Path, seed: int) -> None:
    """Two ranges split inside a chunk, delivered in 333-byte pieces in any interleaving: every
    chunk is opened once complete, and the output is the plaintext without a second pass."""
    plaintext, opener, big = sealed()
    cut = 4321  # inside a chunk, so one chunk straddles the two ranges
    ranges = [(0, cut), (cut, len(big))]
    tee, fd = tee_for(opener, tmp_path / "out")
    sink = RecordingSink(len(big))
    deliver(tee.around(sink, ranges), big, ranges, 333, seed)
    os.close(fd)
    assert bytes(sink.data) == big  # the cache's sink got every byte first
    assert tee.opened == frozenset(range(opener.layout.chunk_count))
    assert (tmp_path / "out").read_bytes() == plaintext


def test_a_chunk_that_does_not_authenticate_is_left_to_the_open_pass(tmp_path: Path) -> None:
    """A flipped byte leaves its chunk unopened (the others open); ``open_with`` over the rest
    then reports it as ``CorruptResource`` — the tee never hides a failure."""
    _, opener, big = sealed()
    bad = bytearray(big)
    bad[5500] ^= 0x01
    tee, fd = tee_for(opener, tmp_path / "out")
    sink = RecordingSink(len(big))
    deliver(tee.around(sink, [(0, len(big))]), bytes(bad), [(0, len(big))], 700, 0)
    os.close(fd)
    broken = (opener.layout.small_ciphertext_length + 5500) // (CHUNK + 16)
    assert tee.opened == frozenset(range(opener.layout.chunk_count)) - {broken}
    entry = tmp_path / "entry"
    entry.write_bytes(bytes(bad))
    rest = open_the_rest(opener, entry, tmp_path / "out", tee.opened)
    assert not is_successful(rest)
    assert isinstance(unsafe_perform_io(rest.failure()), CorruptResource)


def test_a_refill_forgets_the_chunks_it_asks_for_again(tmp_path: Path) -> None:
    """When a fill asks for bytes again (the cache refetching a part that did not verify), the
    chunks they belong to count as unopened until their new bytes land: the output only ever holds
    what the cache last received."""
    _, opener, big = sealed()
    tee, fd = tee_for(opener, tmp_path / "out")
    everything = [(0, len(big))]
    deliver(tee.around(RecordingSink(len(big)), everything), big, everything, 1000, 0)
    assert len(tee.opened) == opener.layout.chunk_count
    again = [(2000, 3000)]
    tee.around(RecordingSink(len(big)), again)
    cut = opener.layout.small_ciphertext_length
    asked = set(range((cut + 2000) // (CHUNK + 16), (cut + 2999) // (CHUNK + 16) + 1))
    assert tee.opened == frozenset(range(opener.layout.chunk_count)) - asked
    os.close(fd)


def test_the_rest_is_opened_from_the_entry_and_the_output_is_whole(tmp_path: Path) -> None:
    """With one pending buffer allowed and three interleaved ranges, some chunks wait for the open
    pass; ``open_with(already_open=...)`` opens exactly those and the output is the plaintext."""
    plaintext, opener, big = sealed(30 * CHUNK + 7)
    ranges = [(0, 9000), (9000, 20011), (20011, len(big))]
    tee, fd = tee_for(opener, tmp_path / "out", max_pending=1)
    deliver(tee.around(RecordingSink(len(big)), ranges), big, ranges, 400, 3)
    os.close(fd)
    opened = tee.opened
    assert 0 < len(opened) < opener.layout.chunk_count
    entry = tmp_path / "entry"
    entry.write_bytes(big)
    rest = open_the_rest(opener, entry, tmp_path / "out", opened)
    assert is_successful(rest)
    assert (tmp_path / "out").read_bytes() == plaintext


def test_a_sink_failure_stops_the_piece_before_the_tee_sees_it(tmp_path: Path) -> None:
    """The cache's sink failing (disk full) raises to the range, and the chunk whose bytes it
    refused is not opened."""
    _, opener, big = sealed()
    tee, fd = tee_for(opener, tmp_path / "out")
    sink = tee.around(RecordingSink(len(big), fail_at=6000), [(0, len(big))])
    with pytest.raises(OSError, match="No space"):
        deliver(sink, big, [(0, len(big))], 1000, 0)
    os.close(fd)
    refused = (opener.layout.small_ciphertext_length + 6000) // (CHUNK + 16)
    assert refused not in tee.opened


def test_open_with_refuses_opened_chunks_without_a_prepared_output(tmp_path: Path) -> None:
    """``already_open`` with a fresh (truncated) output or a digest pass is a caller's bug."""
    _, opener, big = sealed()
    entry = tmp_path / "entry"
    entry.write_bytes(big)
    with pytest.raises(ValueError, match="existing output"):
        pipeline.open_with(
            opener, entry, tmp_path / "out", verify_big_digest=False, already_open=frozenset({0})
        )
