"""An in-process TCP proxy on 127.0.0.1 that breaks connections on purpose, for fault tests.

``FaultProxy(upstream_port)`` listens on a free loopback port and forwards every connection to the
upstream (the reference API server, the moto S3 server). What happens to each *new* connection is
switchable while it runs: pass it through; reset it (RST, via ``SO_LINGER`` 0) after N bytes;
stall it (stop forwarding, keep it open) after N bytes; cut it (a clean FIN) after N bytes. N counts
the bytes forwarded in one direction (``down`` = upstream to client, ``up`` = client to upstream),
optionally from the moment the client sent a trigger (``b"POST /resources/models"``), so a test can
break exactly the request it cares about. ``refuse(True)`` stops listening while keeping the port,
so new connections get a real ``ECONNREFUSED``. Counters (connections, bytes each way, faults
applied, the request lines seen) let tests check what went over the wire; ``wait_for`` waits for
one of them, always with a bound. One thread accepts, one thread serves each connection; every
blocking call has a short timeout so ``close`` ends them all.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import re
import select
import socket
import struct
import termios
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Literal

import attrs

Action = Literal["pass", "reset", "stall", "cut"]
Direction = Literal["down", "up"]

POLL_SECONDS = 0.05
RECV_BYTES = 64 * 1024
# A request line as HTTP/1.1 clients send it; searched in the client-to-upstream stream.
REQUEST_LINE = re.compile(rb"(GET|HEAD|PUT|POST|DELETE|PATCH) (\S+) HTTP/1\.[01]\r\n")
DRAIN_SECONDS = 2.0  # at most this long for sent bytes to reach the client before a reset
LINE_TAIL = 4096  # bytes kept across reads so a request line split over two reads is still seen


@attrs.frozen
class Fault:
    """What to do to one connection.

    Args:
        action: ``pass``, ``reset`` (RST), ``stall`` (stop forwarding) or ``cut`` (clean close).
        after: bytes forwarded in ``direction`` before the action (0: before the first byte).
        direction: ``down`` counts upstream-to-client bytes, ``up`` client-to-upstream bytes.
        trigger: when set, counting starts where these bytes first appear in the client's
            stream (so ``after=0, direction="up"`` holds back the request that contains them).
    """

    action: Action = "pass"
    after: int = 0
    direction: Direction = "down"
    trigger: bytes | None = None

    def __attrs_post_init__(self) -> None:
        if self.after < 0:
            raise ValueError("after must be >= 0")


PASS = Fault()


@attrs.define
class ProxyCounters:
    """What the proxy has seen so far (read under the proxy's lock via ``snapshot``)."""

    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    resets: int = 0
    stalls: int = 0
    cuts: int = 0
    requests: list[tuple[str, str]] = attrs.field(factory=list)


class _Closed(Exception):
    """The connection is over (a peer closed it, the proxy broke it, or the proxy shuts down)."""


class _Connection:
    """One client connection and its upstream, served by one thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, fault: Fault) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.fault = fault
        self.forwarded: dict[Direction, int] = {"down": 0, "up": 0}
        # Where the fault fires, in bytes of its direction; None until the trigger is seen.
        self.limit: int | None = None
        if fault.action != "pass" and fault.trigger is None:
            self.limit = fault.after
        self.up_tail = b""
        self.line_tail = b""

    def serve(self) -> None:
        try:
            self.upstream = socket.create_connection(
                ("127.0.0.1", self.proxy.upstream_port), timeout=5
            )
            self.upstream.settimeout(None)
            self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pump()
        except (_Closed, OSError):
            pass
        finally:
            self._close_both()

    def _pump(self) -> None:
        assert self.upstream is not None
        peers = {self.client: self.upstream, self.upstream: self.client}
        while not self.proxy.closing.is_set():
            readable, _, _ = select.select(list(peers), [], [], POLL_SECONDS)
            for source in readable:
                data = source.recv(RECV_BYTES)
                if not data:
                    raise _Closed
                direction: Direction = "up" if source is self.client else "down"
                self._forward(direction, data, peers[source])

    def _forward(self, direction: Direction, data: bytes, target: socket.socket) -> None:
        if direction == "up":
            self._see_requests(data)
            self._arm_on_trigger(data)
        allowed = len(data)
        if self.limit is not None and direction == self.fault.direction:
            allowed = max(0, min(len(data), self.limit - self.forwarded[direction]))
        if allowed:
            self._send(direction, data[:allowed], target)
        if allowed < len(data):
            self._act(direction, data[allowed:], target)

    def _see_requests(self, data: bytes) -> None:
        window = self.line_tail + data
        found = [
            (match.group(1).decode(), match.group(2).decode("latin-1"))
            for match in REQUEST_LINE.finditer(window)
            if match.end() > len(self.line_tail)  # not already counted from the last read
        ]
        self.line_tail = window[-LINE_TAIL:]
        if found:
            self.proxy.record_requests(found)

    def _arm_on_trigger(self, data: bytes) -> None:
        trigger = self.fault.trigger
        if trigger is None or self.limit is not None or self.fault.action == "pass":
            return
        window = self.up_tail + data
        index = window.find(trigger)
        if index < 0:
            self.up_tail = window[-(len(trigger) - 1) :] if len(trigger) > 1 else b""
            return
        if self.fault.direction == "up":
            # The trigger's first byte, as a position in the client's stream.
            self.limit = self.forwarded["up"] - len(self.up_tail) + index + self.fault.after
        else:
            self.limit = self.forwarded["down"] + self.fault.after

    def _act(self, direction: Direction, held: bytes, target: socket.socket) -> None:
        action = self.fault.action
        if not self.proxy.take_shot(action):
            # The fault has fired as often as asked: this connection passes from now on.
            self.limit = None
            self._send(direction, held, target)
            return
        if action == "reset":
            # An RST throws away what is still in our send queue: let the N bytes reach the
            # client's kernel first, so "after N bytes" means the client can read N bytes.
            self._drain_to_client()
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise _Closed
        if action == "cut":
            self.client.shutdown(socket.SHUT_WR)
            raise _Closed
        # stall: forward nothing more until released (or the proxy closes), then pass through.
        self.proxy.wait_for_release()
        self.limit = None
        self._send(direction, held, target)

    def _drain_to_client(self) -> None:
        unsent = array.array("i", [0])
        for _ in range(int(DRAIN_SECONDS / POLL_SECONDS * 10)):
            fcntl.ioctl(self.client.fileno(), termios.TIOCOUTQ, unsent)  # SIOCOUTQ on Linux
            if unsent[0] == 0:
                return
            self.proxy.closing.wait(POLL_SECONDS / 10)

    def _send(self, direction: Direction, data: bytes, target: socket.socket) -> None:
        target.sendall(data)
        self.forwarded[direction] += len(data)
        self.proxy.count_bytes(direction, len(data))

    def abort(self) -> None:
        """End the connection, waking a thread blocked in ``sendall`` (``close`` alone does not)."""
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _close_both(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """A loopback TCP proxy to ``127.0.0.1:upstream_port`` whose connections break on demand.

    Use as a context manager; ``port`` and ``url`` are valid inside it. ``behave(fault)`` sets
    what every new connection gets; ``behave(fault, times=n)`` lets the fault fire ``n`` times in
    all (on whichever connections reach it first, e.g. the first GET that passes 3 MiB), after
    which connections pass. ``refuse(True)`` makes new connections fail with ``ECONNREFUSED``.
    ``release()`` lets stalled connections go on.

    Raises ``OSError`` when it cannot bind a loopback port.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.closing = threading.Event()
        self._lock = threading.Condition()
        self._fault: Fault = PASS
        self._shots: int | None = None  # how often the fault may still fire; None: always
        self._released = 0  # bumped by release(); a stalled connection waits for a change
        self._every = 1  # only every n-th new connection gets the fault (behave(every=n))
        self._since_behave = 0
        self._drop_held = False
        self._counters = ProxyCounters()
        self._listener: socket.socket | None = None
        self._listening = False
        self._want_listening = True
        self._port = 0
        self._threads: list[threading.Thread] = []
        self._connections: list[_Connection] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._listener = self._bound_socket(0)
        self._port = self._listener.getsockname()[1]
        self._listener.listen(64)
        self._listening = True
        thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, break every connection and wait for the threads (bounded)."""
        self.closing.set()
        with self._lock:
            self._lock.notify_all()
            listener, self._listener = self._listener, None
            connections = list(self._connections)
        if listener is not None:
            listener.close()
        for connection in connections:
            connection.abort()
        for thread in list(self._threads):
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        """The loopback port clients connect to."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}``."""
        return f"http://127.0.0.1:{self._port}"

    # -- switches ------------------------------------------------------------------------------

    def behave(self, fault: Fault, *, times: int | None = None, every: int = 1) -> None:
        """Apply ``fault`` to every new connection; with ``times``, let it fire that often only.

        With ``every=n`` only every n-th new connection (counted from this call) gets the fault;
        the others pass through.
        """
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        if every < 1:
            raise ValueError("every must be >= 1")
        with self._lock:
            self._fault = fault
            self._shots = times
            self._every = every
            self._since_behave = 0

    def refuse(self, refusing: bool) -> None:
        """Refuse new connections (``ECONNREFUSED``) or accept them again; the port is kept.

        The accepting thread makes the switch (it may be inside ``select`` on the listener, which
        keeps the socket alive in the kernel); this waits until it has, at most a few seconds.
        """
        with self._lock:
            self._want_listening = not refusing
            if not self._lock.wait_for(lambda: self._listening != refusing, timeout=5):
                raise RuntimeError("the proxy's accept thread did not switch")

    def _switch_listener(self) -> None:
        """Called by the accept thread with the lock held, when the wanted state differs."""
        old = self._listener
        if self._want_listening:
            if old is not None:
                old.listen(64)
            self._listening = True
        else:
            # A bound socket that does not listen holds the port and refuses connections.
            if old is not None:
                old.close()
            self._listener = self._bound_socket(self._port)
            self._listening = False
        self._lock.notify_all()

    def release(self, *, forward: bool = True) -> None:
        """Let every stalled connection forward again (new ones still follow the fault).

        With ``forward=False`` they are closed instead and what they held is never delivered,
        as if it had never left the client (use it after killing the client).
        """
        with self._lock:
            self._released += 1
            self._drop_held = not forward
            self._lock.notify_all()

    # -- counters ------------------------------------------------------------------------------

    def snapshot(self) -> ProxyCounters:
        """A copy of the counters."""
        with self._lock:
            return attrs.evolve(self._counters, requests=list(self._counters.requests))

    def requests_matching(self, method: str, path_prefix: str) -> int:
        """How many requests with ``method`` whose target starts with ``path_prefix`` were sent."""
        with self._lock:
            return sum(
                1
                for seen, target in self._counters.requests
                if seen == method and target.startswith(path_prefix)
            )

    def wait_for(self, ready: Callable[[ProxyCounters], bool], timeout: float = 30.0) -> bool:
        """Wait until ``ready(counters)`` holds (at most ``timeout`` s); return whether it did."""
        with self._lock:
            return self._lock.wait_for(lambda: ready(self._counters), timeout=timeout)

    # -- used by connections -------------------------------------------------------------------

    def count_bytes(self, direction: Direction, count: int) -> None:
        with self._lock:
            if direction == "up":
                self._counters.bytes_up += count
            else:
                self._counters.bytes_down += count
            self._lock.notify_all()

    def take_shot(self, action: Action) -> bool:
        """Whether a connection may apply its fault now; counts it when it may."""
        with self._lock:
            if self._shots is not None:
                if self._shots <= 0:
                    return False
                self._shots -= 1
            if action == "reset":
                self._counters.resets += 1
            elif action == "stall":
                self._counters.stalls += 1
            elif action == "cut":
                self._counters.cuts += 1
            self._lock.notify_all()
            return True

    def record_requests(self, found: list[tuple[str, str]]) -> None:
        with self._lock:
            self._counters.requests.extend(found)
            self._lock.notify_all()

    def wait_for_release(self) -> None:
        """Block a stalled connection until ``release`` or ``close``; then it may go on."""
        with self._lock:
            seen = self._released
            self._lock.wait_for(lambda: self._released != seen or self.closing.is_set())
            drop = self._drop_held
        if drop or self.closing.is_set():
            raise _Closed

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _bound_socket(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def _accept_loop(self) -> None:
        while not self.closing.is_set():
            with self._lock:
                if self._listener is not None and self._listening != self._want_listening:
                    self._switch_listener()
                listener = self._listener if self._listening else None
            if listener is None:
                self.closing.wait(POLL_SECONDS)
                continue
            try:
                readable, _, _ = select.select([listener], [], [], POLL_SECONDS)
                if not readable:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was swapped or closed meanwhile
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._counters.connections += 1
                self._since_behave += 1
                chosen = self._fault if self._since_behave % self._every == 0 else PASS
                connection = _Connection(self, client, chosen)
                self._connections.append(connection)
                self._lock.notify_all()
            thread = threading.Thread(target=connection.serve, name="fault-proxy-conn", daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()
