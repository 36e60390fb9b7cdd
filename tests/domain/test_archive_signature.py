"""Signed image archives: the framing, who is trusted, and the fragment answer that vouches."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Result, Success

from splitvault.domain import signature
from splitvault.domain.archive import (
    HEAD_BYTES,
    ArchiveKind,
    archive_start,
    check_archive_publisher,
    detect_archive,
    open_archive_bytes,
    seal_legacy_archive_bytes,
    seal_v1_archive_bytes,
)
from splitvault.domain.device import (
    Sealed,
    derive_device_key,
    envelope_info,
    open_delivered,
    seal,
)
from splitvault.domain.errors import (
    CorruptResource,
    LimitExceeded,
    UnsupportedFormat,
    UntrustedPublisher,
    WrongKey,
)
from splitvault.domain.format_v1 import parse_header

PUBLISHER = signature.PublisherKey.from_seed(bytes(range(32)))
ROGUE = signature.PublisherKey.from_seed(bytes(range(1, 33)))
FRAGMENT = b"\x11" * 32
FILE_ID = bytes(range(16))
VERSION = "2.4.0"

# README "Wire format -> Image archives", the signed archive's known answer.
README_SIGNATURE = (
    "66268522dca56216b60020cf39dc314e56fbde573922b430f563bcf7362f3544"
    "00d5bdd7e25d9491802c4f39c0d7db0dc08e885ed98fc21d6f94bea27f2f9b05"
)


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"layer bytes " * 500
        info = tarfile.TarInfo("layer.tar")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TAR = _tar()


def _archive(key: signature.PublisherKey | None = PUBLISHER, version: str = VERSION) -> bytes:
    return seal_v1_archive_bytes(
        version, TAR, FRAGMENT, FILE_ID, chunk_size=1024, signing_key=key
    ).unwrap()


def _refused(result: Result[object, object]) -> UntrustedPublisher:
    assert isinstance(result, Failure), result
    problem = result.failure()
    assert isinstance(problem, UntrustedPublisher), problem
    return problem


def test_the_readme_vector_from_the_written_spec() -> None:
    """README: statement = label || 0x00 || u32(len(header)) || header || SHA-256(""), signed
    with seed 00..1f; framed = "SVSIG2" 00 00 || public || signature || v1 archive."""
    header = b"header"
    message = (
        b"splitvault/2/publisher-signature\x00"
        + (6).to_bytes(4, "big")
        + header
        + hashlib.sha256(b"").digest()
    )
    assert message == signature.archive_statement(header)
    raw = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).sign(message)
    assert raw.hex() == README_SIGNATURE
    framing = signature.sign_archive(PUBLISHER, header)
    assert framing == b"SVSIG2\x00\x00" + PUBLISHER.public + bytes.fromhex(README_SIGNATURE)
    assert len(framing) == signature.SIGNED_PREFIX_BYTES == 104


def test_the_readme_prints_the_vector_these_tests_check() -> None:
    """README "Wire format -> Image archives" prints exactly this signature and framing."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("### Image archives", 1)[1].split("\n## ", 1)[0]
    block = section.split("Known answer", 1)[1].split("```", 2)[1]
    printed, framing = block.split("framing =")
    assert "".join(printed.replace("archive signature =", "").split()) == README_SIGNATURE
    assert PUBLISHER.public.hex() in framing and '"SVSIG2" 00 00' in framing


def test_a_signed_archive_is_the_framing_then_the_unsigned_archive() -> None:
    """Signing adds 104 bytes in front and changes nothing after them; both open to the tar."""
    signed, unsigned = _archive(), _archive(None)
    assert signed[signature.SIGNED_PREFIX_BYTES :] == unsigned
    assert detect_archive(signed) is detect_archive(unsigned) is ArchiveKind.V1
    assert archive_start(signed) == 104 and archive_start(unsigned) == 0
    assert open_archive_bytes(signed, FRAGMENT) == Success(TAR)
    assert open_archive_bytes(unsigned, FRAGMENT) == Success(TAR)
    header_length = parse_header(unsigned).unwrap()[1]
    expected = signature.sign_archive(PUBLISHER, unsigned[:header_length])
    assert signed[: signature.SIGNED_PREFIX_BYTES] == expected


