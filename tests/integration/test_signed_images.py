"""Signed image archives through the real reference server and a real private dockerd.

The publisher seals with ``seal_images`` and its signing key; the server records the key with the
fragment and vouches for it; a loader checks the signature before a byte is decrypted, against the
keys it pins or, with none pinned, against the vouched key. Every refusal is checked on the
daemon (its image list before and after) and on disk (no decrypted tar left in the work
directory, no temp file beside the archive).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import httpx
import pytest
from returns.io import IOResult

from splitvault.adapters.docker_api import DockerApiEngine
from splitvault.adapters.docker_cli import DockerCliEngine
from splitvault.app.cli.main import main
from splitvault.app.client import images
from splitvault.app.client.bootstrap import Client
from splitvault.app.client.errors import UntrustedPublisherError
from splitvault.app.server.accounts import add_user, grant
from splitvault.domain import signature, wire
from splitvault.domain.archive import ArchiveKind, seal_legacy_archive_bytes, seal_v1_archive_bytes
from splitvault.domain.errors import AccessDenied, Problem, UntrustedPublisher
from tests.security.hostile import failure, ok
from tests.support.devices import device_token
from tests.support.dockerd import (  # noqa: F401 - `dockerd` is a fixture pytest finds by name
    PrivateDockerd,
    dockerd,
    image_name,
    import_image,
    list_images,
    remove_images,
    save_archive,
)
from tests.support.moto_server import MotoS3
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack, running_stack

pytestmark = pytest.mark.docker

REGISTRY = "signed.test"
SERVICES = ("api",)
ROGUE = "rogue-publisher@example.com"
LOADER = "loader@example.com"  # the CLI's account: its own machine, its own device slot
WIRE_READER = "wire-reader@example.com"  # raw HTTP: another device of its own
CLI_PUBLISHER = "cli-publisher@example.com"  # the CLI's publisher: this machine's own device
PUBLISHER_SEED = bytes(range(32))
ROGUE_SEED = bytes(range(1, 33))
PUBLISHER = signature.PublisherKey.from_seed(PUBLISHER_SEED)
ROGUE_KEY = signature.PublisherKey.from_seed(ROGUE_SEED)
_versions = iter(range(10_000))


@attrs.frozen
class World:
    stack: Stack
    root: Path
    publisher_file: Path
    rogue_file: Path


@attrs.frozen
class Sealed:
    archive: Path
    version: str
    names: tuple[str, ...]


def _seed_file(directory: Path, name: str, seed: bytes) -> Path:
    path = directory / f"{name}.ed25519"
    path.write_text(seed.hex())
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def world(
    moto_s3: MotoS3, user_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One server for the module; a rogue uploader with write on the fragments' pseudo-folder."""
    root = tmp_path_factory.mktemp("signed-images")
    with running_stack(moto_s3, user_template, root) as stack:
        ok(add_user(stack.store, ROGUE, PASSWORD, "uploader"))
        ok(grant(stack.store, ROGUE, [wire.FRAGMENTS_GRANT_FOLDER], read=True, write=True))
        for reader in (LOADER, WIRE_READER):
            ok(add_user(stack.store, reader, PASSWORD, "downloader"))
            ok(grant(stack.store, reader, [wire.FRAGMENTS_GRANT_FOLDER], read=True, write=False))
        ok(add_user(stack.store, CLI_PUBLISHER, PASSWORD, "uploader"))
        ok(grant(stack.store, CLI_PUBLISHER, [wire.FRAGMENTS_GRANT_FOLDER], read=True, write=True))
        yield World(
            stack,
            root,
            _seed_file(root, "publisher", PUBLISHER_SEED),
            _seed_file(root, "rogue", ROGUE_SEED),
        )


@pytest.fixture
def version(dockerd: PrivateDockerd) -> Iterator[str]:
    """A fresh version; its images are removed from the daemon afterwards."""
    chosen = f"s{os.getpid()}x{next(_versions)}"
    yield chosen
    remove_images(dockerd, _names(chosen))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def _names(version: str) -> tuple[str, ...]:
    return tuple(image_name(REGISTRY, service, version) for service in SERVICES)


def _client(world: World, email: str, **options: object) -> Client:
    cache = world.root / f"cache-{email}-{next(_versions)}"
    return world.stack.client(email, cache=cache, **options)  # type: ignore[arg-type]


