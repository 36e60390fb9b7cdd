"""The legacy suite: the original system's resource format, read and written for migration.

A legacy stream is ``IV (16 bytes) || AES-256-CBC(shared key, PKCS#7(plaintext))`` with one shared
32-byte key for every resource, split into small and big part by the same rule as v1 (the IV
counts as stream bytes). There is no header and no integrity: a changed byte yields changed
plaintext, and the only check is the padding of the last block, so a wrong key is caught with
probability ~255/256 and a tampered stream usually not at all. That is why v1 is the default.

Encryption is inherently serial (``LegacySealer``); decryption is not: each CBC block needs only
the ciphertext block before it, so ``decrypt_blocks_into`` lets a pipeline decrypt runs of blocks on
several threads, and ``strip_padding`` checks the last block on its own. ``LegacyOpener`` is the
serial, streaming counterpart that never releases the last block before its padding is checked.
Every ``*_into`` call writes into caller-provided buffers; the IV is the caller's randomness.
"""

from __future__ import annotations

import base64
import binascii
import string

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from returns.result import Failure, Result, Success

from splitvault.domain.errors import (
    ConfigInvalid,
    CorruptResource,
    FormatFailure,
    PartMismatch,
    WrongKey,
)
from splitvault.domain.split import DEFAULT_RULE, SplitRule, split

BLOCK = 16
IV_BYTES = BLOCK
KEY_BYTES = 32
MIN_STREAM_BYTES = IV_BYTES + BLOCK  # the IV and one block of padding
# cryptography's update_into wants len(data) + BLOCK - 1 bytes of room even when it writes less.
_SLACK = BLOCK - 1

Buffer = bytes | bytearray | memoryview


