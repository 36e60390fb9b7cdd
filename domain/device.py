"""Device keys and the envelopes the API seals to them (protocol 2, HPKE).

A client machine has an X25519 key pair. By default the private key is *derived*, not stored, so a
fresh container on the same machine needs no saved state:

- ``password_key = Argon2id(NFKC(password), salt)`` with the per-user random ``salt`` the server
  returns at ``/login`` (16 bytes; no more e-mail-derived salt);
- ``seed = HKDF-SHA256(ikm=password_key, salt=none, info=DEVICE_INFO || u16(len(fp)) || fp ||
  u16(len(secret)) || secret)``, ``secret`` empty unless the optional device secret (32 random bytes
  kept 0600 on the machine) is configured, so a copied fingerprint value is not enough to derive
  the key. (The secret goes in ``info``, length-prefixed, not in HKDF's salt: an empty salt *is*
  32 zero bytes there, so an all-zero secret would have been no secret.)
- the private key is ``X25519(seed)``; the device id is the first 16 bytes of
  ``SHA-256(DEVICE_ID_LABEL || public key)``, in hex.

The server holds only public keys. It seals each small part, ``cdn.yaml`` and key fragment it hands
out with HPKE base mode (RFC 9180; DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM), with an
``info`` that binds the protocol version, the device id, the kind of thing delivered, its subject
(``folder/name``, or the fragment's version) and its version, so an envelope cannot be replayed as
another resource, another version or to another device. Wire form: ``MAGIC || enc(32) || ct``.

HPKE's ephemeral key comes from the library's CSPRNG (pyca/cryptography offers no way to pass it
in), so ``seal`` is the one function here that is not deterministic; ``open`` is.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Final, Literal

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from returns.result import Failure, Result, Success

from splitvault.domain.errors import CorruptResource, UnsupportedFormat, WrongKey
from splitvault.domain.keys import (
    ARGON2_ITERATIONS,
    ARGON2_LANES,
    ARGON2_MEMORY_KIB,
    KEY_BYTES,
    hkdf,
)

PROTOCOL: Final = 2
SALT_BYTES: Final = 16
DEVICE_SECRET_BYTES: Final = 32
PUBLIC_KEY_BYTES: Final = 32
ENC_BYTES: Final = 32  # X25519's encapsulated key
TAG_BYTES: Final = 16
MAGIC: Final = b"SVE2"  # splitvault envelope, protocol 2
DEVICE_INFO: Final = b"splitvault/2/device-key\x00"
DEVICE_ID_LABEL: Final = b"splitvault/2/device-id\x00"
PUBLISHER_SEED_INFO: Final = b"splitvault/2/publisher-signing-key\x00"
FINGERPRINT_TAG_INFO: Final = b"splitvault/2/fingerprint-tag\x00"
ENVELOPE_LABEL: Final = b"splitvault/2/envelope\x00"

SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

Kind = Literal["small-part", "cdn-config", "key-fragment"]
KINDS: Final = ("small-part", "cdn-config", "key-fragment")


@attrs.frozen
class DeviceKey:
    """A device's key pair as bytes; the private half never leaves the machine."""

    private: bytes = attrs.field(repr=False)
    public: bytes

    @property
    def device_id(self) -> str:
        """32 hex digits naming this device (derived from the public key)."""
        return device_id(self.public)


