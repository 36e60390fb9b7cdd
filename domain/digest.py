"""The big part's digest: a SHA-256 tree over segments, so it can be computed on every core.

A single SHA-256 over a multi-GB big part runs on one core at ~2 GB/s and was the one serial step
of sealing, opening and cache verification. The digest is instead SHA-256 over a label, the big
part's length and the SHA-256 of each segment in order. The segments are the big part's share of
each ciphertext chunk (the first may be shorter, since the small part takes the stream's first
bytes), so a worker that has just sealed or read a chunk hashes its own share with no ordering,
and a verifier hashes segments in parallel.

``first`` and ``size`` describe the segmentation: segment 0 is ``[0, first)``, then every
``size`` bytes, the last possibly shorter. A big part of length 0 has no segments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

LABEL = b"splitvault/v1/big-part-digest\x00"


def segment_bounds(length: int, first: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each segment of a ``length``-byte big part."""
    if length < 0 or first < 0 or size < 1 or (length and not first):
        raise ValueError("a segmentation needs length >= 0, size >= 1 and a first segment")
    start, end = 0, min(first, length)
    while start < length:
        yield start, end
        start, end = end, min(end + size, length)


def root(length: int, leaves: Iterable[bytes]) -> bytes:
    """Combine the segments' SHA-256 values (in order) into the digest."""
    hasher = hashlib.sha256(LABEL + length.to_bytes(8, "big"))
    for leaf in leaves:
        hasher.update(leaf)
    return hasher.digest()


def leaf(segment: bytes | memoryview) -> bytes:
    """One segment's SHA-256."""
    return hashlib.sha256(segment).digest()


def digest_bytes(data: bytes | bytearray | memoryview, first: int, size: int) -> bytes:
    """The digest of an in-memory big part. For tests and tiny files."""
    view = memoryview(data)
    return root(len(view), (leaf(view[a:b]) for a, b in segment_bounds(len(view), first, size)))
