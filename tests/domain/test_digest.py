"""The big part's digest: segmentation, leaves, the root, and its incremental form."""

from __future__ import annotations

import pytest
from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st

from splitvault.domain import digest


def test_segments_cover_the_part_once_in_order() -> None:
    """Segment 0 ends at ``first``, the rest are ``size`` long, the last may be shorter."""
    assert list(digest.segment_bounds(10, 3, 4)) == [(0, 3), (3, 7), (7, 10)]
    assert list(digest.segment_bounds(0, 0, 4)) == []
    with pytest.raises(ValueError, match="segmentation"):
        list(digest.segment_bounds(10, 0, 4))


def test_the_root_is_blake3_over_label_length_and_leaves() -> None:
    """The written construction: BLAKE3(label || length || leaf_0 || ...), leaves BLAKE3."""
    data = bytes(range(200)) * 3
    leaves = [blake3(data[a:b]).digest() for a, b in ((0, 50), (50, 250), (250, 450), (450, 600))]
    expected = blake3(digest.LABEL + (600).to_bytes(8, "big") + b"".join(leaves)).digest()
    assert digest.digest_bytes(data, 50, 200) == expected
    assert len(expected) == digest.DIGEST_BYTES


@given(st.binary(max_size=3000), st.integers(1, 700), st.integers(1, 700), st.data())
def test_a_leaf_fed_in_pieces_equals_the_leaf(
    data: bytes, first: int, size: int, pieces: st.DataObject
) -> None:
    """A cache reading a segment in pieces gets the leaf the pipeline computed in one call."""
    for start, end in digest.segment_bounds(len(data), first, size):
        hasher = digest.leaf_hasher()
        position = start
        while position < end:
            step = pieces.draw(st.integers(1, end - position))
            hasher.update(memoryview(data)[position : position + step])
            position += step
        assert hasher.digest() == digest.leaf(data[start:end])


@given(st.binary(min_size=1, max_size=2000), st.integers(0, 1999), st.integers(0, 7))
def test_any_changed_byte_changes_the_digest(data: bytes, where: int, bit: int) -> None:
    """Flipping one bit anywhere in the big part gives another digest."""
    index = where % len(data)
    changed = bytearray(data)
    changed[index] ^= 1 << bit
    assert digest.digest_bytes(changed, 100, 300) != digest.digest_bytes(data, 100, 300)


def test_the_segmentation_is_part_of_the_digest() -> None:
    """The same bytes cut into other segments give another digest (no ambiguity)."""
    data = b"x" * 1000
    assert digest.digest_bytes(data, 100, 300) != digest.digest_bytes(data, 300, 300)
    assert digest.digest_bytes(data, 100, 300) != digest.digest_bytes(data + b"x", 100, 300)
