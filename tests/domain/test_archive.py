"""Encrypted image archives: both kinds round-trip, are told apart, and fail typed when wrong."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from splitvault.domain import format_v1
from splitvault.domain.archive import (
    HEAD_BYTES,
    ArchiveKind,
    check_legacy_archive_length,
    check_tar_start,
    check_v1_archive_length,
    detect_archive,
    finish_v1_archive,
    legacy_archive_opener,
    open_archive_bytes,
    open_v1_archive_header,
    seal_legacy_archive_bytes,
    seal_v1_archive_bytes,
    start_v1_archive,
    v1_archive_header_length,
)
from splitvault.domain.digest import digest_bytes
from splitvault.domain.errors import (
    CorruptResource,
    InvalidRef,
    LimitExceeded,
    PartMismatch,
    UnsupportedFormat,
    WrongKey,
)
from splitvault.domain.keys import archive_dek, legacy_archive_key
from splitvault.domain.ref import ResourceRef
from splitvault.domain.split import SplitRule

FRAGMENT = b"key-fragment-from-the-api-0123456789"
IV = bytes(range(16))
FILE_ID = bytes(range(50, 66))
FORMAT_FAILURES = (CorruptResource, WrongKey, PartMismatch, UnsupportedFormat, LimitExceeded)

fragments = st.binary(min_size=1, max_size=64)


def _tar(members: dict[str, bytes]) -> bytes:
    """A real tar archive (as ``docker save`` writes one) holding the given members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TAR = _tar({"manifest.json": b'[{"Config": "c.json"}]', "layer.tar": b"L" * 5000})


def _v1(tar: bytes = TAR, chunk_size: int = 4096, fragment: bytes = FRAGMENT) -> bytes:
    """A v1 archive of ``tar`` for version 1.2.3 with small chunks, so several exist."""
    return seal_v1_archive_bytes("1.2.3", tar, fragment, FILE_ID, chunk_size).unwrap()


def _assert_typed_failure(result: object) -> None:
    """The result is a Failure holding one of the format's failure values."""
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), FORMAT_FAILURES)


# --- round trips and detection ---------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=3000),
    fragment=fragments,
    iv=st.binary(min_size=16, max_size=16),
    chunk_size=st.sampled_from([16, 512, 4096, format_v1.DEFAULT_CHUNK_SIZE]),
)
def test_both_kinds_round_trip_and_are_detected(
    body: bytes, fragment: bytes, iv: bytes, chunk_size: int
) -> None:
    """A tar sealed as either kind is detected as that kind and opens to the same tar."""
    tar = _tar({"layer.tar": body})
    legacy = seal_legacy_archive_bytes(tar, fragment, iv)
    v1 = seal_v1_archive_bytes("v2", tar, fragment, FILE_ID, chunk_size).unwrap()
    assert detect_archive(legacy[:HEAD_BYTES]) is ArchiveKind.LEGACY_CBC
    assert detect_archive(v1[:HEAD_BYTES]) is ArchiveKind.V1
    assert open_archive_bytes(legacy, fragment) == Success(tar)
    assert open_archive_bytes(v1, fragment) == Success(tar)


def test_legacy_archive_matches_openssl() -> None:
    """A legacy archive is IV || openssl's AES-256-CBC under SHA-256(fragment), both ways."""
    key = hashlib.sha256(FRAGMENT).digest()
    assert legacy_archive_key(FRAGMENT) == key
    archive = seal_legacy_archive_bytes(TAR, FRAGMENT, IV)
    command = ["openssl", "enc", "-aes-256-cbc", "-K", key.hex(), "-iv", IV.hex()]
    encrypted = subprocess.run(command, input=TAR, capture_output=True, check=True).stdout
    assert archive == IV + encrypted
    decrypted = subprocess.run(
        [*command, "-d"], input=archive[16:], capture_output=True, check=True
    ).stdout
    assert decrypted == TAR


def test_legacy_archive_opens_incrementally() -> None:
    """The legacy opener, fed the archive in odd pieces, gives the tar back."""
    archive = seal_legacy_archive_bytes(TAR, FRAGMENT, IV)
    opener = legacy_archive_opener(FRAGMENT)
    out = bytearray()
    for start in range(0, len(archive), 1001):
        piece = archive[start : start + 1001]
        buffer = bytearray(opener.output_length(len(piece)))
        out += buffer[: opener.update_into(piece, memoryview(buffer))]
    assert out + opener.finalize().unwrap() == TAR


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (format_v1.MAGIC + b"rest", ArchiveKind.V1),
        (format_v1.MAGIC, ArchiveKind.V1),
        (format_v1.MAGIC[:7], ArchiveKind.LEGACY_CBC),
        (b"", ArchiveKind.LEGACY_CBC),
        (bytes(range(32)), ArchiveKind.LEGACY_CBC),
        (b"SPLITVLX" + b"\x00" * 24, ArchiveKind.LEGACY_CBC),
    ],
)
def test_detection_is_by_magic(head: bytes, kind: ArchiveKind) -> None:
    """Only the exact 8-byte v1 magic means v1; everything else is legacy."""
    assert detect_archive(head) is kind


