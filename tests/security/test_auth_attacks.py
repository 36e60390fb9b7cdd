"""Authentication attacks: wrong password, another machine, expired and forged tokens, wrong role.

Each is checked three ways: the server's answer over raw HTTP (status and ``ErrorCode``), the
typed failure of the client (``AuthFailed``, ``HardwareMismatch``, ``AccessDenied`` and the
facade's exceptions), and the CLI's exit code and message, so a person or a script can tell which
of them happened.
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from splitvault import ApiClient, ApiCredentials
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.app.cli.main import main
from splitvault.app.client.errors import AuthError, HardwareMismatchError
from splitvault.domain.errors import AccessDenied, AuthFailed, HardwareMismatch
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import failure, ok
from tests.support.devices import derive, device_token, enrol, login_answer
from tests.support.stack import (
    DOWNLOADER,
    OTHER_DOWNLOADER,
    PASSWORD,
    UPLOADER,
    Stack,
    download,
    upload,
)

REF = ResourceRef("models", "guarded.onnx")
WRONG = "Tr0ub4dor&3"


def _login(stack: Stack, email: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(f"{stack.url}/login", json={"email": email, "password": password})


def _token(stack: Stack, email: str, machine: str = "machine-a") -> str:
    """A device token for ``email`` on ``machine`` (login, then enrolment)."""
    return device_token(stack.url, email, PASSWORD, machine=machine)


def _error(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["ErrorCode"] == code
    assert "Traceback" not in answer.text


def _download_body() -> dict[str, str]:
    return {"file_name": REF.name}


def _facade(stack: Stack, tmp_path: Path, email: str, password: str, machine: str) -> ApiClient:
    return ApiClient(
        ApiCredentials(stack.url, email, password),
        cache_dir=tmp_path / f"facade-cache-{machine}",
        hardware=FixedHardware(machine),
    )


@pytest.fixture
def cli(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI configured through the environment against this test's stack."""
    monkeypatch.setenv("SPLITVAULT_API_URL", stack.url)
    monkeypatch.setenv("SPLITVAULT_CACHE_DIR", str(tmp_path / "cli-cache"))
    monkeypatch.setenv("SPLITVAULT_CONFIG", str(tmp_path / "absent.yaml"))
    yield tmp_path


def _run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    email: str,
    password: str,
    argv: list[str],
) -> tuple[int, str]:
    monkeypatch.setenv("SPLITVAULT_EMAIL", email)
    monkeypatch.setenv("SPLITVAULT_PASSWORD", password)
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _seed(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "guarded.onnx").write_bytes(b"guarded weights" * 2000)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "guarded.onnx"))


# --- wrong password -------------------------------------------------------------------------------


