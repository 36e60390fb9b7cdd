"""Contract suite for ``ContainerEngine``: the docker CLI and the Engine API adapters, one suite.

Every test runs against a real private dockerd (``tests.support.dockerd``) through both adapters,
with tiny images imported from a one-file rootfs and unique names per test.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.docker_api import DockerApiEngine, parse_load_lines
from splitvault.adapters.docker_cli import DockerCliEngine, parse_loaded
from splitvault.domain.errors import EngineFailed, EngineFailure
from splitvault.domain.ports import ContainerEngine
from tests.support.dockerd import (  # noqa: F401 - `dockerd` is a fixture pytest finds by name
    PrivateDockerd,
    docker,
    dockerd,
    handmade_archive,
    image_name,
    import_image,
    list_images,
    remove_images,
    save_archive,
)

pytestmark = pytest.mark.docker

T = TypeVar("T")
EngineFactory = Callable[[Path], ContainerEngine]

_FACTORIES: dict[str, EngineFactory] = {
    "cli": lambda socket_path: DockerCliEngine(docker_host=f"unix://{socket_path}"),
    "api": lambda socket_path: DockerApiEngine(socket_path, timeout=60.0),
}
_counter = itertools.count()


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_counter)}"


@pytest.fixture(params=sorted(_FACTORIES))
def factory(request: pytest.FixtureRequest) -> EngineFactory:
    return _FACTORIES[request.param]


@pytest.fixture
def engine(factory: EngineFactory, dockerd: PrivateDockerd) -> ContainerEngine:
    return factory(dockerd.socket_path)


@pytest.fixture
def names(dockerd: PrivateDockerd) -> Iterator[list[str]]:
    """Two unique image names, removed from the daemon after the test."""
    version = _unique("v")
    created = [image_name("contract.test", service, version) for service in ("alpha", "beta")]
    yield created
    remove_images(dockerd, created)


def _last_data_end(archive: bytes) -> int:
    """Where the last member's data ends in a tar held in memory."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return max(member.offset_data + member.size for member in tar.getmembers())


def _ok(result: IOResult[T, EngineFailure]) -> T:
    assert is_successful(result), unsafe_perform_io(result.failure())
    return unsafe_perform_io(result.unwrap())


def _failure(result: IOResult[object, EngineFailure]) -> EngineFailure:
    assert not is_successful(result), "expected a failure"
    return unsafe_perform_io(result.failure())


def test_load_reports_and_adds_every_image(
    engine: ContainerEngine,
    dockerd: PrivateDockerd,
    names: list[str],
    tmp_path: Path,
) -> None:
    """Loading a saved archive of two images reports both names and makes both present."""
    archive = save_archive(dockerd, names, tmp_path / "two.tar")
    assert names[0] not in list_images(dockerd)

    loaded = _ok(engine.load(archive))

    assert sorted(loaded) == sorted(names)
    assert all(_ok(engine.has_image(name)) for name in names)
    assert set(names) <= list_images(dockerd)


def test_load_of_a_gzip_compressed_archive(
    engine: ContainerEngine,
    dockerd: PrivateDockerd,
    names: list[str],
    tmp_path: Path,
) -> None:
    """A gzip-compressed ``docker save`` archive loads like the plain one."""
    plain = save_archive(dockerd, names, tmp_path / "two.tar")
    packed = tmp_path / "two.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))

    assert sorted(_ok(engine.load(packed))) == sorted(names)
    assert all(_ok(engine.has_image(name)) for name in names)


def test_load_of_an_untagged_archive_reports_the_image_id(
    engine: ContainerEngine,
    dockerd: PrivateDockerd,
    tmp_path: Path,
) -> None:
    """An archive saved by image id is reported as ``sha256:...`` and present by that id."""
    name = image_name("contract.test", "byid", _unique("v"))
    image_id = import_image(dockerd, name)
    docker(dockerd, "save", "-o", str(tmp_path / "byid.tar"), image_id)
    remove_images(dockerd, [name])
    try:
        loaded = _ok(engine.load(tmp_path / "byid.tar"))
        assert loaded == (image_id,)
        assert _ok(engine.has_image(image_id))
    finally:
        remove_images(dockerd, [image_id])


