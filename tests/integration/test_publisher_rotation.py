"""Re-keying a publisher with ``splitvault admin publishers`` while the real server runs.

A publisher signs a resource version and an image archive with key A; the operator re-keys the
account to key B through the admin CLI (a subprocess on the server's store). From then on key A
is refused for uploads and fragment registrations (403, nothing stored, no archive written), key B
is accepted, and what was signed with A before the re-key still verifies for a loader that pins
nothing: the small part carries its signer, the fragment the key it was registered under. After
``clear`` the account's next signed registration records its key afresh.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from returns.io import IOResult

from splitvault.adapters.docker_api import DockerApiEngine
from splitvault.adapters.docker_cli import DockerCliEngine
from splitvault.app.client import images
from splitvault.app.client.bootstrap import Client
from splitvault.app.server.accounts import add_user, grant
from splitvault.domain import signature, wire
from splitvault.domain.errors import AccessDenied, Problem, UntrustedPublisher
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import failure, ok
from tests.support.dockerd import (  # noqa: F401 - `dockerd` is a fixture pytest finds by name
    PrivateDockerd,
    dockerd,
    image_name,
    import_image,
    list_images,
    remove_images,
)
from tests.support.moto_server import MotoS3
from tests.support.stack import (
    DOWNLOADER,
    PASSWORD,
    Stack,
    download,
    running_stack,
    upload,
    write_model,
)

pytestmark = pytest.mark.docker

ROTATOR = "rotator@example.com"
REF = ResourceRef("models", "rotated.onnx")
REGISTRY = "rotation.test"
SEEDS = {"a": bytes(range(32)), "b": bytes(range(1, 33)), "c": bytes(range(2, 34))}
KEYS = {name: signature.PublisherKey.from_seed(seed).public for name, seed in SEEDS.items()}


@attrs.frozen
class World:
    stack: Stack
    root: Path
    key_files: dict[str, Path]


@pytest.fixture
def world(moto_s3: MotoS3, user_template: Path, tmp_path: Path) -> Iterator[World]:
    with running_stack(moto_s3, user_template, tmp_path) as stack:
        ok(add_user(stack.store, ROTATOR, PASSWORD, "uploader"))
        folders = [REF.folder, wire.FRAGMENTS_GRANT_FOLDER]
        ok(grant(stack.store, ROTATOR, folders, read=True, write=True))
        files = {}
        for name, seed in SEEDS.items():
            files[name] = tmp_path / f"{name}.ed25519"
            files[name].write_text(seed.hex())
            files[name].chmod(0o600)
        yield World(stack, tmp_path, files)


def _admin(world: World, *args: str, expect: int = 0) -> str:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "splitvault.app.cli.main", "admin", "publishers"),
            *(*args, "--data", str(world.stack.data_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == expect, (args, done.stdout, done.stderr)
    return done.stdout


def _publisher(world: World, key: str) -> Client:
    cache = world.root / f"cache-{key}-{os.urandom(4).hex()}"
    return world.stack.client(ROTATOR, signing_key_file=world.key_files[key], cache=cache)


def _seal(
    world: World, dockerd: PrivateDockerd, key: str, version: str
) -> tuple[Path, IOResult[images.SealImagesReport, Problem]]:
    names = (image_name(REGISTRY, "api", version),)
    import_image(dockerd, names[0])
    publisher = _publisher(world, key)
    out = world.root / f"images-{version}.svlt"
    sealed = images.seal_images(
        names,
        version,
        out,
        engine_cli=DockerCliEngine(dockerd.docker_host),
        fragments=publisher.api,
        random=publisher.random,
        signing_key=publisher.signing_key,
    )
    remove_images(dockerd, names)
    return out, sealed


def _unlock(
    world: World, dockerd: PrivateDockerd, archive: Path, version: str, pinned: tuple[bytes, ...]
) -> IOResult[images.UnlockReport, Problem]:
    loader = world.stack.client(DOWNLOADER, pinned=pinned, cache=world.root / "loader")
    try:
        return images.unlock_images(
            archive,
            version,
            fragments=loader.api,
            engine=DockerApiEngine(dockerd.socket_path),
            services=("api",),
            registry=REGISTRY,
            workdir=world.root,
            pinned=loader.config.publisher_keys,
        )
    finally:
        remove_images(dockerd, (image_name(REGISTRY, "api", version),))


def test_a_re_keyed_publisher_keeps_its_earlier_versions_trusted(
    world: World, dockerd: PrivateDockerd
) -> None:
    first = write_model(world.root / "first.bin", 120_000, seed=1)
    second = write_model(world.root / "second.bin", 120_000, seed=2)
    ok(upload(_publisher(world, "a"), REF, world.root / "first.bin"))
    old_version = world.stack.small_part(REF)
    archive_a, sealed_a = _seal(world, dockerd, "a", "r1")
    ok(sealed_a)

    _admin(world, "set", ROTATOR, "--key", KEYS["b"].hex())
    assert KEYS["b"].hex() in _admin(world, "list", ROTATOR)

    # Key A is refused from now on: no upload, no fragment, no archive.
    refused = failure(upload(_publisher(world, "a"), REF, world.root / "second.bin"))
    assert isinstance(refused, AccessDenied) and "publishes with key" in refused.describe()
    assert world.stack.small_part(REF) == old_version
    archive_refused, refusal = _seal(world, dockerd, "a", "r2")
    assert isinstance(failure(refusal), AccessDenied)
    assert not archive_refused.exists() and world.stack.fragment("r2") is None

    # Key B is the account's now.
    ok(upload(_publisher(world, "b"), REF, world.root / "second.bin"))
    archive_b, sealed_b = _seal(world, dockerd, "b", "r3")
    ok(sealed_b)

    # A loader that pins nothing still trusts what A signed before the re-key, and B's.
    out = world.root / "out.bin"
    reader = world.stack.client(DOWNLOADER, cache=world.root / "reader")
    ok(download(reader, REF, out))
    assert out.read_bytes() == second
    kept = ok(_publisher(world, "b").api.versions(REF))
    older = str(kept[-1]["version"])
    ok(_publisher(world, "b").api.rollback(REF, older))
    ok(download(world.stack.client(DOWNLOADER, cache=world.root / "reader2"), REF, out))
    assert out.read_bytes() == first
    assert ok(_unlock(world, dockerd, archive_a, "r1", ())).publisher_key == KEYS["a"]
    assert ok(_unlock(world, dockerd, archive_b, "r3", ())).publisher_key == KEYS["b"]
    # A loader that pins only the new key refuses the old archive, whatever the server says.
    before = list_images(dockerd)
    pinned_refusal = failure(_unlock(world, dockerd, archive_a, "r1", (KEYS["b"],)))
    assert isinstance(pinned_refusal, UntrustedPublisher)
    assert list_images(dockerd) == before

    # Cleared: the next signed registration records its key (trust on first use again).
    _admin(world, "clear", ROTATOR, "--yes")
    archive_c, sealed_c = _seal(world, dockerd, "c", "r4")
    ok(sealed_c)
    assert KEYS["c"].hex() in _admin(world, "list")
    assert ok(_unlock(world, dockerd, archive_c, "r4", ())).publisher_key == KEYS["c"]