def test_pinned_keys_decide_and_the_vouched_key_is_the_fallback() -> None:
    """Pins win over what the server vouches for; without pins the vouched key must verify."""
    head = _archive()[:HEAD_BYTES]
    assert check_archive_publisher(head, VERSION, pinned=[PUBLISHER.public]) == Success(
        PUBLISHER.public
    )
    assert check_archive_publisher(head, VERSION, vouched=PUBLISHER.public) == Success(
        PUBLISHER.public
    )
    _refused(
        check_archive_publisher(head, VERSION, pinned=[ROGUE.public], vouched=PUBLISHER.public)
    )
    assert "vouches for none" in _refused(check_archive_publisher(head, VERSION)).detail
    rogue_head = _archive(ROGUE)[:HEAD_BYTES]
    refused = _refused(check_archive_publisher(rogue_head, VERSION, vouched=PUBLISHER.public))
    assert signature.key_id(PUBLISHER.public) in refused.detail


def test_the_framings_own_key_is_never_trusted() -> None:
    """A rogue signs and names its own key in the framing: without pins or vouching, refused."""
    head = _archive(ROGUE)[:HEAD_BYTES]
    _refused(check_archive_publisher(head, VERSION))
    _refused(check_archive_publisher(head, VERSION, pinned=[PUBLISHER.public]))


def test_unsigned_archives_pass_only_when_nothing_is_pinned_or_vouched() -> None:
    """Legacy and unsigned v1: allowed (None) with no pins and no vouched key; refused with
    pins, and refused when the server vouches a key (a substitute for a signed version)."""
    legacy = seal_legacy_archive_bytes(TAR, FRAGMENT, bytes(16))
    for head in (legacy[:HEAD_BYTES], _archive(None)[:HEAD_BYTES]):
        assert check_archive_publisher(head, VERSION) == Success(None)
        assert (
            "pinned"
            in _refused(check_archive_publisher(head, VERSION, pinned=[PUBLISHER.public])).detail
        )
        assert (
            "replaced"
            in _refused(check_archive_publisher(head, VERSION, vouched=PUBLISHER.public)).detail
        )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_in_the_signature_or_the_header_is_refused(data: st.DataObject) -> None:
    """One flipped bit in the signature or the signed v1 header: not trusted, or (a header the
    parser refuses first) a typed format failure; never trusted."""
    archive = bytearray(_archive())
    header_length = parse_header(bytes(archive[104:])).unwrap()[1]
    start = len(signature.SIGNED_MAGIC) + signature.PUBLIC_KEY_BYTES
    at = data.draw(st.integers(start, 104 + header_length - 1))
    archive[at] ^= 1 << data.draw(st.integers(0, 7))
    result = check_archive_publisher(bytes(archive[:HEAD_BYTES]), VERSION, vouched=PUBLISHER.public)
    assert isinstance(result, Failure)
    assert isinstance(
        result.failure(), UntrustedPublisher | CorruptResource | UnsupportedFormat | LimitExceeded
    )


def test_a_truncated_or_hollow_framing_is_corrupt() -> None:
    """The framing with nothing (or no v1 archive) after it is a CorruptResource."""
    cut = check_archive_publisher(signature.SIGNED_MAGIC + bytes(50), VERSION)
    assert isinstance(cut, Failure) and isinstance(cut.failure(), CorruptResource)
    hollow = signature.sign_archive(PUBLISHER, b"header") + b"not a v1 archive at all"
    empty = check_archive_publisher(hollow, VERSION, pinned=[PUBLISHER.public])
    assert isinstance(empty, Failure) and isinstance(empty.failure(), CorruptResource)


def test_the_envelope_binds_the_vouched_publisher_key() -> None:
    """A fragment sealed with the vouched key in its info opens only with that same key: a
    stripped or swapped X-Splitvault-Publisher-Key header does not open."""
    device = derive_device_key(bytes(32), "machine-a")
    info = envelope_info("key-fragment", device.device_id, VERSION, VERSION, PUBLISHER.public)
    envelope = seal(FRAGMENT, device.public, info)

    def opened(publisher: bytes) -> object:
        sealed = Sealed(envelope, device.device_id, VERSION, publisher)
        return open_delivered(sealed, device, "key-fragment", VERSION)

    assert opened(PUBLISHER.public) == Success(FRAGMENT)
    for wrong in (b"", ROGUE.public):
        result = opened(wrong)
        assert isinstance(result, Failure) and isinstance(result.failure(), WrongKey)
    # Without a vouched key the info is what it always was (older fragments still open).
    assert envelope_info("key-fragment", "d", "v", "v") == envelope_info(
        "key-fragment", "d", "v", "v", b""
    )