# --- the streaming v1 API --------------------------------------------------------------------


def test_v1_streaming_api_places_chunks_after_the_header() -> None:
    """The header length is known before sealing; chunks sit at header length + their span."""
    sealer = start_v1_archive("1.0", len(TAR), FRAGMENT, FILE_ID, chunk_size=1024).unwrap()
    header_length = v1_archive_header_length(sealer)
    layout = sealer.layout
    assert layout.small_ciphertext_length == 0
    archive = bytearray(header_length + layout.ciphertext_length)
    view = memoryview(archive)
    for index in reversed(range(layout.chunk_count)):  # any order works
        pt_start, pt_end = layout.plaintext_span(index)
        ct_start, _ = layout.ciphertext_span(index)
        sealer.seal_chunk_into(index, TAR[pt_start:pt_end], view[header_length + ct_start :])
    digest = digest_bytes(view[header_length:], *layout.big_segmentation())
    header = finish_v1_archive(sealer, digest)
    assert len(header) == header_length
    archive[:header_length] = header
    opener, read_length = open_v1_archive_header(bytes(archive[:HEAD_BYTES]), FRAGMENT).unwrap()
    assert read_length == header_length
    assert check_v1_archive_length(opener, read_length, len(archive)) == Success(None)
    assert opener.header.ref == ResourceRef("images", "1.0")
    assert open_archive_bytes(bytes(archive), FRAGMENT) == Success(TAR)


def test_v1_archive_does_not_hold_its_data_key_in_the_clear() -> None:
    """The archive file alone does not contain the data key (it is wrapped under the fragment)."""
    archive = _v1()
    assert archive_dek(FRAGMENT) not in archive
    assert FRAGMENT not in archive


@pytest.mark.parametrize("version", ["", "../etc", "a/b", ".hidden", "x\x00y"])
def test_v1_archive_needs_a_valid_version(version: str) -> None:
    """A version that is not a safe name is refused as InvalidRef before sealing."""
    result = start_v1_archive(version, 10, FRAGMENT, FILE_ID)
    assert isinstance(result.failure(), InvalidRef)


def test_v1_archive_expected_version_mismatch() -> None:
    """Asking for another version than the archive's is PartMismatch."""
    result = open_v1_archive_header(_v1()[:HEAD_BYTES], FRAGMENT, expected_version="9.9")
    assert isinstance(result.failure(), PartMismatch)
    assert isinstance(open_v1_archive_header(_v1(), FRAGMENT, expected_version="1.2.3"), Success)


def test_v1_resource_that_is_not_an_archive_is_refused() -> None:
    """A v1 small part of another folder, or one with a clear data key, is not an image archive."""
    dek = bytes(range(32))
    small, _ = format_v1.seal_bytes(
        ResourceRef("models", "m"), TAR, dek=dek, file_id=FILE_ID
    ).unwrap()
    assert isinstance(open_v1_archive_header(small, FRAGMENT).failure(), UnsupportedFormat)
    clear_small, _ = format_v1.seal_bytes(
        ResourceRef("images", "1.0"), TAR, dek=dek, file_id=FILE_ID, rule=SplitRule(cap=0)
    ).unwrap()
    assert isinstance(open_v1_archive_header(clear_small, FRAGMENT).failure(), CorruptResource)


# --- wrong keys ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(wrong=fragments)
def test_wrong_fragment_is_wrong_key(wrong: bytes) -> None:
    """Any other fragment fails as WrongKey for both kinds (padding or tar check, commitment)."""
    if wrong == FRAGMENT:
        wrong += b"x"
    legacy = seal_legacy_archive_bytes(TAR, FRAGMENT, IV)
    assert isinstance(open_archive_bytes(legacy, wrong).failure(), WrongKey)
    assert isinstance(open_archive_bytes(_v1(), wrong).failure(), WrongKey)


@pytest.mark.parametrize("keep", [0, 1, 8, len(FRAGMENT) - 1])
def test_truncated_fragment_is_wrong_key(keep: int) -> None:
    """A fragment cut short (a partial read of the key) fails as WrongKey for both kinds."""
    short = FRAGMENT[:keep]
    legacy = seal_legacy_archive_bytes(TAR, FRAGMENT, IV)
    assert isinstance(open_archive_bytes(legacy, short).failure(), WrongKey)
    assert isinstance(open_archive_bytes(_v1(), short).failure(), WrongKey)


def test_legacy_wrong_key_with_valid_padding_is_caught_by_the_tar_check() -> None:
    """When a wrong key happens to pass the padding check, the garbage is not a tar: WrongKey."""
    # Search fragments until one passes the padding check (about 1 in 256 does).
    archive = seal_legacy_archive_bytes(TAR, FRAGMENT, IV)
    for attempt in range(5000):
        wrong = b"wrong-%d" % attempt
        opener = legacy_archive_opener(wrong)
        opener.update_into(archive, memoryview(bytearray(len(archive))))
        if isinstance(opener.finalize(), Success):
            break
    else:
        pytest.fail("no wrong fragment passed the padding check in 5000 tries")
    result = open_archive_bytes(archive, wrong)
    assert isinstance(result.failure(), WrongKey)
    assert "not a tar" in result.failure().describe()


