"""Wire capture: what a passive observer of the client-API traffic holds after a whole session.

A recording TCP proxy sits between the clients and the reference API (plain HTTP on loopback, as
an observer of a non-TLS deployment would see it). Through it: a full upload, a cold and a warm
download, and the API half of unlock-images (the key fragment registered by the sealer and fetched
by the loader). The recorded bytes show the password in the ``/login`` requests only (one per
client session), the fingerprint in none, and with the device-secret option on, no sealed answer
opens with what the observer could know or guess: the password, the salt the login answered and
the machine's fingerprint. The same answers do open with the device secret too, so the check is
not vacuous.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from splitvault.domain import device, wire
from splitvault.domain.device import Sealed
from splitvault.domain.ref import ResourceRef
from tests.support.devices import derive
from tests.support.results import value
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack, download, upload, write_model

REF = ResourceRef("models", "captured.bin")
VERSION = "v-capture-1"
SECRETS = {UPLOADER: bytes(range(32)), DOWNLOADER: bytes(range(32, 64))}
MACHINES = {UPLOADER: "publisher-box", DOWNLOADER: "reader-box"}


class RecordingProxy:
    """Forwards loopback TCP connections to ``upstream_port`` and keeps every byte, per
    connection and direction (``up``: client to server)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.streams: list[dict[str, bytearray]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            record = {"up": bytearray(), "down": bytearray()}
            with self._lock:
                self.streams.append(record)
            for source, target, direction in ((client, upstream, "up"), (upstream, client, "down")):
                pump = threading.Thread(
                    target=self._pump, args=(source, target, record[direction]), daemon=True
                )
                pump.start()
                self._threads.append(pump)

    def _pump(self, source: socket.socket, target: socket.socket, into: bytearray) -> None:
        source.settimeout(0.2)
        try:
            while not self._closing.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                with self._lock:
                    into += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            with_shutdown(target)

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


def with_shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


@attrs.frozen
class Message:
    """One HTTP/1.1 message from a recorded stream: its first line, headers and body."""

    start: bytes
    headers: dict[str, str]
    body: bytes


def messages(stream: bytes) -> list[Message]:
    """Split a recorded HTTP/1.1 stream into messages (Content-Length or chunked bodies)."""
    found: list[Message] = []
    at = 0
    while at < len(stream):
        end = stream.find(b"\r\n\r\n", at)
        if end < 0:
            break
        head = stream[at:end].split(b"\r\n")
        headers = {}
        for line in head[1:]:
            name, _, content = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = content.strip()
        at = end + 4
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line_end = stream.index(b"\r\n", at)
                size = int(stream[at:line_end].split(b";")[0], 16)
                at = line_end + 2
                if size == 0:
                    at = stream.index(b"\r\n", at) + 2
                    break
                body += stream[at : at + size]
                at += size + 2
        else:
            length = int(headers.get("content-length", "0"))
            body = stream[at : at + length]
            at += length
        found.append(Message(head[0], headers, body))
    return found


@pytest.fixture
def proxy(stack: Stack) -> Iterator[RecordingProxy]:
    port = int(stack.url.rsplit(":", 1)[1])
    recording = RecordingProxy(port)
    try:
        yield recording
    finally:
        recording.close()


def test_the_password_crosses_once_and_no_answer_opens_without_the_device_secret(
    stack: Stack, proxy: RecordingProxy, tmp_path: Path
) -> None:
    """Upload, cold download, warm download and the fragment round trip through the recorder:
    every request holding the password is a ``POST /login`` (one per client), no request holds
    a fingerprint, and every sealed answer resists the password + salt + fingerprint."""
    source = tmp_path / "model.bin"
    plaintext = write_model(source, 300_000, seed=7)
    clients = {
        email: stack.client(
            email,
            api_url=proxy.url,
            machine=MACHINES[email],
            device_secret=SECRETS[email],
            cache=tmp_path / f"cache-{email.split('@')[0]}",
        )
        for email in (UPLOADER, DOWNLOADER)
    }
    value(upload(clients[UPLOADER], REF, source))
    cold = value(download(clients[DOWNLOADER], REF, tmp_path / "cold.bin"))
    warm = value(download(clients[DOWNLOADER], REF, tmp_path / "warm.bin"))
    assert not cold.cache_hit and warm.cache_hit
    assert (tmp_path / "warm.bin").read_bytes() == plaintext
    fragment = bytes(range(100, 132))
    value(clients[UPLOADER].api.put_fragment(VERSION, fragment))
    assert value(clients[DOWNLOADER].api.get_fragment(VERSION)) == fragment
    for client in clients.values():
        client.close()
    proxy.close()

    requests: list[Message] = []
    answers: list[tuple[Message, Message]] = []
    for stream in proxy.streams:
        sent, received = messages(bytes(stream["up"])), messages(bytes(stream["down"]))
        requests += sent
        answers += list(zip(sent, received, strict=False))
    holding = [m.start for m in requests if PASSWORD.encode() in m.start + m.body]
    assert holding == [b"POST /login HTTP/1.1"] * len(clients)
    assert len(requests) > 10  # the whole session went through the recorder
    for machine in MACHINES.values():
        assert not any(machine.encode() in m.body for m in requests)

    salts = {
        request.body.split(b'"email":"', 1)[1].split(b'"', 1)[0].decode(): bytes.fromhex(
            re.search(rb'"salt":"([0-9a-f]{32})"', answer.body).group(1).decode()  # type: ignore[union-attr]
        )
        for request, answer in answers
        if request.start.startswith(b"POST /login")
    }
    sealed = [
        (request, answer)
        for request, answer in answers
        if wire.DEVICE_HEADER.lower() in answer.headers
    ]
    kinds: dict[bytes, device.Kind] = {
        b"/keys": "key-fragment",
        b"/resources/get/config": "cdn-config",
    }
    assert len(sealed) >= 4  # cdn.yaml twice, the small part twice, the fragment
    for request, answer in sealed:
        target = request.start.split(b" ")[1]
        kind: device.Kind = next(
            (k for prefix, k in kinds.items() if target.startswith(prefix)), "small-part"
        )
        subject = (
            VERSION
            if kind == "key-fragment"
            else ("config/cdn.yaml" if kind == "cdn-config" else str(REF))
        )
        envelope = Sealed(
            answer.body,
            answer.headers[wire.DEVICE_HEADER.lower()],
            answer.headers[wire.VERSION_HEADER.lower()],
        )
        opened_by = []
        for email, salt in salts.items():
            guess = derive(PASSWORD, salt, MACHINES[email])  # what the observer can compute
            assert device.open_delivered(envelope, guess, kind, subject).failure()
            owner = derive(PASSWORD, salt, MACHINES[email], SECRETS[email])
            if isinstance(
                device.open_delivered(envelope, owner, kind, subject).value_or(None), bytes
            ):
                opened_by.append(email)
        assert len(opened_by) == 1, (target, opened_by)  # only its device, with its secret
