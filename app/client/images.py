"""Encrypted container images: decrypt an archive, load it, check a version's images are there.

The loader side (``unlock_images``) asks the engine first (a read-only probe: a daemon that is
down fails before a long decryption), fetches the version's key fragment with the publisher key
the server vouches for, checks the archive's publisher signature (``domain.archive.
check_archive_publisher``: pinned keys, else the vouched key) before a byte is decrypted, decrypts
the archive into a private temp directory, checks the tar names every image the version needs,
loads it and asks the engine for each ``{registry}/{service}:{version}``. The decrypted tar is
deleted whatever happens. The publisher side (``seal_images``) ``docker save``s images, seals the
tar as an authenticated v1 archive under a new random fragment, signs its header with the
publisher key when one is configured, and registers the fragment (declaring that key) before the
archive is renamed into place.

``decrypt_archive`` streams in fixed-size pieces (memory does not grow with the archive), tells
the two archive kinds apart by magic and writes a 0600 temp file beside the output that is renamed
only when everything checked: for a v1 archive every chunk authenticated and the ciphertext's
digest matched its header, so nothing unauthenticated ever reaches Docker; for a legacy archive
(which has no integrity) the padding and the tar header checked. The service list and registry
come from ``ImagesConfig`` (environment ``SPLITVAULT_IMAGE_REGISTRY``,
``SPLITVAULT_IMAGE_SERVICES``), never from code.
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import attrs
from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure, Result, Success

from splitvault.adapters.atomic_file import write_atomically
from splitvault.adapters.image_archive import inspect_image_archive
from splitvault.app.client import pipeline
from splitvault.domain import digest, signature
from splitvault.domain.archive import (
    HEAD_BYTES,
    TAR_BLOCK,
    V1_WHAT,
    ArchiveKind,
    archive_start,
    check_archive_publisher,
    check_legacy_archive_length,
    check_tar_start,
    check_v1_archive_length,
    detect_archive,
    finish_v1_archive,
    legacy_archive_opener,
    open_v1_archive_header,
    start_v1_archive,
    v1_archive_header_length,
)
from splitvault.domain.errors import (
    ConfigInvalid,
    CorruptResource,
    EngineFailure,
    ImagesMissing,
    InvalidRef,
    NotFound,
    Problem,
    StorageFailed,
    WrongKey,
)
from splitvault.domain.format_v1 import DEFAULT_CHUNK_SIZE
from splitvault.domain.keys import KEY_BYTES, TAG_BYTES
from splitvault.domain.ports import ContainerEngine, KeyFragments, Random, VouchedFragment
from splitvault.domain.ref import check_name

log = logging.getLogger("splitvault.images")

T = TypeVar("T")
Progress = pipeline.Progress  # the one progress type: deltas
"""Called with the bytes of the input processed since the previous call."""

ENV_REGISTRY = "SPLITVAULT_IMAGE_REGISTRY"
ENV_SERVICES = "SPLITVAULT_IMAGE_SERVICES"
ENV_VERSION = "SPLITVAULT_IMAGE_VERSION"
READ_PIECE = 1 << 20
FRAGMENT_BYTES = KEY_BYTES
FILE_ID_BYTES = 16

# Docker's reference grammar, reduced to what a registry prefix, a service and a tag may be.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _check_path(value: str, *, allow_host: bool) -> str | None:
    parts = value.split("/")
    for position, part in enumerate(parts):
        if _PATH_COMPONENT.fullmatch(part):
            continue
        if allow_host and position == 0 and _HOST.fullmatch(part):
            continue
        return f"{part!r} is not a valid image path component (lowercase letters, digits, . _ -)"
    return None


def check_version(version: str) -> InvalidRef | None:
    """Why ``version`` cannot be both an image tag and an archive name, or ``None``."""
    problem = check_name("version", version)
    if problem is not None:
        return problem
    if not _TAG.fullmatch(version):
        return InvalidRef(
            "version", "an image tag is 1-128 letters, digits, '_', '.' or '-', not starting '.-'"
        )
    return None


@attrs.frozen
class ImagesConfig:
    """Which images a version consists of: ``{registry}/{service}:{version}`` for each service.

    Args:
        registry: the name prefix (``registry.example.com:5000/team``); empty for none.
        services: the service names, at least one.
        default_version: the version the facade uses when none is given.

    ``parse`` and ``from_env`` fail with ``ConfigInvalid`` naming the field that is wrong.
    """

    registry: str
    services: tuple[str, ...]
    default_version: str | None = None

    @classmethod
    def parse(
        cls, registry: str, services: Sequence[str], default_version: str | None = None
    ) -> Result[ImagesConfig, ConfigInvalid]:
        """Validate and build a config."""
        registry = registry.strip().rstrip("/")
        if registry:
            problem = _check_path(registry, allow_host=True)
            if problem is not None:
                return Failure(ConfigInvalid("image registry", problem))
        cleaned = tuple(service.strip() for service in services if service.strip())
        if not cleaned:
            return Failure(ConfigInvalid("image services", "no service names; list at least one"))
        for service in cleaned:
            problem = _check_path(service, allow_host=False)
            if problem is not None:
                return Failure(ConfigInvalid("image services", problem))
        if len(set(cleaned)) != len(cleaned):
            return Failure(ConfigInvalid("image services", "a service is listed twice"))
        if default_version is not None:
            version_problem = check_version(default_version)
            if version_problem is not None:
                return Failure(ConfigInvalid("image version", version_problem.reason))
        return Success(cls(registry, cleaned, default_version))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Result[ImagesConfig, ConfigInvalid]:
        """Read ``SPLITVAULT_IMAGE_REGISTRY``, ``..._SERVICES`` (comma-separated), ``..._VERSION``.

        The registry must be set (to an empty value for unprefixed names); so must the services.
        """
        registry = environ.get(ENV_REGISTRY)
        if registry is None:
            return Failure(ConfigInvalid(ENV_REGISTRY, "not set; set it to the image name prefix"))
        services = environ.get(ENV_SERVICES)
        if services is None or not services.strip():
            return Failure(
                ConfigInvalid(ENV_SERVICES, "not set; list the services, comma-separated")
            )
        version = environ.get(ENV_VERSION) or None
        return cls.parse(registry, services.split(","), version)

    def image_names(self, version: str) -> Result[tuple[str, ...], InvalidRef]:
        """The images that make up ``version``, or why ``version`` is not a valid tag."""
        problem = check_version(version)
        if problem is not None:
            return Failure(problem)
        prefix = f"{self.registry}/" if self.registry else ""
        return Success(tuple(f"{prefix}{service}:{version}" for service in self.services))


def _familiar(name: str) -> str:
    """One spelling per image name: Docker Hub's short form, and ``:latest`` made explicit."""
    for hub in ("docker.io/", "index.docker.io/"):
        if name.startswith(hub):
            name = name[len(hub) :]
            break
    name = name.removeprefix("library/")
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


