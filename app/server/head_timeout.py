"""A deadline for each request's head: uvicorn's h11 protocol, closing slow-header connections.

uvicorn times out idle keep-alive connections but not a client that connects and then sends its
request line and headers a byte at a time (slowloris): each such connection holds a slot of the
concurrency limit for as long as it likes, so a few hundred of them shut everyone else out. This
protocol gives every request head a deadline, counted from the connection (the first request) or
from the first byte after a finished response (the next one) and never extended by further
bytes; a head still incomplete at the deadline closes the connection. Bodies are bounded by the
body limit and the handlers' reads, not here.

uvicorn loads the class by name in every worker (``serve`` passes
``splitvault.app.server.head_timeout:HeadTimeoutH11Protocol``); the deadline comes from
``SPLITVAULT_HEADER_TIMEOUT`` (seconds, default 10), which ``serve`` sets for its workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Final

from uvicorn.protocols.http.h11_impl import H11Protocol

ENV_HEADER_TIMEOUT: Final = "SPLITVAULT_HEADER_TIMEOUT"
# uvicorn's ``http`` setting: a name, so that every worker process imports the class itself.
HEAD_TIMEOUT_PROTOCOL: Final = "splitvault.app.server.head_timeout:HeadTimeoutH11Protocol"
DEFAULT_HEADER_TIMEOUT: Final = 10.0

log = logging.getLogger("splitvault.server")


def header_timeout() -> float:
    """The configured deadline for a request head, in seconds."""
    try:
        seconds = float(os.environ.get(ENV_HEADER_TIMEOUT, DEFAULT_HEADER_TIMEOUT))
    except ValueError:
        return DEFAULT_HEADER_TIMEOUT
    return seconds if seconds > 0 else DEFAULT_HEADER_TIMEOUT


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for every request head (see the module)."""

    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head():
            self._arm()  # a no-op when armed: more bytes never extend the deadline
        super().data_received(data)
        if not self._awaiting_head():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # Idle between requests is the keep-alive timeout's business; the next head's deadline
        # starts with its first byte (data_received).
        self._disarm()
        super().on_response_complete()

    def _awaiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(header_timeout(), self._on_deadline)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _on_deadline(self) -> None:
        self._head_deadline = None
        if self._awaiting_head() and not self.transport.is_closing():
            seconds = header_timeout()
            log.info("closing a connection whose request head took longer than %ss", seconds)
            self.transport.close()
