"""The reference server under abuse: password guessing, forged algorithms, garbage and huge bodies.

Each test gets a fresh app (over a copy of the user template) in a module-wide uvicorn server, with
a server clock the test moves, so throttling windows pass without waiting. Every refusal must be
the JSON ``{"ErrorCode", "Message"}`` shape with a 4xx status, without a traceback and without
echoing a secret (the password sent, a stored hash, the signing key).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import jwt

from tests.security.hostile import capture_debug_logs, raw_http
from tests.support.devices import device_login
from tests.support.results import value
from tests.support.server_fixtures import http, served, world  # noqa: F401 - fixtures
from tests.support.server_world import DOWNLOADER, PASSWORD, UPLOADER, ServerWorld

WRONG = "guess-number-"


def _token(http: httpx.Client, email: str = UPLOADER) -> str:
    return device_login(http, email, PASSWORD).token


def _secrets_of(world: ServerWorld) -> list[str]:
    """What must never appear in an answer: the signing key and the stored password hashes."""
    key = world.signing_key()
    hashes = [account.password_hash for account in value(world.store.list_accounts())]
    salts = [h.split("$")[-2] for h in hashes]
    return [key.hex(), base64.b64encode(key).decode()[:40], "$argon2id", *hashes, *salts]


def _clean_refusal(world: ServerWorld, answer: httpx.Response, *sent_secrets: str) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/json", answer.text
    body = answer.json()
    assert set(body) == {"ErrorCode", "Message"}, body
    assert isinstance(body["Message"], str) and len(body["Message"]) < 500
    for marker in ("Traceback", 'File "', "Error:", "/site-packages/", str(world.data_dir)):
        assert marker not in answer.text, answer.text
    for secret in (*_secrets_of(world), *sent_secrets):
        assert secret not in answer.text


# --- password guessing ----------------------------------------------------------------------------


def test_login_is_throttled_after_five_failures_whatever_the_spelling(
    world: ServerWorld, http: httpx.Client
) -> None:
    """After five wrong passwords the account answers 429 with Retry-After, to the right password
    too and to every spelling of the e-mail (case, spaces, full-width letters); the window passing
    lets the right password in again."""
    spellings = [
        UPLOADER,
        UPLOADER.upper(),
        f"  {UPLOADER} ",
        "\uff55ploader@example.com",  # full-width 'u' folds to 'u'
        UPLOADER.title(),
    ]
    for attempt, email in enumerate(spellings):
        answer = http.post("/login", json={"email": email, "password": f"{WRONG}{attempt}"})
        assert answer.status_code == 401, answer.text
    for email in (*spellings, UPLOADER):
        for password in (PASSWORD, f"{WRONG}x"):
            answer = http.post("/login", json={"email": email, "password": password})
            assert answer.status_code == 429, (email, answer.text)
            _clean_refusal(world, answer, password)
            retry_after = int(answer.headers["retry-after"])
            assert 1 <= retry_after <= 300
    assert http.post("/login", json={"email": DOWNLOADER, "password": PASSWORD}).status_code == 200
    world.server_clock.advance(301)
    assert http.post("/login", json={"email": UPLOADER, "password": PASSWORD}).status_code == 200


def test_a_valid_token_is_never_throttled(world: ServerWorld, http: httpx.Client) -> None:
    """Downloads carry no password, so a token holder has nothing to guess through them; and
    wrong passwords for the account (even from the token holder's address) never refuse the
    token: it keeps listing and downloading while logins are 429."""
    token = _token(http, DOWNLOADER)
    auth = {"Authorization": f"Bearer {token}"}
    for attempt in range(8):
        http.post("/login", json={"email": DOWNLOADER, "password": f"{WRONG}{attempt}"})
    login = http.post("/login", json={"email": DOWNLOADER, "password": PASSWORD})
    assert login.status_code == 429 and "retry-after" in login.headers
    assert http.get("/resources/list/models", headers=auth).status_code == 200
    answer = http.post("/resources/get/config", json={"file_name": "cdn.yaml"}, headers=auth)
    assert answer.status_code == 200, answer.text


def test_unknown_accounts_and_wrong_passwords_answer_alike(
    world: ServerWorld, http: httpx.Client
) -> None:
    """Whether the account exists is not told by the answer (status, code, message)."""
    unknown = http.post("/login", json={"email": "ghost@example.com", "password": WRONG})
    wrong = http.post("/login", json={"email": UPLOADER, "password": WRONG})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()


# --- tokens ---------------------------------------------------------------------------------------


def test_tokens_are_hs256_and_other_algorithms_are_refused(
    world: ServerWorld, http: httpx.Client
) -> None:
    """Issued tokens are HS256 with an expiry; the same claims as ``none``, HS384 (with the real
    key) or with the algorithm header lowercased are 401."""
    token = _token(http)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256" and claims["exp"] > claims["iat"]
    key = world.signing_key()
    _, payload, signature = token.split(".")
    lowered = base64.urlsafe_b64encode(b'{"alg":"hs256","typ":"JWT"}').rstrip(b"=").decode()
    for forged in (
        jwt.encode(claims, key="", algorithm="none"),
        jwt.encode(claims, key * 2, algorithm="HS384"),
        f"{lowered}.{payload}.{signature}",
    ):
        answer = http.get("/resources/list/models", headers={"Authorization": f"Bearer {forged}"})
        assert answer.status_code == 401
        _clean_refusal(world, answer)


# --- garbage and huge bodies ----------------------------------------------------------------------


def _garbage_requests() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx options); ``headers`` in the options are added to the token's."""
    json_type = {"Content-Type": "application/json"}
    deep = "[" * 100_000 + "]" * 100_000
    return [
        ("POST", "/login", {"content": b"{not json", "headers": json_type}),
        ("POST", "/login", {"content": b"\xff\xfe\x00garbage", "headers": json_type}),
        ("POST", "/login", {"content": deep.encode(), "headers": json_type}),
        ("POST", "/login", {"content": b'{"a":' * 50_000 + b"1" + b"}" * 50_000}),
        ("POST", "/login", {"json": []}),
        ("POST", "/login", {"json": None}),
        ("POST", "/login", {"json": {"email": 7, "password": PASSWORD}}),
        ("POST", "/login", {"json": {"email": UPLOADER, "password": ["a", PASSWORD]}}),
        ("POST", "/login", {"json": {"email": UPLOADER, "password": {"$ne": None}}}),
        ("POST", "/login", {"json": {"email": "x" * 10_000 + "@e.com", "password": PASSWORD}}),
        ("POST", "/login", {"json": {"email": UPLOADER, "password": "p" * 5000}}),
        ("POST", "/login", {"json": {"email": "a\x00@example.com", "password": PASSWORD}}),
        ("POST", "/login", {"json": {"email": UPLOADER}}),
        (
            "POST",
            "/resources/get/models",
            {"json": {"file_name": "m", "password": PASSWORD, "hardware_fingerprint": "\x1b[2J"}},
        ),
        (
            "POST",
            "/resources/get/models",
            {"json": {"file_name": 5, "password": PASSWORD, "hardware_fingerprint": "fp"}},
        ),
        ("POST", "/resources/get/models", {"content": deep.encode(), "headers": json_type}),
        ("POST", "/resources/models", {"content": b"not multipart"}),
        (
            "POST",
            "/resources/models",
            {"content": b"--x\r\ngarbage", "headers": {"Content-Type": "multipart/form-data"}},
        ),
        (
            "POST",
            "/resources/models",
            {
                "files": [
                    ("file", ("a.bin", b"1", "application/octet-stream")),
                    ("file", ("b.bin", b"2", "application/octet-stream")),
                ]
            },
        ),
        ("POST", "/resources/models", {"files": {"other": ("a.bin", b"1")}}),
        ("POST", "/resources/models", {"files": {"file": ("a.bin", b"")}}),
        ("PUT", "/keys/v1", {"content": b""}),
    ]


def test_garbage_bodies_get_clean_4xx_json(world: ServerWorld, http: httpx.Client) -> None:
    """Malformed and deeply nested JSON, wrong types, over-long fields, control characters and
    broken multipart all get a 4xx JSON refusal without a traceback or a secret, and the server
    logs no password or traceback while refusing them."""
    token = _token(http)
    with capture_debug_logs(["splitvault", "uvicorn"]) as logs:
        for method, path, options in _garbage_requests():
            headers = {"Authorization": f"Bearer {token}", **options.pop("headers", {})}
            answer = http.request(method, path, headers=headers, **options)
            _clean_refusal(world, answer, PASSWORD)
    for text in logs.texts():
        assert PASSWORD not in text and "Traceback" not in text
    assert not any(record.levelname == "ERROR" for record in logs.records)
    assert world.stats.logins == 1


def test_bodies_over_the_limit_are_413_declared_or_streamed(
    world: ServerWorld, http: httpx.Client
) -> None:
    """A declared Content-Length over 1 MiB, a chunked body that grows past it and a multipart
    upload over it are 413; a negative, non-numeric or absurd length is refused before any
    body is read; nothing is stored."""
    token = _token(http)
    auth = {"Authorization": f"Bearer {token}"}

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 65_536

    big = b"x" * ((1 << 20) + 1)
    answers = [
        http.post("/login", content=big, headers={"Content-Type": "application/json"}),
        http.post("/login", content=chunks(), headers={"Content-Type": "application/json"}),
        http.post("/resources/models", files={"file": ("big.bin", big)}, headers=auth),
        http.put("/keys/v1", content=chunks(), headers=auth),
    ]
    for answer in answers:
        assert answer.status_code == 413, answer.text
        _clean_refusal(world, answer)
    for length in (b"-1", b"abc", b"99999999999999999999"):
        raw = raw_http(
            world.server.port,
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n{}",
        )
        status = raw.split(b" ", 2)[1]
        assert status in {b"400", b"413"}, raw
        assert b"Traceback" not in raw
    assert value(world.store.names("models")) == ()
    assert value(world.store.fragment_versions()) == ()


def test_unknown_routes_and_methods_are_json(world: ServerWorld, http: httpx.Client) -> None:
    """Unknown paths are a JSON 404, known paths with another method a JSON 405."""
    for path in ("/", "/admin", "/users.json", "/jwt.key", "/resources", "/resources/a/b/c"):
        answer = http.get(path)
        assert answer.status_code == 404
        _clean_refusal(world, answer)
        assert answer.json()["ErrorCode"] == "NotFound"
    for method, path in (("GET", "/login"), ("DELETE", "/resources/models"), ("PUT", "/login")):
        answer = http.request(method, path)
        assert answer.status_code == 405
        _clean_refusal(world, answer)


def test_secret_bearing_answers_are_not_cacheable(world: ServerWorld, http: httpx.Client) -> None:
    """Login answers, envelopes and refusals carry ``Cache-Control: no-store``."""
    token = _token(http)
    login = http.post("/login", json={"email": UPLOADER, "password": PASSWORD})
    envelope = http.post(
        "/resources/get/config",
        json={"file_name": "cdn.yaml", "password": PASSWORD, "hardware_fingerprint": "fp"},
        headers={"Authorization": f"Bearer {token}"},
    )
    refusal = http.post("/login", json={"email": UPLOADER, "password": WRONG})
    for answer in (login, envelope, refusal):
        assert answer.headers.get("cache-control") == "no-store", answer
