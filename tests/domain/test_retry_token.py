"""Retry and token decisions: invariants as a stateful machine and direct cases."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from splitvault.domain.retry import (
    GiveUp,
    HttpStatus,
    Outcome,
    Relogin,
    Retry,
    RetryPolicy,
    ServiceCode,
    Streak,
    TransportFault,
    decide,
    decide_streak,
    is_transient,
    parse_retry_after,
)
from splitvault.domain.token import plan_refresh, read_claims

outcomes = st.one_of(
    st.builds(TransportFault, st.sampled_from(["connect", "read", "timeout", "reset", "weird"])),
    st.builds(
        HttpStatus,
        st.sampled_from([400, 404, 408, 409, 413, 429, 500, 501, 502, 503, 504]),
        st.none() | st.floats(min_value=0, max_value=120),
    ),
    st.builds(ServiceCode, st.sampled_from(["SlowDown", "NoSuchKey", "AccessDenied"])),
)
policies = st.builds(
    RetryPolicy,
    base_delay=st.floats(min_value=0, max_value=2),
    max_delay=st.floats(min_value=0, max_value=30),
    max_attempts=st.integers(min_value=1, max_value=10),
    budget=st.floats(min_value=0, max_value=100),
)


class RetryLoop(RuleBasedStateMachine):
    """Drive one operation's retry loop with arbitrary outcomes and check the policy holds."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = RetryPolicy(base_delay=0.5, max_delay=4.0, max_attempts=5, budget=12.0)
        self.attempt = 1
        self.elapsed = 0.0
        self.done = False
        self.relogged = False

    @precondition(lambda self: not self.done)
    @rule(outcome=outcomes, jitter=st.floats(min_value=0, max_value=0.999999))
    def fail(self, outcome: Outcome, jitter: float) -> None:
        decision = decide(
            self.policy,
            attempt=self.attempt,
            elapsed=self.elapsed,
            outcome=outcome,
            jitter=jitter,
            relogged=self.relogged,
        )
        if isinstance(decision, Retry):
            assert is_transient(outcome)
            assert decision.delay >= 0
            retry_after = getattr(outcome, "retry_after", None)
            if retry_after is None:
                assert decision.delay <= self.policy.max_delay
            self.elapsed += decision.delay
            self.attempt += 1
        elif isinstance(decision, Relogin):
            assert not self.relogged
            self.relogged = True
            self.attempt += 1
        else:
            self.done = True

    @precondition(lambda self: not self.done)
    @rule(auth=st.sampled_from([401, 403]))
    def auth_refused(self, auth: int) -> None:
        decision = decide(
            self.policy,
            attempt=self.attempt,
            elapsed=self.elapsed,
            outcome=HttpStatus(auth),
            jitter=0.5,
            relogged=self.relogged,
        )
        if self.relogged:
            assert isinstance(decision, GiveUp)
            self.done = True
        else:
            assert isinstance(decision, Relogin)
            self.relogged = True
            self.attempt += 1

    @precondition(lambda self: self.done)
    @rule()
    def next_operation(self) -> None:
        self.attempt, self.elapsed, self.done, self.relogged = 1, 0.0, False, False

    @invariant()
    def within_budget(self) -> None:
        assert self.elapsed <= self.policy.budget
        # one extra attempt may come from the single re-login
        assert self.attempt <= self.policy.max_attempts + 1


TestRetryLoop = RetryLoop.TestCase


@given(
    policies,
    st.integers(min_value=1, max_value=20),
    st.floats(0, 200),
    outcomes,
    st.floats(0, 0.999),
)
@settings(max_examples=300)
def test_decide_never_breaks_the_policy(
    policy: RetryPolicy, attempt: int, elapsed: float, outcome: Outcome, jitter: float
) -> None:
    """Retries only transient outcomes, never past the attempt cap or the budget."""
    decision = decide(policy, attempt=attempt, elapsed=elapsed, outcome=outcome, jitter=jitter)
    if isinstance(decision, Retry):
        assert is_transient(outcome)
        assert attempt < policy.max_attempts
        assert elapsed + decision.delay <= policy.budget
    if not is_transient(outcome) and not isinstance(decision, Relogin):
        assert isinstance(decision, GiveUp)


def test_retry_after_is_honoured() -> None:
    """A 503 with Retry-After waits at least that long."""
    decision = decide(
        RetryPolicy(budget=100),
        attempt=1,
        elapsed=0,
        outcome=HttpStatus(503, retry_after=7.0),
        jitter=0.0,
    )
    assert decision == Retry(7.0)


def test_retry_after_beyond_budget_gives_up() -> None:
    """A Retry-After longer than the remaining budget stops at once."""
    decision = decide(
        RetryPolicy(budget=5),
        attempt=1,
        elapsed=0,
        outcome=HttpStatus(429, retry_after=60.0),
        jitter=0.0,
    )
    assert isinstance(decision, GiveUp)


