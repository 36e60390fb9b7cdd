"""Publisher signatures: pinned keys win, the vouched key is the fallback, the rest is refused."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from splitvault.domain import signature as s
from splitvault.domain.errors import UntrustedPublisher

PUBLISHER = s.PublisherKey.from_seed(bytes(range(32)))
ROGUE = s.PublisherKey.from_seed(bytes(range(1, 33)))
HEADER = b"SPLITVLT header bytes: file id, folder, name, lengths, commitment, digest"
HEAD = b"the ciphertext the small part carries"
MESSAGE = s.statement(HEADER, HEAD)
SIGNATURE = s.sign(PUBLISHER, MESSAGE)


def refused(result: object) -> UntrustedPublisher:
    assert isinstance(result, Failure), result
    failure = result.failure()
    assert isinstance(failure, UntrustedPublisher)
    return failure


def test_known_answer() -> None:
    """Ed25519 is deterministic: a fixed seed and statement give this public key and signature."""
    assert PUBLISHER.public.hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    )
    assert s.sign(PUBLISHER, MESSAGE) == SIGNATURE
    assert len(SIGNATURE) == 64 and PUBLISHER.key_id == s.key_id(PUBLISHER.public)
    assert PUBLISHER.seed.hex() not in repr(PUBLISHER)


def test_pinned_keys_win_over_what_the_server_vouches_for() -> None:
    """A rogue signature is refused when keys are pinned, even if the server vouches for it."""
    rogue_signature = s.sign(ROGUE, MESSAGE)
    assert s.verify("m", SIGNATURE, MESSAGE, pinned=[PUBLISHER.public]) == Success(PUBLISHER.public)
    refused(
        s.verify("m", rogue_signature, MESSAGE, pinned=[PUBLISHER.public], vouched=ROGUE.public)
    )
    assert s.verify("m", rogue_signature, MESSAGE, vouched=ROGUE.public) == Success(ROGUE.public)
    assert "no key is pinned" in refused(s.verify("m", SIGNATURE, MESSAGE)).detail


def test_unsigned_content_is_untrusted() -> None:
    """No signature or a truncated one is refused with a message that says so."""
    assert (
        "no publisher signature"
        in refused(s.verify("m", None, MESSAGE, vouched=PUBLISHER.public)).detail
    )
    refused(s.verify("m", SIGNATURE[:63], MESSAGE, vouched=PUBLISHER.public))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_in_header_head_or_signature_is_refused(data: st.DataObject) -> None:
    """Change one bit anywhere a signature covers, or in the signature: refused."""
    target = data.draw(st.sampled_from(["header", "head", "signature"]))
    parts = {"header": HEADER, "head": HEAD, "signature": SIGNATURE}
    value = parts[target]
    at = data.draw(st.integers(0, len(value) - 1))
    bit = data.draw(st.integers(0, 7))
    parts[target] = value[:at] + bytes([value[at] ^ (1 << bit)]) + value[at + 1 :]
    message = s.statement(parts["header"], parts["head"])
    refused(s.verify("m", parts["signature"], message, pinned=[PUBLISHER.public]))


def test_the_statement_fixes_where_the_header_ends() -> None:
    """Moving bytes between header and head changes the statement (length prefix)."""
    assert s.statement(b"ab", b"c") != s.statement(b"a", b"bc")


def test_the_readme_vector_from_the_written_spec() -> None:
    """An independent reading of the README's statement, with raw primitives, gives its bytes."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    message = (
        b"splitvault/2/publisher-signature\x00"
        + len(b"header").to_bytes(4, "big")
        + b"header"
        + hashlib.sha256(b"head").digest()
    )
    assert message == s.statement(b"header", b"head")
    signature = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).sign(message)
    assert signature.hex() == (
        "b80c5d17429199554d198c6d5aff204cafc4438e9d5dd890d1d7cc0bbc152904"
        "810e66a02e9fb100a0f94639e0203e4b0716ed2c4c869cd04a7e6158a4956e04"
    )
    assert s.key_id(PUBLISHER.public) == "3f38cb0ba3ca9598"


def test_the_signed_small_part_framing_known_answer() -> None:
    """README "Publisher signatures": the framing of inner = "header" || "head" (header 6 bytes)
    is the magic, the public key and the known-answer signature, then the inner bytes."""
    key = s.PublisherKey.from_seed(bytes(range(32)))
    framed = s.sign_small_part(key, b"headerhead", 6)
    expected_signature = bytes.fromhex(
        "b80c5d17429199554d198c6d5aff204cafc4438e9d5dd890d1d7cc0bbc152904"
        "810e66a02e9fb100a0f94639e0203e4b0716ed2c4c869cd04a7e6158a4956e04"
    )
    assert framed == b"SVSIG2\x00\x00" + key.public + expected_signature + b"headerhead"
    part = s.split_signed(framed)
    assert part is not None
    assert (part.public, part.signature, part.inner) == (
        key.public,
        expected_signature,
        b"headerhead",
    )
    assert s.signed_public(part, 6) == key.public
    assert s.signed_public(part, 5) is None  # the header boundary is signed too


def test_unsigned_or_truncated_parts_are_not_taken_for_signed_ones() -> None:
    assert s.split_signed(b"SPLITVLT" + bytes(200)) is None
    assert s.split_signed(s.SIGNED_MAGIC + bytes(s.PUBLIC_KEY_BYTES + s.SIGNATURE_BYTES)) is None
    assert not s.is_signed(b"")