def test_a_wrong_password_is_401_and_every_layer_says_authentication_failed(
    stack: Stack,
    cli: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Login with a wrong password: 401 InvalidCredentials on the wire, ``AuthFailed`` from the
    adapter, ``AuthError`` (exit 3) from the facade and the CLI; the enrolment token a login
    answers does not download (401 DeviceNotEnrolled) and nothing is enrolled."""
    _error(_login(stack, UPLOADER, WRONG), 401, "InvalidCredentials")
    _error(_login(stack, "nobody@example.com", WRONG), 401, "InvalidCredentials")

    refused = failure(stack.client(DOWNLOADER, password=WRONG).api.login())
    assert isinstance(refused, AuthFailed) and refused.status == 401

    with (
        _facade(stack, cli, DOWNLOADER, WRONG, "m") as facade,
        pytest.raises(AuthError) as raised,
    ):
        facade.login()
    assert not isinstance(raised.value, HardwareMismatchError)
    assert raised.value.exit_code == 3 and "authentication failed (HTTP 401)" in str(raised.value)

    code, err = _run_cli(monkeypatch, capsys, DOWNLOADER, WRONG, ["login"])
    assert code == 3 and "authentication failed" in err and "e-mail and password" in err

    enrolment_token = _login(stack, UPLOADER).json()["token"]
    answer = httpx.post(
        f"{stack.url}/resources/get/{REF.folder}",
        json=_download_body(),
        headers={"Authorization": f"Bearer {enrolment_token}"},
    )
    _error(answer, 401, "DeviceNotEnrolled")
    assert ok(stack.store.list_devices(UPLOADER)) == ()


# --- another machine ------------------------------------------------------------------------------


def test_another_machine_is_409_and_every_layer_says_hardware_mismatch(
    stack: Stack,
    cli: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After the account enrols box-1, box-2's enrolment gets 409 HardwareMismatch on the wire,
    ``HardwareMismatch`` from the client, ``HardwareMismatchError`` (exit 8) from the facade and
    the CLI (this machine's real fingerprint), and no output file."""
    _seed(stack, cli)
    auth = {"Authorization": f"Bearer {_token(stack, DOWNLOADER, 'box-1')}"}
    url = f"{stack.url}/resources/get/{REF.folder}"
    assert httpx.post(url, json=_download_body(), headers=auth).status_code == 200
    with httpx.Client(base_url=stack.url) as http:
        login = login_answer(http, DOWNLOADER, PASSWORD).json()
        second = derive(PASSWORD, bytes.fromhex(login["salt"]), "box-2")
        _error(enrol(http, login["token"], second), 409, "HardwareMismatch")

    refused = failure(download(stack.client(DOWNLOADER, machine="box-2"), REF, cli / "client.onnx"))
    assert isinstance(refused, HardwareMismatch) and refused.error_code == "HardwareMismatch"

    with (
        _facade(stack, cli, DOWNLOADER, PASSWORD, "box-2") as facade,
        pytest.raises(HardwareMismatchError) as raised,
    ):
        facade.download_resource_file(REF.name, REF.folder, cli / "facade.onnx")
    assert raised.value.exit_code == 8 and "another machine" in str(raised.value)

    code, err = _run_cli(
        monkeypatch,
        capsys,
        DOWNLOADER,
        PASSWORD,
        ["download", REF.name, "--folder", REF.folder, "--out", str(cli / "cli.onnx")],
    )
    assert code == 8 and "another machine" in err and "reset-binding" in err
    assert not any((cli / name).exists() for name in ("client.onnx", "facade.onnx", "cli.onnx"))


# --- tokens ---------------------------------------------------------------------------------------


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hs512(claims: dict[str, object], key: bytes) -> str:
    """The same claims and the server's own key, another HMAC: the algorithm must be pinned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # 32 bytes is short for SHA-512
        return jwt.encode(claims, key, algorithm="HS512")


def test_expired_and_forged_tokens_are_401(stack: Stack) -> None:
    """An expired token (correctly signed), one re-signed with another key, an ``alg: none``
    token, a payload changed under the old signature, HS512 with the real key and RS256 with the
    key as an 'HMAC public key' are all 401; the genuine token still works."""
    token = _token(stack, DOWNLOADER)
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    key = stack.signing_key()
    now = int(time.time())
    promoted = {**claims, "sub": UPLOADER, "role": "uploader"}
    forged = {
        "TokenExpired": [
            jwt.encode({**claims, "iat": now - 3600, "exp": now - 60}, key, algorithm="HS256"),
        ],
        "InvalidToken": [
            jwt.encode(promoted, b"an attacker's key, 32 bytes long", algorithm="HS256"),
            jwt.encode(promoted, key="", algorithm="none"),
            f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(promoted)}.",
            f"{header}.{_b64(promoted)}.{signature}",
            f"{header}.{payload}.{signature[:-2]}AA",
            _hs512(promoted, key),
            jwt.encode({k: v for k, v in claims.items() if k != "exp"}, key, algorithm="HS256"),
            f"{header}.{payload}",
            "not-a-jwt",
        ],
    }
    with httpx.Client(base_url=stack.url) as http:
        for code, tokens in forged.items():
            for bad in tokens:
                answer = http.get(
                    "/resources/list/models", headers={"Authorization": f"Bearer {bad}"}
                )
                _error(answer, 401, code)
                assert answer.headers.get("www-authenticate") == "Bearer"
        genuine = http.get("/resources/list/models", headers={"Authorization": f"Bearer {token}"})
        assert genuine.status_code == 200


def test_a_role_claim_signed_with_the_real_key_does_not_grant_uploads(stack: Stack) -> None:
    """Even a token signed with the server's own key that says ``role: uploader`` for a
    downloader cannot upload: the server uses the stored role (403)."""
    token = _token(stack, DOWNLOADER)
    claims = jwt.decode(token, options={"verify_signature": False})
    key = stack.signing_key()
    promoted = jwt.encode({**claims, "role": "uploader"}, key, algorithm="HS256")
    answer = httpx.put(
        f"{stack.url}/keys/v1",
        content=b"fragment",
        headers={"Authorization": f"Bearer {promoted}"},
    )
    _error(answer, 403, "Forbidden")
    assert stack.fragment("v1") is None


def test_the_client_renews_an_expired_session_and_reports_a_revoked_account(
    stack: Stack, tmp_path: Path
) -> None:
    """A token the server stops accepting costs one re-login; an account removed mid-session
    ends in ``AuthFailed`` (the facade: ``AuthError``, exit 3), not a retry loop."""
    reader = stack.client(DOWNLOADER)
    ok(reader.api.list_folder("models"))
    stack.app.state.signing.rotate()  # every token issued so far stops verifying
    ok(reader.api.list_folder("models"))
    assert reader.api.logins == 2

    assert ok(stack.store.remove_account(DOWNLOADER)) is True
    refused = failure(reader.api.list_folder("models"))
    assert isinstance(refused, AuthFailed)
    assert reader.api.logins == 2

    with (
        _facade(stack, tmp_path, DOWNLOADER, PASSWORD, "m") as facade,
        pytest.raises(AuthError) as raised,
    ):
        facade.list_files("models")
    assert raised.value.exit_code == 3


# --- wrong role -----------------------------------------------------------------------------------


def test_a_downloader_is_403_and_every_layer_says_access_denied(
    stack: Stack,
    cli: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A downloader uploading gets 403 Forbidden on the wire (small parts and key fragments),
    ``AccessDenied`` from the client, ``AuthError`` (exit 3, 'access denied') from the facade and
    the CLI; nothing is stored at the API or in the bucket."""
    token = _token(stack, DOWNLOADER)
    auth = {"Authorization": f"Bearer {token}"}
    files = {"file": ("evil.onnx", b"small part", "application/octet-stream")}
    _error(httpx.post(f"{stack.url}/resources/models", files=files, headers=auth), 403, "Forbidden")
    _error(httpx.put(f"{stack.url}/keys/v1", content=b"k", headers=auth), 403, "Forbidden")

    reader = stack.client(DOWNLOADER)
    refused = failure(reader.api.upload_small_part(REF, b"small part"))
    assert isinstance(refused, AccessDenied)
    assert isinstance(failure(reader.api.put_fragment("v1", b"k")), AccessDenied)

    (cli / "evil.onnx").write_bytes(b"evil" * 1000)
    with _facade(stack, cli, DOWNLOADER, PASSWORD, "machine-a") as facade:
        attempts: list[Callable[[], object]] = [
            lambda: facade.upload_file("evil.onnx", b"evil" * 1000, "models"),
            lambda: facade.upload_big_small_resource(b"evil" * 1000, "evil.onnx", "models"),
            lambda: facade.upload_to_cdn("models", "evil.onnx.big", b"evil"),
            lambda: facade.upload_resource_file(cli / "evil.onnx", "evil.onnx", "models"),
        ]
        for attempt in attempts:
            with pytest.raises(AuthError) as raised:
                attempt()
            assert raised.value.exit_code == 3 and "access denied" in str(raised.value)

    code, err = _run_cli(
        monkeypatch,
        capsys,
        OTHER_DOWNLOADER,  # DOWNLOADER has its device; this one has none
        PASSWORD,
        ["upload", str(cli / "evil.onnx"), "--folder", "models"],
    )
    assert code == 3 and "access denied" in err and "uploader" in err
    assert ok(stack.store.names("models")) == ()
    assert stack.moto.s3_client().list_objects_v2(Bucket=stack.bucket).get("KeyCount", 0) == 0
