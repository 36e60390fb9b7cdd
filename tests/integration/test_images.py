"""Image unlock and seal against a real private dockerd: round trips and every way it can fail.

Archives are made by ``seal_images`` (v1) or by the ``openssl enc`` command (the original legacy
CBC format); images are tiny ``docker import``s. Each failure must name what is wrong, load
nothing (the daemon's image list is compared before and after) and leave no decrypted tar behind
(the work directory and the output's directory are checked).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
import shutil
import subprocess
import tarfile
import threading
import tracemalloc
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, TypeVar

import attrs
import jwt as pyjwt
import pytest
from returns.io import IOFailure, IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault import api_client, binary_split
from splitvault.adapters.docker_api import DockerApiEngine
from splitvault.adapters.docker_cli import DockerCliEngine
from splitvault.app.client import images
from splitvault.app.client.errors import (
    AuthError,
    ConfigError,
    EngineError,
    IntegrityError,
    NotFoundError,
)
from splitvault.domain.archive import ArchiveKind, seal_legacy_archive_bytes, seal_v1_archive_bytes
from splitvault.domain.device import derive_device_key, envelope_info, seal
from splitvault.domain.errors import (
    ConfigInvalid,
    CorruptResource,
    EngineFailed,
    EngineFailure,
    ImagesMissing,
    InvalidRef,
    NotFound,
    PartMismatch,
    Problem,
    RemoteError,
    WrongKey,
)
from splitvault.domain.ports import ApiFailure, ContainerEngine, VouchedFragment
from tests.support.dockerd import (  # noqa: F401 - `dockerd` is a fixture pytest finds by name
    PrivateDockerd,
    dockerd,
    image_name,
    import_image,
    list_images,
    remove_images,
    save_archive,
)

pytestmark = pytest.mark.docker

T = TypeVar("T")
REGISTRY = "it.test"
SERVICES = ("api", "worker")
_counter = itertools.count()


# --- hand-written fakes ---------------------------------------------------------------------------


class FakeKeyFragments:
    """Fragments in a dict; ``gets`` records every version asked for; ``keys`` the publisher
    key each was registered under (what the fake vouches for)."""

    def __init__(self, stored: dict[str, bytes] | None = None, *, refuse_put: bool = False):
        self.stored = dict(stored or {})
        self.keys: dict[str, bytes | None] = {}
        self.gets: list[str] = []
        self.refuse_put = refuse_put

    def get_fragment(self, version: str) -> IOResult[bytes, ApiFailure]:
        return self.vouched_fragment(version).map(lambda vouched: vouched.fragment)

    def vouched_fragment(self, version: str) -> IOResult[VouchedFragment, ApiFailure]:
        self.gets.append(version)
        if version not in self.stored:
            return IOFailure(NotFound(f"the key fragment of version {version}"))
        return IOSuccess(VouchedFragment(self.stored[version], self.keys.get(version)))

    def put_fragment(
        self, version: str, fragment: bytes, publisher_key: bytes | None = None
    ) -> IOResult[None, ApiFailure]:
        if self.refuse_put:
            return IOFailure(RemoteError(f"PUT /keys/{version}", 500, "refused by the test"))
        self.stored[version] = fragment
        self.keys[version] = publisher_key
        return IOSuccess(None)


class SeededRandom:
    """Deterministic ``Random`` for tests."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self._random.randbytes(n)

    def uniform(self) -> float:
        return self._random.random()


class ForgetfulEngine:
    """A real engine that claims one image is absent: an engine that lost an image after load."""

    def __init__(self, inner: ContainerEngine, forget: str) -> None:
        self._inner = inner
        self._forget = forget

    def load(self, tar: Path) -> IOResult[tuple[str, ...], EngineFailure]:
        return self._inner.load(tar)

    def has_image(self, name: str) -> IOResult[bool, EngineFailure]:
        if name == self._forget:
            return IOSuccess(False)
        return self._inner.has_image(name)


# --- helpers --------------------------------------------------------------------------------------