def test_parse_retry_after_forms() -> None:
    """Delta-seconds and HTTP-dates are read; junk is ignored."""
    assert parse_retry_after("12", 0) == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after(None, 0) is None


def jwt_with(claims: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


def test_refresh_at_80_percent_of_lifetime_from_local_receipt() -> None:
    """A 1000 s token received at monotonic 50 is refreshed at 850, whatever the wall clock."""
    timing = plan_refresh(
        jwt_with({"iat": 10_000, "exp": 11_000}), received_monotonic=50, received_wall=99_999_999
    )
    assert timing.refresh_at == 850
    assert not timing.should_refresh(849.9)
    assert timing.should_refresh(850)


@given(
    st.one_of(
        st.text(),
        st.builds(
            jwt_with,
            st.dictionaries(
                st.sampled_from(["exp", "iat", "sub"]),
                st.one_of(st.none(), st.text(), st.booleans(), st.floats(), st.integers()),
            ),
        ),
        st.builds(jwt_with, st.lists(st.integers())),
    )
)
def test_malformed_tokens_mean_refresh_now_never_crash(token: str) -> None:
    """Missing or malformed exp, junk tokens: refresh at once or at a sane time, no exception."""
    timing = plan_refresh(token, received_monotonic=100.0, received_wall=1_000.0)
    assert timing.refresh_at >= 100.0
    claims = read_claims(token)
    if claims is None or not isinstance(claims.get("exp"), int | float):
        assert timing.should_refresh(100.0)


# -- streaks: the cap and the budget count only attempts without progress -------------------------

STREAK_POLICY = RetryPolicy(base_delay=0.2, max_delay=10.0, max_attempts=6, budget=60.0)


@settings(max_examples=200, deadline=None)
@given(
    jitters=st.lists(st.floats(0.0, 0.999_999), min_size=1, max_size=200),
    spent=st.lists(st.floats(0.0, 120.0), min_size=1, max_size=200),
)
def test_an_operation_that_keeps_progressing_is_never_given_up(
    jitters: list[float], spent: list[float]
) -> None:
    """However many attempts fail and however long each takes, as long as every one made
    progress, a transient failure is retried (with the first backoff)."""
    now = 0.0
    streak = Streak.start(now)
    for jitter, seconds in zip(jitters, spent, strict=False):
        now += seconds
        streak = streak.after_failure(progressed=True, now=now)
        decision = decide_streak(
            STREAK_POLICY, streak, now=now, outcome=TransportFault("reset"), jitter=jitter
        )
        assert isinstance(decision, Retry)
        assert decision.delay <= STREAK_POLICY.base_delay
        now += decision.delay


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.lists(st.booleans(), min_size=1, max_size=60),
    jitter=st.floats(0.0, 0.999_999),
)
def test_the_cap_counts_only_attempts_in_a_row_without_progress(
    pattern: list[bool], jitter: float
) -> None:
    """Give-up happens exactly when max_attempts failures in a row made no progress (the budget
    being ample here), never earlier, whatever progressed before."""
    now = 0.0
    streak = Streak.start(now)
    stalled = 0
    for progressed in pattern:
        now += 0.01
        stalled = 0 if progressed else stalled + 1
        streak = streak.after_failure(progressed=progressed, now=now)
        assert streak.stalled == stalled
        decision = decide_streak(
            STREAK_POLICY, streak, now=now, outcome=TransportFault("reset"), jitter=jitter
        )
        if stalled >= STREAK_POLICY.max_attempts:
            assert isinstance(decision, GiveUp)
            return
        assert isinstance(decision, Retry)
        now += decision.delay


@settings(max_examples=200, deadline=None)
@given(
    stalls=st.lists(st.floats(0.0, 30.0), min_size=1, max_size=10),
    jitter=st.floats(0.0, 0.999_999),
)
def test_a_retry_is_never_scheduled_past_the_budget_since_the_last_progress(
    stalls: list[float], jitter: float
) -> None:
    """Without progress, no retry's wait ends beyond ``budget`` seconds after the last
    progress; a deadline caps the whole operation even while it progresses."""
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, max_attempts=50, budget=20.0)
    now = 100.0
    streak = Streak.start(0.0).after_failure(progressed=True, now=now)
    for seconds in stalls:
        decision = decide_streak(
            policy, streak, now=now, outcome=TransportFault("timeout"), jitter=jitter
        )
        if isinstance(decision, GiveUp):
            break
        assert isinstance(decision, Retry)
        assert now + decision.delay - streak.since <= policy.budget
        now += decision.delay + seconds
        streak = streak.after_failure(progressed=False, now=now)
    capped = RetryPolicy(base_delay=1.0, max_delay=8.0, max_attempts=50, budget=20.0, deadline=50.0)
    late = Streak.start(0.0).after_failure(progressed=True, now=50.0)
    assert isinstance(
        decide_streak(capped, late, now=50.0, outcome=TransportFault("reset"), jitter=0.5), GiveUp
    )