# --- the tar check ---------------------------------------------------------------------------


def test_tar_check_accepts_tar_headers_and_empty_archives() -> None:
    """A real tar header block (ustar, PAX or GNU) or an all-zero block passes."""
    for fmt in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            info = tarfile.TarInfo("x")
            info.size = 0
            archive.addfile(info)
        assert check_tar_start(buffer.getvalue()) == Success(None)
    assert check_tar_start(bytes(512)) == Success(None)


@settings(max_examples=50)
@given(block=st.binary(min_size=512, max_size=600))
def test_tar_check_refuses_garbage(block: bytes) -> None:
    """Random bytes do not look like a tar header (a changed checksum byte is enough)."""
    if not any(block[:512]):
        block = b"\x01" + block[1:]
    assert isinstance(check_tar_start(block).failure(), WrongKey)


def test_tar_check_refuses_a_short_head_and_a_bad_checksum() -> None:
    """Fewer than 512 bytes, or a tar header with one byte changed, fail the check."""
    assert isinstance(check_tar_start(TAR[:511]).failure(), WrongKey)
    changed = bytearray(TAR[:512])
    changed[0] ^= 0x01
    assert isinstance(check_tar_start(bytes(changed)).failure(), WrongKey)


# --- tampering and truncation ----------------------------------------------------------------


def test_every_bit_of_the_v1_header_is_protected() -> None:
    """Flipping any single bit of a v1 archive's header gives a typed failure, never a tar."""
    archive = _v1()
    header_length = open_v1_archive_header(archive, FRAGMENT).unwrap()[1]
    for bit in range(header_length * 8):
        tampered = bytearray(archive)
        tampered[bit // 8] ^= 1 << (bit % 8)
        _assert_typed_failure(open_archive_bytes(bytes(tampered), FRAGMENT))


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_flipped_bit_anywhere_in_a_v1_archive_fails(position: int, bit: int) -> None:
    """Flipping a bit at any sampled position of a v1 archive gives a typed failure."""
    archive = bytearray(_v1())
    archive[position % len(archive)] ^= 1 << bit
    _assert_typed_failure(open_archive_bytes(bytes(archive), FRAGMENT))


def test_flipped_bit_in_each_v1_chunk_fails_even_without_the_hash() -> None:
    """The chunks authenticate on their own: a flip in any chunk fails open_chunk_into."""
    archive = _v1(chunk_size=512)
    opener, header_length = open_v1_archive_header(archive, FRAGMENT).unwrap()
    layout = opener.layout
    for index in range(layout.chunk_count):
        start, end = layout.ciphertext_span(index)
        chunk = bytearray(archive[header_length + start : header_length + end])
        chunk[len(chunk) // 2] ^= 0x80
        out = memoryview(bytearray(len(chunk)))
        opened = opener.open_chunk_into(index, bytes(chunk), out)
        assert isinstance(opened.failure(), CorruptResource)


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0))
def test_truncated_v1_archive_fails(cut: int) -> None:
    """A v1 archive cut anywhere (inside the header or the ciphertext) gives a typed failure."""
    archive = _v1()
    truncated = archive[: cut % len(archive)]
    _assert_typed_failure(open_archive_bytes(truncated, FRAGMENT))


def test_truncated_v1_archive_is_corrupt_resource() -> None:
    """Cutting the last byte or chunk is CorruptResource naming the expected size."""
    archive = _v1()
    for truncated in (archive[:-1], archive[:-4112], archive + b"\x00"):
        result = open_archive_bytes(truncated, FRAGMENT)
        assert isinstance(result.failure(), CorruptResource)
        assert str(len(archive)) in result.failure().describe()


def test_v1_header_cut_short_is_corrupt() -> None:
    """A head shorter than the header is CorruptResource (truncated), not an exception."""
    archive = _v1()
    header_length = open_v1_archive_header(archive, FRAGMENT).unwrap()[1]
    for keep in (8, 40, header_length - 1):
        result = open_v1_archive_header(archive[:keep], FRAGMENT)
        assert isinstance(result.failure(), CorruptResource)


@pytest.mark.parametrize(("length", "ok"), [(0, False), (31, False), (32, True), (40, False)])
def test_legacy_archive_length_check(length: int, ok: bool) -> None:
    """Legacy archives under 32 bytes or not whole blocks are CorruptResource."""
    result = check_legacy_archive_length(length)
    assert isinstance(result, Success) is ok
    if not ok:
        assert isinstance(result.failure(), CorruptResource)
        data = bytes(range(256))[:length]
        assert isinstance(open_archive_bytes(data, FRAGMENT).failure(), CorruptResource)


def test_truncated_legacy_archive_fails() -> None:
    """A legacy archive cut off its block boundary is CorruptResource; by a block, WrongKey."""
    archive = seal_legacy_archive_bytes(TAR, FRAGMENT, IV)
    assert isinstance(open_archive_bytes(archive[:-1], FRAGMENT).failure(), CorruptResource)
    assert isinstance(open_archive_bytes(archive[:-16], FRAGMENT).failure(), WrongKey)