@attrs.frozen
class Sealed:
    archive: Path
    version: str
    fragment: bytes = attrs.field(repr=False)
    names: tuple[str, ...]


def _ok(result: IOResult[T, Problem]) -> T:
    assert is_successful(result), unsafe_perform_io(result.failure()).describe()
    return unsafe_perform_io(result.unwrap())


def _failure(result: IOResult[object, Problem]) -> Problem:
    assert not is_successful(result), "expected a failure"
    return unsafe_perform_io(result.failure())


def _version() -> str:
    return f"t{os.getpid()}x{next(_counter)}"


def _names(version: str, services: Sequence[str] = SERVICES) -> tuple[str, ...]:
    return tuple(image_name(REGISTRY, service, version) for service in services)


def _leftovers(*directories: Path) -> list[Path]:
    """Anything left in the work directory, and temp files beside outputs."""
    found: list[Path] = []
    for directory in directories:
        if directory.exists():
            found.extend(p for p in directory.iterdir() if p.name.startswith((".", "splitvault")))
    return found


@pytest.fixture
def version(dockerd: PrivateDockerd) -> Iterator[str]:
    """A fresh version; its images are removed from the daemon afterwards."""
    chosen = _version()
    yield chosen
    remove_images(dockerd, _names(chosen))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def api_engine(dockerd: PrivateDockerd) -> DockerApiEngine:
    return DockerApiEngine(dockerd.socket_path, timeout=60.0)


def _seal_v1(
    dockerd: PrivateDockerd,
    tmp_path: Path,
    version: str,
    services: Sequence[str] = SERVICES,
) -> Sealed:
    """Import the version's images, seal them with ``seal_images``, remove them from dockerd."""
    names = _names(version, services)
    for name in names:
        import_image(dockerd, name)
    fragments = FakeKeyFragments()
    out = tmp_path / "out" / f"images-{version}.svlt"
    out.parent.mkdir(exist_ok=True)
    report = _ok(
        images.seal_images(
            names,
            version,
            out,
            engine_cli=DockerCliEngine(dockerd.docker_host),
            fragments=fragments,
            random=SeededRandom(1),
            chunk_size=4096,  # several chunks even for a tiny image tar
        )
    )
    assert report.archive_bytes == out.stat().st_size
    remove_images(dockerd, names)
    return Sealed(out, version, fragments.stored[version], names)


