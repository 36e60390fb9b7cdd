"""Login tokens: HS256 JWTs signed with a key kept in the store, naming the device and carrying
the session generation.

``/login`` issues a short *enrolment* token (``dev`` empty) good only for ``POST /devices``; the
enrolment answers a *device* token (``dev`` = the device id) that every other route requires, so
whatever the API seals is sealed to the device the token names.

Every server on a store signs and verifies with the same key (created once, by whichever server
starts first) and checks a token's ``gen`` claim against the account's current session generation,
so a password change, a binding reset or a device revocation ends a session on every server at its
next request. ``rotate`` replaces the key and so ends every session everywhere.
"""

from __future__ import annotations

import math
import secrets
from typing import Final

import jwt
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.app.server.refusals import Refusal, store_refusal
from splitvault.app.server.stores import SIGNING_KEY_SETTING
from splitvault.domain.ports import Account, ServerStore

SIGNING_KEY_BYTES: Final = 32
ALGORITHM: Final = "HS256"


class SigningKey:
    """The HS256 key in the store's settings; created on first use, shared by every server."""

    def __init__(self, store: ServerStore) -> None:
        self._store = store
        created = store.setting_or_create(
            SIGNING_KEY_SETTING, secrets.token_bytes(SIGNING_KEY_BYTES)
        )
        if not is_successful(created):
            raise store_refusal(unsafe_perform_io(created.failure()))
        key = unsafe_perform_io(created.unwrap())
        if len(key) != SIGNING_KEY_BYTES:
            raise ValueError(f"the stored token signing key must be {SIGNING_KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return "SigningKey(<in the store>)"

    @property
    def key(self) -> bytes:
        """The current key (read from the store: another server may have rotated it)."""
        stored = self._store.get_setting(SIGNING_KEY_SETTING)
        if not is_successful(stored):
            raise store_refusal(unsafe_perform_io(stored.failure()))
        key = unsafe_perform_io(stored.unwrap())
        if key is None:
            raise Refusal(503, "ServerMisconfigured", "the token signing key is missing")
        return key

    def rotate(self) -> None:
        """Replace the key: every token issued so far, by any server, stops verifying."""
        stored = self._store.put_setting(
            SIGNING_KEY_SETTING, secrets.token_bytes(SIGNING_KEY_BYTES)
        )
        if not is_successful(stored):
            raise store_refusal(unsafe_perform_io(stored.failure()))


def issue(key: bytes, account: Account, now: float, lifetime: float, device: str = "") -> str:
    """A token for ``account`` (on ``device``; none: enrolment only) valid for at least
    ``lifetime`` seconds from ``now``.

    The times are whole seconds (RFC 7519 NumericDate, as most verifiers expect). ``exp`` counts
    from ``now`` rounded up, not down: from ``int(now)`` a token issued at ``x.95`` with a
    1-second lifetime expired 0.05 s later, before its enrolment could use it. So ``exp - iat``
    is the lifetime, or one second more when ``now`` is not a whole second.
    """
    issued = int(now)
    claims = {
        "sub": account.email,
        "role": account.role,
        "dev": device,
        "gen": account.generation,
        "iat": issued,
        "exp": math.ceil(now) + max(1, math.ceil(lifetime)),
        "jti": secrets.token_hex(16),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def claims_of(key: bytes, token: str) -> dict[str, object] | None:
    """The verified claims, or ``None`` for a token that is not ours (times are checked by the
    caller against the server's injectable clock, not PyJWT's)."""
    try:
        claims: dict[str, object] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],  # pinned: no "none", no key confusion
            options={
                "require": ["exp", "iat", "sub", "jti", "gen", "dev"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError:
        return None
    return claims