# --- decrypting archives --------------------------------------------------------------------------


def _read_exactly(source: io.BufferedIOBase, view: memoryview) -> int:
    got = 0
    while got < len(view):
        count = source.readinto(view[got:])
        if not count:
            break
        got += count
    return got


def _report(progress: Progress | None, done: int) -> None:
    if progress is not None:
        progress(done)


def _write_beside(
    final: Path, write: Callable[[BinaryIO], IOResult[T, Problem]]
) -> IOResult[T, Problem]:
    """Let ``write`` fill a 0600 temp file beside ``final`` through the one atomic writer."""

    def into(temp: Path) -> IOResult[T, Problem]:
        with temp.open("wb") as handle:
            return write(handle)

    return write_atomically(final, into)


def _open_v1(
    source: io.BufferedIOBase,
    sink: BinaryIO,
    *,
    size: int,
    head: bytes,
    fragment: bytes,
    source_name: str,
    expected_version: str | None,
    progress: Progress | None,
) -> IOResult[None, Problem]:
    start = archive_start(head)  # after the signed framing, which the caller has checked
    head, size = head[start:], size - start
    started = open_v1_archive_header(head, fragment, expected_version=expected_version)
    if isinstance(started, Failure):
        failure = started.failure()
        if isinstance(failure, CorruptResource) and not failure.what.startswith(V1_WHAT):
            # The header parser speaks of a resource's "small part"; here it is an archive.
            return IOFailure(CorruptResource(f"{V1_WHAT} {source_name}", failure.detail))
        return IOFailure(failure)
    opener, header_length = started.unwrap()
    checked = check_v1_archive_length(opener, header_length, size)
    if isinstance(checked, Failure):
        return IOFailure(checked.failure())
    what = f"{V1_WHAT} {opener.header.ref.name}"
    layout = opener.layout
    # Sized by the largest chunk present (the length was checked against the file above), not
    # by the chunk size the header claims.
    span = min(layout.chunk_size, layout.plaintext_length)
    cipher = memoryview(bytearray(span + TAG_BYTES))
    plain = memoryview(bytearray(span))
    leaves: list[bytes] = []
    source.seek(start + header_length)
    for index in range(layout.chunk_count):
        start, end = layout.ciphertext_span(index)
        piece = cipher[: end - start]
        if _read_exactly(source, piece) != len(piece):
            return IOFailure(CorruptResource(what, "it shrank while being read"))
        leaves.append(digest.leaf(piece))  # archives have no small part: a chunk is a segment
        opened = opener.open_chunk_into(index, piece, plain)
        if isinstance(opened, Failure):
            return IOFailure(CorruptResource(what, f"chunk {index} does not authenticate"))
        sink.write(plain[: opened.unwrap()])
        _report(progress, len(piece))
    if not hmac.compare_digest(digest.root(layout.big_length, leaves), opener.header.big_digest):
        return IOFailure(CorruptResource(what, "the ciphertext's digest differs from its header"))
    return IOSuccess(None)


