"""Publisher signatures: Ed25519 over a resource's header and the ciphertext it cannot cover.

Every downloader holds the data key and could forge AES-GCM-valid chunks, so authenticity rests on
a signature by the publisher. The signed statement is::

    "splitvault/2/publisher-signature" || 0x00 || u32(len(header)) || header
        || SHA-256(head)

where ``header`` is the resource header without its signature field (it holds the file id,
folder, name, lengths, key commitment and the collision-resistant digest of the big part) and
``head`` is the ciphertext carried in the small part after the header (at most 3 KiB, hashed here
because the big-part digest does not reach it). Image archives sign the same statement with an
empty head (their v1 header binds the digest of the whole ciphertext after it), framed the same way
in front of the archive file.

Trust: when the client pins publisher keys, a signature must verify under one of them, whatever
the server says (a compromised API or bucket cannot substitute content); otherwise it must verify
under the key the server vouches for. Ed25519 signing is deterministic, so this module is pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from returns.result import Failure, Result, Success

from splitvault.domain.errors import UntrustedPublisher

SEED_BYTES: Final = 32
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
STATEMENT_LABEL: Final = b"splitvault/2/publisher-signature\x00"
KEY_ID_LABEL: Final = b"splitvault/2/publisher-key-id\x00"


@attrs.frozen
class PublisherKey:
    """A publisher's Ed25519 key pair: the 32-byte seed (secret) and the public key."""

    seed: bytes = attrs.field(repr=False)
    public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> PublisherKey:
        """The key pair of a 32-byte seed (the private key file's content)."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a publisher signing key is {SEED_BYTES} bytes")
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        return cls(seed, public)

    @property
    def key_id(self) -> str:
        """A short, printable name for the public key."""
        return key_id(self.public)


def key_id(public: bytes) -> str:
    """16 hex digits naming a publisher public key (for logs, ``ls`` and error messages)."""
    return hashlib.sha256(KEY_ID_LABEL + public).digest()[:8].hex()


def public_key_from_hex(text: str) -> bytes | None:
    """A public key written as 64 hex digits (the wire's and the admin CLI's form), or ``None``."""
    text = text.strip()
    if len(text) != 2 * PUBLIC_KEY_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def statement(header: bytes, head: bytes) -> bytes:
    """The bytes a publisher signs for one resource (see the module docstring)."""
    return STATEMENT_LABEL + len(header).to_bytes(4, "big") + header + hashlib.sha256(head).digest()


def sign(key: PublisherKey, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message``."""
    return Ed25519PrivateKey.from_private_bytes(key.seed).sign(message)


def _verifies(public: bytes, signature: bytes, message: bytes) -> bool:
    if len(public) != PUBLIC_KEY_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(
    what: str,
    signature: bytes | None,
    message: bytes,
    *,
    pinned: Sequence[bytes] = (),
    vouched: bytes | None = None,
) -> Result[bytes, UntrustedPublisher]:
    """The public key that signed ``message``, if it is trusted; else ``UntrustedPublisher``.

    ``pinned`` (the client's configured keys) wins when not empty; ``vouched`` is the key the
    server names for the uploader, used only when nothing is pinned.
    """
    if not signature:
        return Failure(UntrustedPublisher(what, "it carries no publisher signature"))
    if len(signature) != SIGNATURE_BYTES:
        return Failure(UntrustedPublisher(what, f"its signature is {len(signature)} bytes, not 64"))
    if pinned:
        for public in pinned:
            if _verifies(public, signature, message):
                return Success(public)
        return Failure(
            UntrustedPublisher(what, f"no pinned key ({len(pinned)} pinned) verifies its signature")
        )
    if vouched is None:
        return Failure(UntrustedPublisher(what, "no key is pinned and the server vouches for none"))
    if _verifies(vouched, signature, message):
        return Success(vouched)
    return Failure(
        UntrustedPublisher(what, f"the signature does not verify under key {key_id(vouched)}")
    )


# --- the signed small part ----------------------------------------------------------------------
#
# A signed small part is ``SIGNED_MAGIC || public key (32) || signature (64) || v1 small part``.
# The v1 bytes stay as they are (so their KAT and parser are unchanged); the signature covers the
# v1 header and the head after it (``statement``), and the public key names the signer, whom the
# server vouches for by accepting the upload only under the key it recorded for that account.

SIGNED_MAGIC: Final = b"SVSIG2\x00\x00"
SIGNED_PREFIX_BYTES: Final = len(SIGNED_MAGIC) + PUBLIC_KEY_BYTES + SIGNATURE_BYTES


@attrs.frozen
class SignedPart:
    """A signed small part taken apart: who claims to have signed, the signature, the v1 bytes."""

    public: bytes
    signature: bytes
    inner: bytes = attrs.field(repr=False)


def is_signed(small_part: bytes) -> bool:
    """Whether ``small_part`` carries the signed framing."""
    return small_part[: len(SIGNED_MAGIC)] == SIGNED_MAGIC


def split_signed(small_part: bytes) -> SignedPart | None:
    """The parts of a signed small part, or ``None`` when it is not one (or too short)."""
    if not is_signed(small_part) or len(small_part) <= SIGNED_PREFIX_BYTES:
        return None
    start = len(SIGNED_MAGIC)
    return SignedPart(
        public=small_part[start : start + PUBLIC_KEY_BYTES],
        signature=small_part[start + PUBLIC_KEY_BYTES : SIGNED_PREFIX_BYTES],
        inner=small_part[SIGNED_PREFIX_BYTES:],
    )


def part_statement(inner: bytes, header_length: int) -> bytes:
    """The statement of a v1 small part whose header is ``header_length`` bytes long."""
    return statement(inner[:header_length], inner[header_length:])


def sign_small_part(key: PublisherKey, inner: bytes, header_length: int) -> bytes:
    """The signed framing of the v1 small part ``inner``."""
    signature = sign(key, part_statement(inner, header_length))
    return SIGNED_MAGIC + key.public + signature + inner


def signed_public(part: SignedPart, header_length: int) -> bytes | None:
    """The signer's key when the signature verifies under the key the part names, else None."""
    message = part_statement(part.inner, header_length)
    return part.public if _verifies(part.public, part.signature, message) else None


# --- the signed image archive --------------------------------------------------------------------
#
# A signed image archive is ``SIGNED_MAGIC || public key (32) || signature (64) || v1 archive``: the
# small part's framing in front of the unchanged archive file, so the archive stays one
# self-contained file that can travel by any route. The statement is ``statement(header, b"")``
# over the v1 archive header, which binds the version, the lengths, the wrapped data key and the
# digest of every ciphertext byte after it. The public key in the framing only names the signer:
# a loader trusts the keys it pins, or the key the server vouches for with the version's fragment.


def archive_statement(header: bytes) -> bytes:
    """The statement of an image archive whose v1 header is ``header``."""
    return statement(header, b"")


def sign_archive(key: PublisherKey, header: bytes) -> bytes:
    """The framing (``SIGNED_PREFIX_BYTES`` long) to write in front of the v1 archive ``header``."""
    return SIGNED_MAGIC + key.public + sign(key, archive_statement(header))
