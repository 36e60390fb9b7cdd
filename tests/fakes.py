"""Hand-written fakes for ports and collaborators: the clock, randomness and sleep.

Sleeping advances the fake clock instead of waiting, so retries and token refreshes are
deterministic and no test sleeps for real.
"""

from __future__ import annotations

import os


class FakeClock:
    """Monotonic and wall time that move only when told (or when ``FakeSleep`` sleeps)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ServerClock:
    """The server's ``now``: a fixed wall time a test can push forward (expiry, throttling)."""

    def __init__(self, base: float) -> None:
        self.base = base

    def __call__(self) -> float:
        return self.base

    def advance(self, seconds: float) -> None:
        self.base += seconds


class FakeRandom:
    """Real random bytes, but jitter fixed at ``jitter`` so waits are predictable."""

    def __init__(self, jitter: float = 0.5) -> None:
        self.jitter = jitter

    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def uniform(self) -> float:
        return self.jitter


class FakeSleep:
    """Records each wait and advances the fake clock by it instead of blocking."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
