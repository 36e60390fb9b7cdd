"""Device keys and HPKE envelopes: derivation, binding, and typed failures on anything else."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from splitvault.domain import device as d
from splitvault.domain.errors import CorruptResource, UnsupportedFormat, WrongKey

PASSWORD = "correct horse battery staple"
SALT = bytes(range(16))
FINGERPRINT = "kat-fingerprint"
VERSION = bytes(range(16)).hex()

KAT_PASSWORD_KEY = "818259b6310026a8e0dbac5d2e6927abcfdb07b32258fac4f61b18b80f929085"
KAT_PUBLIC = "a3068aa74409260c79e3f769ac2a039dfc11c184b9179cced899c27403d3b920"
KAT_DEVICE_ID = "8e8bd8fdd065514c44e22b3972a0b27e"
KAT_PUBLIC_WITH_SECRET = "0f190a774ba1aa20e898fb63301291b3c9bb783a91f57083a54c528a86b95514"
KAT_SIGNER = "00d9591f7a40bd4387c2d767ea92373a8d9bbcb9c0c7fa5845f50962ba1b0433"
KAT_ENVELOPE = (
    "5356453297e23e8ed93b9bd71c51ccfbe24e00b3f05373f26cee3b8c860aa61e02bac54bb3226e76acad55"
    "ae7b7a734de8b4ddea087b8e641d5d8a83f3dc1c3a66e95023e39a63cd3fc8c8bed146"
)
KAT_PLAINTEXT = b"splitvault envelope vector"

# Argon2id runs once for the whole module (19 MiB, two passes).
PASSWORD_KEY = d.password_key(PASSWORD, SALT)
DEVICE = d.derive_device_key(PASSWORD_KEY, FINGERPRINT)
OTHER = d.derive_device_key(PASSWORD_KEY, "another machine")


def info(subject: str = "models/kat", version: str = VERSION, device: str | None = None) -> bytes:
    return d.envelope_info("small-part", device or DEVICE.device_id, subject, version)


def test_known_answer_vector() -> None:
    """Fixed password, salt and fingerprint give the README's key, id and an openable envelope."""
    assert PASSWORD_KEY.hex() == KAT_PASSWORD_KEY
    assert DEVICE.public.hex() == KAT_PUBLIC and DEVICE.device_id == KAT_DEVICE_ID
    secret = bytes(range(32, 64))
    assert d.derive_device_key(PASSWORD_KEY, FINGERPRINT, secret).public.hex() == (
        KAT_PUBLIC_WITH_SECRET
    )
    assert d.open_envelope(bytes.fromhex(KAT_ENVELOPE), DEVICE.private, info()) == Success(
        KAT_PLAINTEXT
    )


def test_known_answer_vector_from_the_written_spec() -> None:
    """An independent reading of the README's text, with raw primitives, opens the vector."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def field(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    seed = HKDF(
        hashes.SHA256(),
        32,
        salt=None,
        info=b"splitvault/2/device-key\x00" + field(FINGERPRINT.encode()) + field(b""),
    ).derive(bytes.fromhex(KAT_PASSWORD_KEY))
    private = X25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes_raw()
    assert public.hex() == KAT_PUBLIC
    device_id = hashlib.sha256(b"splitvault/2/device-id\x00" + public).digest()[:16].hex()
    assert device_id == KAT_DEVICE_ID
    hpke_info = (
        b"splitvault/2/envelope\x00"
        + bytes([2])
        + field(device_id.encode())
        + field(b"small-part")
        + field(b"models/kat")
        + field(VERSION.encode())
    )
    envelope = bytes.fromhex(KAT_ENVELOPE)
    assert envelope[:4] == b"SVE2"
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    assert suite.decrypt(envelope[4:], private, info=hpke_info) == KAT_PLAINTEXT


def test_the_default_publisher_key_from_the_written_spec() -> None:
    """README's ``signer`` line read with raw primitives gives its public key, and the domain's
    derivation agrees; the key depends on the password key only (every machine signs alike)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from splitvault.domain.signature import PublisherKey

    seed = HKDF(
        hashes.SHA256(), 32, salt=None, info=b"splitvault/2/publisher-signing-key\x00"
    ).derive(bytes.fromhex(KAT_PASSWORD_KEY))
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert public.hex() == KAT_SIGNER
    assert PublisherKey.from_seed(d.publisher_seed(PASSWORD_KEY)).public.hex() == KAT_SIGNER
    assert d.publisher_seed(d.password_key("another password", SALT)) != seed
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert f"signer = {KAT_SIGNER}" in readme


