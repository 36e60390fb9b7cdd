"""Retry decisions: whether and when to try a remote call again.

``decide`` is a pure function of the attempt count, the time spent so far, what happened, and a
jitter value in ``[0, 1)`` drawn by the caller. It implements full-jitter exponential backoff
(AWS architecture blog, "Exponential Backoff And Jitter"), an attempt cap, a time budget that
a delay may never overrun, and honours ``Retry-After``.

The cap and the budget count only attempts that made no progress (``Streak``): a download that
keeps advancing on a flaky link is never given up while it advances — each attempt that moved
bytes starts a new streak, with the first backoff and a fresh budget — while one that stopped
advancing gets ``max_attempts`` tries within ``budget`` seconds. ``deadline`` (optional) caps the
whole operation however it progresses. A request that either answers or does not (an API call)
never progresses, so for it the streak is simply the attempt count.

Only transient outcomes are retried; 401/403 get one re-login and then give up. The loops live
outside the domain (the HTTP adapter for API requests, ``client.retrying`` for CDN transfers);
this module owns the policy, and ``outcome_of`` says which typed failures from the ports are
worth another try.
"""

from __future__ import annotations

import email.utils
from typing import Final

import attrs

from splitvault.domain.errors import Problem, TimedOut, Transient

TRANSIENT_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
AUTH_STATUSES: Final = frozenset({401, 403})
TRANSIENT_SERVICE_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
    }
)
TRANSPORT_FAULTS: Final = frozenset({"connect", "read", "write", "timeout", "reset", "protocol"})


@attrs.frozen
class RetryPolicy:
    """How hard to try.

    Args:
        base_delay: the first backoff ceiling, in seconds; it doubles per attempt.
        max_delay: no single wait is longer than this.
        max_attempts: attempts in a row without progress, including the first.
        budget: seconds since the last progress (or the first attempt); no retry is scheduled
            past it.
        deadline: seconds since the first attempt after which nothing is retried, progress or
            not (``None``: no such cap).
    """

    base_delay: float = 0.2
    max_delay: float = 10.0
    max_attempts: int = 6
    budget: float = 60.0
    deadline: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.base_delay < 0 or self.max_delay < 0 or self.max_attempts < 1 or self.budget < 0:
            raise ValueError("retry policy values must be non-negative and attempts >= 1")
        if self.deadline is not None and self.deadline < 0:
            raise ValueError("a retry deadline must be non-negative")


@attrs.frozen
class Streak:
    """Where an operation's retries stand: the attempts since the last one that made progress.

    Args:
        began: monotonic seconds when the operation started.
        since: monotonic seconds of the last progress (or ``began``).
        stalled: failed attempts in a row that made no progress (0 when the newest did).
        total: failed attempts in all.
    """

    began: float
    since: float
    stalled: int = 0
    total: int = 0

    @classmethod
    def start(cls, now: float) -> Streak:
        """The streak of an operation starting at ``now``."""
        return cls(began=now, since=now)

    def after_failure(self, *, progressed: bool, now: float) -> Streak:
        """The streak once another attempt failed at ``now``, having made progress or not.

        An attempt that made progress starts a new streak at ``now``: the time it spent moving
        bytes is not time lost.
        """
        if progressed:
            return Streak(self.began, max(now, self.since), 0, self.total + 1)
        return Streak(self.began, self.since, self.stalled + 1, self.total + 1)


def decide_streak(
    policy: RetryPolicy, streak: Streak, *, now: float, outcome: Outcome, jitter: float
) -> Decision:
    """``decide`` for an operation that can make progress, after ``streak``'s newest failure."""
    if streak.total < 1:
        raise ValueError("decide after a failed attempt: the streak has no failure yet")
    if policy.deadline is not None and now - streak.began >= policy.deadline:
        return GiveUp(f"{_describe(outcome)}; past the {policy.deadline:g} s deadline")
    decision = decide(
        policy,
        attempt=max(streak.stalled, 1),  # an attempt that progressed waits the first backoff
        elapsed=max(0.0, now - streak.since),
        outcome=outcome,
        jitter=jitter,
    )
    if (
        isinstance(decision, Retry)
        and policy.deadline is not None
        and now - streak.began + decision.delay > policy.deadline
    ):
        return GiveUp(
            f"{_describe(outcome)}; the next try would pass the {policy.deadline:g} s deadline"
        )
    if isinstance(decision, GiveUp) and streak.total > streak.stalled:
        return GiveUp(f"{decision.reason} without progress ({streak.total} in all)")
    return decision