def test_has_image_is_false_for_an_absent_image(engine: ContainerEngine) -> None:
    """An image the daemon never saw is reported absent, not as a failure."""
    assert _ok(engine.has_image(image_name("contract.test", "absent", _unique("v")))) is False


@pytest.mark.parametrize("damage", ["garbage", "truncated", "cut-in-last-file", "refused"])
def test_a_corrupt_archive_fails_and_loads_nothing(
    engine: ContainerEngine,
    dockerd: PrivateDockerd,
    names: list[str],
    tmp_path: Path,
    damage: str,
) -> None:
    """A damaged archive, or one the daemon refuses, is an EngineFailed and adds no image."""
    archive = tmp_path / "bad.tar"
    if damage == "garbage":
        archive.write_bytes(os.urandom(64 * 1024))
    elif damage == "refused":
        # Complete as a tar, so the daemon itself reads it and answers with an error line.
        handmade_archive(archive, names[0], config=b"this is not an image config")
    else:
        whole = save_archive(dockerd, names, tmp_path / "whole.tar").read_bytes()
        # Half-way lands inside the layers; cutting the end's zero blocks and 100 bytes more
        # lands inside the last file, whose header still reads.
        cut = len(whole) // 2 if damage == "truncated" else _last_data_end(whole) - 100
        archive.write_bytes(whole[:cut])
    before = list_images(dockerd)

    failure = _failure(engine.load(archive))

    assert isinstance(failure, EngineFailed)
    assert str(archive) in failure.detail
    assert list_images(dockerd) == before
    assert not any(_ok(engine.has_image(name)) for name in names)


def test_a_missing_archive_file_fails(engine: ContainerEngine, tmp_path: Path) -> None:
    """Loading a path that does not exist is an EngineFailed naming the path."""
    missing = tmp_path / "nope.tar"
    failure = _failure(engine.load(missing))
    assert isinstance(failure, EngineFailed)
    assert str(missing) in failure.detail


def test_a_daemon_that_is_down_is_named(factory: EngineFactory, tmp_path: Path) -> None:
    """With no daemon on the socket, load and has_image fail naming the socket."""
    socket_path = tmp_path / "down" / "docker.sock"
    engine = factory(socket_path)
    tar = handmade_archive(tmp_path / "any.tar", "contract.test/any:1", config=b"{}")

    for result in (engine.load(tar), engine.has_image("contract.test/any:1")):
        failure = _failure(result)
        assert isinstance(failure, EngineFailed)
        assert str(socket_path) in failure.detail
        assert "not reachable" in failure.detail


def test_cli_without_its_binary_says_so(tmp_path: Path) -> None:
    """A docker CLI that is not installed is an EngineFailed naming the binary."""
    missing = str(tmp_path / "no-docker-here")
    engine = DockerCliEngine(docker_host="unix:///nonexistent.sock", binary=missing)
    failure = _failure(engine.has_image("contract.test/any:1"))
    assert isinstance(failure, EngineFailed)
    assert missing in failure.detail


def test_api_refuses_an_image_name_that_would_leave_the_path(tmp_path: Path) -> None:
    """A name with a '..' component never reaches the daemon's URL space."""
    engine = DockerApiEngine(tmp_path / "unused.sock")
    failure = _failure(engine.has_image("../../containers/json"))
    assert isinstance(failure, EngineFailed)
    assert "'..'" in failure.detail


def test_output_parsers_agree_on_loaded_names() -> None:
    """Both adapters read names and ids out of the daemon's "Loaded image" lines alike."""
    lines = [
        '{"stream":"Loaded image: reg/a:1\\n"}',
        '{"stream":"Loaded image ID: sha256:abc\\n"}',
        "",
        "not json",
    ]
    assert parse_load_lines(lines) == (("reg/a:1", "sha256:abc"), None)
    assert parse_loaded("Loaded image: reg/a:1\nLoaded image ID: sha256:abc\n") == (
        "reg/a:1",
        "sha256:abc",
    )
    failed = parse_load_lines(['{"errorDetail":{"message":"bad tar"},"error":"bad"}'])
    assert failed == ((), "bad tar")