def password_key(password: str, salt: bytes) -> bytes:
    """Argon2id over the NFKC-normalised password with the account's random salt."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"the account salt is {SALT_BYTES} bytes")
    kdf = Argon2id(
        salt=salt,
        length=KEY_BYTES,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive(unicodedata.normalize("NFKC", password).encode())


def _field(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("an info field is at most 65535 bytes")
    return len(value).to_bytes(2, "big") + value


def derive_device_key(
    password_key_bytes: bytes, fingerprint: str, device_secret: bytes | None = None
) -> DeviceKey:
    """The device key pair for one account on one machine (see the module docstring)."""
    if len(password_key_bytes) != KEY_BYTES:
        raise ValueError("the password key is 32 bytes")
    if device_secret is not None and len(device_secret) != DEVICE_SECRET_BYTES:
        raise ValueError(f"a device secret is {DEVICE_SECRET_BYTES} bytes")
    info = DEVICE_INFO + _field(fingerprint.encode()) + _field(device_secret or b"")
    seed = hkdf(password_key_bytes, info)
    private = X25519PrivateKey.from_private_bytes(seed)
    return DeviceKey(seed, private.public_key().public_bytes_raw())


def publisher_seed(password_key_bytes: bytes) -> bytes:
    """The Ed25519 seed of an account's default publisher signing key.

    ``HKDF-SHA256(ikm=password_key, salt=none, info=PUBLISHER_SEED_INFO)``: one key per account,
    the same on every machine and container of it (no fingerprint, no device secret), so every
    upload is signed without a key file and CI runners need no saved state. It is only as strong
    as the password; a key file (``publisher_signing_key_file``) replaces it for publishers whose
    signatures must outlive a password change or a password leak.
    """
    if len(password_key_bytes) != KEY_BYTES:
        raise ValueError("the password key is 32 bytes")
    return hkdf(password_key_bytes, PUBLISHER_SEED_INFO)


def device_id(public_key: bytes) -> str:
    """The id the server files a device public key under."""
    return hashlib.sha256(DEVICE_ID_LABEL + public_key).digest()[:16].hex()


def fingerprint_tag(password_key_bytes: bytes, fingerprint: str) -> str:
    """What enrolment sends instead of the fingerprint: a hash keyed by the password key, so the
    server can tell two enrolments of one machine apart from two machines, and learns nothing it
    could replay."""
    return hmac.new(
        password_key_bytes, FINGERPRINT_TAG_INFO + fingerprint.encode(), "sha256"
    ).hexdigest()


def envelope_info(
    kind: Kind, device: str, subject: str, version: str, publisher: bytes = b""
) -> bytes:
    """HPKE ``info``: label, protocol, then length-prefixed device id, kind, subject, version,
    and, only when the answer vouches for a publisher key (a key fragment's), that key."""
    if kind not in KINDS:
        raise ValueError(f"unknown envelope kind {kind!r}")
    # Appended only when present, so every envelope without one keeps the info it always had.
    vouched = _field(publisher) if publisher else b""
    return (
        ENVELOPE_LABEL
        + PROTOCOL.to_bytes(1, "big")
        + b"".join(_field(part.encode()) for part in (device, kind, subject, version))
        + vouched
    )


def seal(plaintext: bytes, public_key: bytes, info: bytes) -> bytes:
    """Seal ``plaintext`` to a device public key: ``MAGIC || enc || ciphertext``."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("an X25519 public key is 32 bytes")
    recipient = X25519PublicKey.from_public_bytes(public_key)
    return MAGIC + SUITE.encrypt(plaintext, recipient, info=info)


def open_envelope(
    envelope: bytes, private_key: bytes, info: bytes
) -> Result[bytes, WrongKey | CorruptResource | UnsupportedFormat]:
    """Undo ``seal``. Another device, another resource or version, or any change is ``WrongKey``."""
    if len(envelope) < len(MAGIC):
        return Failure(CorruptResource("the envelope", f"{len(envelope)} bytes, too short"))
    if envelope[: len(MAGIC)] != MAGIC:
        return Failure(
            UnsupportedFormat("the envelope is not protocol 2 (HPKE): upgrade the client or server")
        )
    if len(envelope) < len(MAGIC) + ENC_BYTES + TAG_BYTES:
        return Failure(CorruptResource("the envelope", f"{len(envelope)} bytes, truncated"))
    if len(private_key) != KEY_BYTES:
        raise ValueError("an X25519 private key is 32 bytes")
    try:
        opened = SUITE.decrypt(
            envelope[len(MAGIC) :], X25519PrivateKey.from_private_bytes(private_key), info=info
        )
    except InvalidTag:
        return Failure(
            WrongKey("the envelope (sealed to another device, resource or version, or altered)")
        )
    return Success(opened)


@attrs.frozen
class Sealed:
    """An envelope as the API delivers it: the bytes, and the device and version its ``info``
    binds (from the answer's headers; a wrong value there only makes the envelope not open)."""

    envelope: bytes = attrs.field(repr=False)
    device: str
    version: str
    publisher: bytes = b""  # the publisher key a key fragment's answer vouches for, if any


def open_delivered(
    sealed: Sealed, key: DeviceKey, kind: Kind, subject: str
) -> Result[bytes, WrongKey | CorruptResource | UnsupportedFormat]:
    """Open what the API sealed for ``key``'s device as ``kind`` of ``subject``.

    An envelope addressed to another device is ``WrongKey`` before any decryption is tried.
    """
    if sealed.device != key.device_id:
        return Failure(
            WrongKey(
                f"the envelope (sealed to device {sealed.device[:32]!r}, this machine is "
                f"{key.device_id}): log in again from this machine"
            )
        )
    info = envelope_info(kind, key.device_id, subject, sealed.version, sealed.publisher)
    return open_envelope(sealed.envelope, key.private, info)
