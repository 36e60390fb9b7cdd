"""Encrypted container image archives: the original CBC kind and the authenticated v1 kind.

An image archive is a ``docker save`` tar encrypted under a key fragment the API hands out.

- **legacy**: ``IV (16) || AES-256-CBC(SHA-256(fragment), PKCS#7(tar))``, the original system's
  format, handled by ``domain.legacy``'s sealer and opener. It has no integrity, so a wrong key
  shows only as bad padding (~255/256) or, after decryption, as bytes that are not a tar:
  ``check_tar_start`` closes most of the remaining gap and readers must apply it.
- **v1**: the resource format v1 (``domain.format_v1``) not split (``SplitRule(cap=0)``), stored as
  ``header || ciphertext stream``, for the ref ``images/<version>``. Its data key is
  ``keys.archive_dek(fragment)``. A v1 header normally carries its data key in the clear (the
  small part is protected in transit), which an archive file on disk must not: the data key is
  stored wrapped under a second key derived from the fragment, so the file alone reveals nothing.

A v1 archive may be **signed**: the publisher's Ed25519 signature over its header, in the
small part's ``SVSIG2`` framing in front of the file (``domain.signature``). ``archive_start``
says where the v1 bytes begin, and ``check_archive_publisher`` decides whether a loader may trust
the archive before anything is decrypted: against the keys it pins, else the key the server vouches
for with the version's fragment. Unsigned archives (legacy, or v1 from before signatures) pass only
when nothing is pinned and the server vouches for no key.

``detect_archive`` tells the kinds apart by the v1 magic (or the signed framing's).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Sequence

from returns.result import Failure, Result, Success

from splitvault.domain import signature
from splitvault.domain.digest import digest_bytes
from splitvault.domain.errors import (
    CorruptResource,
    FormatFailure,
    InvalidRef,
    LimitExceeded,
    PartMismatch,
    UnsupportedFormat,
    UntrustedPublisher,
    WrongKey,
)
from splitvault.domain.format_v1 import (
    DEFAULT_CHUNK_SIZE,
    MAGIC,
    MAX_HEADER_BYTES,
    Opener,
    Sealer,
    open_stream,
    parse_header,
)
from splitvault.domain.keys import NONCE_BYTES, archive_dek, hkdf, legacy_archive_key
from splitvault.domain.legacy import (
    LegacyOpener,
    LegacySealer,
    check_legacy_stream_length,
    legacy_stream_length,
)
from splitvault.domain.ref import ResourceRef
from splitvault.domain.split import SplitRule

IMAGES_FOLDER = "images"
LEGACY_WHAT = "legacy image archive"
V1_WHAT = "v1 image archive"
TAR_BLOCK = 512
# What a reader should read before choosing a kind: the signed framing and a whole v1 header.
HEAD_BYTES = signature.SIGNED_PREFIX_BYTES + MAX_HEADER_BYTES
_NO_SPLIT = SplitRule(cap=0)
_CHECKSUM = slice(148, 156)


class ArchiveKind(enum.Enum):
    """Which encryption an image archive uses."""

    LEGACY_CBC = "legacy-cbc"
    V1 = "v1"


def detect_archive(head: bytes) -> ArchiveKind:
    """Tell the kind from the archive's first bytes: the v1 magic, or else legacy.

    A legacy archive starts with a random IV, which equals the 8-byte magic with odds of 2^-64,
    so the test is safe in practice. A head shorter than the magic is legacy (and then fails the
    legacy length check).
    """
    if signature.is_signed(head):
        return ArchiveKind.V1
    return ArchiveKind.V1 if head[: len(MAGIC)] == MAGIC else ArchiveKind.LEGACY_CBC


def archive_start(head: bytes) -> int:
    """Where the v1 archive begins in a file starting with ``head``: after the signed framing,
    or at 0 (unsigned v1, legacy)."""
    return signature.SIGNED_PREFIX_BYTES if signature.is_signed(head) else 0


def check_archive_publisher(
    head: bytes,
    version: str,
    *,
    pinned: Sequence[bytes] = (),
    vouched: bytes | None = None,
) -> Result[bytes | None, UntrustedPublisher | FormatFailure]:
    """Whether a loader may trust the archive starting with ``head``, before decrypting it.

    A signed archive must verify under a pinned key when any is pinned, else under ``vouched``
    (the key the server names with the version's fragment); the key that verified is returned.
    An unsigned archive (legacy, or v1 from before signatures) returns ``None`` (the caller
    warns) only when nothing is pinned and the server vouches for no key: once the server says
    the version was signed, an unsigned file in its place is a substitute made by somebody who
    holds the fragment, and is refused. The framing's own public key is never trusted by itself.
    """
    what = f"the image archive of version {version}"
    if not signature.is_signed(head):
        if pinned:
            return Failure(
                UntrustedPublisher(what, f"it is unsigned and {len(pinned)} key(s) are pinned")
            )
        if vouched is not None:
            return Failure(
                UntrustedPublisher(
                    what,
                    f"it is unsigned, but the server says version {version} is signed by key "
                    f"{signature.key_id(vouched)} (was the archive replaced?)",
                )
            )
        return Success(None)
    part = signature.split_signed(head)
    if part is None:
        return Failure(CorruptResource(V1_WHAT, "its signed framing is truncated"))
    if part.inner[: len(MAGIC)] != MAGIC:
        return Failure(CorruptResource(V1_WHAT, "its signed framing holds no v1 archive"))
    parsed = parse_header(part.inner[:MAX_HEADER_BYTES])
    if isinstance(parsed, Failure):
        return Failure(parsed.failure())
    header_length = parsed.unwrap()[1]
    message = signature.archive_statement(part.inner[:header_length])
    verified = signature.verify(what, part.signature, message, pinned=pinned, vouched=vouched)
    if isinstance(verified, Failure):
        return Failure(verified.failure())
    return Success(verified.unwrap())


def check_legacy_archive_length(length: int) -> Result[int, CorruptResource]:
    """Refuse a legacy archive under 32 bytes or not whole 16-byte blocks; blocks after the IV."""
    return check_legacy_stream_length(length, LEGACY_WHAT)


def legacy_archive_sealer(fragment: bytes, iv: bytes) -> LegacySealer:
    """A sealer for a legacy archive; ``iv`` is 16 bytes from the caller's random source."""
    return LegacySealer(legacy_archive_key(fragment), iv)


def legacy_archive_opener(fragment: bytes) -> LegacyOpener:
    """An opener for a legacy archive (feed it the whole file, IV first)."""
    return LegacyOpener(legacy_archive_key(fragment), LEGACY_WHAT)


def legacy_archive_length(tar_length: int) -> int:
    """Bytes of a legacy archive holding a tar of ``tar_length`` bytes."""
    return legacy_stream_length(tar_length)


def _tar_checksum_ok(block: bytes) -> bool:
    field = block[_CHECKSUM].replace(b"\x00", b" ").strip()
    if not field or any(c not in b"01234567" for c in field):
        return False
    recorded = int(field, 8)
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    # Some old tar writers summed signed chars; accept either as tarfile does.
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return recorded in (unsigned, signed)


def check_tar_start(plaintext_head: bytes, what: str = LEGACY_WHAT) -> Result[None, WrongKey]:
    """Check that decrypted bytes begin like a tar: a header block with a valid checksum.

    The legacy format has no integrity; a wrong key gets past its padding check about once in
    256 tries and then yields garbage. A garbage first block passes this check with negligible
    odds, so a reader holds back the first 512 plaintext bytes until they pass. An all-zero first
    block (an empty archive) is accepted.
    """
    block = plaintext_head[:TAR_BLOCK]
    if len(block) == TAR_BLOCK and (not any(block) or _tar_checksum_ok(block)):
        return Success(None)
    return Failure(WrongKey(f"{what} (the decrypted bytes are not a tar archive)"))


def _wrap_key(fragment: bytes) -> bytes:
    return hkdf(fragment, b"splitvault/v1/archive-dek-wrap")


def _wrap_nonce(file_id: bytes) -> bytes:
    # The wrapped plaintext is always archive_dek(fragment) under a key from the same fragment,
    # so even a repeated nonce would only repeat the same ciphertext; deriving it from the random
    # file id keeps nonces distinct anyway.
    return hashlib.sha256(b"splitvault/v1/archive-wrap-nonce\x00" + file_id).digest()[:NONCE_BYTES]


def start_v1_archive(
    version: str,
    plaintext_length: int,
    fragment: bytes,
    file_id: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Result[Sealer, InvalidRef | LimitExceeded]:
    """Begin sealing a v1 archive of the tar for ``version``.

    ``file_id`` is 16 bytes from the caller's random source. Seal chunk ``i`` with
    ``sealer.seal_chunk_into`` and write it at ``v1_archive_header_length(sealer) +
    sealer.layout.ciphertext_span(i)[0]``; hash the ciphertext stream as it is written, then
    write ``finish_v1_archive(sealer, digest)`` at offset 0.
    """
    parsed = ResourceRef.parse(IMAGES_FOLDER, version)
    if isinstance(parsed, Failure):
        return Failure(parsed.failure())
    started = Sealer.start(
        parsed.unwrap(),
        plaintext_length,
        dek=archive_dek(fragment),
        file_id=file_id,
        chunk_size=chunk_size,
        rule=_NO_SPLIT,
        publisher_key=_wrap_key(fragment),
        wrap_nonce=_wrap_nonce(file_id),
    )
    if isinstance(started, Failure):
        return Failure(started.failure())
    return Success(started.unwrap())


def v1_archive_header_length(sealer: Sealer) -> int:
    """Bytes of the header ``finish_v1_archive`` will return (known before sealing)."""
    return len(sealer.header.encode())


def finish_v1_archive(sealer: Sealer, ciphertext_digest: bytes) -> bytes:
    """The archive's header, given the digest (``domain.digest``) of the ciphertext after it."""
    return sealer.finish(b"", ciphertext_digest)


def open_v1_archive_header(
    head: bytes, fragment: bytes, *, expected_version: str | None = None
) -> Result[tuple[Opener, int], FormatFailure]:
    """Check a v1 archive's header and unlock it with the fragment.

    ``head`` is the archive's first bytes (up to ``HEAD_BYTES``; more are ignored). Returns the
    opener and the header's length: chunk ``i``'s ciphertext sits at that length plus
    ``opener.layout.ciphertext_span(i)``. Fails with ``WrongKey`` for a wrong or truncated
    fragment, ``CorruptResource`` for a changed or truncated header, ``UnsupportedFormat`` for a
    v1 file that is not an image archive, and ``PartMismatch`` when ``expected_version`` differs.
    """
    parsed = parse_header(head[:MAX_HEADER_BYTES])
    if isinstance(parsed, Failure):
        return Failure(parsed.failure())
    header, header_length = parsed.unwrap()
    if header.ref.folder != IMAGES_FOLDER or header.layout.small_ciphertext_length != 0:
        return Failure(UnsupportedFormat(f"{header.ref} is a v1 resource, not an image archive"))
    if not header.wrapped:
        # An archive whose header carries its data key in the clear opens for anybody; it was not
        # written by start_v1_archive and proves nothing about who wrote it.
        return Failure(CorruptResource(V1_WHAT, "its data key is not wrapped under the fragment"))
    if expected_version is not None and header.ref.name != expected_version:
        return Failure(
            PartMismatch(f"the archive is for version {header.ref.name}, not {expected_version}")
        )
    opened = Opener.start(head[:header_length], publisher_key=_wrap_key(fragment))
    if isinstance(opened, Failure):
        failure = opened.failure()
        if isinstance(failure, WrongKey):
            return Failure(WrongKey(f"{V1_WHAT} {header.ref.name} (the key fragment differs)"))
        return Failure(failure)
    return Success((opened.unwrap(), header_length))


def check_v1_archive_length(
    opener: Opener, header_length: int, archive_length: int
) -> Result[None, CorruptResource]:
    """Refuse a v1 archive whose size differs from its header's (truncated or extended)."""
    expected = header_length + opener.layout.ciphertext_length
    if archive_length != expected:
        return Failure(
            CorruptResource(
                V1_WHAT, f"{archive_length} bytes, the header says {expected} (truncated?)"
            )
        )
    return Success(None)


def seal_legacy_archive_bytes(tar: bytes, fragment: bytes, iv: bytes) -> bytes:
    """Seal an in-memory tar as a legacy archive. For tests and tiny files."""
    sealer = legacy_archive_sealer(fragment, iv)
    out = bytearray(legacy_archive_length(len(tar)))
    view = memoryview(out)
    written = sealer.update_into(tar, view)
    written += sealer.finalize_into(view[written:])
    assert written == len(out)
    return bytes(out)


def seal_v1_archive_bytes(
    version: str,
    tar: bytes,
    fragment: bytes,
    file_id: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    signing_key: signature.PublisherKey | None = None,
) -> Result[bytes, InvalidRef | LimitExceeded]:
    """Seal an in-memory tar as a v1 archive, signed when given a key. For tests and tiny files."""

    def run(sealer: Sealer) -> bytes:
        layout = sealer.layout
        stream = bytearray(layout.ciphertext_length)
        view = memoryview(stream)
        for index in range(layout.chunk_count):
            pt_start, pt_end = layout.plaintext_span(index)
            ct_start, _ = layout.ciphertext_span(index)
            sealer.seal_chunk_into(index, tar[pt_start:pt_end], view[ct_start:])
        header = finish_v1_archive(sealer, digest_bytes(stream, *layout.big_segmentation()))
        assert len(header) == v1_archive_header_length(sealer)
        framing = b"" if signing_key is None else signature.sign_archive(signing_key, header)
        return framing + header + bytes(stream)

    return start_v1_archive(version, len(tar), fragment, file_id, chunk_size).map(run)


def _open_legacy(data: bytes, fragment: bytes) -> Result[bytes, FormatFailure]:
    checked = check_legacy_archive_length(len(data))
    if isinstance(checked, Failure):
        return Failure(checked.failure())
    opener = legacy_archive_opener(fragment)
    out = bytearray(len(data))
    written = opener.update_into(data, memoryview(out))
    last = opener.finalize()
    if isinstance(last, Failure):
        return Failure(last.failure())
    tar = bytes(out[:written]) + last.unwrap()
    tar_ok = check_tar_start(tar)
    if isinstance(tar_ok, Failure):
        return Failure(tar_ok.failure())
    return Success(tar)


def _open_v1(data: bytes, fragment: bytes) -> Result[bytes, FormatFailure]:
    data = data[archive_start(data) :]  # the signature is the loader's to check, not this one's
    started = open_v1_archive_header(data[:HEAD_BYTES], fragment)
    if isinstance(started, Failure):
        return Failure(started.failure())
    opener, header_length = started.unwrap()
    checked = check_v1_archive_length(opener, header_length, len(data))
    if isinstance(checked, Failure):
        return Failure(checked.failure())
    stream = memoryview(data)[header_length:]
    expected = digest_bytes(stream, *opener.layout.big_segmentation())
    if not hmac.compare_digest(expected, opener.header.big_digest):
        return Failure(CorruptResource(V1_WHAT, "the ciphertext's digest differs from its header"))
    opened = open_stream(opener, stream)
    if isinstance(opened, Failure):
        return Failure(opened.failure())
    return Success(opened.unwrap())


def open_archive_bytes(data: bytes, fragment: bytes) -> Result[bytes, FormatFailure]:
    """Detect an in-memory archive's kind and open it into the tar. For tests and tiny files."""
    if detect_archive(data) is ArchiveKind.V1:
        return _open_v1(data, fragment)
    return _open_legacy(data, fragment)
