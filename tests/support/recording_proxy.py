"""A forward HTTP proxy on 127.0.0.1 that records every request it relays, for wire-level tests.

A client configured with ``HTTP_PROXY=http://127.0.0.1:<port>`` sends it absolute-form requests
(``GET http://host:port/path HTTP/1.1``); the proxy records the method, the target, the headers and
the body's length, relays the request to the origin named in the target and streams the answer
back, keeping both connections alive. It is what a corporate proxy in front of S3 does, and it lets
a test check what our S3 client really put on the wire (the signature's payload hash, a part sent
whole) without hooking the client's internals.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs

# Headers of one hop: the proxy frames its own answer.
_HOP_HEADERS = frozenset({"transfer-encoding", "connection", "content-length"})


@attrs.frozen
class Relayed:
    """One request as the proxy received it."""

    method: str
    target: str
    headers: dict[str, str]
    body_length: int
    body_crc32: int = 0  # zlib.crc32 of the body as relayed


class RecordingProxy:
    """Listen on a free loopback port; ``url`` is the proxy's address, ``seen`` what it relayed."""

    def __init__(self) -> None:
        self.seen: list[Relayed] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {name.lower(): value for name, value in self.headers.items()}
                with proxy._lock:
                    proxy.seen.append(
                        Relayed(self.command, self.path, headers, length, zlib.crc32(body or b""))
                    )
                origin = urllib.parse.urlsplit(self.path)
                if origin.scheme != "http" or not origin.hostname:
                    self.send_error(400, "absolute-form http:// targets only")
                    return
                upstream = http.client.HTTPConnection(
                    origin.hostname, origin.port or 80, timeout=30
                )
                try:
                    target = origin.path + (f"?{origin.query}" if origin.query else "")
                    upstream.request(self.command, target, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    self.send_response_only(answer.status, answer.reason)
                    for name, value in answer.getheaders():
                        if name.lower() not in {
                            "transfer-encoding",
                            "connection",
                            "content-length",
                        }:
                            self.send_header(name, value)
                    # A HEAD answer's length is the object's, not its (empty) body's.
                    length_sent = answer.getheader("Content-Length") or "0"
                    self.send_header(
                        "Content-Length", length_sent if self.command == "HEAD" else str(len(data))
                    )
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def requests(self, method: str) -> list[Relayed]:
        """The relayed requests of one method, in arrival order."""
        with self._lock:
            return [one for one in self.seen if one.method == method]

    def close(self) -> None:
        """Stop listening and end the serving thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
