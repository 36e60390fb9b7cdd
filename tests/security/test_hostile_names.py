"""Hostile folder and resource names through every entry point that takes one.

Each name in ``HOSTILE_NAMES`` (path escapes, NUL, look-alikes, bidi overrides, zero-width joiners,
over-long names) goes through the facade, the CLI, the server over raw HTTP (bypassing the
client's checks), the cache and the CDN keys. Every entry must refuse it with an error that says
what is wrong, before any request is made where a request could be avoided, and the file tree
must show that nothing was created outside the cache or the server's data directory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from returns.io import IOResult, IOSuccess
from returns.pipeline import is_successful

from splitvault import ApiClient, ApiCredentials, CDNCredentials, CDNManager, binary_split
from splitvault.adapters.directory_cdn import DirectoryCdn
from splitvault.adapters.file_cache import FileCache
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.app.cli.main import main
from splitvault.app.client.errors import InvalidNameError
from splitvault.domain.errors import AccessDenied, InvalidRef, Problem
from splitvault.domain.ports import BigPartDigest, RangeSink, Span
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import (
    HOSTILE_NAMES,
    NAME_ADVICE,
    created_outside,
    failure,
    ok,
    raw_http,
    tree,
)
from tests.support.devices import device_token
from tests.support.stack import PASSWORD, UPLOADER, Stack


@pytest.fixture(scope="module")
def uploader_token(shared_stack: Stack) -> str:
    """A device token of the uploader, obtained once per module."""
    return device_token(shared_stack.url, UPLOADER, PASSWORD)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory (relative writes would land here, inside the snapshot)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (tmp_path / "model.bin").write_bytes(b"weights" * 100)
    yield tmp_path


def _logins(stack: Stack) -> int:
    count: int = stack.app.state.stats.logins + stack.app.state.stats.login_failures
    return count


# --- the domain gate every adapter relies on ------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_ref_cannot_be_built_from_a_hostile_name(name: str) -> None:
    """``ResourceRef`` refuses the name as folder and as name, with a reason, so no cache path or
    CDN key (both derived only from a ref) can ever hold it."""
    for folder, resource in ((name, "model.bin"), ("models", name)):
        parsed = ResourceRef.parse(folder, resource)
        assert not is_successful(parsed)
        problem = parsed.failure()
        assert isinstance(problem, InvalidRef)
        assert problem.reason and NAME_ADVICE in problem.describe()
        with pytest.raises(ValueError, match="invalid"):
            ResourceRef(folder, resource)


# --- the facade -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_facade_refuses_hostile_names_before_any_request(
    shared_stack: Stack, workspace: Path, name: str
) -> None:
    """Every ``ApiClient`` method taking a folder, name or CDN key raises ``InvalidNameError``;
    the server sees no login and nothing appears outside the cache directory."""
    model = workspace / "model.bin"
    out = workspace / "out.bin"
    client = ApiClient(
        ApiCredentials(shared_stack.url, UPLOADER, PASSWORD),
        cache_dir=workspace / "cache",
        hardware=FixedHardware("machine-names"),
    )
    calls: dict[str, Callable[[], object]] = {
        "upload_file(filename)": lambda: client.upload_file(name, b"x", "models"),
        "upload_file(folder)": lambda: client.upload_file("model.bin", b"x", name),
        "load_bytes(name)": lambda: client.load_bytes(name, "models"),
        "load_bytes(folder)": lambda: client.load_bytes("model.bin", name),
        "list_files(folder)": lambda: client.list_files(name),
        "upload_big_small_resource(name)": lambda: client.upload_big_small_resource(
            b"weights", name, "models"
        ),
        "upload_big_small_resource(folder)": lambda: client.upload_big_small_resource(
            model, "m", name
        ),
        "load_big_small_resource(name)": lambda: client.load_big_small_resource(name, "models"),
        "load_big_small_resource(folder)": lambda: client.load_big_small_resource("m", name),
        "upload_resource_file(name)": lambda: client.upload_resource_file(model, name, "models"),
        "upload_resource_file(folder)": lambda: client.upload_resource_file(model, "m", name),
        "download_resource_file(name)": lambda: client.download_resource_file(name, "models", out),
        "download_resource_file(folder)": lambda: client.download_resource_file("m", name, out),
        "upload_to_cdn(filename)": lambda: client.upload_to_cdn("models", f"{name}.big", b"x"),
        "upload_to_cdn(bucket)": lambda: client.upload_to_cdn(name, "m.big", b"x"),
        "download_from_cdn(filename)": lambda: client.download_from_cdn("models", name),
        "download_from_cdn(bucket)": lambda: client.download_from_cdn(name, "m"),
        "open_resource(name)": lambda: client.open_resource(name, "models"),
        "open_resource(folder)": lambda: client.open_resource("m", name),
    }
    before = tree(workspace)
    logins = _logins(shared_stack)
    with client:
        for what, call in calls.items():
            with pytest.raises(InvalidNameError) as raised:
                call()
            assert NAME_ADVICE in str(raised.value), what
            assert isinstance(raised.value.failure, InvalidRef), what
    assert _logins(shared_stack) == logins
    assert created_outside(before, tree(workspace), "cache") == []
    assert not out.exists()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_cdn_manager_and_image_helpers_refuse_hostile_keys(
    shared_stack: Stack, tmp_path: Path, name: str
) -> None:
    """``CDNManager`` never turns a hostile key into an S3 key, and ``binary_split`` refuses a
    hostile version before asking the API; the bucket stays empty."""
    credentials = CDNCredentials(
        shared_stack.moto.endpoint_url,
        shared_stack.read_keys.access_key_id,
        shared_stack.read_keys.secret_access_key,
        shared_stack.write_keys.access_key_id,
        shared_stack.write_keys.secret_access_key,
    )
    manager = CDNManager(credentials)
    for bucket, filename in (("models", name), (name, "model.big"), (name, name)):
        with pytest.raises(InvalidNameError):
            manager.upload(bucket, filename, b"big part")
        with pytest.raises(InvalidNameError):
            manager.download(bucket, filename, dest=tmp_path / "got")
        with pytest.raises(InvalidNameError):
            manager.download_bytes(bucket, filename)
    with pytest.raises(InvalidNameError):
        binary_split.download_key_fragment(shared_stack.url, "no-token", version=name)
    listing = shared_stack.moto.s3_client().list_objects_v2(Bucket=shared_stack.bucket)
    assert listing.get("KeyCount", 0) == 0
    assert not (tmp_path / "got").exists()


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    shared_stack: Stack, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Configuration for the CLI through ``SPLITVAULT_*`` only (no config file is read)."""
    for key, value in {
        "SPLITVAULT_API_URL": shared_stack.url,
        "SPLITVAULT_EMAIL": UPLOADER,
        "SPLITVAULT_PASSWORD": PASSWORD,
        "SPLITVAULT_CACHE_DIR": str(workspace / "cache"),
        "SPLITVAULT_CONFIG": str(workspace / "absent-config.yaml"),
        "SPLITVAULT_IMAGE_REGISTRY": "registry.test",
        "SPLITVAULT_IMAGE_SERVICES": "api",
    }.items():
        monkeypatch.setenv(key, value)
    (workspace / "images.enc").write_bytes(os.urandom(64))
    yield workspace


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_cli_exits_2_naming_the_problem(
    shared_stack: Stack, cli_env: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Every command that takes a folder, name or version exits 2 with the reason on stderr,
    without logging in and without creating anything outside the cache directory."""
    model, out, archive = (str(cli_env / n) for n in ("model.bin", "out", "images.enc"))
    commands = {
        "seal --name": ["seal", model, "--out", out, "--name", name],
        "seal --folder": ["seal", model, "--out", out, "--folder", name],
        "upload --name": ["upload", model, "--folder", "models", "--name", name],
        "upload --folder": ["upload", model, "--folder", name],
        "download name": ["download", name, "--folder", "models", "--out", out],
        "download --folder": ["download", "model.bin", "--folder", name, "--out", out],
        "ls": ["ls", name],
        "seal-images --version": ["seal-images", "img:1", "--version", name, "--out", out],
        "unlock-images --version": ["unlock-images", archive, "--version", name],
    }
    if name == "":
        # --name is optional and empty means "use the file's own name".
        del commands["seal --name"], commands["upload --name"]
    before = tree(cli_env)
    logins = _logins(shared_stack)
    for what, argv in commands.items():
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, f"{what}: exit {code}, stderr {captured.err!r}"
        assert "invalid" in captured.err and NAME_ADVICE in captured.err, what
        assert "Traceback" not in captured.err, what
    assert _logins(shared_stack) == logins
    assert created_outside(before, tree(cli_env), "cache") == []


# --- the server, over raw HTTP --------------------------------------------------------------------

# Path segments as an attacker would encode them, bypassing the client's validation.
ENCODED_SEGMENTS = [
    pytest.param("..%2Fx", id="encoded-slash"),
    pytest.param("%2E%2E", id="encoded-dotdot"),
    pytest.param("%2e%2e%2f%2e%2e%2fetc", id="encoded-dotdot-slash"),
    pytest.param("%2Fetc%2Fpasswd", id="encoded-absolute"),
    pytest.param("a%00b", id="encoded-nul"),
    pytest.param("..%5Cx", id="encoded-backslash"),
    pytest.param("%EF%BD%8Dodels", id="fullwidth"),
    pytest.param("models%E2%80%AE", id="rtl-override"),
    pytest.param("mo%E2%80%8Ddels", id="zero-width-joiner"),
    pytest.param("%C0%AE%C0%AE", id="overlong-utf8-dot"),
    pytest.param("x" * 300, id="very-long"),
    pytest.param(".users.lock", id="leading-dot"),
]


def _assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code in {400, 404}, answer.text
    body = answer.json()
    assert set(body) == {"ErrorCode", "Message"}
    assert body["ErrorCode"] in {"InvalidName", "NotFound", "BadRequest"}


def _multipart(filename: bytes, data: bytes = b"small part") -> tuple[bytes, str]:
    boundary = secrets.token_hex(8)
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("segment", ENCODED_SEGMENTS)
def test_encoded_path_segments_are_refused_by_the_server(
    shared_stack: Stack, uploader_token: str, segment: str
) -> None:
    """Percent-encoded escapes in the folder or version segment of every route are refused with
    a JSON 400/404 and nothing is written anywhere under the stack's root."""
    before = tree(shared_stack.root)
    auth = {"Authorization": f"Bearer {uploader_token}"}
    body, content_type = _multipart(b"model.bin")
    with httpx.Client(base_url=shared_stack.url, headers=auth) as http:
        answers = [
            http.post(
                f"/resources/{segment}", content=body, headers={"Content-Type": content_type}
            ),
            http.post(
                f"/resources/get/{segment}",
                json={"file_name": "m"},
            ),
            http.get(f"/resources/list/{segment}"),
            http.put(f"/keys/{segment}", content=b"fragment"),
            http.get(f"/keys/{segment}"),
        ]
    for answer in answers:
        _assert_refused(answer)
    assert tree(shared_stack.root) == before


@pytest.mark.parametrize(
    "filename",
    [
        pytest.param(b"../x", id="dotdot-slash"),
        pytest.param(b"../../../../tmp/escaped", id="deep-escape"),
        pytest.param(b"/etc/passwd", id="absolute"),
        pytest.param(b"..", id="dotdot"),
        pytest.param(b"a\x00b", id="nul"),
        pytest.param(b"..\\\\x", id="backslash"),
        pytest.param("\uff4dodel".encode(), id="fullwidth"),
        pytest.param("a\u202eb".encode(), id="rtl-override"),
        pytest.param(b"x" * 300, id="very-long"),
        pytest.param(b".users.lock", id="leading-dot"),
    ],
)
def test_hostile_multipart_filenames_are_refused(
    shared_stack: Stack, uploader_token: str, filename: bytes
) -> None:
    """An upload whose multipart filename escapes the folder is a 400 InvalidName; nothing is
    written anywhere under the stack's root."""
    before = tree(shared_stack.root)
    body, content_type = _multipart(filename)
    answer = httpx.post(
        f"{shared_stack.url}/resources/models",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {uploader_token}"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["ErrorCode"] in {"InvalidName", "BadRequest"}
    assert tree(shared_stack.root) == before


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_names_in_a_download_body_are_refused(
    shared_stack: Stack, uploader_token: str, name: str
) -> None:
    """``file_name`` in a download request is checked like a path segment: 400 InvalidName."""
    answer = httpx.post(
        f"{shared_stack.url}/resources/get/models",
        json={"file_name": name},
        headers={"Authorization": f"Bearer {uploader_token}"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["ErrorCode"] == "InvalidName"


def test_literal_dot_segments_never_reach_a_handler(
    shared_stack: Stack, uploader_token: str
) -> None:
    """A request line with literal ``..`` segments (sent byte for byte, no client normalisation)
    matches no route: a JSON 404, and nothing is written."""
    before = tree(shared_stack.root)
    body, content_type = _multipart(b"model.bin")
    for target in (b"/resources/../x", b"/resources/../../etc", b"/keys/../jwt.key"):
        request = (
            b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: Bearer " + uploader_token.encode() + b"\r\n"
            b"Content-Type: " + content_type.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = raw_http(shared_stack.server.port, request)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] in {b"400", b"404", b"405"}, answer
        assert b'"ErrorCode"' in rest
    assert tree(shared_stack.root) == before


# --- the cache and the CDN ------------------------------------------------------------------------


def test_cache_refuses_a_folder_linked_outside_its_root(tmp_path: Path) -> None:
    """A folder in the cache replaced by a symlink to elsewhere is refused (``StorageFailed``),
    and no file is created where the link points."""
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = ok(FileCache.open(root))
    (root / "models").symlink_to(elsewhere, target_is_directory=True)
    ref = ResourceRef("models", "model.bin")
    expected = BigPartDigest(4, b"\x00" * 32)

    filled: list[Sequence[Span]] = []

    def fill(ranges: Sequence[Span], sink: RangeSink) -> IOResult[None, Problem]:
        filled.append(ranges)
        sink.write(0, b"data")
        return IOSuccess(None)

    problem = failure(cache.fetch(ref, expected, fill, IOSuccess))
    assert "outside" in problem.describe()
    assert filled == []
    assert list(elsewhere.iterdir()) == []
    assert failure(cache.store(ref, lambda temp: IOSuccess(expected)))
    assert list(elsewhere.iterdir()) == []


def test_directory_cdn_refuses_a_folder_linked_outside_its_root(tmp_path: Path) -> None:
    """The directory CDN resolves every object path; a symlinked folder is ``AccessDenied``."""
    root, elsewhere = tmp_path / "cdn", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "models").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "big").write_bytes(b"big")
    cdn = DirectoryCdn(root)
    ref = ResourceRef("models", "model.bin")
    assert isinstance(failure(cdn.upload_file(ref, tmp_path / "big")), AccessDenied)
    assert isinstance(failure(cdn.download_file(ref, tmp_path / "got")), AccessDenied)
    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / "got").exists()