def _seal(
    world: World, dockerd: PrivateDockerd, tmp_path: Path, version: str, *, as_rogue: bool = False
) -> Sealed:
    """``seal_images`` by the uploader (publisher key) or the rogue (its own key), through the
    server; the images are removed from the daemon afterwards so an unlock really loads them."""
    names = _names(version)
    for name in names:
        import_image(dockerd, name)
    email, key_file = (ROGUE, world.rogue_file) if as_rogue else (UPLOADER, world.publisher_file)
    publisher = _client(world, email, signing_key_file=key_file)
    out = tmp_path / "out" / f"images-{version}.svlt"
    out.parent.mkdir(exist_ok=True)
    report = ok(
        images.seal_images(
            names,
            version,
            out,
            engine_cli=DockerCliEngine(dockerd.docker_host),
            fragments=publisher.api,
            random=publisher.random,
            chunk_size=4096,
            signing_key=publisher.signing_key,
        )
    )
    assert report.publisher_key == (ROGUE_KEY if as_rogue else PUBLISHER).public
    remove_images(dockerd, names)
    return Sealed(out, version, names)


def _unlock(
    world: World,
    archive: Path,
    version: str,
    engine: DockerApiEngine,
    workdir: Path,
    *,
    pinned: Sequence[bytes] = (),
) -> IOResult[images.UnlockReport, Problem]:
    loader = _client(world, DOWNLOADER, pinned=tuple(pinned))
    return images.unlock_images(
        archive,
        version,
        fragments=loader.api,
        engine=engine,
        services=SERVICES,
        registry=REGISTRY,
        workdir=workdir,
        pinned=loader.config.publisher_keys,
    )


def _loaded_nothing(
    dockerd: PrivateDockerd, before: frozenset[str], workdir: Path, archive: Path
) -> None:
    assert list_images(dockerd) == before
    assert list(workdir.iterdir()) == []
    assert [p.name for p in archive.parent.iterdir() if p.name.startswith(".")] == []


def _tar_of(dockerd: PrivateDockerd, tmp_path: Path, version: str) -> bytes:
    return save_archive(dockerd, _names(version), tmp_path / "plain.tar").read_bytes()


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "vouched"])
def test_a_signed_archive_round_trips_through_the_server_and_dockerd(
    *,
    world: World,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
    pinned: bool,
) -> None:
    """seal_images signs; the server records the key with the fragment and sends it with the
    fragment; the loader (pinning the key, or trusting the server's vouching) loads the images."""
    sealed = _seal(world, dockerd, tmp_path, version)
    assert sealed.archive.read_bytes().startswith(signature.SIGNED_MAGIC + PUBLISHER.public)
    record = ok(world.stack.store.fragment_record(version))
    assert record is not None
    assert (record.publisher, record.publisher_key) == (UPLOADER, PUBLISHER.public)
    headers = {"Authorization": f"Bearer {device_token(world.stack.url, WIRE_READER, PASSWORD)}"}
    answer = httpx.get(f"{world.stack.url}/keys/{version}", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers[wire.PUBLISHER_KEY_HEADER] == PUBLISHER.public.hex()
    engine = DockerApiEngine(dockerd.socket_path)

    report = ok(
        _unlock(
            world,
            sealed.archive,
            version,
            engine,
            workdir,
            pinned=(PUBLISHER.public,) if pinned else (),
        )
    )

    assert report.kind is ArchiveKind.V1
    assert report.publisher_key == PUBLISHER.public
    assert set(sealed.names) <= list_images(dockerd)
    assert list(workdir.iterdir()) == []


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "vouched"])
def test_a_flipped_bit_in_the_signature_is_refused_and_loads_nothing(
    *,
    world: World,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
    pinned: bool,
) -> None:
    sealed = _seal(world, dockerd, tmp_path, version)
    data = bytearray(sealed.archive.read_bytes())
    data[len(signature.SIGNED_MAGIC) + signature.PUBLIC_KEY_BYTES + 7] ^= 0x04
    sealed.archive.write_bytes(bytes(data))
    before = list_images(dockerd)

    refused = failure(
        _unlock(
            world,
            sealed.archive,
            version,
            DockerApiEngine(dockerd.socket_path),
            workdir,
            pinned=(PUBLISHER.public,) if pinned else (),
        )
    )

    assert isinstance(refused, UntrustedPublisher), refused
    _loaded_nothing(dockerd, before, workdir, sealed.archive)


