"""The httpx adapter's decisions without a server: the auth flow driven by ``next``/``send``.

``LoginTokenAuth.sync_auth_flow`` is a generator that yields requests and receives responses, so
its login, refresh and re-login logic is tested by feeding it responses by hand. The remaining
tests use ``httpx.MockTransport`` with a hand-written handler for answers a well-behaved server
never gives (oversized bodies, HTML errors).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Generator

import httpx
import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from python_multipart.multipart import parse_options_header

from splitvault.adapters.http_api import (
    HttpResourceApi,
    LoginRefused,
    LoginTokenAuth,
    _multipart_file,
    insecure_http_problem,
)
from splitvault.domain.device import DeviceKey, derive_device_key, envelope_info, seal
from splitvault.domain.errors import (
    AccessDenied,
    AuthFailed,
    ConfigInvalid,
    HardwareMismatch,
    RemoteError,
    Transient,
    WrongKey,
)
from splitvault.domain.ref import ResourceRef, check_name
from splitvault.domain.retry import HttpStatus
from tests.fakes import FakeClock, FakeRandom, FakeSleep
from tests.support.results import failure, value
from tests.support.server_world import FAST_RETRIES

LOGIN_URL = httpx.URL("https://api.example/login")
DEVICES_URL = httpx.URL("https://api.example/devices")
Flow = Generator[httpx.Request, httpx.Response, None]
SALT = bytes(range(16))
# A fixed device key (no Argon2id here): what the deriver returns for any salt.
KEY = derive_device_key(bytes(32), "fp")
TAG = "ab" * 32
salts_seen: list[bytes] = []


def _derive(salt: bytes) -> tuple[DeviceKey, str]:
    salts_seen.append(salt)
    return KEY, TAG


def _token(n: int, lifetime: int = 900) -> str:
    claims = {"sub": "a@b.c", "iat": 1000, "exp": 1000 + lifetime, "jti": str(n)}
    return jwt.encode(claims, b"k" * 32, algorithm="HS256")


def _auth(clock: FakeClock | None = None) -> LoginTokenAuth:
    return LoginTokenAuth(
        LOGIN_URL,
        "a@b.c",
        "pw",
        clock or FakeClock(),
        httpx.Timeout(5.0),
        device=_derive,
        devices_url=DEVICES_URL,
    )


def _request() -> httpx.Request:
    return httpx.Request("GET", "https://api.example/resources/list/models")


def _answer(
    status: int, body: object = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {}, headers=headers)


def _logged_in() -> httpx.Response:
    return _answer(200, {"token": "enrolment-token", "salt": SALT.hex()})


def _log_in(flow: Flow, token: str) -> httpx.Request:
    """Answer the login, then the enrolment it leads to; returns the request sent next."""
    enrolment = flow.send(_logged_in())
    assert enrolment.url == DEVICES_URL
    return flow.send(_answer(200, {"token": token, "device": KEY.device_id}))


def _finished(flow: Flow, response: httpx.Response) -> bool:
    try:
        flow.send(response)
    except StopIteration:
        return True
    return False


def test_first_request_logs_in_then_sends_with_the_token() -> None:
    """The first yield is the login; the token it returns is put on the original request."""
    auth = _auth()
    flow = auth.sync_auth_flow(_request())
    login = next(flow)
    assert login.method == "POST" and login.url == LOGIN_URL
    assert json.loads(login.content) == {"email": "a@b.c", "password": "pw"}
    assert login.extensions["timeout"]["read"] == 5.0
    sent = _log_in(flow, _token(1))
    assert sent.headers["Authorization"] == f"Bearer {_token(1)}"
    assert _finished(flow, _answer(200))
    assert auth.logins == 1


def test_the_enrolment_sends_the_device_key_and_tag_not_the_password() -> None:
    """After the login, the flow enrols the key derived from the answered salt: public key and
    fingerprint tag, under the enrolment token; no password, no fingerprint."""
    auth = _auth()
    flow = auth.sync_auth_flow(_request())
    next(flow)
    enrolment = flow.send(_logged_in())
    assert enrolment.method == "POST" and enrolment.url == DEVICES_URL
    assert json.loads(enrolment.content) == {"public_key": KEY.public.hex(), "fingerprint_tag": TAG}
    assert enrolment.headers["Authorization"] == "Bearer enrolment-token"
    assert b"pw" not in enrolment.content and salts_seen[-1] == SALT
    assert auth.device_key() == KEY


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(409, "DevicePending", HardwareMismatch), (403, "DeviceRevoked", AccessDenied)],
)
def test_a_refused_enrolment_says_why(status: int, code: str, expected: type) -> None:
    """A pending device is a HardwareMismatch carrying the server's code; a revoked one is
    AccessDenied; neither leaves a token behind."""
    auth = _auth()
    flow = auth.sync_auth_flow(_request())
    next(flow)
    flow.send(_logged_in())
    with pytest.raises(LoginRefused) as refused:
        flow.send(_answer(status, {"ErrorCode": code, "Message": "ask an operator"}))
    assert isinstance(refused.value.failure, expected)
    if isinstance(refused.value.failure, HardwareMismatch):
        assert refused.value.failure.error_code == code
    assert auth.token() is None


@pytest.mark.parametrize("salt", ["", "00" * 15, "zz" * 16])
def test_a_login_answer_without_a_usable_salt_is_refused(salt: str) -> None:
    """A token without a 16-byte hex salt cannot lead to a device key: RemoteError."""
    flow = _auth().sync_auth_flow(_request())
    next(flow)
    with pytest.raises(LoginRefused) as refused:
        flow.send(_answer(200, {"token": "t", "salt": salt}))
    assert isinstance(refused.value.failure, RemoteError)


def test_token_is_reused_until_the_refresh_point() -> None:
    """Before 80 % of the lifetime the token is reused; after it, the flow logs in first."""
    clock = FakeClock()
    auth = _auth(clock)
    flow = auth.sync_auth_flow(_request())
    next(flow)
    _log_in(flow, _token(1))
    clock.advance(719)
    assert next(auth.sync_auth_flow(_request())).headers["Authorization"].endswith(_token(1))
    clock.advance(2)
    assert next(auth.sync_auth_flow(_request())).url == LOGIN_URL


def test_401_leads_to_one_relogin_and_one_resend() -> None:
    """A 401 makes the flow log in again and resend; a second 401 is handed to the caller."""
    auth = _auth()
    flow = auth.sync_auth_flow(_request())
    next(flow)
    _log_in(flow, _token(1))
    assert flow.send(_answer(401)).url == LOGIN_URL
    resent = _log_in(flow, _token(2))
    assert resent.headers["Authorization"] == f"Bearer {_token(2)}"
    assert _finished(flow, _answer(401))
    assert auth.logins == 2


def test_403_with_a_token_from_this_flow_is_final() -> None:
    """A 403 right after a login is about the role: no second login."""
    auth = _auth()
    flow = auth.sync_auth_flow(_request())
    next(flow)
    _log_in(flow, _token(1))
    assert _finished(flow, _answer(403))
    assert auth.logins == 1


def test_403_with_an_older_token_gets_one_relogin() -> None:
    """A 403 on a token from an earlier request may be a stale session: log in once more."""
    auth = _auth()
    first = auth.sync_auth_flow(_request())
    next(first)
    _log_in(first, _token(1))
    assert _finished(first, _answer(200))
    second = auth.sync_auth_flow(_request())
    next(second)
    assert second.send(_answer(403)).url == LOGIN_URL


def test_a_token_renewed_by_another_request_is_not_renewed_again() -> None:
    """Two requests refused with the same stale token cause one login, not two."""
    auth = _auth()
    warmup = auth.sync_auth_flow(_request())
    next(warmup)
    _log_in(warmup, _token(1))
    _finished(warmup, _answer(200))
    a, b = auth.sync_auth_flow(_request()), auth.sync_auth_flow(_request())
    next(a), next(b)
    assert a.send(_answer(401)).url == LOGIN_URL
    _log_in(a, _token(2))
    resent = b.send(_answer(401))  # b saw the old token fail; a has already renewed it
    assert resent.headers["Authorization"] == f"Bearer {_token(2)}"
    assert auth.logins == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_answer(401, {"ErrorCode": "InvalidCredentials", "Message": "wrong"}), AuthFailed),
        (_answer(200, {"no": "token"}), RemoteError),
        (_answer(400, {"ErrorCode": "BadRequest", "Message": "bad"}), RemoteError),
        (httpx.Response(200, headers={"Content-Length": str(1 << 30)}), RemoteError),
    ],
)
def test_a_login_without_a_token_is_refused(answer: httpx.Response, expected: type) -> None:
    """Wrong credentials, a tokenless or oversized answer end the flow with LoginRefused."""
    flow = _auth().sync_auth_flow(_request())
    next(flow)
    with pytest.raises(LoginRefused) as refused:
        flow.send(answer)
    assert isinstance(refused.value.failure, expected)
    assert refused.value.outcome is None


def test_a_transient_login_failure_carries_its_outcome() -> None:
    """A 503 on login is refused with the outcome the retry loop needs, Retry-After included."""
    flow = _auth().sync_auth_flow(_request())
    next(flow)
    with pytest.raises(LoginRefused) as refused:
        flow.send(_answer(503, headers={"Retry-After": "2"}))
    assert refused.value.outcome == HttpStatus(503, 2.0)
    assert isinstance(refused.value.failure, Transient)


@given(st.text(min_size=1, max_size=60).filter(lambda name: check_name("name", name) is None))
def test_multipart_filename_round_trips_through_the_servers_parser(name: str) -> None:
    """Every valid name survives the hand-built multipart header as the server parses it."""
    body, content_type = _multipart_file(name, b"data")
    header_line = body.split(b"\r\n")[1].decode("latin-1")
    _, options = parse_options_header(header_line.split(":", 1)[1])
    assert options[b"filename"].decode("utf-8") == name
    assert parse_options_header(content_type)[1][b"boundary"] in body


def _api(handler: httpx.MockTransport) -> HttpResourceApi:
    clock = FakeClock()
    return HttpResourceApi(
        "https://api.example",
        "a@b.c",
        "pw",
        device=_derive,
        policy=FAST_RETRIES,
        clock=clock,
        random=FakeRandom(),
        sleep=FakeSleep(clock),
        transport=handler,
    )


def _server(download: httpx.Response) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/login":
            return httpx.Response(200, json={"token": "enrol", "salt": SALT.hex()})
        if request.url.path == "/devices":
            return httpx.Response(200, json={"token": _token(1), "device": KEY.device_id})
        return download

    return httpx.MockTransport(handle)


def test_an_oversized_envelope_is_refused_even_without_a_length() -> None:
    """A streamed download over 1 MiB is refused once the cap is passed, length or not."""
    chunks = [b"x" * 65536] * 17  # 1.06 MiB, sent chunked
    api = _api(_server(httpx.Response(200, content=iter(chunks))))
    refused = failure(api.download_small_part(ResourceRef("m", "n")))
    assert isinstance(refused, RemoteError) and "larger than" in refused.detail


def test_a_proxys_html_error_is_described_safely() -> None:
    """A non-JSON error page becomes 'no details'; control characters from the peer are masked."""
    html = httpx.Response(418, text="<html>teapot</html>")
    assert failure(_api(_server(html)).list_folder("m")) == RemoteError(
        "listing of m", 418, "no details"
    )
    nasty = httpx.Response(400, json={"ErrorCode": "X", "Message": "line\nbreak\x1b[31m"})
    refused = failure(_api(_server(nasty)).list_folder("m"))
    assert isinstance(refused, RemoteError) and refused.detail == "line?break?[31m"


@pytest.mark.parametrize(
    ("url", "allowed", "refused"),
    [
        ("http://api.example.com", False, True),
        ("http://10.0.0.5:8000", False, True),
        ("http://api.example.com", True, False),
        ("http://127.0.0.1:8000", False, False),
        ("http://[::1]:8000", False, False),
        ("http://localhost:8000", False, False),
        ("https://api.example.com", False, False),
    ],
)
def test_plain_http_beyond_loopback_is_refused_unless_allowed(
    url: str, allowed: bool, refused: bool
) -> None:
    """http:// to another host is a ConfigInvalid that names the way out; loopback and https
    are fine; the adapter refuses to be built for a refused URL."""
    problem = insecure_http_problem(url, allowed)
    assert (problem is not None) == refused
    if problem is not None:
        assert isinstance(problem, ConfigInvalid) and "--insecure-http" in problem.describe()
        with pytest.raises(ValueError, match="in the clear"):
            HttpResourceApi(
                url,
                "a@b.c",
                "pw",
                device=_derive,
                clock=FakeClock(),
                random=FakeRandom(),
                sleep=lambda _s: None,
            )


def test_a_sealed_answer_opens_and_one_for_another_device_does_not() -> None:
    """The adapter opens what is sealed to its device for this resource; an envelope sealed
    to another device, or for another name, is WrongKey."""
    ref = ResourceRef("m", "n")

    def sealed(device: DeviceKey, subject: str) -> httpx.Response:
        info = envelope_info("small-part", device.device_id, subject, "v1")
        headers = {"X-Splitvault-Device": device.device_id, "X-Splitvault-Version": "v1"}
        return httpx.Response(200, content=seal(b"small", device.public, info), headers=headers)

    assert value(_api(_server(sealed(KEY, "m/n"))).download_small_part(ref)) == b"small"
    other = derive_device_key(bytes(32), "other machine")
    assert isinstance(
        failure(_api(_server(sealed(other, "m/n"))).download_small_part(ref)), WrongKey
    )
    swapped = failure(_api(_server(sealed(KEY, "m/other"))).download_small_part(ref))
    assert isinstance(swapped, WrongKey)


@pytest.mark.parametrize(
    ("url", "trusts_cas"), [("http://127.0.0.1:8000", False), ("https://api.example.com", True)]
)
def test_a_plain_http_client_loads_no_ca_bundle_and_fails_closed(
    url: str, trusts_cas: bool
) -> None:
    """An http:// API never handshakes, so its client skips certifi's bundle (0.06 CPU-s a
    process); its TLS context still requires verified certificates, trusting none."""
    api = HttpResourceApi(
        url,
        "a@b.c",
        "pw",
        device=_derive,
        clock=FakeClock(),
        random=FakeRandom(),
        sleep=lambda _s: None,
    )
    try:
        context = api._client._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert (context.cert_store_stats()["x509_ca"] > 0) == trusts_cas
    finally:
        api.close()