def _seal_legacy_with_openssl(
    dockerd: PrivateDockerd,
    tmp_path: Path,
    version: str,
) -> Sealed:
    """The original format, made by the openssl command: IV || AES-256-CBC(SHA-256(fragment))."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    names = _names(version)
    tar = save_archive(dockerd, names, tmp_path / "plain.tar")
    fragment = os.urandom(32)
    iv = os.urandom(16)
    ciphertext = subprocess.run(
        [
            "openssl",
            "enc",
            "-aes-256-cbc",
            "-K",
            hashlib.sha256(fragment).hexdigest(),
            "-iv",
            iv.hex(),
            "-nosalt",
            "-in",
            str(tar),
        ],
        capture_output=True,
        check=True,
    ).stdout
    tar.unlink()
    archive = tmp_path / "out" / f"images-{version}.enc"
    archive.parent.mkdir(exist_ok=True)
    archive.write_bytes(iv + ciphertext)
    return Sealed(archive, version, fragment, names)


def _sealed(kind: str, dockerd: PrivateDockerd, tmp_path: Path, version: str) -> Sealed:
    if kind == "v1":
        return _seal_v1(dockerd, tmp_path, version)
    return _seal_legacy_with_openssl(dockerd, tmp_path, version)


def _unlock(
    sealed: Sealed,
    engine: ContainerEngine,
    workdir: Path,
    *,
    fragment: bytes | None = None,
    services: Sequence[str] = SERVICES,
) -> IOResult[images.UnlockReport, Problem]:
    fragments = FakeKeyFragments(
        {sealed.version: sealed.fragment if fragment is None else fragment}
    )
    return images.unlock_images(
        sealed.archive,
        sealed.version,
        fragments=fragments,
        engine=engine,
        services=services,
        registry=REGISTRY,
        workdir=workdir,
    )


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine_kind", ["api", "cli"])
@pytest.mark.parametrize("kind", ["v1", "legacy"])
def test_sealed_images_unlock_and_are_present(
    *,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
    kind: str,
    engine_kind: str,
) -> None:
    """A v1 archive from seal_images and an openssl legacy archive unlock into present images."""
    sealed = _sealed(kind, dockerd, tmp_path, version)
    assert not set(sealed.names) & list_images(dockerd)
    engine: ContainerEngine = (
        DockerApiEngine(dockerd.socket_path)
        if engine_kind == "api"
        else DockerCliEngine(dockerd.docker_host)
    )

    report = _ok(_unlock(sealed, engine, workdir))

    assert report.kind is (ArchiveKind.V1 if kind == "v1" else ArchiveKind.LEGACY_CBC)
    assert sorted(report.loaded) == sorted(sealed.names)
    assert report.images == sealed.names
    assert set(sealed.names) <= list_images(dockerd)
    assert _leftovers(workdir, sealed.archive.parent) == []


def test_seal_registers_a_fresh_fragment_and_writes_a_private_v1_archive(
    dockerd: PrivateDockerd,
    tmp_path: Path,
    version: str,
) -> None:
    """seal_images writes a 0600 v1 archive and registers a 32-byte fragment that opens it."""
    sealed = _seal_v1(dockerd, tmp_path, version)
    assert len(sealed.fragment) == 32
    assert sealed.archive.read_bytes().startswith(b"SPLITVLT")
    assert sealed.archive.stat().st_mode & 0o777 == 0o600
    out = tmp_path / "plain.tar"
    assert _ok(images.decrypt_archive(sealed.archive, sealed.fragment, out)) is ArchiveKind.V1
    assert out.stat().st_mode & 0o777 == 0o600


def test_seal_without_a_registered_fragment_leaves_no_archive(
    dockerd: PrivateDockerd,
    tmp_path: Path,
    version: str,
) -> None:
    """When the API refuses the fragment, no archive appears and no temp file is left."""
    names = _names(version)
    for name in names:
        import_image(dockerd, name)
    out = tmp_path / "images.svlt"

    failure = _failure(
        images.seal_images(
            names,
            version,
            out,
            engine_cli=DockerCliEngine(dockerd.docker_host),
            fragments=FakeKeyFragments(refuse_put=True),
            random=SeededRandom(2),
        )
    )

    assert isinstance(failure, RemoteError)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# --- failures: typed, nothing loaded, nothing left ------------------------------------------------


@pytest.mark.parametrize("kind", ["v1", "legacy"])
@pytest.mark.parametrize("fragment_case", ["wrong", "truncated"])
def test_a_wrong_or_truncated_fragment_loads_nothing(
    *,
    dockerd: PrivateDockerd,
    api_engine: DockerApiEngine,
    tmp_path: Path,
    workdir: Path,
    version: str,
    kind: str,
    fragment_case: str,
) -> None:
    """A fragment that is not the archive's is a WrongKey naming the archive; nothing loads."""
    sealed = _sealed(kind, dockerd, tmp_path, version)
    fragment = os.urandom(32) if fragment_case == "wrong" else sealed.fragment[:-1]
    before = list_images(dockerd)

    failure = _failure(_unlock(sealed, api_engine, workdir, fragment=fragment))

    assert isinstance(failure, WrongKey)
    assert "archive" in failure.describe()
    assert list_images(dockerd) == before
    assert _leftovers(workdir, sealed.archive.parent) == []


