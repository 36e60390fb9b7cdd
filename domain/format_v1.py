"""Resource format v1: chunked AES-256-GCM in the STREAM construction, split into two parts.

A plaintext of ``L`` bytes is cut into chunks of ``c`` bytes (the last may be shorter; an empty
plaintext is one empty chunk). Chunk ``i`` is sealed with the chunk key under the nonce
``i (11 bytes, big-endian) || final flag (1 byte)`` and the associated data ``SHA-256(header
prefix)``, so chunks cannot be reordered, dropped, appended or moved to another resource. The
ciphertext stream is the concatenation of the sealed chunks (``L + 16 * n`` bytes). The split rule
sends its first bytes to the small part, after the header; the big part is the rest.

Every chunk's position in the plaintext and in the ciphertext stream is computable from the
header alone, so a pipeline may seal and open chunks in any order and in parallel: ``Sealer`` and
``Opener`` are incremental, index-addressed and write into caller-provided buffers. The README's
"Wire format" section is the normative description of the header.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterator

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from returns.result import Failure, Result, Success

from splitvault.domain.digest import digest_bytes
from splitvault.domain.errors import (
    CorruptResource,
    FormatFailure,
    LimitExceeded,
    PartMismatch,
    UnsupportedFormat,
    WrongKey,
)
from splitvault.domain.keys import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    WRAPPED_DEK_BYTES,
    data_subkeys,
    unwrap_dek,
    wrap_dek,
)
from splitvault.domain.ports import BigPartDigest
from splitvault.domain.ref import ResourceRef, check_name
from splitvault.domain.split import DEFAULT_RULE, SplitRule

MAGIC = b"SPLITVLT"
VERSION = 1
SUITE_AES256_GCM_STREAM = 1
FLAG_WRAPPED_DEK = 0x01
FILE_ID_BYTES = 16

DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 << 20
MAX_PLAINTEXT_LENGTH = 1 << 50  # 1 PiB: far beyond any model, far below the nonce space
MAX_HEADER_BYTES = 1024

# magic, version, suite, flags, reserved, chunk size, plaintext length, file id,
# small ciphertext length, big part length
_FIXED = struct.Struct(">8sBBBBIQ16sIQ")


@attrs.frozen
class Layout:
    """Where every chunk lives, derived from lengths alone."""

    plaintext_length: int
    chunk_size: int
    small_ciphertext_length: int

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.plaintext_length // self.chunk_size))

    @property
    def ciphertext_length(self) -> int:
        return self.plaintext_length + TAG_BYTES * self.chunk_count

    @property
    def big_length(self) -> int:
        return self.ciphertext_length - self.small_ciphertext_length

    def plaintext_span(self, index: int) -> tuple[int, int]:
        """``(start, end)`` of chunk ``index`` in the plaintext."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.plaintext_length)

    def ciphertext_span(self, index: int) -> tuple[int, int]:
        """``(start, end)`` of chunk ``index`` in the ciphertext stream."""
        start = index * (self.chunk_size + TAG_BYTES)
        pt_start, pt_end = self.plaintext_span(index)
        return start, start + (pt_end - pt_start) + TAG_BYTES

    def big_segmentation(self) -> tuple[int, int]:
        """``(first, size)`` of the big part's digest segments: each chunk's big-part share."""
        step = self.chunk_size + TAG_BYTES
        if self.big_length == 0:
            return step, step
        cut = self.small_ciphertext_length
        _, end = self.ciphertext_span(cut // step)
        return min(end - cut, self.big_length), step

    def segments(self, start: int, end: int) -> Iterator[tuple[bool, int, int]]:
        """Split a ciphertext-stream range into ``(in_big_part, offset_in_part, length)``."""
        cut = self.small_ciphertext_length
        if start < cut:
            stop = min(end, cut)
            yield False, start, stop - start
            start = stop
        if start < end:
            yield True, start - cut, end - start


def plan(
    plaintext_length: int, chunk_size: int = DEFAULT_CHUNK_SIZE, rule: SplitRule = DEFAULT_RULE
) -> Result[Layout, LimitExceeded]:
    """Lay out a resource of ``plaintext_length`` bytes, or say which limit it breaks."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        bound = MAX_CHUNK_SIZE if chunk_size > MAX_CHUNK_SIZE else MIN_CHUNK_SIZE
        return Failure(LimitExceeded("chunk size", bound, chunk_size))
    if not 0 <= plaintext_length <= MAX_PLAINTEXT_LENGTH:
        return Failure(LimitExceeded("plaintext length", MAX_PLAINTEXT_LENGTH, plaintext_length))
    chunks = max(1, -(-plaintext_length // chunk_size))
    small = rule.small_length(plaintext_length + TAG_BYTES * chunks)
    return Success(Layout(plaintext_length, chunk_size, small))


@attrs.frozen
class Header:
    """The small part's header. ``dek_field`` is the raw or wrapped data key."""

    layout: Layout
    file_id: bytes
    ref: ResourceRef
    wrapped: bool
    dek_field: bytes = attrs.field(repr=False)
    commitment: bytes = attrs.field(repr=False)
    big_digest: bytes = b"\x00" * 32
    mac: bytes = attrs.field(default=b"\x00" * 32, repr=False)

    def prefix(self) -> bytes:
        """Everything known before sealing starts; its hash is every chunk's AAD."""
        folder = self.ref.folder.encode()
        name = self.ref.name.encode()
        return b"".join(
            (
                _FIXED.pack(
                    MAGIC,
                    VERSION,
                    SUITE_AES256_GCM_STREAM,
                    FLAG_WRAPPED_DEK if self.wrapped else 0,
                    0,
                    self.layout.chunk_size,
                    self.layout.plaintext_length,
                    self.file_id,
                    self.layout.small_ciphertext_length,
                    self.layout.big_length,
                ),
                struct.pack(">H", len(folder)),
                folder,
                struct.pack(">H", len(name)),
                name,
                struct.pack(">B", len(self.dek_field)),
                self.dek_field,
                self.commitment,
            )
        )

    def mac_input(self) -> bytes:
        return self.prefix() + self.big_digest

    def encode(self) -> bytes:
        return self.mac_input() + self.mac


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(NONCE_BYTES - 1, "big") + (b"\x01" if final else b"\x00")


def _aad(prefix: bytes) -> bytes:
    return hashlib.sha256(b"splitvault/v1/chunk-aad\x00" + prefix).digest()


class Sealer:
    """Seals one resource chunk by chunk, in any order, from any thread.

    Build it with ``Sealer.start``; feed chunk ``i``'s plaintext to ``seal_chunk_into``; once every
    chunk is sealed and the big part's digest is known, ``finish`` returns the small part.
    """

    def __init__(self, header: Header, chunk_key: bytes, header_mac_key: bytes) -> None:
        self.header = header
        self.layout = header.layout
        self._aead = AESGCM(chunk_key)
        self._mac_key = header_mac_key
        self._aad = _aad(header.prefix())

    def __repr__(self) -> str:
        return f"Sealer(ref={self.header.ref}, layout={self.layout})"

    @classmethod
    def start(
        cls,
        ref: ResourceRef,
        plaintext_length: int,
        *,
        dek: bytes,
        file_id: bytes,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        rule: SplitRule = DEFAULT_RULE,
        publisher_key: bytes | None = None,
        wrap_nonce: bytes | None = None,
    ) -> Result[Sealer, LimitExceeded]:
        """Begin sealing. ``dek``, ``file_id`` and ``wrap_nonce`` come from the caller's RNG."""
        if len(dek) != KEY_BYTES or len(file_id) != FILE_ID_BYTES:
            raise ValueError("the data key is 32 bytes and the file id 16")
        if publisher_key is not None:
            if wrap_nonce is None:
                raise ValueError("wrapping under a publisher key needs a 12-byte nonce")
            dek_field = wrap_dek(publisher_key, dek, file_id, wrap_nonce)
        else:
            dek_field = dek
        subkeys = data_subkeys(dek, file_id)

        def build(layout: Layout) -> Sealer:
            header = Header(
                layout=layout,
                file_id=file_id,
                ref=ref,
                wrapped=publisher_key is not None,
                dek_field=dek_field,
                commitment=subkeys.commitment,
            )
            return cls(header, subkeys.chunk_key, subkeys.header_mac_key)

        return plan(plaintext_length, chunk_size, rule).map(build)

    def seal_chunk_into(self, index: int, plaintext: bytes | memoryview, out: memoryview) -> int:
        """Seal chunk ``index`` into ``out`` (at least ``len(plaintext) + 16`` bytes)."""
        start, end = self.layout.plaintext_span(index)
        if not 0 <= index < self.layout.chunk_count or len(plaintext) != end - start:
            raise ValueError(f"chunk {index} must be {end - start} bytes of plaintext")
        final = index == self.layout.chunk_count - 1
        size = len(plaintext) + TAG_BYTES
        self._aead.encrypt_into(_nonce(index, final), plaintext, self._aad, out[:size])
        return size

    def seal_chunk(self, index: int, plaintext: bytes | memoryview) -> bytes:
        """``seal_chunk_into`` returning a new buffer."""
        out = bytearray(len(plaintext) + TAG_BYTES)
        self.seal_chunk_into(index, plaintext, memoryview(out))
        return bytes(out)

    def finish(self, small_ciphertext: bytes, big_digest: bytes) -> bytes:
        """The small part: the header with the big part's digest and MAC, then its ciphertext."""
        if len(small_ciphertext) != self.layout.small_ciphertext_length or len(big_digest) != 32:
            raise ValueError("finish needs the small part's ciphertext and a 32-byte digest")
        header = attrs.evolve(self.header, big_digest=big_digest)
        mac = hmac.new(self._mac_key, header.mac_input(), hashlib.sha256).digest()
        return attrs.evolve(header, mac=mac).encode() + small_ciphertext


class _Reader:
    """Bounds-checked reads from a header buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes | None:
        if self.pos + n > len(self.data):
            return None
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def _truncated(what: str) -> CorruptResource:
    return CorruptResource("small part", f"truncated inside the header ({what})")


def parse_header(small_part: bytes) -> Result[tuple[Header, int], FormatFailure]:
    """Parse and bounds-check a header without any key; returns it and its length."""
    if small_part[: len(MAGIC)] != MAGIC:
        return Failure(UnsupportedFormat("not a splitvault v1 small part (magic differs)"))
    reader = _Reader(small_part[:MAX_HEADER_BYTES])
    fixed = reader.take(_FIXED.size, "fixed fields")
    if fixed is None:
        return Failure(_truncated("fixed fields"))
    (_, version, suite, flags, reserved, chunk_size, pt_len, file_id, small_ct, big_len) = (
        _FIXED.unpack(fixed)
    )
    if version != VERSION:
        return Failure(UnsupportedFormat(f"format version {version}; this build reads 1"))
    if suite != SUITE_AES256_GCM_STREAM or reserved != 0 or flags & ~FLAG_WRAPPED_DEK:
        return Failure(UnsupportedFormat(f"suite {suite}, flags {flags:#x}"))
    laid = plan(pt_len, chunk_size, SplitRule(cap=small_ct, percent=100))
    if isinstance(laid, Failure):
        return Failure(laid.failure())
    layout = Layout(pt_len, chunk_size, small_ct)
    if small_ct > layout.ciphertext_length or layout.big_length != big_len:
        return Failure(CorruptResource("small part", "header lengths are inconsistent"))
    texts: list[str] = []
    for what in ("folder", "name"):
        raw_len = reader.take(2, what)
        if raw_len is None:
            return Failure(_truncated(what))
        raw = reader.take(struct.unpack(">H", raw_len)[0], what)
        if raw is None:
            return Failure(_truncated(what))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Failure(CorruptResource("small part", f"the {what} is not UTF-8"))
        if check_name(what, text) is not None:
            return Failure(CorruptResource("small part", f"the {what} is not a valid name"))
        texts.append(text)
    raw_dek_len = reader.take(1, "data key")
    if raw_dek_len is None:
        return Failure(_truncated("data key"))
    wrapped = bool(flags & FLAG_WRAPPED_DEK)
    expected_dek_len = WRAPPED_DEK_BYTES if wrapped else KEY_BYTES
    if raw_dek_len[0] != expected_dek_len:
        return Failure(CorruptResource("small part", "the data key field has the wrong size"))
    dek_field = reader.take(expected_dek_len, "data key")
    commitment = reader.take(32, "key commitment")
    big_sha = reader.take(32, "big part hash")
    mac = reader.take(32, "header MAC")
    if dek_field is None or commitment is None or big_sha is None or mac is None:
        return Failure(_truncated("keys and hashes"))
    header = Header(
        layout=layout,
        file_id=file_id,
        ref=ResourceRef(texts[0], texts[1]),
        wrapped=wrapped,
        dek_field=dek_field,
        commitment=commitment,
        big_digest=big_sha,
        mac=mac,
    )
    return Success((header, reader.pos))


class Opener:
    """Opens one resource chunk by chunk, in any order, from any thread.

    Build it with ``Opener.start`` from the small part (header checked, key committed, MAC
    verified); take the small part's ciphertext from ``small_ciphertext``; feed chunk ``i``'s
    ciphertext to ``open_chunk_into``.
    """

    def __init__(self, header: Header, small_ciphertext: bytes, chunk_key: bytes) -> None:
        self.header = header
        self.layout = header.layout
        self.small_ciphertext = small_ciphertext
        self._aead = AESGCM(chunk_key)
        self._aad = _aad(header.prefix())

    def __repr__(self) -> str:
        return f"Opener(ref={self.header.ref}, layout={self.layout})"

    @property
    def big_digest(self) -> BigPartDigest:
        """What the big part must be: length, digest and segmentation."""
        return expected_big_part(self.header)

    @classmethod
    def start(
        cls,
        small_part: bytes,
        *,
        publisher_key: bytes | None = None,
        expected_ref: ResourceRef | None = None,
    ) -> Result[Opener, FormatFailure]:
        """Check a small part and derive its keys; nothing is decrypted yet."""
        return parse_header(small_part).bind(
            lambda parsed: cls._unlock(small_part, parsed, publisher_key, expected_ref)
        )

    @classmethod
    def _unlock(
        cls,
        small_part: bytes,
        parsed: tuple[Header, int],
        publisher_key: bytes | None,
        expected_ref: ResourceRef | None,
    ) -> Result[Opener, FormatFailure]:
        header, header_length = parsed
        if len(small_part) != header_length + header.layout.small_ciphertext_length:
            return Failure(
                CorruptResource(
                    "small part",
                    f"{len(small_part)} bytes, the header says "
                    f"{header_length + header.layout.small_ciphertext_length}",
                )
            )
        if expected_ref is not None and header.ref != expected_ref:
            return Failure(PartMismatch(f"the small part is for {header.ref}, not {expected_ref}"))
        if header.wrapped:
            if publisher_key is None:
                return Failure(WrongKey(f"{header.ref} (its data key needs the publisher key)"))
            unwrapped = unwrap_dek(publisher_key, header.dek_field, header.file_id)
            if isinstance(unwrapped, Failure):
                return Failure(unwrapped.failure())
            dek = unwrapped.unwrap()
        else:
            dek = header.dek_field
        subkeys = data_subkeys(dek, header.file_id)
        if not hmac.compare_digest(subkeys.commitment, header.commitment):
            return Failure(WrongKey(str(header.ref)))
        mac = hmac.new(subkeys.header_mac_key, header.mac_input(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, header.mac):
            return Failure(CorruptResource("small part", "the header MAC does not verify"))
        return Success(cls(header, small_part[header_length:], subkeys.chunk_key))

    def open_chunk_into(
        self, index: int, ciphertext: bytes | memoryview, out: memoryview
    ) -> Result[int, CorruptResource]:
        """Authenticate and decrypt chunk ``index`` into ``out``; returns the plaintext size."""
        start, end = self.layout.ciphertext_span(index)
        if not 0 <= index < self.layout.chunk_count or len(ciphertext) != end - start:
            return Failure(
                CorruptResource(
                    "big part", f"chunk {index} is {len(ciphertext)} bytes, expected {end - start}"
                )
            )
        final = index == self.layout.chunk_count - 1
        size = len(ciphertext) - TAG_BYTES
        try:
            self._aead.decrypt_into(_nonce(index, final), ciphertext, self._aad, out[:size])
        except InvalidTag:
            return Failure(CorruptResource("resource", f"chunk {index} does not authenticate"))
        return Success(size)


def seal_bytes(
    ref: ResourceRef,
    plaintext: bytes,
    *,
    dek: bytes,
    file_id: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rule: SplitRule = DEFAULT_RULE,
    publisher_key: bytes | None = None,
    wrap_nonce: bytes | None = None,
) -> Result[tuple[bytes, bytes], LimitExceeded]:
    """Seal an in-memory plaintext into ``(small_part, big_part)``. For tests and tiny files."""

    def run(sealer: Sealer) -> tuple[bytes, bytes]:
        layout = sealer.layout
        stream = bytearray(layout.ciphertext_length)
        view = memoryview(stream)
        for index in range(layout.chunk_count):
            pt_start, pt_end = layout.plaintext_span(index)
            ct_start, _ = layout.ciphertext_span(index)
            sealer.seal_chunk_into(index, plaintext[pt_start:pt_end], view[ct_start:])
        cut = layout.small_ciphertext_length
        big = bytes(view[cut:])
        first, size = layout.big_segmentation()
        return sealer.finish(bytes(view[:cut]), digest_bytes(big, first, size)), big

    started = Sealer.start(
        ref,
        len(plaintext),
        dek=dek,
        file_id=file_id,
        chunk_size=chunk_size,
        rule=rule,
        publisher_key=publisher_key,
        wrap_nonce=wrap_nonce,
    )
    return started.map(run)


def expected_big_part(header: Header) -> BigPartDigest:
    """What the big part of the resource this header describes must be."""
    first, size = header.layout.big_segmentation()
    return BigPartDigest(header.layout.big_length, header.big_digest, first, size)


def open_stream(opener: Opener, stream: bytes | memoryview) -> Result[bytes, CorruptResource]:
    """Authenticate and decrypt a whole in-memory ciphertext stream. For tests and tiny files."""
    layout = opener.layout
    out = bytearray(layout.plaintext_length)
    view = memoryview(out)
    for index in range(layout.chunk_count):
        ct_start, ct_end = layout.ciphertext_span(index)
        pt_start, _ = layout.plaintext_span(index)
        opened = opener.open_chunk_into(index, stream[ct_start:ct_end], view[pt_start:])
        if isinstance(opened, Failure):
            return Failure(opened.failure())
    return Success(bytes(out))


def check_big_part(opener: Opener, big_part_length: int) -> Result[None, PartMismatch]:
    """Refuse a big part whose length differs from the header's before reading it."""
    if big_part_length != opener.layout.big_length:
        return Failure(
            PartMismatch(
                f"the big part is {big_part_length} bytes, the header says "
                f"{opener.layout.big_length}"
            )
        )
    return Success(None)


def open_bytes(
    small_part: bytes,
    big_part: bytes,
    *,
    publisher_key: bytes | None = None,
    expected_ref: ResourceRef | None = None,
) -> Result[bytes, FormatFailure]:
    """Open an in-memory ``(small_part, big_part)`` pair. For tests and tiny files."""

    def run(opener: Opener) -> Result[bytes, FormatFailure]:
        checked = check_big_part(opener, len(big_part))
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        first, size = opener.layout.big_segmentation()
        if not hmac.compare_digest(digest_bytes(big_part, first, size), opener.header.big_digest):
            return Failure(PartMismatch("the big part's digest differs from the header's"))
        return open_stream(opener, opener.small_ciphertext + big_part)

    return Opener.start(small_part, publisher_key=publisher_key, expected_ref=expected_ref).bind(
        run
    )