def _open_legacy(
    source: io.BufferedIOBase,
    sink: BinaryIO,
    *,
    size: int,
    fragment: bytes,
    progress: Progress | None,
) -> IOResult[None, Problem]:
    checked = check_legacy_archive_length(size)
    if isinstance(checked, Failure):
        return IOFailure(checked.failure())
    opener = legacy_archive_opener(fragment)
    piece = memoryview(bytearray(READ_PIECE))
    out = memoryview(bytearray(READ_PIECE + 16))
    first = bytearray()  # the first tar block, checked once the padding has been
    source.seek(0)
    while count := source.readinto(piece):
        written = opener.update_into(piece[:count], out)
        if len(first) < TAR_BLOCK:
            first += out[: min(written, TAR_BLOCK - len(first))]
        sink.write(out[:written])
        _report(progress, count)
    last = opener.finalize()
    if isinstance(last, Failure):
        return IOFailure(last.failure())
    tail = last.unwrap()
    first += tail[: max(0, TAR_BLOCK - len(first))]
    sink.write(tail)
    tar_ok = check_tar_start(bytes(first))
    if isinstance(tar_ok, Failure):
        return IOFailure(tar_ok.failure())
    return IOSuccess(None)


def _unreadable(source: Path, output: Path, error: OSError) -> StorageFailed:
    return StorageFailed(str(output), f"cannot read {source}: {error.strerror or error}")


@attrs.frozen
class PublisherTrust:
    """What an archive's publisher signature must verify under: any of the ``pinned`` keys when
    there are some, else the key the server ``vouched`` for with the version's fragment."""

    pinned: tuple[bytes, ...] = ()
    vouched: bytes | None = None


def decrypt_archive(
    encrypted_path: Path,
    key_fragment: bytes,
    output_path: Path,
    *,
    expected_version: str | None = None,
    progress: Progress | None = None,
    trust: PublisherTrust | None = None,
) -> IOResult[ArchiveKind, Problem]:
    """Decrypt an image archive (legacy or v1, signed or not) into ``output_path``.

    Streams in fixed pieces; ``output_path`` appears (mode 0600) only when the whole archive
    checked. With ``expected_version``, a v1 archive for another version is a ``PartMismatch``.
    With ``trust`` (and ``expected_version``), the publisher signature is checked before the
    output's temp file is created: ``UntrustedPublisher`` then. Without it the signature is not
    checked (the original call, which knows no keys; ``unlock_images`` always checks). Fails
    with ``NotFound`` for a missing archive, ``WrongKey`` for a wrong, truncated or empty
    fragment, ``CorruptResource`` for a truncated or altered archive, ``StorageFailed`` on I/O.
    """
    return _decrypt(
        encrypted_path,
        key_fragment,
        output_path,
        expected_version=expected_version,
        progress=progress,
        trust=trust,
    ).map(lambda done: done[0])


def _trusted(
    head: bytes, version: str | None, trust: PublisherTrust | None
) -> Result[bytes | None, Problem]:
    """The key that signed the archive starting with ``head``, ``None`` when it may pass
    unsigned or nobody asked (``trust`` is ``None``); a refusal otherwise."""
    if trust is None:
        return Success(None)
    checked = check_archive_publisher(
        head, version or "(any)", pinned=trust.pinned, vouched=trust.vouched
    )
    if isinstance(checked, Failure):
        return Failure(checked.failure())
    signer = checked.unwrap()
    if signer is None:
        log.warning(
            "the image archive of version %s carries no publisher signature (legacy, or sealed "
            "before signatures); pin publisher_keys to refuse unsigned archives",
            version,
        )
    else:
        log.info(
            "the image archive of version %s is signed by %s", version, signature.key_id(signer)
        )
    return Success(signer)


