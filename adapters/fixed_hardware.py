"""A ``Hardware`` adapter that always answers the same fingerprint: for tests and the demo.

It lets two simulated machines run in one process (each with its own value) and keeps tests
independent of the machine they run on.
"""

from __future__ import annotations

from splitvault.domain.ports import Fingerprint


class FixedHardware:
    """Answers a fixed fingerprint.

    Args:
        value: the fingerprint value to report (what would be the HMAC on a real machine).
        components: readings to show, if a test wants some; none by default.
    """

    def __init__(self, value: str, components: tuple[tuple[str, str | None], ...] = ()) -> None:
        if not value:
            raise ValueError("FixedHardware needs a non-empty value")
        self._fingerprint = Fingerprint(components, value)

    def __repr__(self) -> str:
        return f"FixedHardware({self._fingerprint.value!r})"

    def fingerprint(self) -> Fingerprint:
        """The fixed fingerprint."""
        return self._fingerprint