def legacy_stream_length(plaintext_length: int) -> int:
    """Bytes of the legacy stream for a plaintext: the IV plus the PKCS#7-padded ciphertext."""
    if plaintext_length < 0:
        raise ValueError("plaintext length must be >= 0")
    return IV_BYTES + (plaintext_length // BLOCK + 1) * BLOCK


def check_legacy_stream_length(
    length: int, what: str = "legacy resource"
) -> Result[int, CorruptResource]:
    """Refuse a stream that cannot be legacy: under 32 bytes or not whole blocks after the IV.

    Returns the number of ciphertext blocks after the IV (at least one).
    """
    if length < MIN_STREAM_BYTES:
        return Failure(
            CorruptResource(what, f"{length} bytes; a legacy stream is at least {MIN_STREAM_BYTES}")
        )
    if length % BLOCK:
        return Failure(
            CorruptResource(what, f"{length} bytes is not a whole number of 16-byte blocks")
        )
    return Success((length - IV_BYTES) // BLOCK)


def check_legacy_pair(
    small_length: int,
    big_length: int,
    what: str = "legacy resource",
    rule: SplitRule = DEFAULT_RULE,
) -> Result[int, CorruptResource | PartMismatch]:
    """The stream length of a legacy (small part, big part) pair, once it is known to be a
    legacy stream (``check_legacy_stream_length``) split as ``rule`` splits it."""
    stream_length = small_length + big_length
    checked = check_legacy_stream_length(stream_length, what)
    if isinstance(checked, Failure):
        return Failure(checked.failure())
    expected = rule.small_length(stream_length)
    if small_length != expected:
        return Failure(
            PartMismatch(
                f"the small part is {small_length} bytes; the split rule gives {expected} for "
                f"a {stream_length}-byte stream"
            )
        )
    return Success(stream_length)


def _cipher(key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    if len(key) != KEY_BYTES:
        raise ValueError("the legacy key is 32 bytes")
    if len(iv) != IV_BYTES:
        raise ValueError("a CBC IV (or previous block) is 16 bytes")
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def _update_into(context: CipherContext, data: memoryview, out: memoryview) -> int:
    """``context.update_into`` without its slack demand; the caller has checked ``out`` fits.

    When ``out`` is exactly as long as the output (the end of a preallocated stream buffer), the
    bulk still goes straight into ``out`` and only the last two blocks go through a copy.
    """
    if not data:
        return 0
    if len(out) >= len(data) + _SLACK:
        return context.update_into(data, out)
    cut = max(0, len(data) - 2 * BLOCK)
    written = context.update_into(data[:cut], out) if cut else 0
    rest = context.update(data[cut:])
    out[written : written + len(rest)] = rest
    return written + len(rest)


def _view(data: Buffer) -> memoryview:
    return memoryview(data).cast("B")


class LegacySealer:
    """Encrypts one legacy stream incrementally; the output starts with the IV.

    Args:
        key: the 32-byte shared key.
        iv: 16 bytes from the caller's random source (never reuse one under the same key).

    Feed plaintext in any piece sizes to ``update_into``, then call ``finalize_into`` once. Each
    call writes exactly ``output_length(...)`` bytes. Nothing can fail except misuse, which raises.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._context = _cipher(key, iv).encryptor()
        self._iv = bytes(iv)
        self._iv_written = False
        self._pending = 0  # plaintext bytes of a partial block held inside the cipher context
        self._finished = False

    def __repr__(self) -> str:
        return f"LegacySealer(pending={self._pending}, finished={self._finished})"

    def output_length(self, data_length: int) -> int:
        """Bytes the next ``update_into`` of ``data_length`` bytes will write."""
        head = 0 if self._iv_written else IV_BYTES
        return head + (self._pending + data_length) // BLOCK * BLOCK

    def final_length(self) -> int:
        """Bytes ``finalize_into`` will write: the padded last block (and the IV if still due)."""
        return (0 if self._iv_written else IV_BYTES) + BLOCK

    def _write_iv(self, out: memoryview) -> int:
        if self._iv_written:
            return 0
        out[:IV_BYTES] = self._iv
        self._iv_written = True
        return IV_BYTES

    def update_into(self, data: Buffer, out: memoryview) -> int:
        """Encrypt ``data`` into ``out``; returns the bytes written (whole blocks, IV first)."""
        if self._finished:
            raise ValueError("the sealer is finalized")
        view = _view(data)
        needed = self.output_length(len(view))
        if len(out) < needed:
            raise ValueError(f"output buffer holds {len(out)} bytes, needs {needed}")
        written = self._write_iv(out)
        written += _update_into(self._context, view, out[written:])
        self._pending = (self._pending + len(view)) % BLOCK
        return written

    def finalize_into(self, out: memoryview) -> int:
        """Pad (PKCS#7) and encrypt the last block into ``out``; returns the bytes written."""
        if self._finished:
            raise ValueError("the sealer is finalized")
        needed = self.final_length()
        if len(out) < needed:
            raise ValueError(f"output buffer holds {len(out)} bytes, needs {needed}")
        written = self._write_iv(out)
        pad = BLOCK - self._pending
        written += _update_into(self._context, memoryview(bytes([pad]) * pad), out[written:])
        self._context.finalize()
        self._finished = True
        return written


def strip_padding(last_block: bytes, what: str = "legacy resource") -> Result[bytes, WrongKey]:
    """Check and remove PKCS#7 padding from the decrypted last block.

    Bad padding is reported as ``WrongKey``: with no integrity in the format, a wrong key is by far
    its most likely cause (a corrupted last block looks the same). The check is cryptography's
    constant-time unpadder, so the result does not leak which padding byte was wrong.
    """
    if len(last_block) != BLOCK:
        raise ValueError("the last block is 16 bytes")
    unpadder = padding.PKCS7(BLOCK * 8).unpadder()
    try:
        return Success(unpadder.update(last_block) + unpadder.finalize())
    except ValueError:
        return Failure(WrongKey(f"{what} (its PKCS#7 padding does not check)"))


def decrypt_blocks_into(
    key: bytes, previous_block: bytes, ciphertext: Buffer, out: memoryview
) -> int:
    """Decrypt a run of whole CBC blocks into ``out``; returns the bytes written.

    ``previous_block`` is the ciphertext block just before the run (the IV for the first run).
    Runs are independent, so a pipeline may decrypt them on several threads. The padding of the
    stream's last block is not removed here: keep that block out of the runs and pass its
    plaintext to ``strip_padding``, or use ``LegacyOpener``.
    """
    view = _view(ciphertext)
    if len(view) % BLOCK:
        raise ValueError("a run of CBC blocks is a multiple of 16 bytes")
    if len(out) < len(view):
        raise ValueError(f"output buffer holds {len(out)} bytes, needs {len(view)}")
    context = _cipher(key, bytes(previous_block)).decryptor()
    written = _update_into(context, view, out)
    context.finalize()
    return written


class LegacyOpener:
    """Decrypts one legacy stream fed in pieces of any size; the first 16 bytes are the IV.

    Args:
        key: the 32-byte shared key.
        what: how failures name the stream (e.g. ``"legacy image archive"``).

    ``update_into`` releases plaintext but always holds back the last 16 ciphertext bytes seen, so
    the final block is never released before ``finalize`` has checked its padding. Earlier blocks
    are released unchecked (the format has no integrity): write them somewhere temporary and
    discard them when ``finalize`` fails. ``finalize`` fails with ``CorruptResource`` when the
    stream is too short or not whole blocks, and with ``WrongKey`` when the padding is bad.
    """

    def __init__(self, key: bytes, what: str = "legacy resource") -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the legacy key is 32 bytes")
        self._key = key
        self._what = what
        self._iv = bytearray()
        self._context: CipherContext | None = None
        self._tail = b""  # ciphertext not yet fed to the context: 1..16 bytes once any arrived
        self._ciphertext_length = 0
        self._finished = False

    def __repr__(self) -> str:
        return f"LegacyOpener(what={self._what!r}, ciphertext={self._ciphertext_length})"

    def _release(self, incoming: int) -> int:
        """Ciphertext bytes an update of ``incoming`` stream bytes lets through to the output."""
        incoming -= min(incoming, IV_BYTES - len(self._iv))
        total = len(self._tail) + incoming
        if total == 0:
            return 0
        # Keep 1..16 bytes back: the last block might be the final (padded) one.
        return (total - 1) // BLOCK * BLOCK

    def output_length(self, data_length: int) -> int:
        """Bytes the next ``update_into`` of ``data_length`` stream bytes will write."""
        return self._release(data_length)

    def update_into(self, data: Buffer, out: memoryview) -> int:
        """Take the next stream bytes; write the plaintext now safe to release into ``out``."""
        if self._finished:
            raise ValueError("the opener is finalized")
        view = _view(data)
        release = self._release(len(view))
        if len(out) < release:
            raise ValueError(f"output buffer holds {len(out)} bytes, needs {release}")
        if self._context is None:
            need = IV_BYTES - len(self._iv)
            self._iv += view[:need]
            view = view[need:]
            if len(self._iv) < IV_BYTES:
                return 0
            self._context = _cipher(self._key, bytes(self._iv)).decryptor()
        self._ciphertext_length += len(view)
        if release == 0:
            self._tail += view
            return 0
        # release >= 16 > len(tail) - 1, so the whole held tail goes first, then part of view.
        written = _update_into(self._context, memoryview(self._tail), out)
        from_view = release - len(self._tail)
        written += _update_into(self._context, view[:from_view], out[written:])
        self._tail = bytes(view[from_view:])
        return written

    def finalize(self) -> Result[bytes, WrongKey | CorruptResource]:
        """Check the stream's length and the last block's padding; return its plaintext."""
        if self._finished:
            raise ValueError("the opener is finalized")
        self._finished = True
        if self._context is None or self._ciphertext_length == 0:
            return Failure(
                CorruptResource(
                    self._what,
                    f"{len(self._iv) + self._ciphertext_length} bytes; a legacy stream is at "
                    f"least {MIN_STREAM_BYTES}",
                )
            )
        if self._ciphertext_length % BLOCK:
            return Failure(
                CorruptResource(
                    self._what,
                    f"{self._ciphertext_length} bytes of ciphertext after the IV is not a whole "
                    "number of 16-byte blocks (truncated?)",
                )
            )
        last = self._context.update(self._tail) + self._context.finalize()
        return strip_padding(last, self._what)


def seal_legacy_bytes(
    plaintext: bytes, key: bytes, iv: bytes, rule: SplitRule = DEFAULT_RULE
) -> tuple[bytes, bytes]:
    """Seal an in-memory plaintext into ``(small_part, big_part)``. For tests and tiny files."""
    sealer = LegacySealer(key, iv)
    stream = bytearray(legacy_stream_length(len(plaintext)))
    view = memoryview(stream)
    written = sealer.update_into(plaintext, view)
    written += sealer.finalize_into(view[written:])
    assert written == len(stream)
    return split(bytes(stream), rule)


def open_legacy_bytes(
    small: bytes,
    big: bytes,
    key: bytes,
    *,
    rule: SplitRule | None = DEFAULT_RULE,
    what: str = "legacy resource",
) -> Result[bytes, FormatFailure]:
    """Open an in-memory ``(small_part, big_part)`` pair. For tests and tiny files.

    With a ``rule`` the small part's length must be the one the rule gives (``PartMismatch``
    otherwise: the pair was not split together); ``rule=None`` skips that check.
    """
    stream = small + big
    checked = check_legacy_stream_length(len(stream), what)
    if isinstance(checked, Failure):
        return Failure(checked.failure())
    if rule is not None and len(small) != rule.small_length(len(stream)):
        return Failure(
            PartMismatch(
                f"the small part is {len(small)} bytes; the split rule gives "
                f"{rule.small_length(len(stream))} for a {len(stream)}-byte stream"
            )
        )
    opener = LegacyOpener(key, what)
    out = bytearray(len(stream))
    written = opener.update_into(stream, memoryview(out))
    last = opener.finalize()
    if isinstance(last, Failure):
        return Failure(last.failure())
    return Success(bytes(out[:written]) + last.unwrap())


_KEY_FORMS = "32 raw bytes, 64 hexadecimal characters, or base64 of 32 bytes"
_BASE64_CHARS = 43  # 32 bytes without the one "=" of padding


def _decode_base64_key(text: str) -> bytes | None:
    bare = text.rstrip("=")
    if len(bare) != _BASE64_CHARS or len(text) - len(bare) > 1:
        return None
    # Accept the URL-safe alphabet too: keys get pasted from either kind of tool.
    standard = bare.replace("-", "+").replace("_", "/") + "="
    try:
        decoded = base64.b64decode(standard, validate=True)
    except binascii.Error:
        return None
    return decoded if len(decoded) == KEY_BYTES else None


def parse_shared_key(data: bytes, field: str = "shared_key") -> Result[bytes, ConfigInvalid]:
    """Read the shared legacy key from a key file's bytes.

    Exactly 32 bytes are taken as the raw key (even if they happen to be printable). Otherwise the
    bytes must be ASCII text that, trimmed of surrounding whitespace, is 64 hex digits or base64
    (standard or URL-safe alphabet, padding optional) of 32 bytes. Errors never show the bytes.
    """
    if len(data) == KEY_BYTES:
        return Success(bytes(data))
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return Failure(
            ConfigInvalid(field, f"{len(data)} bytes that are not a key; expected {_KEY_FORMS}")
        )
    if len(text) == 2 * KEY_BYTES and all(c in string.hexdigits for c in text):
        return Success(bytes.fromhex(text))
    decoded = _decode_base64_key(text)
    if decoded is not None:
        return Success(decoded)
    return Failure(
        ConfigInvalid(
            field, f"{len(text)} characters of text that are not a key; expected {_KEY_FORMS}"
        )
    )