@pytest.mark.parametrize(
    "damage",
    ["flip-in-ciphertext", "flip-in-header", "truncated", "appended"],
)
def test_a_corrupted_v1_archive_loads_nothing(
    *,
    dockerd: PrivateDockerd,
    api_engine: DockerApiEngine,
    tmp_path: Path,
    workdir: Path,
    version: str,
    damage: str,
) -> None:
    """A flipped bit, a cut or extra bytes in a v1 archive are caught before Docker sees it."""
    sealed = _seal_v1(dockerd, tmp_path, version)
    data = bytearray(sealed.archive.read_bytes())
    if damage == "flip-in-ciphertext":
        data[len(data) // 2] ^= 0x01
    elif damage == "flip-in-header":
        data[40] ^= 0x80
    elif damage == "truncated":
        del data[-100:]
    else:
        data += b"\0" * 16
    sealed.archive.write_bytes(bytes(data))
    before = list_images(dockerd)

    failure = _failure(_unlock(sealed, api_engine, workdir))

    assert isinstance(failure, CorruptResource | WrongKey | PartMismatch)
    assert "archive" in failure.describe()
    assert list_images(dockerd) == before
    assert _leftovers(workdir, sealed.archive.parent) == []


def test_a_truncated_legacy_archive_loads_nothing(
    dockerd: PrivateDockerd,
    api_engine: DockerApiEngine,
    tmp_path: Path,
    workdir: Path,
    version: str,
) -> None:
    """A legacy archive cut off mid-block is a CorruptResource; nothing loads."""
    sealed = _seal_legacy_with_openssl(dockerd, tmp_path, version)
    data = sealed.archive.read_bytes()
    sealed.archive.write_bytes(data[:-5])
    before = list_images(dockerd)

    failure = _failure(_unlock(sealed, api_engine, workdir))

    assert isinstance(failure, CorruptResource)
    assert "legacy image archive" in failure.describe()
    assert list_images(dockerd) == before
    assert _leftovers(workdir, sealed.archive.parent) == []


def test_an_archive_for_another_version_is_refused(
    dockerd: PrivateDockerd,
    api_engine: DockerApiEngine,
    tmp_path: Path,
    workdir: Path,
    version: str,
) -> None:
    """A v1 archive sealed for one version does not unlock as another (even with its fragment)."""
    sealed = _seal_v1(dockerd, tmp_path, version)
    other = attrs.evolve(sealed, version=_version())

    failure = _failure(_unlock(other, api_engine, workdir))

    assert isinstance(failure, PartMismatch)
    assert version in failure.describe()


@pytest.mark.parametrize("engine_kind", ["api", "cli"])
def test_a_daemon_that_is_down_fails_before_the_fragment_is_fetched(
    tmp_path: Path, workdir: Path, engine_kind: str
) -> None:
    """With no daemon, unlock fails naming the socket, before fetching or decrypting anything."""
    socket_path = tmp_path / "no-daemon" / "docker.sock"
    engine: ContainerEngine = (
        DockerApiEngine(socket_path)
        if engine_kind == "api"
        else DockerCliEngine(f"unix://{socket_path}")
    )
    archive = tmp_path / "images.svlt"
    archive.write_bytes(b"SPLITVLT" + bytes(100))
    fragments = FakeKeyFragments({"1.0": bytes(32)})

    failure = _failure(
        images.unlock_images(
            archive,
            "1.0",
            fragments=fragments,
            engine=engine,
            services=SERVICES,
            registry=REGISTRY,
            workdir=workdir,
        )
    )

    assert isinstance(failure, EngineFailed)
    assert str(socket_path) in failure.describe()
    assert fragments.gets == []
    assert list(workdir.iterdir()) == []


def test_an_archive_without_a_services_image_loads_nothing(
    dockerd: PrivateDockerd,
    api_engine: DockerApiEngine,
    tmp_path: Path,
    workdir: Path,
    version: str,
) -> None:
    """When the archive lacks a configured service's image, ImagesMissing names it; none load."""
    sealed = _seal_v1(dockerd, tmp_path, version, services=("api",))
    before = list_images(dockerd)

    failure = _failure(_unlock(sealed, api_engine, workdir, services=("api", "worker")))

    assert failure == ImagesMissing((image_name(REGISTRY, "worker", version),))
    assert list_images(dockerd) == before
    assert _leftovers(workdir, sealed.archive.parent) == []


def test_an_image_missing_after_load_is_named(
    dockerd: PrivateDockerd,
    api_engine: DockerApiEngine,
    tmp_path: Path,
    workdir: Path,
    version: str,
) -> None:
    """If the engine lacks an image after the load, ImagesMissing names exactly that image."""
    sealed = _seal_v1(dockerd, tmp_path, version)
    lost = sealed.names[1]

    failure = _failure(_unlock(sealed, ForgetfulEngine(api_engine, lost), workdir))

    assert failure == ImagesMissing((lost,))
    assert _leftovers(workdir, sealed.archive.parent) == []


def test_an_invalid_version_or_config_is_refused_up_front(
    api_engine: DockerApiEngine, tmp_path: Path, workdir: Path
) -> None:
    """A version that is not an image tag, or no services, fail before the engine is asked."""
    fragments = FakeKeyFragments()
    archive = tmp_path / "a.svlt"
    archive.write_bytes(b"x")

    def unlock(version: str, services: Sequence[str]) -> Problem:
        return _failure(
            images.unlock_images(
                archive,
                version,
                fragments=fragments,
                engine=api_engine,
                services=services,
                registry=REGISTRY,
                workdir=workdir,
            )
        )

    bad_version = unlock("../1", SERVICES)
    no_services = unlock("1.0", [])

    assert isinstance(bad_version, InvalidRef)
    assert isinstance(no_services, ConfigInvalid)
    assert fragments.gets == []


# --- decrypt_archive on its own -------------------------------------------------------------------


def _tar_bytes(size: int) -> bytes:
    """A real tar holding one file of ``size`` random bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("blob.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(os.urandom(size)))
    return buffer.getvalue()


def _archive_of(kind: str, tar: bytes, fragment: bytes, version: str = "1.0") -> bytes:
    if kind == "v1":
        return seal_v1_archive_bytes(version, tar, fragment, os.urandom(16)).unwrap()
    return seal_legacy_archive_bytes(tar, fragment, os.urandom(16))


@pytest.mark.parametrize("kind", ["v1", "legacy"])
def test_decrypt_archive_streams_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    """Decrypting a 24 MiB archive allocates a few MiB at most and yields the tar exactly."""
    tar = _tar_bytes(24 << 20)
    fragment = os.urandom(32)
    archive = tmp_path / "archive"
    archive.write_bytes(_archive_of(kind, tar, fragment))
    expected = hashlib.sha256(tar).digest()
    del tar
    out = tmp_path / "plain.tar"

    tracemalloc.start()
    try:
        result = images.decrypt_archive(archive, fragment, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert _ok(result) is (ArchiveKind.V1 if kind == "v1" else ArchiveKind.LEGACY_CBC)
    assert peak < 6 << 20
    assert hashlib.sha256(out.read_bytes()).digest() == expected


@pytest.mark.parametrize("kind", ["v1", "legacy"])
def test_decrypt_archive_with_a_wrong_fragment_writes_nothing(tmp_path: Path, kind: str) -> None:
    """A wrong fragment leaves neither the output nor a temp file beside it."""
    archive = tmp_path / "in" / "archive"
    archive.parent.mkdir()
    archive.write_bytes(_archive_of(kind, _tar_bytes(5000), os.urandom(32)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    failure = _failure(images.decrypt_archive(archive, os.urandom(32), out_dir / "plain.tar"))

    assert isinstance(failure, WrongKey)
    assert list(out_dir.iterdir()) == []


def test_decrypt_archive_of_a_missing_file_is_not_found(tmp_path: Path) -> None:
    """A path with no archive is NotFound naming it."""
    missing = tmp_path / "nope.svlt"
    failure = _failure(images.decrypt_archive(missing, os.urandom(32), tmp_path / "out.tar"))
    assert isinstance(failure, NotFound)
    assert str(missing) in failure.describe()


# --- configuration --------------------------------------------------------------------------------


def test_images_config_comes_from_the_environment() -> None:
    """Registry, comma-separated services and the default version are read from SPLITVAULT_*."""
    config = images.ImagesConfig.from_env(
        {
            "SPLITVAULT_IMAGE_REGISTRY": "registry.example.com:5000/team",
            "SPLITVAULT_IMAGE_SERVICES": " api, worker ,ui",
            "SPLITVAULT_IMAGE_VERSION": "2.1",
        }
    ).unwrap()

    assert config.services == ("api", "worker", "ui")
    assert config.default_version == "2.1"
    assert config.image_names("2.1").unwrap() == (
        "registry.example.com:5000/team/api:2.1",
        "registry.example.com:5000/team/worker:2.1",
        "registry.example.com:5000/team/ui:2.1",
    )


@pytest.mark.parametrize(
    ("environ", "field"),
    [
        ({"SPLITVAULT_IMAGE_SERVICES": "api"}, "SPLITVAULT_IMAGE_REGISTRY"),
        ({"SPLITVAULT_IMAGE_REGISTRY": "r.example"}, "SPLITVAULT_IMAGE_SERVICES"),
        ({"SPLITVAULT_IMAGE_REGISTRY": "r.example", "SPLITVAULT_IMAGE_SERVICES": "A!"}, "services"),
        ({"SPLITVAULT_IMAGE_REGISTRY": "bad host/", "SPLITVAULT_IMAGE_SERVICES": "a"}, "registry"),
    ],
)
def test_images_config_names_the_missing_or_bad_field(environ: dict[str, str], field: str) -> None:
    """Missing or malformed configuration is a ConfigInvalid naming the field."""
    failure = images.ImagesConfig.from_env(environ).failure()
    assert isinstance(failure, ConfigInvalid)
    assert field in failure.field


# --- the original binary_split functions ----------------------------------------------------------


@pytest.fixture
def image_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPLITVAULT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SPLITVAULT_IMAGE_REGISTRY", REGISTRY)
    monkeypatch.setenv("SPLITVAULT_IMAGE_SERVICES", ",".join(SERVICES))


@pytest.mark.usefixtures("image_env")
def test_facade_loads_and_checks_a_version(
    dockerd: PrivateDockerd,
    api_engine: DockerApiEngine,
    tmp_path: Path,
    version: str,
) -> None:
    """decrypt_archive, docker_load and check_images_loaded work end to end and say False first."""
    sealed = _seal_v1(dockerd, tmp_path, version)
    tar = tmp_path / "plain.tar"
    assert binary_split.check_images_loaded(version, engine=api_engine) is False

    assert binary_split.decrypt_archive(str(sealed.archive), sealed.fragment, str(tar)) is (
        ArchiveKind.V1
    )
    loaded = binary_split.docker_load(tar, engine=DockerCliEngine(dockerd.docker_host))

    assert sorted(loaded) == sorted(sealed.names)
    assert binary_split.check_images_loaded(version, engine=api_engine) is True


@pytest.mark.usefixtures("image_env")
def test_facade_raises_typed_errors(tmp_path: Path) -> None:
    """Wrong fragment, engine down and bad configuration raise the matching SplitvaultError."""
    archive = tmp_path / "archive"
    archive.write_bytes(_archive_of("v1", _tar_bytes(3000), os.urandom(32)))
    down = DockerApiEngine(tmp_path / "no.sock")

    with pytest.raises(IntegrityError):
        binary_split.decrypt_archive(archive, os.urandom(32), tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()
    with pytest.raises(EngineError, match="not reachable"):
        binary_split.check_images_loaded("1.0", engine=down)
    with pytest.raises(EngineError):
        binary_split.docker_load(tmp_path / "missing.tar", engine=down)


def test_facade_without_configuration_or_record_says_not_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Nothing recorded for the version and no services configured: False, engine not asked
    (an unreachable engine would raise); services without a registry are a ConfigError."""
    monkeypatch.setenv("SPLITVAULT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SPLITVAULT_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("SPLITVAULT_IMAGE_SERVICES", raising=False)
    unreachable = DockerApiEngine(Path("/nonexistent"))
    assert binary_split.check_images_loaded("1.0", engine=unreachable) is False
    monkeypatch.setenv("SPLITVAULT_IMAGE_SERVICES", "api")
    with pytest.raises(ConfigError, match="SPLITVAULT_IMAGE_REGISTRY"):
        binary_split.check_images_loaded("1.0", engine=unreachable)


# The device a session of this process enrolled, and a token naming it (only ``dev`` is read).
KEYS_DEVICE = derive_device_key(bytes(32), "keys-server machine")
KEYS_TOKEN = pyjwt.encode({"sub": "a@b.c", "dev": KEYS_DEVICE.device_id}, b"k" * 32)


def _sealed_fragment(version: str, fragment: bytes) -> bytes:
    info = envelope_info("key-fragment", KEYS_DEVICE.device_id, version, version)
    return seal(fragment, KEYS_DEVICE.public, info)


class _KeysHandler(BaseHTTPRequestHandler):
    """Serves ``GET /keys/{version}`` like the reference API: bearer token, the fragment sealed
    to the token's device."""

    token = KEYS_TOKEN
    fragments: ClassVar[dict[str, bytes]] = {"1.0": b"\x01" * 32}

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._answer(401, b'{"ErrorCode": "Unauthorized", "Message": "bad token"}')
            return
        version = "1.0" if self.path == "/keys" else self.path.removeprefix("/keys/")
        fragment = self.fragments.get(version)
        if fragment is None:
            self._answer(404, b'{"ErrorCode": "NotFound", "Message": "no such version"}')
            return
        body = _sealed_fragment(version, fragment)
        self.send_response(200)
        self.send_header("X-Splitvault-Version", version)
        self.send_header("X-Splitvault-Device", KEYS_DEVICE.device_id)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def keys_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # What ApiClient.session_token() records for the token it hands out.
    monkeypatch.setitem(api_client._DEVICE_KEYS, KEYS_DEVICE.device_id, KEYS_DEVICE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeysHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_key_fragment_uses_the_bearer_token(
    keys_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fragment comes from GET /keys/{version}; the version defaults from the environment,
    and without one it is the latest registered (GET /keys), as the original's call had none."""
    monkeypatch.setenv("SPLITVAULT_IMAGE_VERSION", "1.0")
    assert binary_split.download_key_fragment(keys_server, KEYS_TOKEN) == b"\x01" * 32
    monkeypatch.delenv("SPLITVAULT_IMAGE_VERSION")
    assert binary_split.download_key_fragment(keys_server, KEYS_TOKEN) == b"\x01" * 32
    assert binary_split.download_key_fragment(keys_server, KEYS_TOKEN, version="1.0") == (
        b"\x01" * 32
    )


def test_a_fragment_sealed_to_a_device_this_process_has_no_key_for_does_not_open(
    keys_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token from another process (its device key is not here) gets the sealed fragment but
    cannot open it: a typed integrity error, not the fragment."""
    monkeypatch.delitem(api_client._DEVICE_KEYS, KEYS_DEVICE.device_id)
    with pytest.raises(IntegrityError, match="no device key"):
        binary_split.download_key_fragment(keys_server, KEYS_TOKEN, version="1.0")


def test_download_key_fragment_raises_typed_errors(
    keys_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad token and an unknown version raise distinct errors."""
    monkeypatch.delenv("SPLITVAULT_IMAGE_VERSION", raising=False)
    with pytest.raises(AuthError):
        binary_split.download_key_fragment(keys_server, "wrong", version="1.0")
    with pytest.raises(NotFoundError, match=r"2\.0"):
        binary_split.download_key_fragment(keys_server, KEYS_TOKEN, version="2.0")
    with pytest.raises(AuthError):
        binary_split.download_key_fragment(keys_server, "wrong")