def test_a_rogue_signed_archive_is_refused_by_a_pinning_loader_with_exit_11(
    *,
    world: World,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The rogue holds write on the fragments and signs with its own key, which the server
    records and vouches for. ``splitvault unlock-images`` pinning the publisher's key exits 11,
    loads nothing and leaves no tar; a loader that pins nothing trusts the server's vouching."""
    sealed = _seal(world, dockerd, tmp_path, version, as_rogue=True)
    record = ok(world.stack.store.fragment_record(version))
    assert record is not None and record.publisher_key == ROGUE_KEY.public
    for key, value in {
        "SPLITVAULT_API_URL": world.stack.url,
        "SPLITVAULT_EMAIL": LOADER,
        "SPLITVAULT_PASSWORD": PASSWORD,
        "SPLITVAULT_CACHE_DIR": str(tmp_path / "cli-cache"),
        "SPLITVAULT_CONFIG": str(tmp_path / "absent.yaml"),
        "SPLITVAULT_PUBLISHER_KEYS": PUBLISHER.public.hex(),
        "SPLITVAULT_IMAGE_REGISTRY": REGISTRY,
        "SPLITVAULT_IMAGE_SERVICES": ",".join(SERVICES),
        "DOCKER_HOST": dockerd.docker_host,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tempfile, "tempdir", str(workdir))  # where the decrypted tar would go
    before = list_images(dockerd)

    code = main(["unlock-images", str(sealed.archive), "--version", version])

    assert code == UntrustedPublisherError.exit_code == 11
    assert "not from a trusted publisher" in capsys.readouterr().err
    _loaded_nothing(dockerd, before, workdir, sealed.archive)
    # Pinning nothing means trusting the server, which vouches for the rogue's recorded key.
    report = ok(
        _unlock(world, sealed.archive, version, DockerApiEngine(dockerd.socket_path), workdir)
    )
    assert report.publisher_key == ROGUE_KEY.public


@pytest.mark.parametrize("declares", [True, False], ids=["rogue-key", "no-key"])
def test_a_signed_archive_whose_fragment_another_account_registered_is_refused_when_vouched(
    *,
    world: World,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
    declares: bool,
) -> None:
    """An archive signed with the publisher's key, its fragment registered by the rogue: the
    server vouches for the rogue's key (or for none), so a loader that pins nothing refuses it
    and loads nothing. A loader that pins the publisher's key judges the signature alone."""
    tar = _tar_of(dockerd, tmp_path, version)
    fragment = os.urandom(32)
    archive = tmp_path / "out" / "foreign.svlt"
    archive.parent.mkdir()
    archive.write_bytes(
        seal_v1_archive_bytes(
            version, tar, fragment, os.urandom(16), signing_key=PUBLISHER
        ).unwrap()
    )
    rogue = _client(world, ROGUE, signing_key_file=world.rogue_file)
    ok(rogue.api.put_fragment(version, fragment, ROGUE_KEY.public if declares else None))
    before = list_images(dockerd)
    engine = DockerApiEngine(dockerd.socket_path)

    refused = failure(_unlock(world, archive, version, engine, workdir))

    assert isinstance(refused, UntrustedPublisher), refused
    _loaded_nothing(dockerd, before, workdir, archive)
    ok(_unlock(world, archive, version, engine, workdir, pinned=(PUBLISHER.public,)))


def test_the_rogue_cannot_declare_the_publishers_key_for_its_fragment(
    world: World, tmp_path: Path
) -> None:
    """The rogue has its own recorded key: declaring the publisher's is a 403 and stores nothing."""
    rogue = _client(world, ROGUE)
    ok(rogue.api.put_fragment(f"rogue-{next(_versions)}", os.urandom(32), ROGUE_KEY.public))
    version = f"claims-{next(_versions)}"
    refused = failure(rogue.api.put_fragment(version, os.urandom(32), PUBLISHER.public))
    assert isinstance(refused, AccessDenied), refused
    assert "publishes with key" in refused.describe()
    assert world.stack.fragment(version) is None


@pytest.mark.parametrize("kind", ["legacy", "unsigned-v1"])
def test_unsigned_archives_load_with_a_warning_only_when_nothing_is_pinned(
    *,
    world: World,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The original scripts' archives (legacy CBC) and unsigned v1 ones, their fragment
    registered unsigned: refused with UntrustedPublisher when a key is pinned (nothing loaded),
    loaded with a warning when none is."""
    tar = _tar_of(dockerd, tmp_path, version)
    fragment = os.urandom(32)
    archive = tmp_path / "out" / f"{kind}.archive"
    archive.parent.mkdir()
    sealed = (
        seal_legacy_archive_bytes(tar, fragment, os.urandom(16))
        if kind == "legacy"
        else seal_v1_archive_bytes(version, tar, fragment, os.urandom(16)).unwrap()
    )
    archive.write_bytes(sealed)
    ok(_client(world, UPLOADER).api.put_fragment(version, fragment))
    before = list_images(dockerd)
    engine = DockerApiEngine(dockerd.socket_path)

    refused = failure(_unlock(world, archive, version, engine, workdir, pinned=(PUBLISHER.public,)))
    assert isinstance(refused, UntrustedPublisher), refused
    assert "unsigned" in refused.describe()
    _loaded_nothing(dockerd, before, workdir, archive)

    with caplog.at_level(logging.WARNING, logger="splitvault.images"):
        report = ok(_unlock(world, archive, version, engine, workdir))
    assert report.publisher_key is None
    assert report.kind is (ArchiveKind.LEGACY_CBC if kind == "legacy" else ArchiveKind.V1)
    assert set(_names(version)) <= list_images(dockerd)
    assert any("carries no publisher signature" in r.getMessage() for r in caplog.records)


def test_an_unsigned_archive_in_place_of_a_signed_version_is_refused(
    *,
    world: World,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
) -> None:
    """A downloader holding the fragment of a signed version makes an unsigned archive under
    it: the server vouches that the version is signed, so even a loader pinning nothing refuses
    the substitute (no downgrade to "unsigned, with a warning")."""
    sealed = _seal(world, dockerd, tmp_path, version)
    loader = _client(world, DOWNLOADER)
    fragment = ok(loader.api.get_fragment(version))
    tar = _tar_of(dockerd, tmp_path, version)
    sealed.archive.write_bytes(
        seal_v1_archive_bytes(version, tar, fragment, os.urandom(16)).unwrap()
    )
    before = list_images(dockerd)

    refused = failure(
        _unlock(world, sealed.archive, version, DockerApiEngine(dockerd.socket_path), workdir)
    )

    assert isinstance(refused, UntrustedPublisher), refused
    assert "replaced" in refused.describe()
    _loaded_nothing(dockerd, before, workdir, sealed.archive)


def test_the_seal_images_command_signs_with_the_configured_key(
    *,
    world: World,
    dockerd: PrivateDockerd,
    tmp_path: Path,
    workdir: Path,
    version: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``splitvault --json seal-images`` with ``SPLITVAULT_PUBLISHER_SIGNING_KEY_FILE`` writes a
    signed archive, says which key signed it, and registers the fragment under that key (the
    server records the account's key); a loader pinning that key unlocks it."""
    names = _names(version)
    for name in names:
        import_image(dockerd, name)
    out = tmp_path / "cli" / "images.svlt"
    out.parent.mkdir()
    for key, value in {
        "SPLITVAULT_API_URL": world.stack.url,
        "SPLITVAULT_EMAIL": CLI_PUBLISHER,
        "SPLITVAULT_PASSWORD": PASSWORD,
        "SPLITVAULT_CACHE_DIR": str(tmp_path / "cli-cache"),
        "SPLITVAULT_CONFIG": str(tmp_path / "absent.yaml"),
        "SPLITVAULT_PUBLISHER_SIGNING_KEY_FILE": str(world.publisher_file),
        "SPLITVAULT_IMAGE_REGISTRY": REGISTRY,
        "SPLITVAULT_IMAGE_SERVICES": ",".join(SERVICES),
        "DOCKER_HOST": dockerd.docker_host,
    }.items():
        monkeypatch.setenv(key, value)

    code = main(["--json", "seal-images", *names, "--version", version, "--out", str(out)])

    printed = capsys.readouterr().out
    assert code == 0, printed
    assert json.loads(printed)["publisher_key"] == PUBLISHER.key_id
    assert out.read_bytes().startswith(signature.SIGNED_MAGIC + PUBLISHER.public)
    assert ok(world.stack.store.publisher_key(CLI_PUBLISHER)) == PUBLISHER.public
    record = ok(world.stack.store.fragment_record(version))
    assert record is not None
    assert (record.publisher, record.publisher_key) == (CLI_PUBLISHER, PUBLISHER.public)
    remove_images(dockerd, names)
    engine = DockerApiEngine(dockerd.socket_path)
    report = ok(_unlock(world, out, version, engine, workdir, pinned=(PUBLISHER.public,)))
    assert report.publisher_key == PUBLISHER.public
    assert set(names) <= list_images(dockerd)
