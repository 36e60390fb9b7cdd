"""The standard library's clock and randomness behind the ``Clock`` and ``Random`` ports."""

from __future__ import annotations

import os
import random
import time


class SystemClock:
    """``time.monotonic`` and ``time.time``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class SystemRandom:
    """``os.urandom`` for key material; ``random.random`` for jitter only."""

    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def uniform(self) -> float:
        return random.random()  # noqa: S311 - jitter, not key material


def sleep(seconds: float) -> None:
    """Block the calling thread."""
    time.sleep(seconds)
