"""``decrypt_archive`` with and without a publisher check: a signed archive streams to the same
tar as the unsigned one, and an untrusted one writes nothing, not even a temp file."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from splitvault import binary_split
from splitvault.app.client import images
from splitvault.domain import signature
from splitvault.domain.archive import ArchiveKind, seal_v1_archive_bytes
from splitvault.domain.errors import UntrustedPublisher
from tests.security.hostile import failure, ok

PUBLISHER = signature.PublisherKey.from_seed(bytes(range(32)))
ROGUE = signature.PublisherKey.from_seed(bytes(range(1, 33)))
FRAGMENT = os.urandom(32)
VERSION = "3.1"


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = os.urandom(20_000)
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TAR = _tar()


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "signed.svlt"
    path.parent.mkdir()
    sealed = seal_v1_archive_bytes(
        VERSION, TAR, FRAGMENT, os.urandom(16), chunk_size=4096, signing_key=PUBLISHER
    )
    path.write_bytes(sealed.unwrap())
    return path


def test_a_trusted_signed_archive_decrypts_to_the_tar(signed: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.tar"
    trust = images.PublisherTrust(pinned=(PUBLISHER.public,))
    kind = ok(images.decrypt_archive(signed, FRAGMENT, out, expected_version=VERSION, trust=trust))
    assert kind is ArchiveKind.V1
    assert out.read_bytes() == TAR


@pytest.mark.parametrize(
    "trust",
    [
        images.PublisherTrust(pinned=(ROGUE.public,)),
        images.PublisherTrust(vouched=ROGUE.public),
        images.PublisherTrust(),
    ],
    ids=["pinned-other", "vouched-other", "nothing"],
)
def test_an_untrusted_archive_writes_nothing(
    signed: Path, tmp_path: Path, trust: images.PublisherTrust
) -> None:
    out = tmp_path / "out" / "plain.tar"
    out.parent.mkdir()
    refused = failure(
        images.decrypt_archive(signed, FRAGMENT, out, expected_version=VERSION, trust=trust)
    )
    assert isinstance(refused, UntrustedPublisher), refused
    assert list(out.parent.iterdir()) == []


def test_the_original_call_still_decrypts_a_signed_archive(signed: Path, tmp_path: Path) -> None:
    """``binary_split.decrypt_archive(path, fragment, out)`` knows no keys: it decrypts (the
    fragment and the v1 header authenticate the bytes) without judging the publisher."""
    out = tmp_path / "compat.tar"
    assert binary_split.decrypt_archive(signed, FRAGMENT, out) is ArchiveKind.V1
    assert out.read_bytes() == TAR
