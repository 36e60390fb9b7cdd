"""Key derivation for resources, and the parameters the device keys share.

- What travels from the API to a machine is sealed with HPKE to that machine's device key
  (``domain.device``, protocol 2); the Argon2id cost parameters below are the password key's.
- The **data key** (DEK) of a resource is 32 random bytes chosen by the caller; HKDF turns it into
  independent subkeys for chunk encryption, the header MAC and the key commitment.
- A **publisher key** can wrap the DEK (AES-256-GCM, file id as associated data) so that a leaked
  API store alone does not yield data keys.

Randomness (DEK, nonces) is always passed in.
"""

from __future__ import annotations

import hashlib

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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