def _decrypt(
    encrypted_path: Path,
    key_fragment: bytes,
    output_path: Path,
    *,
    expected_version: str | None,
    progress: Progress | None,
    trust: PublisherTrust | None,
) -> IOResult[tuple[ArchiveKind, bytes | None], Problem]:
    if not key_fragment:
        return IOFailure(WrongKey("image archive (the key fragment is empty)"))
    try:
        source = encrypted_path.open("rb")
    except FileNotFoundError:
        return IOFailure(NotFound(f"the image archive {encrypted_path}"))
    except OSError as error:
        return IOFailure(StorageFailed(str(output_path), f"cannot read {encrypted_path}: {error}"))
    with source:
        try:
            size = os.fstat(source.fileno()).st_size
            head = source.read(HEAD_BYTES)
        except OSError as error:
            return IOFailure(
                StorageFailed(str(output_path), f"cannot read {encrypted_path}: {error}")
            )
        kind = detect_archive(head)
        # Checked on the very bytes (the same open file) that are decrypted next, and before the
        # output's temp file exists: an untrusted archive writes nothing.
        trusted = _trusted(head, expected_version, trust)
        if isinstance(trusted, Failure):
            return IOFailure(trusted.failure())
        signer = trusted.unwrap()
        log.info("decrypting %s (%s, %d bytes)", encrypted_path, kind.value, size)

        def write(sink: BinaryIO) -> IOResult[None, Problem]:
            if kind is ArchiveKind.V1:
                return _open_v1(
                    source,
                    sink,
                    size=size,
                    head=head,
                    fragment=key_fragment,
                    source_name=str(encrypted_path),
                    expected_version=expected_version,
                    progress=progress,
                )
            return _open_legacy(source, sink, size=size, fragment=key_fragment, progress=progress)

        return _write_beside(output_path, write).map(lambda _: (kind, signer))


# --- unlocking: fragment, decrypt, load, check ----------------------------------------------------


@attrs.frozen
class UnlockReport:
    """What ``unlock_images`` did: the archive kind, what the engine loaded, what was checked."""

    version: str
    kind: ArchiveKind
    loaded: tuple[str, ...]
    images: tuple[str, ...]
    archive_bytes: int
    publisher_key: bytes | None = None  # the key that signed it (None: unsigned, allowed)


def find_missing(
    engine: ContainerEngine, names: Sequence[str]
) -> IOResult[tuple[str, ...], Problem]:
    """The names the engine does not have, in order (empty when all are present)."""

    def add_if_absent(name: str) -> Callable[[tuple[str, ...]], IOResult[tuple[str, ...], Problem]]:
        def step(missing: tuple[str, ...]) -> IOResult[tuple[str, ...], Problem]:
            present: IOResult[bool, Problem] = engine.has_image(name)
            return present.map(lambda found: missing if found else (*missing, name))

        return step

    result: IOResult[tuple[str, ...], Problem] = IOSuccess(())
    for name in names:
        result = result.bind(add_if_absent(name))
    return result


def _check_contents(tar: Path, names: Sequence[str]) -> IOResult[None, Problem]:
    """Refuse an archive that does not name every image, before anything is loaded."""

    def compare(tags: tuple[str, ...]) -> IOResult[None, Problem]:
        held = {_familiar(tag) for tag in tags}
        missing = tuple(name for name in names if _familiar(name) not in held)
        if missing:
            return IOFailure(ImagesMissing(missing))
        return IOSuccess(None)

    inspected: IOResult[tuple[str, ...], Problem] = inspect_image_archive(tar).map(
        lambda contents: contents.repo_tags
    )
    return inspected.bind(compare)


