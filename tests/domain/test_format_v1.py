"""Properties of resource format v1: round trips and every tampering detected."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from splitvault.domain import format_v1
from splitvault.domain.errors import (
    CorruptResource,
    LimitExceeded,
    PartMismatch,
    UnsupportedFormat,
    WrongKey,
)
from splitvault.domain.format_v1 import open_bytes, parse_header, plan, seal_bytes
from splitvault.domain.ref import ResourceRef
from splitvault.domain.split import SplitRule

REF = ResourceRef("models", "resnet.onnx")
DEK = bytes(range(32))
FILE_ID = bytes(range(100, 116))
CHUNK = 64


def sealed(plaintext: bytes, **kwargs: object) -> tuple[bytes, bytes]:
    params: dict[str, object] = {"dek": DEK, "file_id": FILE_ID, "chunk_size": CHUNK}
    params.update(kwargs)
    return seal_bytes(REF, plaintext, **params).unwrap()  # type: ignore[arg-type]


def boundary_lengths(chunk: int) -> list[int]:
    return sorted({0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, 5 * chunk, 5 * chunk + 3})


@pytest.mark.parametrize("chunk", [16, 17, 64, 1000])
def test_round_trip_around_chunk_boundaries(chunk: int) -> None:
    """seal then open gives the plaintext back for lengths 0, 1, c-1, c, c+1 and k*c."""
    for length in boundary_lengths(chunk):
        plaintext = bytes((i * 7) % 251 for i in range(length))
        small, big = sealed(plaintext, chunk_size=chunk)
        assert open_bytes(small, big) == Success(plaintext)


@given(st.binary(max_size=3000), st.integers(min_value=16, max_value=300))
@settings(max_examples=150)
def test_round_trip_any_length_and_chunk(plaintext: bytes, chunk: int) -> None:
    """Any plaintext round-trips with any chunk size, and the split rule holds."""
    small, big = sealed(plaintext, chunk_size=chunk)
    assert open_bytes(small, big, expected_ref=REF) == Success(plaintext)
    header, header_length = parse_header(small).unwrap()
    stream_length = header.layout.ciphertext_length
    assert len(small) - header_length == SplitRule().small_length(stream_length)
    assert len(small) - header_length + len(big) == stream_length


def test_ciphertext_never_contains_the_plaintext() -> None:
    """Neither part carries a recognisable run of the plaintext."""
    plaintext = b"SECRET-WEIGHTS-" * 500
    small, big = sealed(plaintext, chunk_size=1024)
    assert b"SECRET-WEIGHTS" not in small
    assert b"SECRET-WEIGHTS" not in big


@given(st.data())
@settings(max_examples=200)
def test_every_single_bit_flip_is_detected(data: st.DataObject) -> None:
    """Flipping any bit of either part gives a typed failure, never plaintext."""
    plaintext = b"model-bytes " * 40
    small, big = sealed(plaintext)
    target = data.draw(st.sampled_from(["small", "big"]))
    part = bytearray(small if target == "small" else big)
    position = data.draw(st.integers(min_value=0, max_value=len(part) * 8 - 1))
    part[position // 8] ^= 1 << (position % 8)
    result = open_bytes(bytes(part), big) if target == "small" else open_bytes(small, bytes(part))
    assert isinstance(result, Failure)
    assert isinstance(
        result.failure(),
        CorruptResource | WrongKey | PartMismatch | UnsupportedFormat | LimitExceeded,
    )


@given(st.integers(min_value=1, max_value=200), st.sampled_from(["small", "big"]))
@settings(max_examples=100)
def test_truncation_is_detected(cut: int, target: str) -> None:
    """A truncated small or big part is refused."""
    small, big = sealed(b"x" * 700)
    if target == "small":
        result = open_bytes(small[: max(0, len(small) - cut)], big)
    else:
        result = open_bytes(small, big[: max(0, len(big) - cut)])
    assert isinstance(result, Failure)


def test_extension_is_detected() -> None:
    """Bytes appended to either part are refused."""
    small, big = sealed(b"x" * 700)
    assert isinstance(open_bytes(small + b"\0", big), Failure)
    assert isinstance(open_bytes(small, big + b"\0"), Failure)


def test_chunk_reordering_is_detected_even_with_a_matching_hash() -> None:
    """Swapping two chunks of the stream fails authentication even if the hash were right."""
    plaintext = bytes(range(256)) * 4
    small, big = sealed(plaintext, chunk_size=64, rule=SplitRule(cap=0))
    header, _ = parse_header(small).unwrap()
    size = 64 + 16
    chunks = [big[i : i + size] for i in range(0, len(big), size)]
    chunks[0], chunks[1] = chunks[1], chunks[0]
    opener = format_v1.Opener.start(small).unwrap()
    out = memoryview(bytearray(64))
    assert isinstance(opener.open_chunk_into(0, chunks[0], out), Failure)
    assert header.layout.chunk_count == len(chunks)


def test_small_part_of_one_resource_with_big_part_of_another() -> None:
    """Mixing the parts of two resources (same length) is refused."""
    small_a, big_a = sealed(b"a" * 500)
    small_b, big_b = sealed(b"b" * 500, dek=bytes(32), file_id=bytes(16))
    assert len(big_a) == len(big_b)
    assert isinstance(open_bytes(small_a, big_b), Failure)
    assert isinstance(open_bytes(small_b, big_a), Failure)


def test_wrong_data_key_is_refused_by_the_commitment() -> None:
    """A header whose data key was swapped no longer matches its commitment."""
    small, big = sealed(b"z" * 300)
    tampered = small.replace(DEK, bytes(32), 1)
    result = open_bytes(tampered, big)
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), WrongKey)


def test_publisher_key_wrapping() -> None:
    """A wrapped data key opens only with the publisher key it was wrapped under."""
    publisher = b"P" * 32
    small, big = sealed(b"w" * 300, publisher_key=publisher, wrap_nonce=b"N" * 12)
    assert DEK not in small
    assert open_bytes(small, big, publisher_key=publisher) == Success(b"w" * 300)
    for key in (None, b"Q" * 32):
        result = open_bytes(small, big, publisher_key=key)
        assert isinstance(result, Failure)
        assert isinstance(result.failure(), WrongKey)


def test_expected_ref_mismatch_is_refused() -> None:
    """A small part served for another name is refused before decryption."""
    small, big = sealed(b"q" * 100)
    result = open_bytes(small, big, expected_ref=ResourceRef("models", "other"))
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), PartMismatch)


@given(st.binary(max_size=400))
def test_random_bytes_as_small_part_fail_cleanly(junk: bytes) -> None:
    """Random bytes (with or without the magic) are a typed failure, never an exception."""
    for candidate in (junk, format_v1.MAGIC + junk):
        assert isinstance(open_bytes(candidate, b""), Failure)


def test_huge_claimed_lengths_are_refused_before_allocation() -> None:
    """A header claiming a petabyte plaintext or a giant chunk is refused by the limits."""
    assert plan(format_v1.MAX_PLAINTEXT_LENGTH + 1) == Failure(
        LimitExceeded("plaintext length", format_v1.MAX_PLAINTEXT_LENGTH, 2**50 + 1)
    )
    assert isinstance(plan(10, chunk_size=format_v1.MAX_CHUNK_SIZE + 1), Failure)
    small, _ = sealed(b"a" * 10)
    forged = bytearray(small)
    forged[12:16] = (format_v1.MAX_CHUNK_SIZE * 4).to_bytes(4, "big")
    result = parse_header(bytes(forged))
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), LimitExceeded)


def test_known_answer_vector() -> None:
    """The README's known-answer vector: fixed key, file id and plaintext give these bytes."""
    small, big = seal_bytes(
        ResourceRef("models", "kat"),
        b"splitvault known-answer vector v1",
        dek=bytes(range(32)),
        file_id=bytes(range(16)),
        chunk_size=16,
    ).unwrap()
    assert small.hex() == KAT_SMALL_HEX
    assert big.hex() == KAT_BIG_HEX


