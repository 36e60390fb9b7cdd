"""Self-test of the fault proxy against a tiny loopback upstream: every switch does what it says."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import attrs
import pytest

from tests.support.fault_proxy import PASS, Fault, FaultProxy

PAYLOAD = bytes(range(256)) * 400  # 100 KiB the upstream sends on every connection


@attrs.define
class Upstream:
    """Sends ``PAYLOAD`` to each connection and keeps what each client sent."""

    server: socket.socket
    received: list[bytearray] = attrs.field(factory=list)
    stop: threading.Event = attrs.field(factory=threading.Event)

    @property
    def port(self) -> int:
        port: int = self.server.getsockname()[1]
        return port

    def run(self) -> None:
        self.server.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            got = bytearray()
            self.received.append(got)
            threading.Thread(target=self.serve, args=(conn, got), daemon=True).start()

    def wait_received(self, index: int, count: int) -> bool:
        """Wait (bounded) until connection ``index`` has delivered ``count`` bytes upstream."""
        for _ in range(200):
            if len(self.received) > index and len(self.received[index]) >= count:
                return True
            self.stop.wait(0.025)
        return False

    def serve(self, conn: socket.socket, got: bytearray) -> None:
        conn.settimeout(5)
        try:
            conn.sendall(PAYLOAD)
            while chunk := conn.recv(65536):
                got.extend(chunk)
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A loopback upstream that talks first."""
    server = socket.create_server(("127.0.0.1", 0))
    up = Upstream(server)
    thread = threading.Thread(target=up.run, daemon=True)
    thread.start()
    yield up
    up.stop.set()
    thread.join(timeout=5)
    server.close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    """A fault proxy in front of the upstream."""
    with FaultProxy(upstream.port) as running:
        yield running


def read_until_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the socket yields and how it ended: ``eof``, ``reset`` or ``timeout``."""
    data = bytearray()
    sock.settimeout(0.25)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), "reset"
        except TimeoutError:
            return bytes(data), "timeout"
        if not chunk:
            return bytes(data), "eof"
        data.extend(chunk)


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def test_pass_through_forwards_both_ways_and_counts(proxy: FaultProxy, upstream: Upstream) -> None:
    """Bytes go through untouched in both directions; counters and request lines add up."""
    with connect(proxy) as client:
        client.sendall(b"GET /bucket/key HTTP/1.1\r\nHost: x\r\n\r\n")
        data, _ = read_until_end(client)
    assert data == PAYLOAD
    assert proxy.wait_for(lambda seen: seen.bytes_up == 37)
    counters = proxy.snapshot()
    assert counters.connections == 1
    assert counters.bytes_down == len(PAYLOAD)
    assert counters.requests == [("GET", "/bucket/key")]
    assert upstream.wait_received(0, 37)
    assert bytes(upstream.received[0]).startswith(b"GET /bucket/key")


def test_reset_after_n_bytes(proxy: FaultProxy) -> None:
    """The client gets exactly N bytes, then a connection reset."""
    proxy.behave(Fault("reset", after=10_000))
    with connect(proxy) as client:
        data, ending = read_until_end(client)
    assert data == PAYLOAD[:10_000]
    assert ending == "reset"
    assert proxy.snapshot().resets == 1


def test_cut_after_n_bytes(proxy: FaultProxy) -> None:
    """The client gets exactly N bytes, then a clean end of stream."""
    proxy.behave(Fault("cut", after=5_000))
    with connect(proxy) as client:
        data, ending = read_until_end(client)
    assert (data, ending) == (PAYLOAD[:5_000], "eof")
    assert proxy.snapshot().cuts == 1


def test_stall_then_release(proxy: FaultProxy) -> None:
    """A stalled connection forwards nothing more until released, then the rest arrives."""
    proxy.behave(Fault("stall", after=1_000))
    with connect(proxy) as client:
        first, ending = read_until_end(client)
        assert (first, ending) == (PAYLOAD[:1_000], "timeout")
        assert proxy.snapshot().stalls == 1
        proxy.release()
        rest, _ = read_until_end(client)
    assert first + rest == PAYLOAD


def test_a_fault_fires_only_as_often_as_asked(proxy: FaultProxy) -> None:
    """``times=1`` breaks one connection; the next one passes."""
    proxy.behave(PASS)
    proxy.behave(Fault("reset", after=0), times=1)
    with connect(proxy) as first:
        assert read_until_end(first) == (b"", "reset")
    with connect(proxy) as second:
        assert read_until_end(second)[0] == PAYLOAD


def test_every_third_connection_gets_the_fault(proxy: FaultProxy) -> None:
    """``every=3``: connections 3 and 6 are reset, the others pass."""
    proxy.behave(Fault("reset", after=0), every=3)
    outcomes = []
    for _ in range(6):
        with connect(proxy) as sock:
            outcomes.append(read_until_end(sock)[0] == PAYLOAD)
    assert outcomes == [True, True, False, True, True, False]
    assert proxy.snapshot().resets == 2


def test_trigger_holds_back_the_request_that_contains_it(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    """With a trigger, the bytes before it reach the upstream and the trigger itself does not."""
    first = b"GET /first HTTP/1.1\r\n\r\n"
    proxy.behave(Fault("stall", direction="up", trigger=b"POST /commit"))
    with connect(proxy) as client:
        read_until_end(client)
        client.sendall(first)
        client.sendall(b"POST /commit HTTP/1.1\r\n\r\n")
        assert proxy.wait_for(lambda seen: seen.stalls == 1)
    assert proxy.wait_for(lambda seen: seen.bytes_up == len(first))
    assert upstream.wait_received(0, len(first))
    assert bytes(upstream.received[0]) == first


def test_refuse_keeps_the_port_and_can_accept_again(proxy: FaultProxy) -> None:
    """While refusing, connecting fails with ECONNREFUSED; afterwards the same port works."""
    proxy.refuse(True)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.refuse(False)
    with connect(proxy) as client:
        assert read_until_end(client)[0] == PAYLOAD
    assert proxy.snapshot().connections == 1
