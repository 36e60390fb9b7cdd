"""Token lifetimes: a token is valid for at least the lifetime it was issued with."""

from __future__ import annotations

import jwt
import pytest

from splitvault.app.server import tokens
from splitvault.domain.ports import Account

KEY = b"k" * 32
ACCOUNT = Account("reader@example.com", "downloader", "unused-hash", b"s" * 16)


def _claims(now: float, lifetime: float) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        tokens.issue(KEY, ACCOUNT, now, lifetime),
        KEY,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


@pytest.mark.parametrize("now", [1_000.0, 1_000.05, 1_000.5, 1_000.95, 1_000.999])
@pytest.mark.parametrize("lifetime", [1.0, 2.5, 300.0])
def test_a_token_lives_at_least_its_lifetime_from_the_moment_it_is_issued(
    now: float, lifetime: float
) -> None:
    """Whole-second claims round the expiry up: issued at x.95 for 1 s, it is still valid at x+1.9.

    Rounded down (``int(now) + lifetime``), the 1-second token issued at 1000.95 expired at 1001,
    0.05 s later; an enrolment that took longer than that was refused as expired.
    """
    claims = _claims(now, lifetime)
    iat, exp = claims["iat"], claims["exp"]
    assert isinstance(iat, int) and isinstance(exp, int)
    assert iat <= now < iat + 1
    assert exp >= now + lifetime
    assert exp - now < lifetime + 2


def test_on_a_whole_second_the_lifetime_is_exact() -> None:
    claims = _claims(2_000.0, 900.0)
    assert (claims["iat"], claims["exp"]) == (2_000, 2_900)