def test_known_answer_vector_from_the_written_spec() -> None:
    """An independent reading of the README's wire format reproduces the vector's bytes."""
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def hkdf(info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=bytes(range(16)), info=info).derive(bytes(range(32)))

    small = bytes.fromhex(KAT_SMALL_HEX)
    big = bytes.fromhex(KAT_BIG_HEX)
    header_length = len(small) - 24  # 30 % of the 81-byte ciphertext stream, floored
    prefix, big_sha, mac = (
        small[: header_length - 64],
        small[header_length - 64 : header_length - 32],
        small[header_length - 32 : header_length],
    )
    assert prefix.endswith(hkdf(b"splitvault/v1/key-commitment"))
    mac_key = hkdf(b"splitvault/v1/header-mac")
    signer = hmac.HMAC(mac_key, hashes.SHA256())
    signer.update(prefix + big_sha)
    assert signer.finalize() == mac
    # The big part's digest: BLAKE3 over a label, its length and each chunk's big-part share's
    # BLAKE3. The small part took 24 bytes of the first 32-byte chunk: segments 8, 32, 17.
    leaves = [blake3(big[a:b]).digest() for a, b in ((0, 8), (8, 40), (40, 57))]
    label = b"splitvault/v1/big-part-digest\x00" + len(big).to_bytes(8, "big")
    assert blake3(label + b"".join(leaves)).digest() == big_sha
    aad = hashlib.sha256(b"splitvault/v1/chunk-aad\x00" + prefix).digest()
    stream = small[header_length:] + big
    aead = AESGCM(hkdf(b"splitvault/v1/chunk-key"))
    plaintext = b""
    for index, start in enumerate(range(0, len(stream), 32)):
        final = start + 32 >= len(stream)
        nonce = index.to_bytes(11, "big") + bytes([final])
        plaintext += aead.decrypt(nonce, stream[start : start + 32], aad)
    assert plaintext == b"splitvault known-answer vector v1"


def test_known_answer_vector_is_the_one_the_readme_prints() -> None:
    """The README's "Wire format" section prints exactly the vector these tests check."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split("**Known-answer vector**", 1)[1].split("```", 2)[1]
    small, big = block.split("big   =")
    assert "".join(small.replace("small =", "").split()) == KAT_SMALL_HEX
    assert "".join(big.split()) == KAT_BIG_HEX


KAT_SMALL_HEX = (
    "53504c4954564c5401010000000000100000000000000021000102030405060708090a0b0c0d0e0f"
    "00000018000000000000003900066d6f64656c7300036b617420000102030405060708090a0b0c0d"
    "0e0f101112131415161718191a1b1c1d1e1f6ec8fa0b1f6a53e358a044baba425b81c8732b35a39f"
    "b056988f22899e9c7fdbb418ca6282f6c98e6b2b1b95cbd2bc81891ec896102598109fcf2ecbc045"
    "a25458e7c9d495eb7cd523028f211589851b619918e8fb2cb5c9a1db207714c2db9bb063f49ce8fa"
    "0de2b73a24f98d0e7d8bec3d4aa1f3baf785"
)
KAT_BIG_HEX = (
    "7c5ec69094855adf40e2c224ae60e30ca380217cb13e3406529f063453d8c3b561a45d4521dc52ab"
    "d2fbd8b7b0e673d93d6d2c535babf66d24"
)