def unlock_images(
    archive: Path,
    version: str,
    *,
    fragments: KeyFragments,
    engine: ContainerEngine,
    services: Sequence[str],
    registry: str,
    workdir: Path | None = None,
    progress: Progress | None = None,
    pinned: Sequence[bytes] = (),
) -> IOResult[UnlockReport, Problem]:
    """Unlock ``archive`` for ``version``: fragment, signature, decrypt, load, check each image.

    The archive's publisher signature must verify under one of ``pinned`` (the configured
    ``publisher_keys``) when any, else under the key the server vouches for with the fragment;
    it is checked before anything is decrypted or loaded. ``workdir`` holds the private temp
    directory for the decrypted tar (the system temp dir by default); the tar is deleted whatever
    happens. Fails with ``InvalidRef``/``ConfigInvalid`` for a bad version or config,
    ``EngineFailed`` when the engine is down or refuses the tar, the fragment's API failure,
    ``UntrustedPublisher`` for an unsigned or untrusted archive, the archive's format failure
    (nothing is loaded then), or ``ImagesMissing`` listing the ``{registry}/{service}:{version}``
    names that are absent.
    """
    config = ImagesConfig.parse(registry, services)
    if isinstance(config, Failure):
        return IOFailure(config.failure())
    named = config.unwrap().image_names(version)
    if isinstance(named, Failure):
        return IOFailure(named.failure())
    names = named.unwrap()
    if not archive.is_file():
        return IOFailure(NotFound(f"the image archive {archive}"))
    archive_bytes = archive.stat().st_size

    # Asking the engine first makes a daemon that is down fail before a long decryption. It is
    # a read-only question; nothing reaches the engine before the signature has been checked.
    probe: IOResult[bool, Problem] = engine.has_image(names[0])

    def fetch(_: bool) -> IOResult[VouchedFragment, Problem]:
        return fragments.vouched_fragment(version)

    def unlock(vouched: VouchedFragment) -> IOResult[_Unlocked, Problem]:
        return _decrypt_and_load(
            archive,
            vouched.fragment,
            version=version,
            names=names,
            engine=engine,
            workdir=workdir,
            progress=progress,
            trust=PublisherTrust(tuple(pinned), vouched.publisher_key),
        )

    def check(done: _Unlocked) -> IOResult[UnlockReport, Problem]:
        kind, signer, loaded = done

        def report(missing: tuple[str, ...]) -> IOResult[UnlockReport, Problem]:
            if missing:
                return IOFailure(ImagesMissing(missing))
            log.info("version %s: %d image(s) loaded and present", version, len(names))
            return IOSuccess(UnlockReport(version, kind, loaded, names, archive_bytes, signer))

        return find_missing(engine, names).bind(report)

    return probe.bind(fetch).bind(unlock).bind(check)


_Unlocked = tuple[ArchiveKind, bytes | None, tuple[str, ...]]  # kind, signer, names loaded


def _decrypt_and_load(
    archive: Path,
    fragment: bytes,
    *,
    version: str,
    names: Sequence[str],
    engine: ContainerEngine,
    workdir: Path | None,
    progress: Progress | None,
    trust: PublisherTrust,
) -> IOResult[_Unlocked, Problem]:
    try:
        private = Path(tempfile.mkdtemp(prefix="splitvault-unlock-", dir=workdir))
    except OSError as error:
        return IOFailure(StorageFailed(str(workdir or tempfile.gettempdir()), str(error)))
    tar = private / "images.tar"
    try:

        def load(done: tuple[ArchiveKind, bytes | None]) -> IOResult[_Unlocked, Problem]:
            loaded: IOResult[tuple[str, ...], Problem] = engine.load(tar)
            return loaded.map(lambda names_loaded: (*done, names_loaded))

        decrypted = _decrypt(
            archive, fragment, tar, expected_version=version, progress=progress, trust=trust
        )
        return decrypted.bind(lambda done: _check_contents(tar, names).map(lambda _: done)).bind(
            load
        )
    finally:
        # The decrypted tar is the plaintext the whole scheme protects: never leave it behind.
        shutil.rmtree(private, ignore_errors=True)


# --- sealing: docker save, encrypt, register the fragment -----------------------------------------


class ImageSaver(Protocol):
    """Writes images into one archive tar (``docker save``)."""

    def save(self, images: Sequence[str], out: Path) -> IOResult[None, EngineFailure]:
        """Save ``images`` into ``out``."""
        ...


@attrs.frozen
class SealImagesReport:
    """What ``seal_images`` wrote."""

    version: str
    out: Path
    images: tuple[str, ...]
    tar_bytes: int
    archive_bytes: int
    publisher_key: bytes | None = None  # the key that signed it (None: unsigned)