def test_the_device_secret_and_the_fingerprint_each_change_the_key() -> None:
    """A copied fingerprint alone does not give the key once a device secret is mixed in."""
    with_secret = d.derive_device_key(PASSWORD_KEY, FINGERPRINT, bytes(32))
    assert len({DEVICE.public, OTHER.public, with_secret.public}) == 3
    assert d.derive_device_key(PASSWORD_KEY, FINGERPRINT) == DEVICE  # derived, not stored
    assert "private" not in repr(DEVICE) and DEVICE.private.hex() not in repr(DEVICE)


def test_the_fingerprint_tag_is_keyed_and_hides_the_fingerprint() -> None:
    """Enrolment sends a tag the server cannot compute without the password key."""
    tag = d.fingerprint_tag(PASSWORD_KEY, FINGERPRINT)
    assert FINGERPRINT not in tag
    assert tag != d.fingerprint_tag(bytes(32), FINGERPRINT)
    assert tag == d.fingerprint_tag(PASSWORD_KEY, FINGERPRINT)


@settings(max_examples=40, deadline=None)
@given(plaintext=st.binary(max_size=4096))
def test_an_envelope_opens_only_on_its_device_for_its_subject_and_version(
    plaintext: bytes,
) -> None:
    """Wrong device, wrong folder/name, wrong version or wrong kind: WrongKey, never bytes."""
    envelope = d.seal(plaintext, DEVICE.public, info())
    assert d.open_envelope(envelope, DEVICE.private, info()) == Success(plaintext)
    wrong = [
        (OTHER.private, info()),
        (DEVICE.private, info(subject="models/other")),
        (DEVICE.private, info(version="ff" * 16)),
        (DEVICE.private, info(device=OTHER.device_id)),
        (DEVICE.private, d.envelope_info("cdn-config", DEVICE.device_id, "models/kat", VERSION)),
    ]
    for private, other_info in wrong:
        opened = d.open_envelope(envelope, private, other_info)
        assert isinstance(opened, Failure) and isinstance(opened.failure(), WrongKey)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_truncated_or_flipped_envelope_is_a_typed_failure(data: st.DataObject) -> None:
    """Any cut or any flipped bit ends as CorruptResource, UnsupportedFormat or WrongKey."""
    envelope = d.seal(b"small part bytes", DEVICE.public, info())
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(envelope) - 1), label="length")
        damaged = envelope[:cut]
    else:
        at = data.draw(st.integers(0, len(envelope) - 1), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        damaged = envelope[:at] + bytes([envelope[at] ^ (1 << bit)]) + envelope[at + 1 :]
    opened = d.open_envelope(damaged, DEVICE.private, info())
    assert isinstance(opened, Failure)
    assert isinstance(opened.failure(), CorruptResource | UnsupportedFormat | WrongKey)


def test_info_fields_cannot_be_shifted_into_each_other() -> None:
    """Length prefixes: ("ab", "c") and ("a", "bc") give different info."""
    assert d.envelope_info("small-part", "x", "ab", "c") != d.envelope_info(
        "small-part", "x", "a", "bc"
    )
    with pytest.raises(ValueError, match="unknown envelope kind"):
        d.envelope_info("everything", "x", "a", "b")  # type: ignore[arg-type]


@given(
    kind=st.sampled_from(d.KINDS),
    subject=st.text(min_size=1, max_size=40),
    version=st.text(min_size=1, max_size=40),
    lie=st.sampled_from(["none", "device", "version", "kind", "subject"]),
)
@settings(max_examples=60)
def test_a_delivered_envelope_opens_only_as_what_was_asked_for(
    kind: d.Kind, subject: str, version: str, lie: str
) -> None:
    """``open_delivered`` opens an answer for the device, kind and subject asked for and the
    version the headers name; another device in the header, another version, kind or subject
    is a typed failure (never the plaintext)."""
    mine = d.derive_device_key(bytes(32), "mine")
    other = d.derive_device_key(bytes(32), "other")
    envelope = d.seal(
        b"payload", mine.public, d.envelope_info(kind, mine.device_id, subject, version)
    )
    sealed = d.Sealed(envelope, mine.device_id, version)
    asked_kind: d.Kind = kind
    asked_subject = subject
    if lie == "device":
        sealed = d.Sealed(envelope, other.device_id, version)
    elif lie == "version":
        sealed = d.Sealed(envelope, mine.device_id, version + "x")
    elif lie == "kind":
        asked_kind = next(k for k in d.KINDS if k != kind)
    elif lie == "subject":
        asked_subject = subject + "/x"
    opened = d.open_delivered(sealed, mine, asked_kind, asked_subject)
    if lie == "none":
        assert opened == Success(b"payload")
    else:
        assert isinstance(opened, Failure) and isinstance(opened.failure(), WrongKey)
    assert isinstance(
        d.open_delivered(
            d.Sealed(envelope, mine.device_id, version), other, kind, subject
        ).failure(),
        WrongKey,
    )
