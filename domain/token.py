"""Token decisions: when to refresh a bearer token before it expires.

The JWT's claims are read without verifying the signature (the client cannot, and need not: the
server verifies). Only ``exp`` and ``iat`` matter and their types are checked. The refresh moment is
80 % of the token's lifetime measured from *local receipt* on the monotonic clock, so a client whose
wall clock is off by hours still refreshes on time. Anything missing or malformed means "refresh
now" — never an exception.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

import attrs

REFRESH_FRACTION = 0.8


@attrs.frozen
class TokenTiming:
    """When a token was received and when to refresh it, both on the monotonic clock."""

    received_at: float
    refresh_at: float

    def should_refresh(self, now_monotonic: float) -> bool:
        """Whether the token is due (or overdue) for a proactive refresh."""
        return now_monotonic >= self.refresh_at


def read_claims(token: str) -> dict[str, object] | None:
    """The JWT's payload as a dict, or ``None`` when it is not a well-formed JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return float(value)


def lifetime(claims: dict[str, object] | None, received_wall: float) -> float:
    """Seconds the token is valid for, from its own claims; 0 when unknown.

    ``exp - iat`` when both are present (immune to our clock); otherwise ``exp - received_wall``.
    """
    if claims is None:
        return 0.0
    exp = _number(claims.get("exp"))
    if exp is None:
        return 0.0
    iat = _number(claims.get("iat"))
    start = iat if iat is not None and iat <= exp else received_wall
    return max(0.0, exp - start)


def plan_refresh(token: str, *, received_monotonic: float, received_wall: float) -> TokenTiming:
    """Schedule the proactive refresh of a token just received."""
    life = lifetime(read_claims(token), received_wall)
    return TokenTiming(received_monotonic, received_monotonic + REFRESH_FRACTION * life)
