"""Run an ASGI app on uvicorn in a background thread, on loopback, for tests and the demo.

``RunningServer`` binds 127.0.0.1 itself (port 0 picks a free port, known before the server
starts), runs uvicorn in a daemon thread and stops it cleanly on exit. ``FaultInjector`` is the
test switch for failures (in the spirit of stamina's): an ASGI middleware that, once told
``fail_next(n)``, answers the next ``n`` requests with an error status instead of passing them on.
It is off unless asked for, so no test needs to patch anything to see a 5xx burst.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("splitvault.server_runner")


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
        fault = self._take(scope["path"]) if scope["type"] == "http" else None
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


class RunningServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread.

    Use as a context manager; ``url`` is valid inside it.

    Args:
        app: the ASGI app (usually ``create_app(...)``).
        port: 0 picks a free port.
        fault_injection: wrap the app in a ``FaultInjector`` reachable as ``faults``.
        ssl_certfile, ssl_keyfile: serve HTTPS with this certificate chain and key.
        startup_timeout: seconds to wait for the server to accept connections.

    Raises:
        RuntimeError: when the server does not start in time (the cause is in uvicorn's log).
        OSError: when the port cannot be bound.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        port: int = 0,
        fault_injection: bool = False,
        ssl_certfile: Path | None = None,
        ssl_keyfile: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._faults = FaultInjector(app) if fault_injection else None
        self._app: ASGIApp = self._faults if self._faults is not None else app
        self._port = port
        self._tls = ssl_certfile is not None
        self._ssl_certfile = str(ssl_certfile) if ssl_certfile is not None else None
        self._ssl_keyfile = str(ssl_keyfile) if ssl_keyfile is not None else None
        self._startup_timeout = startup_timeout
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def faults(self) -> FaultInjector:
        """The fault switch; only when built with ``fault_injection=True``."""
        if self._faults is None:
            raise RuntimeError("start the server with fault_injection=True to inject faults")
        return self._faults

    @property
    def port(self) -> int:
        """The bound port."""
        if self._socket is None:
            raise RuntimeError("the server is not running")
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:{port}``."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Bind, start uvicorn in a thread and wait until it accepts connections."""
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listener says TCP, and without it Nagle plus delayed ACKs add 40 ms to every answer.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._socket = sock
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            ssl_certfile=self._ssl_certfile,
            ssl_keyfile=self._ssl_keyfile,
        )
        server = uvicorn.Server(config)
        self._server = server
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="splitvault-server", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the API server did not start; see the uvicorn log")
            time.sleep(0.01)
        log.info("API server listening on %s", self.url)

    def stop(self) -> None:
        """Ask uvicorn to exit, wait for its thread, release the port."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._thread = None
        self._socket = None

    def __enter__(self) -> RunningServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
