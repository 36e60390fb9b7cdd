"""``FaultInjector``: the test switch for server failures (in the spirit of stamina's).

An ASGI middleware that, once told ``fail_next(n)``, answers the next ``n`` requests with an error
status instead of passing them on. It is off unless asked for, so no test needs to patch anything to
see a 5xx burst. Test-only: it lives here, not in the product.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from starlette.types import ASGIApp, Receive, Scope, Send


class FaultInjector:
    """ASGI middleware that fails the next ``n`` matching requests on demand.

    Args:
        app: the app to wrap; requests pass through untouched while no failures are pending.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._remaining = 0
        self._status = 503
        self._retry_after: float | None = None
        self._path_prefix = "/"
        self.injected = 0
        self._delays: dict[str, float] = {}
        # (path, started, finished) of every HTTP request, on the monotonic clock, for tests
        # that check what overlapped with what.
        self.timeline: list[tuple[str, float, float]] = []

    def delay(self, path_prefix: str, seconds: float) -> None:
        """Hold every request whose path starts with ``path_prefix`` for ``seconds`` before
        passing it on (0 removes the delay)."""
        with self._lock:
            if seconds > 0:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def _delay_for(self, path: str) -> float:
        with self._lock:
            return max(
                (s for prefix, s in self._delays.items() if path.startswith(prefix)), default=0.0
            )

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | None = None,
        *,
        path_prefix: str = "/",
    ) -> None:
        """Answer the next ``n`` requests whose path starts with ``path_prefix`` with ``status``."""
        if n < 0 or not 400 <= status <= 599:
            raise ValueError("n >= 0 and an error status (4xx or 5xx)")
        with self._lock:
            self._remaining = n
            self._status = status
            self._retry_after = retry_after
            self._path_prefix = path_prefix

    @property
    def pending(self) -> int:
        """Failures still to be injected."""
        with self._lock:
            return self._remaining

    def _take(self, path: str) -> tuple[int, float | None] | None:
        with self._lock:
            if self._remaining <= 0 or not path.startswith(self._path_prefix):
                return None
            self._remaining -= 1
            self.injected += 1
            return self._status, self._retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        try:
            await self._serve(scope, receive, send)
        finally:
            with self._lock:
                self.timeline.append((scope["path"], started, time.monotonic()))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        pause = self._delay_for(scope["path"])
        if pause:
            await asyncio.sleep(pause)
        fault = self._take(scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
            return
        status, retry_after = fault
        body = json.dumps(
            {"ErrorCode": "InjectedFault", "Message": "fault injected by a test"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if retry_after is not None:
            headers.append((b"retry-after", str(int(retry_after)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
