"""The retry loop for whole port operations the use cases drive themselves: CDN transfers.

An operation may report progress (``progress``: a counter that grows as bytes land, e.g. a
``Meter`` around the cache's sink): an attempt that moved it starts a new streak, so the attempt
cap and the budget count only attempts that made no progress (``domain.retry.Streak``).

The API adapter retries its own requests (``adapters.http_api``); the CDN adapter does not retry
at all (one request per call), so that a retried download can resume instead of
starting over and two retry layers never multiply. ``Retrier.run`` repeats an operation while
``domain.retry.decide`` says so — full jitter, an attempt cap, a total time budget, ``Retry-After``
— and only for ``Transient`` and ``TimedOut`` failures; anything else is returned at once. The
policy is the same ``RetryPolicy`` value the HTTP adapter takes; the clock, the jitter source and
the sleep are passed in, so tests run the loop without waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import attrs
from returns.io import IOFailure, IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.domain.errors import Problem, Transient
from splitvault.domain.ports import Clock, Random, RangeSink
from splitvault.domain.retry import GiveUp, Retry, RetryPolicy, Streak, decide_streak, outcome_of

log = logging.getLogger("splitvault.retrying")

T = TypeVar("T")


@attrs.frozen
class Retrier:
    """Runs an idempotent operation again while the retry policy allows.

    Args:
        policy: attempts, backoff and the total time budget.
        clock: its monotonic time measures the budget.
        random: its ``uniform`` draws the jitter.
        sleep: waits between attempts.

    ``run`` returns the first success, the first failure that is not transient, or the last
    failure once the policy gives up (a ``Transient`` then says why it stopped).
    """

    policy: RetryPolicy
    clock: Clock
    random: Random
    sleep: Callable[[float], None]

    def run(
        self,
        what: str,
        operation: Callable[[], IOResult[T, Problem]],
        *,
        progress: Callable[[], int] | None = None,
    ) -> IOResult[T, Problem]:
        """Call ``operation`` until it succeeds, fails for good, or the policy gives up.

        ``progress`` (optional) is read before and after each attempt; an attempt that moved it
        does not count against the attempt cap or the budget.
        """
        streak = Streak.start(self.clock.monotonic())
        while True:
            before = progress() if progress is not None else 0
            result = operation()
            if is_successful(result):
                return result
            failure: Problem = unsafe_perform_io(result.failure())
            moved = progress() - before if progress is not None else 0
            now = self.clock.monotonic()
            streak = streak.after_failure(progressed=moved > 0, now=now)
            decision = decide_streak(
                self.policy,
                streak,
                now=now,
                outcome=outcome_of(failure),
                jitter=min(max(self.random.uniform(), 0.0), 0.999_999),
            )
            if isinstance(decision, Retry):
                log.info(
                    "%s: %s (%d bytes moved); attempt %d, next in %.2f s",
                    what,
                    failure.describe(),
                    moved,
                    streak.total + 1,
                    decision.delay,
                )
                self.sleep(decision.delay)
                continue
            reason = decision.reason if isinstance(decision, GiveUp) else "no retry"
            if streak.total > 1:
                log.warning("%s: giving up after %d attempts: %s", what, streak.total, reason)
            if isinstance(failure, Transient):
                return IOFailure(
                    Transient(failure.what, f"{failure.detail}; {reason}", failure.retry_after)
                )
            return result


def run_with(
    retrier: Retrier | None,
    what: str,
    operation: Callable[[], IOResult[T, Problem]],
    *,
    progress: Callable[[], int] | None = None,
) -> IOResult[T, Problem]:
    """``retrier.run(what, operation)``, or a single attempt when there is no retrier."""
    if retrier is None:
        return operation()
    return retrier.run(what, operation, progress=progress)


class Meter:
    """Watches the range sinks of one download: what landed for good, and what arrived.

    Calling it gives the bytes the sinks kept for good (whole segments), the progress signal of
    a retried download: bytes of a segment that broke off are arriving, not progress, or a link
    that always breaks mid-segment would be retried for ever. ``moved`` counts every byte that
    arrived, refetched ones included.
    """

    def __init__(self) -> None:
        self._sinks: list[RangeSink] = []
        self._moved = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        """Bytes landed for good so far, over every sink watched."""
        with self._lock:
            sinks = list(self._sinks)
        return sum(sink.landed() for sink in sinks)

    @property
    def moved(self) -> int:
        """Bytes that arrived, over every sink watched."""
        with self._lock:
            return self._moved

    def around(self, sink: RangeSink) -> RangeSink:
        """A sink that passes everything on to ``sink`` and is watched by this meter."""
        with self._lock:
            self._sinks.append(sink)
        return _MeteredSink(sink, self)

    def add(self, count: int) -> None:
        """Count ``count`` more bytes arrived."""
        with self._lock:
            self._moved += count


class _MeteredSink:
    def __init__(self, inner: RangeSink, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._inner.write(offset, data)
        self._meter.add(len(data))

    def landed(self) -> int:
        return self._inner.landed()