def _seal_v1(
    tar: Path,
    sink: BinaryIO,
    *,
    version: str,
    fragment: bytes,
    file_id: bytes,
    chunk_size: int,
    progress: Progress | None,
    signing_key: signature.PublisherKey | None,
) -> IOResult[int, Problem]:
    size = tar.stat().st_size
    started = start_v1_archive(version, size, fragment, file_id, chunk_size)
    if isinstance(started, Failure):
        return IOFailure(started.failure())
    sealer = started.unwrap()
    layout = sealer.layout
    framing = 0 if signing_key is None else signature.SIGNED_PREFIX_BYTES
    header_length = framing + v1_archive_header_length(sealer)
    # The header needs the ciphertext's hash and the signature the header: reserve their bytes,
    # write them last.
    sink.write(bytes(header_length))
    plain = memoryview(bytearray(layout.chunk_size))
    cipher = memoryview(bytearray(layout.chunk_size + TAG_BYTES))
    leaves: list[bytes] = []
    with tar.open("rb") as source:
        for index in range(layout.chunk_count):
            start, end = layout.plaintext_span(index)
            piece = plain[: end - start]
            if _read_exactly(source, piece) != len(piece):
                return IOFailure(StorageFailed(str(tar), "the image tar shrank while being sealed"))
            written = sealer.seal_chunk_into(index, piece, cipher)
            leaves.append(digest.leaf(cipher[:written]))
            sink.write(cipher[:written])
            _report(progress, len(piece))
    header = finish_v1_archive(sealer, digest.root(layout.big_length, leaves))
    sink.seek(0)
    if signing_key is not None:
        sink.write(signature.sign_archive(signing_key, header))
    sink.write(header)
    return IOSuccess(header_length + layout.ciphertext_length)


def seal_images(
    images: Sequence[str],
    version: str,
    out: Path,
    *,
    engine_cli: ImageSaver,
    fragments: KeyFragments,
    random: Random,
    workdir: Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    signing_key: signature.PublisherKey | None = None,
) -> IOResult[SealImagesReport, Problem]:
    """Seal ``images`` as the v1 archive of ``version`` at ``out`` under a new key fragment.

    With ``signing_key`` (the configured ``publisher_signing_key_file``) the archive's header is
    signed and the fragment is registered declaring that key, so the server vouches for it;
    without one the archive is unsigned (loaders that pin keys refuse it). ``docker save`` goes
    to a private temp directory (deleted afterwards); the archive is written to a temp file
    beside ``out``; the fragment is registered with ``fragments.put_fragment`` before the rename,
    so ``out`` never appears without a fragment that opens it. Fails with
    ``InvalidRef`` for a bad version, ``EngineFailed`` when the save fails, ``ImagesMissing``
    when the saved tar lacks a requested image, the API's failure, or ``StorageFailed``.
    """
    problem = check_version(version)
    if problem is not None:
        return IOFailure(problem)
    if not images:
        return IOFailure(ConfigInvalid("images", "name at least one image to seal"))
    wanted = tuple(images)
    if signing_key is None:
        log.warning(
            "sealing version %s unsigned (no publisher_signing_key_file): loaders that pin "
            "publisher_keys will refuse it",
            version,
        )
    try:
        private = Path(tempfile.mkdtemp(prefix="splitvault-seal-", dir=workdir or out.parent))
    except OSError as error:
        return IOFailure(StorageFailed(str(workdir or out.parent), str(error)))
    tar = private / "images.tar"
    try:
        saved: IOResult[None, Problem] = engine_cli.save(wanted, tar)
        fragment = random.token_bytes(FRAGMENT_BYTES)
        file_id = random.token_bytes(FILE_ID_BYTES)

        def write(sink: BinaryIO) -> IOResult[int, Problem]:
            sealed = _seal_v1(
                tar,
                sink,
                version=version,
                fragment=fragment,
                file_id=file_id,
                chunk_size=chunk_size,
                progress=progress,
                signing_key=signing_key,
            )
            declared = None if signing_key is None else signing_key.public
            # Register before the rename: an archive nobody can open must never appear.
            return sealed.bind(
                lambda length: fragments.put_fragment(version, fragment, declared).map(
                    lambda _: length
                )
            )

        def report(archive_bytes: int) -> SealImagesReport:
            log.info("sealed %d image(s) as version %s into %s", len(wanted), version, out)
            return SealImagesReport(
                version,
                out,
                wanted,
                tar.stat().st_size,
                archive_bytes,
                None if signing_key is None else signing_key.public,
            )

        return (
            saved.bind(lambda _: _check_contents(tar, wanted))
            .bind(lambda _: _write_beside(out, write))
            .map(report)
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