@attrs.frozen
class TransportFault:
    """The request never got an answer: ``kind`` is one of ``TRANSPORT_FAULTS``."""

    kind: str


@attrs.frozen
class HttpStatus:
    """An HTTP answer; ``retry_after`` is in seconds when the peer sent one."""

    status: int
    retry_after: float | None = None


@attrs.frozen
class ServiceCode:
    """A storage service error code (``SlowDown``, ``NoSuchKey`` ...)."""

    code: str
    retry_after: float | None = None


@attrs.frozen
class Reported:
    """A failure an adapter has already classified (``Transient`` or final) as a typed value."""

    transient: bool
    detail: str
    retry_after: float | None = None


Outcome = TransportFault | HttpStatus | ServiceCode | Reported


@attrs.frozen
class Retry:
    """Wait ``delay`` seconds, then try again."""

    delay: float


@attrs.frozen
class Relogin:
    """Log in again, then retry immediately (allowed once per operation)."""


@attrs.frozen
class GiveUp:
    """Stop: ``reason`` says why, for the error the caller builds."""

    reason: str


Decision = Retry | Relogin | GiveUp


def is_transient(outcome: Outcome) -> bool:
    """Whether trying the same request again could succeed."""
    if isinstance(outcome, TransportFault):
        return outcome.kind in TRANSPORT_FAULTS
    if isinstance(outcome, HttpStatus):
        return outcome.status in TRANSIENT_STATUSES
    if isinstance(outcome, Reported):
        return outcome.transient
    return outcome.code in TRANSIENT_SERVICE_CODES


def outcome_of(failure: Problem) -> Outcome:
    """The outcome a typed failure stands for, for callers that retry whole port operations.

    ``TimedOut`` is a timeout and ``Transient`` is worth another try (its ``Retry-After`` kept);
    every other failure (not found, denied, local storage, corrupt data) is final.
    """
    if isinstance(failure, TimedOut):
        return TransportFault("timeout")
    if isinstance(failure, Transient):
        return Reported(True, f"{failure.what}: {failure.detail}", failure.retry_after)
    return Reported(False, type(failure).__name__)


def backoff_ceiling(policy: RetryPolicy, attempt: int) -> float:
    """The full-jitter ceiling after ``attempt`` attempts: ``min(max, base * 2**(attempt-1))``."""
    exponent = min(max(attempt - 1, 0), 62)  # beyond 2**62 the cap wins anyway
    return min(policy.max_delay, policy.base_delay * float(2**exponent))


def decide(
    policy: RetryPolicy,
    *,
    attempt: int,
    elapsed: float,
    outcome: Outcome,
    jitter: float,
    relogged: bool = False,
) -> Decision:
    """What to do after attempt number ``attempt`` (1-based) failed with ``outcome``.

    ``elapsed`` is the time since the first attempt started; ``jitter`` is uniform in [0, 1).
    """
    if attempt < 1 or not 0.0 <= jitter < 1.0 or elapsed < 0:
        raise ValueError("attempt >= 1, 0 <= jitter < 1 and elapsed >= 0")
    if isinstance(outcome, HttpStatus) and outcome.status in AUTH_STATUSES:
        if relogged:
            return GiveUp(f"HTTP {outcome.status} after a fresh login")
        return Relogin()
    if not is_transient(outcome):
        return GiveUp(f"{_describe(outcome)} is not transient")
    if attempt >= policy.max_attempts:
        return GiveUp(f"{_describe(outcome)} after {attempt} attempts")
    delay = jitter * backoff_ceiling(policy, attempt)
    retry_after = outcome.retry_after if not isinstance(outcome, TransportFault) else None
    if retry_after is not None:
        # The peer said when it will be ready; waiting less only earns another refusal.
        delay = max(delay, retry_after)
    if elapsed + delay > policy.budget:
        return GiveUp(
            f"{_describe(outcome)}; the next try would pass the {policy.budget:g} s budget"
        )
    return Retry(delay)


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, TransportFault):
        return f"{outcome.kind} error"
    if isinstance(outcome, HttpStatus):
        return f"HTTP {outcome.status}"
    if isinstance(outcome, Reported):
        return outcome.detail
    return f"service error {outcome.code}"


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); else ``None``."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_wall)
