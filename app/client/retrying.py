"""The retry loop for whole port operations the use cases drive themselves: CDN transfers.

The API adapter retries its own requests (``adapters.http_api``); the CDN adapter does not retry
at all (botocore runs with ``max_attempts=1``), so that a retried download can resume instead of
starting over and two retry layers never multiply. ``Retrier.run`` repeats an operation while
``domain.retry.decide`` says so — full jitter, an attempt cap, a total time budget, ``Retry-After``
— and only for ``Transient`` and ``TimedOut`` failures; anything else is returned at once. The
policy is the same ``RetryPolicy`` value the HTTP adapter takes; the clock, the jitter source and
the sleep are passed in, so tests run the loop without waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import attrs
from returns.io import IOFailure, IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.domain.errors import Problem, Transient
from splitvault.domain.ports import Clock, Random
from splitvault.domain.retry import GiveUp, Retry, RetryPolicy, decide, outcome_of

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

    def run(self, what: str, operation: Callable[[], IOResult[T, Problem]]) -> IOResult[T, Problem]:
        """Call ``operation`` until it succeeds, fails for good, or the policy gives up."""
        started = self.clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            result = operation()
            if is_successful(result):
                return result
            failure: Problem = unsafe_perform_io(result.failure())
            decision = decide(
                self.policy,
                attempt=attempt,
                elapsed=max(0.0, self.clock.monotonic() - started),
                outcome=outcome_of(failure),
                jitter=min(max(self.random.uniform(), 0.0), 0.999_999),
            )
            if isinstance(decision, Retry):
                log.info(
                    "%s: %s; attempt %d, next in %.2f s",
                    what,
                    failure.describe(),
                    attempt + 1,
                    decision.delay,
                )
                self.sleep(decision.delay)
                continue
            reason = decision.reason if isinstance(decision, GiveUp) else "no retry"
            if attempt > 1:
                log.warning("%s: giving up after %d attempts: %s", what, attempt, reason)
            if isinstance(failure, Transient):
                return IOFailure(
                    Transient(failure.what, f"{failure.detail}; {reason}", failure.retry_after)
                )
            return result


def run_with(
    retrier: Retrier | None, what: str, operation: Callable[[], IOResult[T, Problem]]
) -> IOResult[T, Problem]:
    """``retrier.run(what, operation)``, or a single attempt when there is no retrier."""
    if retrier is None:
        return operation()
    return retrier.run(what, operation)
