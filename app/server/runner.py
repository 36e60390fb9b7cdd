"""Run an ASGI app on uvicorn in a background thread, on loopback, for tests and the demo.

``RunningServer`` binds 127.0.0.1 itself (port 0 picks a free port, known before the server
starts), runs uvicorn in a daemon thread and stops it cleanly on exit.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from splitvault.app.server.head_timeout import HEAD_TIMEOUT_PROTOCOL

log = logging.getLogger("splitvault.server.runner")


class RunningServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread.

    Use as a context manager; ``url`` is valid inside it.

    Args:
        app: the ASGI app (usually ``create_app(...)``).
        port: 0 picks a free port.
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
        ssl_certfile: Path | None = None,
        ssl_keyfile: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._app = app
        self._port = port
        self._tls = ssl_certfile is not None
        self._ssl_certfile = str(ssl_certfile) if ssl_certfile is not None else None
        self._ssl_keyfile = str(ssl_keyfile) if ssl_keyfile is not None else None
        self._startup_timeout = startup_timeout
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

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
            http=HEAD_TIMEOUT_PROTOCOL,
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
