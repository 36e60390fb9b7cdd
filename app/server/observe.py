"""What the server reports: counters for tests, Prometheus metrics and the access log.

``ServerStats`` keeps plain counters (``app.state.stats``, read by tests and the load test) and
feeds the same events into a per-app Prometheus registry served at ``/metrics``. ``Observe`` is
the outermost ASGI middleware: per request it records the route (the endpoint's name, never the
raw path, so the label set stays small), the method, the status and the latency, and writes one
access-log line on ``splitvault.server.access``. Neither ever sees a header or a body, so no token,
password or key can reach the log or the metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("splitvault.server.access")

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Event counters: the name in ServerStats -> the Prometheus counter and its help text.
EVENTS: Final = {
    "logins": ("splitvault_logins_total", "Successful logins."),
    "login_failures": ("splitvault_login_failures_total", "Logins refused for a wrong password."),
    "throttled": ("splitvault_logins_throttled_total", "Logins refused by the throttle (429)."),
    "rejected_tokens": ("splitvault_tokens_rejected_total", "Requests with an unusable token."),
    "denied_by_grant": (
        "splitvault_denied_by_grant_total",
        "Requests refused: no grant.",
    ),
    "downloads": ("splitvault_envelopes_served_total", "Small-part envelopes served."),
}


@attrs.define
class ServerStats:
    """Counters of what the server did; read by tests (``app.state.stats``) and operators."""

    logins: int = 0
    login_failures: int = 0
    throttled: int = 0
    rejected_tokens: int = 0
    denied_by_grant: int = 0
    downloads: int = 0
    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry, repr=False, eq=False)
    _counters: dict[str, Counter] = attrs.field(factory=dict, repr=False, eq=False)
    requests: Counter = attrs.field(init=False, repr=False, eq=False)
    latency: Histogram = attrs.field(init=False, repr=False, eq=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        for name, (metric, help_text) in EVENTS.items():
            self._counters[name] = Counter(metric, help_text, registry=self.registry)
        self.requests = Counter(
            "splitvault_requests_total",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "splitvault_request_seconds",
            "HTTP request latency by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def count(self, name: str) -> None:
        """Add one to the counter ``name``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)
        self._counters[name].inc()


class Observe:
    """ASGI middleware: metrics and one access-log line per request."""

    def __init__(self, app: ASGIApp, stats: ServerStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            # The router stores the matched endpoint in the scope; its name is the route label.
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__name__", "unmatched")
            self.stats.requests.labels(route, scope["method"], str(status)).inc()
            self.stats.latency.labels(route).observe(elapsed)
            client = scope.get("client")
            access_log.info(
                '%s "%s %s" %d %.1fms',
                client[0] if client else "-",
                scope["method"],
                route,
                status,
                elapsed * 1000,
            )
