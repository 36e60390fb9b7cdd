"""The reference API server and the httpx adapter over real loopback HTTP.

Raw httpx requests check the server's wire behaviour (statuses, error bodies, tokens, limits,
throttling, files on disk); ``HttpResourceApi`` checks the client's side of it: logins, refreshes,
re-logins, retries with their budget, single-flight logins and TLS. No mocks: a real uvicorn server,
a fault switch in front of it, and fake clocks so nothing waits for real time.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import stat
import threading
from pathlib import Path

import httpx
import jwt
import pytest
import yaml
from returns.pipeline import is_successful

from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.adapters.http_api import HttpResourceApi
from splitvault.adapters.http_key_fragments import HttpKeyFragments
from splitvault.adapters.sql_store import SCHEMA_VERSION
from splitvault.adapters.sqlite_store import SqliteStore
from splitvault.app.client.bootstrap import DeviceIdentity
from splitvault.app.server.api import add_user, create_app, reset_binding
from splitvault.app.server.runner import RunningServer
from splitvault.domain.errors import (
    AccessDenied,
    AuthFailed,
    ConfigInvalid,
    HardwareMismatch,
    RemoteError,
    TimedOut,
    Transient,
)
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy
from tests.fakes import FakeClock, FakeRandom, FakeSleep
from tests.support.certs import tls_files
from tests.support.devices import device_login, open_answer
from tests.support.faults import FaultInjector
from tests.support.results import failure, value
from tests.support.server_fixtures import http, served, user_template, world  # noqa: F401 - fixtures
from tests.support.server_world import (
    CDN_CONFIG,
    DOWNLOADER,
    FAST_RETRIES,
    PASSWORD,
    UPLOADER,
    ServerWorld,
)

REF = ResourceRef("models", "bert.small")
DEVICE = DeviceIdentity(PASSWORD, FixedHardware("machine-a"), None)


def _login(http: httpx.Client, email: str = UPLOADER, password: str = PASSWORD) -> str:
    """A device token (login, then enrolment of the default machine)."""
    return device_login(http, email, password).token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"ErrorCode", "Message"}
    assert body["ErrorCode"] == code
    assert "Traceback" not in response.text and 'File "' not in response.text


# --- login and tokens ----------------------------------------------------------------------------


def test_login_issues_a_pinned_hs256_token_with_the_claims(world: ServerWorld) -> None:
    """A login and enrolment return an HS256 JWT with sub, role, dev (the device id), iat, jti
    and exp = iat + lifetime (one second more when the login was not on a whole second); the
    login's own token is a short enrolment token with no device."""
    with httpx.Client(base_url=world.url) as http:
        token = _login(http, DOWNLOADER.upper())
    key = world.signing_key()
    claims = jwt.decode(
        token, key, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims["sub"] == DOWNLOADER and claims["role"] == "downloader"
    assert claims["exp"] - claims["iat"] in (900, 901)
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert len(claims["dev"]) == 32 and int(claims["dev"], 16) >= 0
    with httpx.Client(base_url=world.url) as http:
        login = http.post("/login", json={"email": DOWNLOADER, "password": PASSWORD}).json()
    enrolment = jwt.decode(login["token"], key, algorithms=["HS256"], options={"verify_exp": False})
    assert enrolment["dev"] == "" and enrolment["exp"] - enrolment["iat"] in (300, 301)
    assert len(bytes.fromhex(login["salt"])) == 16


def test_wrong_password_and_unknown_email_look_the_same(http: httpx.Client) -> None:
    """A wrong password and an unknown e-mail both get the same 401 body."""
    wrong = http.post("/login", json={"email": UPLOADER, "password": "nope"})
    unknown = http.post("/login", json={"email": "nobody@example.com", "password": "nope"})
    _assert_error(wrong, 401, "InvalidCredentials")
    assert wrong.json() == unknown.json()


def test_login_is_throttled_after_five_failures(world: ServerWorld, http: httpx.Client) -> None:
    """Five wrong passwords lock the account out with 429 + Retry-After until the window ends."""
    for _ in range(5):
        _assert_error(
            http.post("/login", json={"email": UPLOADER, "password": "guess"}),
            401,
            "InvalidCredentials",
        )
    locked = http.post("/login", json={"email": UPLOADER, "password": PASSWORD})
    _assert_error(locked, 429, "TooManyAttempts")
    assert 1 <= int(locked.headers["retry-after"]) <= 300
    # Another account is unaffected; the locked one opens again once the window has passed.
    _login(http, DOWNLOADER)
    world.server_clock.advance(301)
    _login(http, UPLOADER)
    assert world.stats.throttled == 1


def test_throttled_login_is_a_transient_failure_with_retry_after(world: ServerWorld) -> None:
    """The adapter reports a throttled login as Transient carrying the server's Retry-After."""
    for _ in range(5):
        assert isinstance(failure(world.client(password="guess").login()), AuthFailed)
    refused = failure(world.client().login())
    assert isinstance(refused, Transient)
    assert refused.retry_after is not None and refused.retry_after > FAST_RETRIES.budget
    assert world.sleep.waits == []  # waiting longer than the budget is pointless


def test_bad_tokens_are_401(world: ServerWorld, http: httpx.Client) -> None:
    """Missing, tampered, unsigned, claim-less and expired tokens are all refused with 401."""
    token = _login(http)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "uploader"
    claims["sub"] = DOWNLOADER
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    key = world.signing_key()
    tampered = ("A" if signature[0] != "A" else "B") + signature[1:]
    cases: dict[str, list[str | None]] = {
        "MissingToken": [None, "Basic dXNlcjpwYXNz", "Bearer"],
        "InvalidToken": [
            f"Bearer {header}.{forged_payload}.{signature}",
            f"Bearer {header}.{payload}.{tampered}",
            "Bearer " + jwt.encode(claims, key="", algorithm="none"),
            "Bearer " + jwt.encode({"sub": UPLOADER, "iat": 1, "jti": "x"}, key, "HS256"),
            "Bearer " + jwt.encode(claims, b"another key of thirty-two bytes!", "HS256"),
        ],
    }
    for code, headers in cases.items():
        for value_ in headers:
            sent = {"Authorization": value_} if value_ is not None else {}
            _assert_error(http.get("/resources/list/models", headers=sent), 401, code)
    assert http.get("/resources/list/models", headers=_bearer(token)).status_code == 200
    world.server_clock.advance(901)
    _assert_error(http.get("/resources/list/models", headers=_bearer(token)), 401, "TokenExpired")


def test_expired_token_is_renewed_transparently(world: ServerWorld) -> None:
    """When the server says the token expired, the client logs in again and the call succeeds."""
    api = world.client(DOWNLOADER)
    value(api.list_folder("models"))
    world.server_clock.advance(1000)  # the server's clock moves; the client's does not
    assert value(api.list_folder("models")) == ()
    assert api.logins == 2 and world.stats.logins == 2
    assert world.stats.rejected_tokens == 1


def test_token_is_refreshed_before_it_expires(world: ServerWorld) -> None:
    """At 80 % of its lifetime the client logs in again before sending, so nothing is refused."""
    api = world.client(DOWNLOADER)
    value(api.list_folder("models"))
    world.clock.advance(0.79 * 900)
    value(api.list_folder("models"))
    assert world.stats.logins == 1
    world.clock.advance(0.02 * 900)
    value(api.list_folder("models"))
    assert world.stats.logins == 2
    assert world.stats.rejected_tokens == 0


def test_a_token_the_server_no_longer_accepts_leads_to_one_relogin(world: ServerWorld) -> None:
    """After the signing key rotates (old tokens fail verification) the client re-logs in once."""
    api = world.client(UPLOADER)
    value(api.upload_small_part(REF, b"v1"))
    world.app.state.signing.rotate()
    value(api.upload_small_part(REF, b"v2"))
    assert api.logins == 2 and world.stats.rejected_tokens == 1


def test_many_threads_sharing_a_client_log_in_once(world: ServerWorld) -> None:
    """Sixteen threads calling through one fresh client cause exactly one login."""
    api = world.client(DOWNLOADER)
    start = threading.Barrier(16)
    results: list[bool] = []

    def call() -> None:
        start.wait()
        results.append(is_successful(api.list_folder("models")))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 16
    assert world.stats.logins == 1 and api.logins == 1


def test_wrong_role_is_access_denied_without_a_second_login(world: ServerWorld) -> None:
    """A downloader's upload is AccessDenied at once: a fresh token's 403 is about the role."""
    api = world.client(DOWNLOADER)
    refused = failure(api.upload_small_part(REF, b"x"))
    assert isinstance(refused, AccessDenied) and "downloader" in refused.detail
    assert world.stats.logins == 1


# --- uploads, downloads and the data directory ---------------------------------------------------


def test_small_parts_are_stored_whole_in_a_private_store(
    world: ServerWorld, http: httpx.Client
) -> None:
    """An upload becomes the current version in the store, whose one file is 0600."""
    value(world.client().upload_small_part(REF, b"\x00small part\xff"))
    current = value(world.store.current("models", "bert.small"))
    assert current is not None and current.small_part == b"\x00small part\xff"
    assert current.publisher == UPLOADER
    assert value(world.store.names("models")) == ("bert.small",)
    assert stat.S_IMODE((world.data_dir / "splitvault.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(world.data_dir.stat().st_mode) == 0o700


def test_hostile_names_are_refused_and_create_nothing(
    world: ServerWorld, http: httpx.Client
) -> None:
    """Traversal and control characters in folder, file name or version are 400 InvalidName."""
    headers = _bearer(_login(http))
    hostile = (
        "../escape",
        "..",
        ".hidden",
        "a\x00b",
        "a\x1bb",
        "x" * 300,
        "\uff46\uff55\uff4c\uff4c",
    )
    for name in hostile:
        # Built by hand: httpx would percent-escape the control characters for us.
        body = (
            b'--sv\r\nContent-Disposition: form-data; name="file"; filename="'
            + name.encode()
            + b'"\r\n\r\ndata\r\n--sv--\r\n'
        )
        upload = http.post(
            "/resources/models",
            content=body,
            headers={**headers, "Content-Type": "multipart/form-data; boundary=sv"},
        )
        _assert_error(upload, 400, "InvalidName")
    for folder in ("..%2F..", "%2E%2E", "a%00b"):
        response = http.get(f"/resources/list/{folder}", headers=headers)
        assert response.status_code in (400, 404), folder
        assert response.json()["ErrorCode"] in ("InvalidName", "NotFound")
    _assert_error(http.put("/keys/%2E%2E", content=b"k", headers=headers), 400, "InvalidName")
    before = sorted(p.name for p in world.data_dir.parent.iterdir())
    assert before == ["server-data"]
    assert value(world.store.list_accounts())  # the store is there, and holds no resource:
    assert all(value(world.store.names(f)) == () for f in ("models", "..", "escape"))
    assert value(world.store.fragment_versions()) == ()


def test_bodies_over_one_mebibyte_are_413(world: ServerWorld, http: httpx.Client) -> None:
    """Declared or streamed, a body over 1 MiB is refused; the adapter reports RemoteError 413."""
    headers = _bearer(_login(http))
    big = b"x" * (1 << 20)
    declared = http.post(
        "/resources/models",
        files={"file": ("big", big, "application/octet-stream")},
        headers=headers,
    )
    _assert_error(declared, 413, "TooLarge")
    streamed = http.put(
        "/keys/1.0.0", content=iter([big[:600_000], big[:600_000]]), headers=headers
    )
    _assert_error(streamed, 413, "TooLarge")
    refused = failure(world.client().upload_small_part(REF, big))
    assert isinstance(refused, RemoteError) and refused.status == 413
    assert "limit" in refused.detail


def test_config_folder_is_reserved(world: ServerWorld) -> None:
    """Nobody uploads into the config folder; the CDN config is the server's to serve."""
    refused = failure(world.client().upload_small_part(ResourceRef("config", "cdn.yaml"), b"x"))
    assert isinstance(refused, AccessDenied) and "config" in refused.detail


def test_cdn_config_is_rendered_per_role(world: ServerWorld) -> None:
    """Uploaders receive read and write keys; downloaders receive the read keys only."""
    rendered = {}
    for email in (UPLOADER, DOWNLOADER):
        rendered[email] = yaml.safe_load(value(world.client(email).download_cdn_config()))
    assert rendered[UPLOADER] == CDN_CONFIG
    assert "write" not in rendered[DOWNLOADER]
    assert rendered[DOWNLOADER]["read"] == CDN_CONFIG["read"]
    assert b"write-secret" not in yaml.safe_dump(rendered[DOWNLOADER]).encode()
    listing = value(world.client(DOWNLOADER).list_folder("config"))
    assert listing == ("cdn.yaml",)


def test_download_needs_a_device_token(world: ServerWorld, http: httpx.Client) -> None:
    """The login's enrolment token gets 401 DeviceNotEnrolled and no envelope; the device token
    gets the envelope, sealed (the small part's bytes are not in it)."""
    value(world.client().upload_small_part(REF, b"secret small part"))
    login = http.post("/login", json={"email": DOWNLOADER, "password": PASSWORD}).json()
    body = {"file_name": REF.name}
    refused = http.post("/resources/get/models", json=body, headers=_bearer(login["token"]))
    _assert_error(refused, 401, "DeviceNotEnrolled")
    answer = http.post(
        "/resources/get/models", json=body, headers=_bearer(_login(http, DOWNLOADER))
    )
    assert answer.status_code == 200 and b"secret small part" not in answer.content


def test_binding_reset_lets_another_machine_in(world: ServerWorld) -> None:
    """After an administrator resets the binding, the next machine becomes the enrolled one and
    the old one's session ends (its device is revoked)."""
    value(world.client().upload_small_part(REF, b"part"))
    old = world.client(DOWNLOADER, machine="old-machine")
    value(old.download_small_part(REF))
    new = world.client(DOWNLOADER, machine="new-machine")
    assert isinstance(failure(new.download_small_part(REF)), HardwareMismatch)
    assert value(reset_binding(world.data_dir, DOWNLOADER)) is True
    assert value(new.download_small_part(REF)) == b"part"
    assert isinstance(failure(old.download_small_part(REF)), AccessDenied)  # 403 DeviceRevoked


def test_add_user_validates_and_concurrent_edits_are_all_kept(tmp_path: Path) -> None:
    """add_user names a bad field; users added from many threads are all in the store."""
    assert failure(add_user(tmp_path, "no-at-sign", "pw", "uploader")) == ConfigInvalid(
        "email", "expected an e-mail address like name@example.com"
    )
    assert isinstance(failure(add_user(tmp_path, "a@b.c", "pw", "root")), ConfigInvalid)
    threads = [
        threading.Thread(target=add_user, args=(tmp_path, f"u{i}@example.com", "pw", "downloader"))
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with value(SqliteStore.open(tmp_path)) as store:
        accounts = value(store.list_accounts())
    assert [a.email for a in accounts] == [f"u{i}@example.com" for i in range(6)]
    assert all(a.password_hash.startswith("$argon2id$") for a in accounts)
    assert len({a.salt for a in accounts}) == 6  # a random salt each


# --- error bodies --------------------------------------------------------------------------------


def test_errors_are_json_without_tracebacks(world: ServerWorld, http: httpx.Client) -> None:
    """Unknown routes, wrong methods, bad JSON and a server crash all answer a bare JSON error."""
    _assert_error(http.get("/no/such/route"), 404, "NotFound")
    _assert_error(http.get("/login"), 405, "MethodNotAllowed")
    _assert_error(http.post("/login", content=b"{not json"), 400, "BadRequest")
    _assert_error(http.post("/login", json=["a", "list"]), 400, "BadRequest")
    token = _login(http)
    _break_store(world)  # an operator's mistake
    broken = http.get("/resources/list/models", headers=_bearer(token))
    _assert_error(broken, 503, "StoreUnavailable")
    assert broken.headers["retry-after"] == "1"
    assert str(world.data_dir) not in broken.text and "splitvault.db" not in broken.text
    assert "accounts" not in broken.text  # nor the driver's message


def _break_store(world: ServerWorld) -> None:
    def drop(cursor: object) -> None:
        cursor.execute("ALTER TABLE accounts RENAME TO accounts_gone")  # type: ignore[attr-defined]

    value(world.store._run(True, drop))


# --- retries -------------------------------------------------------------------------------------


def test_a_short_5xx_burst_is_retried(world: ServerWorld) -> None:
    """Two 503s in a row are retried with backoff and the call then succeeds."""
    api = world.client(UPLOADER)
    value(api.login())
    world.faults.fail_next(2)
    value(api.upload_small_part(REF, b"part"))
    assert len(world.sleep.waits) == 2
    assert world.sleep.waits[1] > world.sleep.waits[0]  # exponential ceiling, fixed jitter
    assert world.faults.injected == 2


def test_retry_after_is_honoured(world: ServerWorld) -> None:
    """A 503 with Retry-After: 3 makes the client wait at least three seconds."""
    api = world.client(UPLOADER, policy=RetryPolicy(base_delay=0.01, budget=10))
    value(api.login())
    world.faults.fail_next(1, status=503, retry_after=3)
    value(api.list_folder("models"))
    assert world.sleep.waits == [3.0]


def test_a_long_burst_gives_transient_within_the_budget(world: ServerWorld) -> None:
    """An outage longer than the budget ends as Transient; the waits never pass the budget."""
    policy = RetryPolicy(base_delay=0.5, max_delay=2.0, max_attempts=100, budget=5.0)
    api = world.client(UPLOADER, policy=policy)
    world.faults.fail_next(1000, status=502)
    refused = failure(api.list_folder("models"))
    assert isinstance(refused, Transient)
    assert "HTTP 502" in refused.detail and "budget" in refused.detail
    assert 0 < sum(world.sleep.waits) <= 5.0
    assert world.stats.logins == 0  # even the login was answered by the fault switch


def test_a_login_during_an_outage_is_retried_too(world: ServerWorld) -> None:
    """A 503 on the implicit login is retried like any other transient failure."""
    api = world.client(DOWNLOADER)
    world.faults.fail_next(1, path_prefix="/login")
    assert value(api.list_folder("models")) == ()
    assert len(world.sleep.waits) == 1 and world.stats.logins == 1


def test_a_refused_connection_is_transient_after_retries(tmp_path: Path) -> None:
    """With nothing listening, every attempt fails to connect and the result is Transient."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = FakeClock()
    sleep = FakeSleep(clock)
    with HttpResourceApi(
        f"http://127.0.0.1:{port}",
        UPLOADER,
        PASSWORD,
        device=DEVICE,
        policy=FAST_RETRIES,
        clock=clock,
        random=FakeRandom(),
        sleep=sleep,
    ) as api:
        refused = failure(api.list_folder("models"))
    assert isinstance(refused, Transient) and "connect" in refused.detail
    assert len(sleep.waits) == FAST_RETRIES.max_attempts - 1


def test_a_stalled_server_is_timed_out(tmp_path: Path) -> None:
    """A peer that accepts but never answers ends as TimedOut after the retries."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        clock = FakeClock()
        with HttpResourceApi(
            f"http://127.0.0.1:{silent.getsockname()[1]}",
            UPLOADER,
            PASSWORD,
            device=DEVICE,
            timeout=0.2,
            policy=RetryPolicy(base_delay=0.01, max_attempts=2),
            clock=clock,
            random=FakeRandom(),
            sleep=FakeSleep(clock),
        ) as api:
            refused = failure(api.list_folder("models"))
    assert refused == TimedOut("listing of models", 0.2)


# --- secrets and TLS -----------------------------------------------------------------------------


def test_reprs_hide_the_password_and_token(world: ServerWorld) -> None:
    """Neither the adapter's nor its auth's repr shows the password or the token."""
    api = world.client(UPLOADER)
    value(api.login())
    token = _login(httpx.Client(base_url=world.url))
    text = repr(api) + repr(api._auth) + repr(vars(api).get("_auth"))
    assert PASSWORD not in text and token.split(".")[0] + "." not in text
    assert UPLOADER in repr(api)


def test_no_password_or_token_reaches_the_logs(
    world: ServerWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """With our, httpx's and httpcore's loggers at DEBUG, a whole session logs no secret."""
    for name in ("splitvault", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    uploader, downloader = world.client(UPLOADER), world.client(DOWNLOADER)
    value(uploader.upload_small_part(REF, b"part"))
    world.faults.fail_next(1)
    value(downloader.download_small_part(REF))
    world.server_clock.advance(1000)
    value(downloader.download_cdn_config())
    tokens = [uploader._auth._token, downloader._auth._token]
    assert all(tokens) and downloader.logins == 2
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP Request" in text  # httpx did log; it just logged nothing secret
    for secret in (PASSWORD, *[token for token in tokens if token]):
        assert secret not in text
    assert "read-secret-value" not in text and "write-secret-value" not in text


def test_tls_is_verified_and_a_ca_bundle_is_honoured(tmp_path: Path) -> None:
    """An unknown CA is refused without retries; with ca_bundle the server is trusted."""
    ca_path, cert_path, key_path = tls_files(tmp_path)
    app = create_app(tmp_path / "data")
    add_user(tmp_path / "data", UPLOADER, PASSWORD, "uploader")
    clock = FakeClock()
    sleep = FakeSleep(clock)

    def client(url: str, ca_bundle: Path | None) -> HttpResourceApi:
        return HttpResourceApi(
            url,
            UPLOADER,
            PASSWORD,
            device=DEVICE,
            ca_bundle=ca_bundle,
            policy=FAST_RETRIES,
            clock=clock,
            random=FakeRandom(),
            sleep=sleep,
        )

    faults = FaultInjector(app)
    with RunningServer(faults, ssl_certfile=cert_path, ssl_keyfile=key_path) as server:
        assert server.url.startswith("https://")
        with client(server.url, None) as untrusting:
            refused = failure(untrusting.login())
        assert isinstance(refused, RemoteError) and "TLS" in refused.detail
        assert sleep.waits == []
        with client(server.url, ca_path) as trusting:
            faults.fail_next(1)  # the fault switch works behind TLS too
            value(trusting.login())
        assert len(sleep.waits) == 1 and faults.injected == 1


# --- operations: health, readiness, metrics, write-once fragments --------------------------------


def test_readyz_follows_the_store_and_healthz_does_not(
    world: ServerWorld, http: httpx.Client
) -> None:
    """/readyz is 200 with the schema version while the store answers and 503 once it does not;
    /healthz stays 200 (the process is alive) and neither needs a token."""
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "schema": SCHEMA_VERSION}

    def hide(cursor: object) -> None:
        cursor.execute("ALTER TABLE schema_version RENAME TO gone")  # type: ignore[attr-defined]

    value(world.store._run(True, hide))
    broken = http.get("/readyz")
    assert broken.status_code == 503
    assert broken.json() == {"status": "unavailable", "store": "not answering"}
    assert http.get("/healthz").status_code == 200


def test_metrics_count_requests_logins_failures_and_envelopes(
    world: ServerWorld, http: httpx.Client
) -> None:
    """After a login, a wrong password and a download, /metrics says so in Prometheus text."""
    value(world.client().upload_small_part(REF, b"part"))
    value(world.client(DOWNLOADER).download_small_part(REF))
    http.post("/login", json={"email": DOWNLOADER, "password": "guess-7f3a"})
    text = http.get("/metrics").text
    for line in (
        "splitvault_logins_total 2.0",
        "splitvault_login_failures_total 1.0",
        "splitvault_envelopes_served_total 1.0",
        'splitvault_requests_total{method="POST",route="login",status="401"} 1.0',
        'splitvault_requests_total{method="POST",route="get_resource",status="200"} 1.0',
        'splitvault_requests_total{method="POST",route="upload_resource",status="201"} 1.0',
    ):
        assert line in text, line
    assert 'splitvault_request_seconds_count{route="get_resource"} 1.0' in text
    assert PASSWORD not in text and "guess-7f3a" not in text


def test_a_second_different_fragment_is_409_and_the_same_one_is_a_retry(
    world: ServerWorld, http: httpx.Client
) -> None:
    """Fragments are write-once: the same bytes again succeed, others are 409 and change nothing;
    a fragment over the wire cap is 413."""
    login = device_login(http, UPLOADER, PASSWORD)
    headers = login.headers
    assert http.put("/keys/v9", content=b"\x01" * 32, headers=headers).status_code == 201
    assert http.put("/keys/v9", content=b"\x01" * 32, headers=headers).status_code == 201
    _assert_error(
        http.put("/keys/v9", content=b"\x02" * 32, headers=headers), 409, "FragmentExists"
    )
    fetched = http.get("/keys/v9", headers=headers)
    assert open_answer(fetched, login.key, "key-fragment", "v9") == b"\x01" * 32
    oversized = http.put("/keys/v10", content=b"\x03" * (64 * 1024 + 1), headers=headers)
    _assert_error(oversized, 413, "TooLarge")
    assert value(world.store.fragment_versions()) == ("v9",)


def test_the_fragment_client_reports_a_write_once_refusal_as_such(
    world: ServerWorld, http: httpx.Client
) -> None:
    """HttpKeyFragments turns 409 FragmentExists into RemoteError 409 naming the rule, not into
    a hardware mismatch."""
    login = device_login(http, UPLOADER, PASSWORD)
    fragments = HttpKeyFragments(world.url, login.token, device=login.key)
    value(fragments.put_fragment("v3", b"\x01" * 32))
    refused = failure(fragments.put_fragment("v3", b"\x02" * 32))
    assert isinstance(refused, RemoteError) and refused.status == 409
    assert "administrator" in refused.detail
    assert value(fragments.get_fragment("v3")) == b"\x01" * 32
