"""Key derivation and the transport envelope.

- The **transport key** protects a small part on its way from the API to one user on one machine:
  Argon2id over the NFKC-normalised password, salted by the case-folded e-mail, then HKDF-SHA256
  with the machine's hardware fingerprint in ``info``. Client and server derive the same key.
- The **data key** (DEK) of a resource is 32 random bytes chosen by the caller; HKDF turns it into
  independent subkeys for chunk encryption, the header MAC and the key commitment.
- A **publisher key** can wrap the DEK (AES-256-GCM, file id as associated data) so that a leaked
  API store alone does not yield data keys.

Randomness (DEK, nonces) is always passed in.
"""

from __future__ import annotations

import hashlib
import unicodedata

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from returns.result import Failure, Result, Success

from splitvault.domain.errors import CorruptResource, WrongKey

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_DEK_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES

ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_ITERATIONS = 2
ARGON2_LANES = 1


def hkdf(ikm: bytes, info: bytes, *, salt: bytes | None = None, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of ``ikm`` for one purpose (``info``)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def email_salt(email: str) -> bytes:
    """The Argon2id salt for a user: 16 bytes of SHA-256 over the case-folded, trimmed e-mail."""
    canonical = unicodedata.normalize("NFKC", email.strip()).casefold()
    return hashlib.sha256(b"splitvault/v1/email-salt\x00" + canonical.encode()).digest()[:16]


def password_key(password: str, email: str) -> bytes:
    """Argon2id(NFKC(password), email_salt(email)): the costly, fingerprint-free half."""
    normalised = unicodedata.normalize("NFKC", password).encode()
    kdf = Argon2id(
        salt=email_salt(email),
        length=KEY_BYTES,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive(normalised)


def transport_key_from_password_key(password_key_bytes: bytes, fingerprint: str) -> bytes:
    """HKDF the Argon2id output with the hardware fingerprint: binds the key to one machine."""
    return hkdf(password_key_bytes, b"splitvault/v1/transport\x00" + fingerprint.encode())


def transport_key(password: str, email: str, fingerprint: str) -> bytes:
    """The key a small part travels under, for one user on one machine."""
    return transport_key_from_password_key(password_key(password, email), fingerprint)


def _transport_aad(context: str) -> bytes:
    return b"splitvault/v1/transport-envelope\x00" + context.encode()


def seal_envelope(key: bytes, nonce: bytes, plaintext: bytes, context: str) -> bytes:
    """``nonce || AES-256-GCM(key, nonce, plaintext, aad=context)``; the caller draws the nonce."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("envelope nonce must be 12 bytes")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _transport_aad(context))


def open_envelope(key: bytes, envelope: bytes, context: str) -> Result[bytes, WrongKey]:
    """Undo ``seal_envelope``; a wrong key, another context or any change is ``WrongKey``."""
    if len(envelope) < NONCE_BYTES + TAG_BYTES:
        return Failure(WrongKey("the transport envelope (too short to be one)"))
    nonce, body = envelope[:NONCE_BYTES], envelope[NONCE_BYTES:]
    try:
        return Success(AESGCM(key).decrypt(nonce, body, _transport_aad(context)))
    except InvalidTag:
        return Failure(
            WrongKey("the transport envelope (password, e-mail or machine fingerprint differ)")
        )


@attrs.frozen
class DataSubkeys:
    """The independent keys HKDF derives from one data key for one file id."""

    chunk_key: bytes = attrs.field(repr=False)
    header_mac_key: bytes = attrs.field(repr=False)
    commitment: bytes = attrs.field(repr=False)


def data_subkeys(dek: bytes, file_id: bytes) -> DataSubkeys:
    """Derive the chunk key, header MAC key and key commitment of one resource."""
    if len(dek) != KEY_BYTES:
        raise ValueError("a data key is 32 bytes")
    return DataSubkeys(
        chunk_key=hkdf(dek, b"splitvault/v1/chunk-key", salt=file_id),
        header_mac_key=hkdf(dek, b"splitvault/v1/header-mac", salt=file_id),
        commitment=hkdf(dek, b"splitvault/v1/key-commitment", salt=file_id),
    )


def _wrap_aad(file_id: bytes) -> bytes:
    return b"splitvault/v1/dek-wrap\x00" + file_id


def wrap_dek(publisher_key: bytes, dek: bytes, file_id: bytes, nonce: bytes) -> bytes:
    """Wrap a data key under the publisher key: ``nonce || GCM(dek)``, 60 bytes."""
    if len(publisher_key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError("publisher key is 32 bytes and the wrap nonce 12")
    return nonce + AESGCM(_publisher_kek(publisher_key)).encrypt(nonce, dek, _wrap_aad(file_id))


def unwrap_dek(
    publisher_key: bytes, wrapped: bytes, file_id: bytes
) -> Result[bytes, WrongKey | CorruptResource]:
    """Undo ``wrap_dek``; another publisher key or a changed file id is ``WrongKey``."""
    if len(wrapped) != WRAPPED_DEK_BYTES:
        return Failure(CorruptResource("the wrapped data key", f"{len(wrapped)} bytes, not 60"))
    if len(publisher_key) != KEY_BYTES:
        return Failure(WrongKey("the wrapped data key (publisher key is not 32 bytes)"))
    nonce, body = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
    try:
        kek = AESGCM(_publisher_kek(publisher_key))
        return Success(kek.decrypt(nonce, body, _wrap_aad(file_id)))
    except InvalidTag:
        return Failure(WrongKey("the wrapped data key (publisher key differs)"))


def _publisher_kek(publisher_key: bytes) -> bytes:
    return hkdf(publisher_key, b"splitvault/v1/publisher-kek")


def archive_dek(key_fragment: bytes) -> bytes:
    """The data key of a v1 image archive, derived from the key fragment the API hands out."""
    return hkdf(key_fragment, b"splitvault/v1/archive-dek")


def legacy_archive_key(key_fragment: bytes) -> bytes:
    """The original image archive key: SHA-256 of the key fragment."""
    return hashlib.sha256(key_fragment).digest()
