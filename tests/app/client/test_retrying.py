"""The app's retry loop for CDN transfers, driven by domain.retry, on a fake clock and sleep."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.app.client.retrying import Retrier, run_with
from splitvault.domain.errors import (
    AccessDenied,
    NotFound,
    PartMismatch,
    Problem,
    StorageFailed,
    TimedOut,
    Transient,
)
from splitvault.domain.retry import Reported, RetryPolicy, TransportFault, is_transient, outcome_of
from tests.fakes import FakeClock, FakeRandom, FakeSleep
from tests.support.results import failure, value

POLICY = RetryPolicy(base_delay=0.5, max_delay=4.0, max_attempts=5, budget=20.0)


class Script:
    """An operation that fails with the given failures in order, then succeeds."""

    def __init__(self, *failures: Problem) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> IOResult[str, Problem]:
        self.calls += 1
        if self.failures:
            return IOFailure(self.failures.pop(0))
        return IOSuccess("done")


def retrier(policy: RetryPolicy = POLICY, jitter: float = 0.5) -> tuple[Retrier, FakeSleep]:
    clock = FakeClock(start=0.0)  # from zero, elapsed time is exactly the sum of the waits
    sleep = FakeSleep(clock)
    return Retrier(policy, clock, FakeRandom(jitter), sleep), sleep


def test_transient_failures_are_retried_until_success() -> None:
    """Two resets then success: three calls, two full-jitter waits under the doubling ceiling."""
    loop, sleep = retrier()
    script = Script(Transient("cdn", "reset"), TimedOut("cdn", 1.0))
    assert value(loop.run("op", script)) == "done"
    assert script.calls == 3
    assert sleep.waits == [0.25, 0.5]  # jitter 0.5 x ceilings 0.5 and 1.0


def test_final_failures_are_returned_at_once() -> None:
    """Not found, denied, local storage and mismatched parts are not retried."""
    for final in (
        NotFound("x"),
        AccessDenied("x", "no"),
        StorageFailed("x", "No space left on device"),
        PartMismatch("stale"),
    ):
        loop, sleep = retrier()
        script = Script(final, final)
        assert failure(loop.run("op", script)) == final
        assert script.calls == 1
        assert sleep.waits == []


def test_persistent_transient_gives_up_after_the_cap_saying_why() -> None:
    """Always transient: exactly max_attempts calls, then a Transient naming the reason."""
    loop, _ = retrier()
    script = Script(*[Transient("cdn", "reset")] * 10)
    problem = failure(loop.run("op", script))
    assert script.calls == POLICY.max_attempts
    assert isinstance(problem, Transient)
    assert "after 5 attempts" in problem.detail


def test_persistent_timeout_stays_a_timeout() -> None:
    """A peer that keeps stalling ends as TimedOut, with the configured seconds."""
    loop, _ = retrier()
    script = Script(*[TimedOut("cdn", 1.5)] * 10)
    assert failure(loop.run("op", script)) == TimedOut("cdn", 1.5)
    assert script.calls == POLICY.max_attempts


def test_retry_after_is_honoured() -> None:
    """A throttled answer with Retry-After waits at least that long."""
    loop, sleep = retrier(jitter=0.0)
    script = Script(Transient("cdn", "SlowDown (HTTP 503)", retry_after=3.0))
    assert value(loop.run("op", script)) == "done"
    assert sleep.waits == [3.0]


def test_no_retrier_means_one_attempt() -> None:
    """Without a retrier the operation runs once."""
    script = Script(Transient("cdn", "reset"))
    assert isinstance(failure(run_with(None, "op", script)), Transient)
    assert script.calls == 1


def test_outcome_of_classifies_failures() -> None:
    """Timeouts and Transient are transient outcomes (keeping Retry-After); the rest are final."""
    assert outcome_of(TimedOut("x", 1.0)) == TransportFault("timeout")
    transient = outcome_of(Transient("x", "503", retry_after=2.0))
    assert isinstance(transient, Reported)
    assert transient.transient
    assert transient.retry_after == 2.0
    assert not is_transient(outcome_of(StorageFailed("x", "full")))


failures = st.sampled_from(
    [
        Transient("cdn", "reset"),
        Transient("cdn", "SlowDown", retry_after=1.0),
        TimedOut("cdn", 2.0),
        NotFound("x"),
        StorageFailed("x", "full"),
    ]
)


@given(
    st.lists(failures, max_size=12),
    st.floats(min_value=0, max_value=0.999),
    st.builds(
        RetryPolicy,
        base_delay=st.floats(0, 2),
        max_delay=st.floats(0, 8),
        max_attempts=st.integers(1, 8),
        budget=st.floats(0, 30),
    ),
)
@settings(max_examples=200)
def test_the_loop_never_breaks_the_policy(
    script_failures: list[Problem], jitter: float, policy: RetryPolicy
) -> None:
    """Whatever fails, the loop stays within the attempt cap and the time budget."""
    loop, sleep = retrier(policy, jitter)
    script = Script(*script_failures)
    loop.run("op", script)
    assert script.calls <= policy.max_attempts
    assert sum(sleep.waits) <= policy.budget
    finals = [f for f in script_failures[: script.calls] if not is_transient(outcome_of(f))]
    assert len(finals) <= 1  # a final failure ends the loop


class Advancing:
    """A download that fails ``failures`` times, moving ``step`` bytes each time, then finishes."""

    def __init__(self, failures: int, step: int) -> None:
        self.left = failures
        self.step = step
        self.moved = 0
        self.calls = 0

    def progress(self) -> int:
        return self.moved

    def __call__(self) -> IOResult[str, Problem]:
        self.calls += 1
        if self.left:
            self.left -= 1
            self.moved += self.step
            return IOFailure(Transient("cdn", "connection reset"))
        return IOSuccess("done")


def test_a_download_that_keeps_advancing_finishes_past_the_attempt_cap() -> None:
    """Twenty failures that each moved bytes (four times the cap of five): it finishes, and every
    wait is the first backoff, since every attempt made progress."""
    loop, sleep = retrier()
    download = Advancing(failures=20, step=1 << 20)
    assert value(loop.run("download", download, progress=download.progress)) == "done"
    assert download.calls == 21
    assert sleep.waits == [0.25] * 20  # jitter 0.5 x the first ceiling 0.5


def test_attempts_without_progress_still_hit_the_cap() -> None:
    """The same failures without progress: exactly max_attempts calls."""
    loop, _ = retrier()
    download = Advancing(failures=20, step=0)
    problem = failure(loop.run("download", download, progress=download.progress))
    assert isinstance(problem, Transient)
    assert download.calls == POLICY.max_attempts


def test_progress_then_stall_counts_the_stall_only() -> None:
    """Three progressing failures, then none progress: 3 + max_attempts calls in all."""
    loop, _ = retrier()

    class ThenStuck(Advancing):
        def __call__(self) -> IOResult[str, Problem]:
            self.calls += 1
            if self.calls <= 3:
                self.moved += 1
            return IOFailure(Transient("cdn", "connection reset"))

    download = ThenStuck(failures=0, step=0)
    failure(loop.run("download", download, progress=download.progress))
    assert download.calls == 3 + POLICY.max_attempts
