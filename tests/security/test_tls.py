"""TLS and the transport: the client trusts only what it is told to, and never follows a redirect.

A throwaway CA and a certificate for 127.0.0.1 are made with ``cryptography``; the reference server
serves them through ``RunningServer``. Without ``ca_bundle`` the client refuses the server at
once (a typed failure, no retry, no request reaches the server); with it the whole upload and
download work over TLS. A certificate from the trusted CA for another address is still refused.
A server that redirects the login elsewhere does not get the password sent there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send

from splitvault import ApiClient, ApiCredentials
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.adapters.http_api import HttpResourceApi
from splitvault.app.cli.main import main
from splitvault.app.client.bootstrap import DeviceIdentity
from splitvault.app.client.errors import NetworkError
from splitvault.app.server.api import create_app
from splitvault.app.server.runner import RunningServer
from splitvault.domain.errors import RemoteError
from tests.fakes import FakeClock, FakeRandom, FakeSleep
from tests.security.hostile import capture_debug_logs, failure
from tests.support.certs import tls_files
from tests.support.server_world import FAST_RETRIES
from tests.support.stack import PASSWORD, UPLOADER, Stack


@pytest.fixture
def tls(stack: Stack, tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    """The stack's data served over HTTPS with a certificate from a private CA: (server, ca)."""
    ca, cert, key = tls_files(tmp_path / "pki")
    with RunningServer(create_app(stack.data_dir), ssl_certfile=cert, ssl_keyfile=key) as server:
        yield server, ca


def _api(
    url: str, sleep: FakeSleep, ca_bundle: Path | None = None, *, insecure: bool = False
) -> HttpResourceApi:
    return HttpResourceApi(
        url,
        UPLOADER,
        PASSWORD,
        device=DeviceIdentity(PASSWORD, FixedHardware("tls-box"), None),
        allow_insecure_http=insecure,
        ca_bundle=ca_bundle,
        policy=FAST_RETRIES,
        clock=sleep.clock,
        random=FakeRandom(),
        sleep=sleep,
    )


def test_an_unknown_ca_is_refused_at_once_and_nothing_reaches_the_server(
    tls: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    """Without a CA bundle the adapter fails with a TLS ``RemoteError`` and never sleeps to
    retry; the facade raises ``NetworkError`` naming ``ca_bundle``; the server saw no login."""
    server, _ = tls
    assert server.url.startswith("https://127.0.0.1:")
    sleep = FakeSleep(FakeClock())
    with _api(server.url, sleep) as api:
        refused = failure(api.login())
    assert isinstance(refused, RemoteError) and "TLS verification failed" in refused.detail
    assert sleep.waits == []

    with (
        ApiClient(ApiCredentials(server.url, UPLOADER, PASSWORD), cache_dir=tmp_path / "c") as c,
        pytest.raises(NetworkError) as raised,
    ):
        c.list_files("models")
    assert "TLS" in str(raised.value) and "ca_bundle" in str(raised.value)
    assert raised.value.exit_code == 6


def test_a_ca_bundle_is_trusted_for_the_whole_flow(
    tls: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    """With ``ca_bundle`` the facade uploads and downloads through the HTTPS API."""
    server, ca = tls
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights over tls" * 5000)
    with ApiClient(
        ApiCredentials(server.url, UPLOADER, PASSWORD),
        cache_dir=tmp_path / "cache",
        ca_bundle=ca,
        hardware=FixedHardware("tls-box"),
    ) as client:
        client.upload_resource_file(model, "tls.onnx", "models")
        report = client.download_resource_file("tls.onnx", "models", tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == model.read_bytes()
    assert report.cache_hit


def test_a_certificate_for_another_address_is_refused_even_from_the_trusted_ca(
    stack: Stack, tmp_path: Path
) -> None:
    """A certificate the trusted CA issued for 127.0.0.2, served on 127.0.0.1, is refused."""
    ca, cert, key = tls_files(tmp_path / "pki", server_ip="127.0.0.2")
    sleep = FakeSleep(FakeClock())
    with (
        RunningServer(create_app(stack.data_dir), ssl_certfile=cert, ssl_keyfile=key) as server,
        _api(server.url, sleep, ca_bundle=ca) as api,
    ):
        refused = failure(api.login())
    assert isinstance(refused, RemoteError) and "TLS" in refused.detail
    assert sleep.waits == []


def test_the_cli_needs_the_ca_bundle_flag(
    tls: tuple[RunningServer, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``splitvault login`` exits 6 naming TLS without ``--ca-bundle`` and 0 with it."""
    server, ca = tls
    for key, value in {
        "SPLITVAULT_API_URL": server.url,
        "SPLITVAULT_EMAIL": UPLOADER,
        "SPLITVAULT_PASSWORD": PASSWORD,
        "SPLITVAULT_CACHE_DIR": str(tmp_path / "cache"),
        "SPLITVAULT_CONFIG": str(tmp_path / "absent.yaml"),
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["login"]) == 6
    assert "TLS verification failed" in capsys.readouterr().err
    assert main(["login", "--ca-bundle", str(ca)]) == 0
    assert UPLOADER in capsys.readouterr().out


class Catcher:
    """An ASGI app that records every request it receives (the attacker's endpoint)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps({"token": "x"}).encode()})


class Redirector:
    """An ASGI app that answers every request with a 307 to ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"location", self.target.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 307, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def test_a_redirect_never_carries_the_password_elsewhere() -> None:
    """A login answered with 307 to another host fails typed; the other host receives nothing."""
    catcher = Catcher()
    sleep = FakeSleep(FakeClock())
    with (
        RunningServer(catcher) as thief,
        RunningServer(Redirector(f"{thief.url}/login")) as api_server,
        _api(api_server.url, sleep) as api,
    ):
        refused = failure(api.login())
    assert isinstance(refused, RemoteError) and refused.status == 307
    assert catcher.requests == []


def test_plain_http_to_another_host_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``http://`` to a remote host is refused before any request (the password would travel in
    the clear): the adapter raises, the CLI exits with a config error that says how to allow
    it; allowed explicitly, the client is built and warns. Loopback HTTP and HTTPS are fine."""
    sleep = FakeSleep(FakeClock())
    with capture_debug_logs(["splitvault"]) as logs:
        for url in ("http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"):
            _api(url, sleep).close()
        _api("https://api.example.com", sleep).close()
        assert [r for r in logs.records if r.levelno >= logging.WARNING] == []
        with pytest.raises(ValueError, match="allow_insecure_http"):
            _api("http://api.example.com", sleep)
        _api("http://api.example.com", sleep, insecure=True).close()
    warnings = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "in the clear" in warnings[0] and "api.example.com" in warnings[0]

    monkeypatch.setenv("SPLITVAULT_API_URL", "http://192.0.2.10:8000")  # TEST-NET: never routed
    monkeypatch.setenv("SPLITVAULT_EMAIL", UPLOADER)
    monkeypatch.setenv("SPLITVAULT_PASSWORD", PASSWORD)
    monkeypatch.setenv("SPLITVAULT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SPLITVAULT_CONFIG", str(tmp_path / "absent.yaml"))
    assert main(["login"]) == 7  # ConfigError
    err = capsys.readouterr().err
    assert "plain http://" in err and "--insecure-http" in err
