"""``splitvault serve`` as an operator runs it: workers, TLS, graceful shutdown, the access log."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from splitvault.app.server.accounts import add_user, grant
from tests.support.certs import tls_files
from tests.support.devices import device_token
from tests.support.results import value
from tests.support.server_fixtures import serve_process, trust

EMAIL = "operator-test@example.com"
PASSWORD = "serve test passphrase"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory with one uploader."""
    directory = tmp_path / "data"
    value(add_user(directory, EMAIL, PASSWORD, "uploader"))
    value(grant(directory, EMAIL, ["secret-folder-name", "keys"], read=True, write=True))
    return directory


def _login(url: str, verify: object = True) -> httpx.Response:
    return httpx.post(
        f"{url}/login",
        json={"email": EMAIL, "password": PASSWORD},
        timeout=60,
        verify=verify,  # type: ignore[arg-type]
    )


def test_two_workers_serve_one_store_over_tls(data: Path, tmp_path: Path) -> None:
    """--workers 2 with --tls-cert/--tls-key: logins over HTTPS work on one store, and /metrics
    counts the logins of both workers."""
    ca, cert, key = tls_files(tmp_path / "pki")
    flags = ["--data", str(data), "--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key)]
    with serve_process(tmp_path, *flags, ca=ca) as server:
        assert server.url.startswith("https://")
        answers = [_login(server.url, trust(ca)) for _ in range(6)]
        assert [answer.status_code for answer in answers] == [200] * 6
        # Whichever worker answers the scrape, /metrics sums both.
        for _ in range(4):
            scraped = httpx.get(f"{server.url}/metrics", verify=trust(ca), timeout=30).text
            assert "splitvault_logins_total 6.0" in scraped, scraped[:2000]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=10)  # an unknown CA is refused
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/healthz", timeout=10).raise_for_status()


def test_sigterm_finishes_requests_in_flight(data: Path, tmp_path: Path) -> None:
    """SIGTERM while twelve logins (Argon2id, four at a time) are in flight: every one gets its
    200, some of them after the signal; then the process exits and the port is closed."""
    body = json.dumps({"email": EMAIL, "password": PASSWORD}).encode()
    with serve_process(tmp_path, "--data", str(data), name="graceful") as server:
        port = int(server.url.rsplit(":", 1)[1])
        request = (
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        connections = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(12)]
        for connection in connections:
            connection.sendall(request)
        time.sleep(0.3)  # parsed by now; the hashing is queued behind four slots
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        finished: list[float] = []
        for connection in connections:
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
            connection.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            finished.append(time.monotonic())
        assert max(finished) > signalled  # answered after the signal: drained, not cut
        # uvicorn re-raises the signal once drained, so the exit status says SIGTERM.
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.log()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=5)


def test_the_access_log_names_routes_and_holds_no_secret(data: Path, tmp_path: Path) -> None:
    """One line per request with route and status; no password, token or path parameter."""
    with serve_process(tmp_path, "--data", str(data), name="logged") as server:
        token = device_token(server.url, EMAIL, PASSWORD)
        auth = {"Authorization": f"Bearer {token}"}
        httpx.get(f"{server.url}/resources/list/secret-folder-name", headers=auth, timeout=30)
        httpx.put(f"{server.url}/keys/v-secret", content=b"\x01" * 32, headers=auth, timeout=30)
        httpx.post(f"{server.url}/login", json={"email": EMAIL, "password": "wrong-guess-xyz"})
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
        log = server.log()
    assert '"POST login" 200' in log and '"POST login" 401' in log
    assert '"GET list_resources" 200' in log and '"PUT key_fragment" 201' in log
    for secret in (PASSWORD, "wrong-guess-xyz", token, token.split(".")[2], "secret-folder-name"):
        assert secret not in log


def test_the_device_policy_reaches_every_worker(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--device-limit``/``--approve-devices`` travel to the workers' app; 0 is refused."""
    from splitvault.app.server import api, serving
    from splitvault.app.server.routes import DevicePolicy

    refused = serving.check(serving.ServeOptions(data=data, device_limit=0))
    assert refused is not None and refused.field == "--device-limit"  # type: ignore[union-attr]
    monkeypatch.setenv(api.ENV_DATA, str(data))
    monkeypatch.delenv(api.ENV_DATABASE_URL, raising=False)
    monkeypatch.setenv(api.ENV_DEVICE_LIMIT, "3")
    monkeypatch.setenv(api.ENV_APPROVE_DEVICES, "1")
    app = api.app_from_environment()
    try:
        assert app.state.server.devices == DevicePolicy(limit=3, approve=True)
    finally:
        app.state.store.close()
    monkeypatch.delenv(api.ENV_DEVICE_LIMIT)
    monkeypatch.delenv(api.ENV_APPROVE_DEVICES)
    app = api.app_from_environment()
    try:
        assert app.state.server.devices == DevicePolicy()  # the original's one device
    finally:
        app.state.store.close()


def _dribble(sock: socket.socket, head: bytes, pause: float) -> bool:
    """Send ``head`` a byte at a time; ``False`` as soon as the server has closed on us."""
    for byte in head:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        time.sleep(pause)
    return True


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF or reset) instead of answering."""
    sock.settimeout(10)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_a_slow_request_head_is_cut_off(data: Path, tmp_path: Path) -> None:
    """``--header-timeout 1``: a client dribbling its request head a byte every 0.1 s (about
    5 s for the whole head) is disconnected before it finishes, on a fresh connection and on a
    keep-alive one after a good request; a normal client is served meanwhile."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris-test-client\r\n\r\n"
    with serve_process(tmp_path, "--data", str(data), "--header-timeout", "1") as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            finished = _dribble(slow, head, 0.1)
            assert not finished or _closed(slow)
            assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
            kept.sendall(head)  # a whole head at once: answered, the connection kept alive
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            finished = _dribble(kept, head, 0.1)
            assert not finished or _closed(kept)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as patient:
            for part in (head[:10], head[10:40], head[40:]):  # three pieces within the deadline
                patient.sendall(part)
                time.sleep(0.1)
            assert patient.recv(4096).startswith(b"HTTP/1.1 200")
