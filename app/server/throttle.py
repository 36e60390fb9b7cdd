"""Login throttling over the store, so that every server on it sees the same failures.

``LoginThrottle`` counts wrong passwords per key in a sliding window and refuses past
``attempts``. The server keeps two: per (account, source address), so that a guesser elsewhere
never locks the owner out, and per source address alone, checked before any Argon2id runs, so
that one address spraying many accounts is stopped cheaply. Tokens are never throttled. The keys
are ``account_key``/``address_key``: distinct prefixes keep one kind from colliding with the
other. The records live in the store's ``LoginFailures``; records older than the window are
dropped on every write, which bounds them by time whatever the spray of keys.
"""

from __future__ import annotations

from collections.abc import Callable

from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.app.server.refusals import store_refusal
from splitvault.domain.ports import ServerStore


def account_key(email: str, source: str) -> str:
    """The throttle key of one account tried from one source address."""
    return f"account {source} {email}"


def address_key(source: str) -> str:
    """The throttle key of one source address, whatever account it tries."""
    return f"address {source}"


class LoginThrottle:
    """Wrong passwords per key in a sliding window of ``window`` seconds; ``attempts`` allowed."""

    def __init__(
        self, store: ServerStore, attempts: int, window: float, now: Callable[[], float]
    ) -> None:
        self._store = store
        self._attempts = attempts
        self._window = window
        self._now = now

    def wait(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or ``None`` when it may try now."""
        now = self._now()
        found = self._store.failures_since(key, now - self._window)
        if not is_successful(found):
            raise store_refusal(unsafe_perform_io(found.failure()))
        failures = unsafe_perform_io(found.unwrap())
        if len(failures) < self._attempts:
            return None
        return max(1.0, failures[-self._attempts] + self._window - now)

    def failed(self, key: str) -> None:
        """Record one wrong password for ``key``."""
        now = self._now()
        recorded = self._store.record_failure(key, now, forget_before=now - self._window)
        if not is_successful(recorded):
            raise store_refusal(unsafe_perform_io(recorded.failure()))

    def succeeded(self, key: str) -> None:
        """Forget the failures of ``key`` after a correct password."""
        # Most logins follow no failure: a read spares the store a write (and its fsync).
        found = self._store.failures_since(key, self._now() - self._window)
        if is_successful(found) and not unsafe_perform_io(found.unwrap()):
            return
        cleared = self._store.clear_failures(key)
        if not is_successful(cleared):
            raise store_refusal(unsafe_perform_io(cleared.failure()))
