"""The split rule: how much of a ciphertext stream goes to the small part.

The original protocol puts ``min(3 KiB, 30 %)`` of the ciphertext stream into the small part and the
rest into the big part. The constants are parameters so a deployment can change them; the defaults
are the format's. The rule only needs the stream's length, so a streaming writer knows the split
point before it has produced a byte.
"""

from __future__ import annotations

import attrs

SMALL_PART_CAP = 3 * 1024
SMALL_PART_PERCENT = 30


@attrs.frozen
class SplitRule:
    """``small = min(cap, length * percent // 100)``; the big part takes the rest."""

    cap: int = SMALL_PART_CAP
    percent: int = SMALL_PART_PERCENT

    def __attrs_post_init__(self) -> None:
        if self.cap < 0 or not 0 <= self.percent <= 100:
            raise ValueError("split rule needs cap >= 0 and 0 <= percent <= 100")

    def small_length(self, stream_length: int) -> int:
        """Bytes of a ``stream_length``-byte stream that go to the small part."""
        if stream_length < 0:
            raise ValueError("stream length must be >= 0")
        return min(self.cap, stream_length * self.percent // 100)


DEFAULT_RULE = SplitRule()


def split(stream: bytes, rule: SplitRule = DEFAULT_RULE) -> tuple[bytes, bytes]:
    """Split a whole in-memory stream into (small, big). Streaming code uses ``small_length``."""
    cut = rule.small_length(len(stream))
    return stream[:cut], stream[cut:]


def join(small: bytes, big: bytes) -> bytes:
    """Undo ``split``."""
    return small + big
