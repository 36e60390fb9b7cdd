"""The legacy CBC suite: round trips, the split rule, openssl interoperability and every failure."""

from __future__ import annotations

import base64
import hashlib
import itertools
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from splitvault.domain.errors import ConfigInvalid, CorruptResource, PartMismatch, WrongKey
from splitvault.domain.legacy import (
    BLOCK,
    IV_BYTES,
    LegacyOpener,
    LegacySealer,
    check_legacy_stream_length,
    decrypt_blocks_into,
    legacy_stream_length,
    open_legacy_bytes,
    parse_shared_key,
    seal_legacy_bytes,
    strip_padding,
)
from splitvault.domain.split import DEFAULT_RULE, SplitRule

KEY = bytes(range(32))
IV = bytes(range(100, 116))
OTHER_KEY = bytes(range(1, 33))

keys = st.binary(min_size=32, max_size=32)
ivs = st.binary(min_size=16, max_size=16)
# Lengths around block boundaries, plus some longer ones.
lengths = st.one_of(
    st.sampled_from([0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 49]),
    st.integers(min_value=0, max_value=3000),
)
pieces = st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=20)


def _plaintext(length: int, seed: int) -> bytes:
    """Deterministic bytes of a given length (hypothesis picks the seed)."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed.to_bytes(8, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:length])


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut data into pieces of the given sizes, cycling through them."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


def _seal_pieces(plaintext: bytes, key: bytes, iv: bytes, sizes: list[int], slack: bool) -> bytes:
    """Run LegacySealer over plaintext pieces, each into a buffer of exactly or more than needed."""
    sealer = LegacySealer(key, iv)
    stream = bytearray()
    for piece in [*_cut(plaintext, sizes), b""]:
        need = sealer.output_length(len(piece))
        out = bytearray(need + (BLOCK if slack else 0))
        written = sealer.update_into(piece, memoryview(out))
        assert written == need
        stream += out[:written]
    out = bytearray(sealer.final_length())
    stream += out[: sealer.finalize_into(memoryview(out))]
    return bytes(stream)


def _open_pieces(
    stream: bytes, key: bytes, sizes: list[int], slack: bool
) -> tuple[bytes, Failure[CorruptResource | WrongKey] | bytes]:
    """Run LegacyOpener over stream pieces; return released bytes and the finalize outcome."""
    opener = LegacyOpener(key)
    released = bytearray()
    for piece in _cut(stream, sizes):
        need = opener.output_length(len(piece))
        out = bytearray(need + (BLOCK if slack else 0))
        written = opener.update_into(piece, memoryview(out))
        assert written == need
        released += out[:written]
    last = opener.finalize()
    if isinstance(last, Failure):
        return bytes(released), last
    return bytes(released), last.unwrap()


def _raw_cbc(key: bytes, iv: bytes, blocks: bytes) -> bytes:
    """IV || CBC(blocks) with no padding: lets a test choose the last block's plaintext."""
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(blocks) + encryptor.finalize()


def _openssl(args: list[str], data: bytes) -> bytes:
    """Run ``openssl enc`` with the given arguments on data; return its output."""
    done = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", *args], input=data, capture_output=True, check=True
    )
    return done.stdout


# --- lengths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plaintext_length", "stream_length"),
    [(0, 32), (1, 32), (15, 32), (16, 48), (17, 48), (31, 48), (32, 64), (1 << 20, (1 << 20) + 32)],
)
def test_stream_length_is_iv_plus_padded_length(plaintext_length: int, stream_length: int) -> None:
    """The stream is the IV plus the plaintext padded up to the next whole block (always +1..16)."""
    assert legacy_stream_length(plaintext_length) == stream_length


@pytest.mark.parametrize(
    ("length", "ok"), [(0, False), (16, False), (31, False), (32, True), (33, False), (48, True)]
)
def test_stream_length_check(length: int, ok: bool) -> None:
    """Streams under 32 bytes or not whole blocks are CorruptResource before any decryption."""
    result = check_legacy_stream_length(length)
    if ok:
        assert result == Success((length - IV_BYTES) // BLOCK)
    else:
        assert isinstance(result.failure(), CorruptResource)


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    length=lengths,
    seed=st.integers(min_value=0, max_value=2**32),
    key=keys,
    iv=ivs,
    seal_sizes=pieces,
    open_sizes=pieces,
    slack=st.booleans(),
)
def test_incremental_round_trip(
    *,
    length: int,
    seed: int,
    key: bytes,
    iv: bytes,
    seal_sizes: list[int],
    open_sizes: list[int],
    slack: bool,
) -> None:
    """Sealing and opening in any piece sizes gives back the plaintext and the one-shot stream."""
    plaintext = _plaintext(length, seed)
    stream = _seal_pieces(plaintext, key, iv, seal_sizes, slack)
    assert stream[:IV_BYTES] == iv
    assert len(stream) == legacy_stream_length(length)
    small, big = seal_legacy_bytes(plaintext, key, iv)
    assert small + big == stream
    released, last = _open_pieces(stream, key, open_sizes, slack)
    assert isinstance(last, bytes)
    # The last block is held back until its padding is checked.
    assert len(released) == len(stream) - IV_BYTES - BLOCK
    assert released + last == plaintext
    assert open_legacy_bytes(small, big, key) == Success(plaintext)


@settings(max_examples=60, deadline=None)
@given(
    length=lengths,
    seed=st.integers(min_value=0, max_value=2**32),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_parallel_block_decryption_equals_serial(length: int, seed: int, cuts: list[int]) -> None:
    """Runs of blocks decrypted on threads, each given its previous block, equal serial opening."""
    plaintext = _plaintext(length, seed)
    small, big = seal_legacy_bytes(plaintext, KEY, IV)
    stream = small + big
    body = memoryview(stream)[IV_BYTES : len(stream) - BLOCK]  # all but the padded last block
    blocks = len(body) // BLOCK
    bounds = sorted({0, blocks, *(c % (blocks + 1) for c in cuts)})
    runs = list(itertools.pairwise(bounds))
    out = bytearray(len(body))
    view = memoryview(out)

    def run(span: tuple[int, int]) -> int:
        start, end = span[0] * BLOCK, span[1] * BLOCK
        previous = bytes(stream[start : start + BLOCK])  # the IV for the first run
        # An exactly sized output slice exercises the no-slack path.
        return decrypt_blocks_into(KEY, previous, body[start:end], view[start:end])

    with ThreadPoolExecutor(max_workers=2) as pool:
        written = sum(pool.map(run, runs))
    assert written == len(body)
    last_ct = stream[-2 * BLOCK :]
    last_block = bytearray(BLOCK)
    decrypt_blocks_into(KEY, last_ct[:BLOCK], last_ct[BLOCK:], memoryview(last_block))
    tail = strip_padding(bytes(last_block))
    assert bytes(out) + tail.unwrap() == plaintext


def test_decrypt_blocks_refuses_partial_blocks() -> None:
    """A run that is not whole blocks, or a short output buffer, is a programming error."""
    with pytest.raises(ValueError, match="multiple of 16"):
        decrypt_blocks_into(KEY, IV, b"x" * 17, memoryview(bytearray(32)))
    with pytest.raises(ValueError, match="needs 32"):
        decrypt_blocks_into(KEY, IV, b"x" * 32, memoryview(bytearray(16)))


# --- the split rule --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    length=st.one_of(lengths, st.integers(min_value=9000, max_value=40000)),
    cap=st.integers(min_value=0, max_value=5000),
    percent=st.integers(min_value=0, max_value=100),
)
def test_split_rule_holds(length: int, cap: int, percent: int) -> None:
    """small + big is the whole stream (IV included) and the small part has the rule's length."""
    plaintext = _plaintext(length, length)
    stream = _seal_pieces(plaintext, KEY, IV, [4096], slack=False)
    for rule in (DEFAULT_RULE, SplitRule(cap=cap, percent=percent)):
        small, big = seal_legacy_bytes(plaintext, KEY, IV, rule)
        assert small + big == stream
        assert len(small) == rule.small_length(len(stream))
        assert open_legacy_bytes(small, big, KEY, rule=rule) == Success(plaintext)


def test_default_split_caps_small_part_at_3_kib() -> None:
    """For a large stream the small part is exactly 3 KiB; for a tiny one it is 30 %."""
    small, _ = seal_legacy_bytes(b"a" * 100_000, KEY, IV)
    assert len(small) == 3 * 1024
    small, _ = seal_legacy_bytes(b"a" * 100, KEY, IV)
    assert len(small) == (16 + 112) * 30 // 100


def test_mismatched_split_is_part_mismatch() -> None:
    """A small part of the wrong length for the pair is PartMismatch (unless the check is off)."""
    plaintext = b"m" * 20_000
    small, big = seal_legacy_bytes(plaintext, KEY, IV)
    shifted_small, shifted_big = small + big[:16], big[16:]
    assert isinstance(open_legacy_bytes(shifted_small, shifted_big, KEY).failure(), PartMismatch)
    assert open_legacy_bytes(shifted_small, shifted_big, KEY, rule=None) == Success(plaintext)


# --- known answers and openssl ---------------------------------------------------------------

# NIST SP 800-38A, F.2.5 CBC-AES256.Encrypt.
NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_IV = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NIST_PT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
NIST_CT = bytes.fromhex(
    "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
    "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"
)


def test_nist_known_answer() -> None:
    """The sealer's first four blocks equal NIST SP 800-38A's CBC-AES256 vector; a fifth pads."""
    small, big = seal_legacy_bytes(NIST_PT, NIST_KEY, NIST_IV)
    stream = small + big
    assert stream[:16] == NIST_IV
    assert stream[16:80] == NIST_CT
    assert len(stream) == 16 + 64 + 16
    assert open_legacy_bytes(small, big, NIST_KEY) == Success(NIST_PT)


OPENSSL_SIZES = [0, 1, 15, 16, 17, 1000, 1 << 20]


@pytest.mark.parametrize("size", OPENSSL_SIZES)
def test_openssl_encrypts_we_decrypt(size: int) -> None:
    """``openssl enc -aes-256-cbc -K -iv`` output, behind its IV, opens with our opener."""
    plaintext = _plaintext(size, size)
    ciphertext = _openssl(["-K", KEY.hex(), "-iv", IV.hex()], plaintext)
    stream = IV + ciphertext
    released, last = _open_pieces(stream, KEY, [65536, 7], slack=False)
    assert isinstance(last, bytes)
    assert released + last == plaintext
    cut = DEFAULT_RULE.small_length(len(stream))
    assert open_legacy_bytes(stream[:cut], stream[cut:], KEY) == Success(plaintext)


@pytest.mark.parametrize("size", OPENSSL_SIZES)
def test_we_encrypt_openssl_decrypts(size: int) -> None:
    """Our stream minus its IV is exactly what openssl produces, and ``openssl -d`` opens it."""
    plaintext = _plaintext(size, size + 1)
    small, big = seal_legacy_bytes(plaintext, KEY, IV)
    stream = small + big
    assert stream[IV_BYTES:] == _openssl(["-K", KEY.hex(), "-iv", IV.hex()], plaintext)
    decrypted = _openssl(["-d", "-K", KEY.hex(), "-iv", stream[:IV_BYTES].hex()], stream[16:])
    assert decrypted == plaintext


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "last_block",
    [
        b"A" * 15 + b"\x00",  # a pad length of zero
        b"A" * 15 + b"\x11",  # a pad length over 16
        b"A" * 13 + b"\x02\x03\x03",  # pad bytes that disagree
        b"A" * 14 + b"\x01\x02",  # claims two bytes of padding, has a 1 before them
        b"\x10" * 15 + b"\x0f",  # almost a full padding block
    ],
)
def test_bad_padding_is_wrong_key_and_releases_no_last_block(last_block: bytes) -> None:
    """A last block with bad PKCS#7 padding fails as WrongKey; its bytes are never released."""
    stream = _raw_cbc(KEY, IV, b"B" * 32 + last_block)
    released, last = _open_pieces(stream, KEY, [5], slack=False)
    assert isinstance(last, Failure)
    assert isinstance(last.failure(), WrongKey)
    assert released == b"B" * 32
    cut = DEFAULT_RULE.small_length(len(stream))
    assert isinstance(open_legacy_bytes(stream[:cut], stream[cut:], KEY).failure(), WrongKey)
    assert isinstance(strip_padding(last_block).failure(), WrongKey)


def test_good_padding_of_every_length_strips() -> None:
    """Every valid pad length 1..16 is removed, leaving the data before it."""
    for pad in range(1, 17):
        data = b"d" * (16 - pad)
        assert strip_padding(data + bytes([pad]) * pad) == Success(data)


def test_wrong_key_is_wrong_key() -> None:
    """A stream opened under another key fails its padding check: WrongKey, no plaintext."""
    small, big = seal_legacy_bytes(b"secret model weights" * 50, KEY, IV)
    result = open_legacy_bytes(small, big, OTHER_KEY)
    assert isinstance(result.failure(), WrongKey)
    assert "padding" in result.failure().describe()


@settings(max_examples=60, deadline=None)
@given(key=keys, wrong=keys, length=lengths)
def test_wrong_key_never_returns_the_plaintext(key: bytes, wrong: bytes, length: int) -> None:
    """Another key fails as WrongKey or (about 1 in 256: padding passes) yields other bytes."""
    if key == wrong:
        wrong = bytes(b ^ 1 for b in wrong)
    plaintext = _plaintext(length, 7)
    small, big = seal_legacy_bytes(plaintext, key, IV)
    result = open_legacy_bytes(small, big, wrong)
    if isinstance(result, Failure):
        assert isinstance(result.failure(), WrongKey)
    else:
        assert result.unwrap() != plaintext


@pytest.mark.parametrize("drop", [1, 5, 15, 17, 31])
def test_truncation_off_block_boundary_is_corrupt(drop: int) -> None:
    """A stream cut short by anything but whole blocks is CorruptResource, nothing returned."""
    stream = b"".join(seal_legacy_bytes(b"t" * 100, KEY, IV))
    cut = stream[:-drop]
    _, last = _open_pieces(cut, KEY, [3], slack=True)
    assert isinstance(last, Failure)
    assert isinstance(last.failure(), CorruptResource)
    assert isinstance(open_legacy_bytes(cut, b"", KEY, rule=None).failure(), CorruptResource)


def test_truncation_by_a_whole_block_fails_the_padding_check() -> None:
    """Dropping the padded last block leaves a data block last, whose padding fails: WrongKey."""
    # The legacy format has no integrity: whole-block truncation is only caught by the padding
    # check (about 255 times in 256), which is why v1 exists. This fixed case is one it catches.
    stream = b"".join(seal_legacy_bytes(b"t" * 100, KEY, IV))
    result = open_legacy_bytes(stream[:-16], b"", KEY, rule=None)
    assert isinstance(result.failure(), WrongKey)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 31])
def test_too_short_streams_are_corrupt(length: int) -> None:
    """Streams shorter than IV + one block fail as CorruptResource (incremental and in memory)."""
    stream = b"".join(seal_legacy_bytes(b"", KEY, IV))[:length]
    _, last = _open_pieces(stream, KEY, [4], slack=False)
    assert isinstance(last, Failure)
    assert isinstance(last.failure(), CorruptResource)
    assert isinstance(open_legacy_bytes(stream, b"", KEY, rule=None).failure(), CorruptResource)


def test_non_multiple_of_16_is_corrupt() -> None:
    """A stream with extra bytes after whole blocks is CorruptResource, not decrypted."""
    stream = b"".join(seal_legacy_bytes(b"x" * 64, KEY, IV)) + b"\x00" * 3
    result = open_legacy_bytes(stream, b"", KEY, rule=None)
    assert isinstance(result.failure(), CorruptResource)
    assert "16-byte" in result.failure().describe()


def test_misuse_raises() -> None:
    """Short buffers, wrong key sizes and use after finalize are programming errors."""
    sealer = LegacySealer(KEY, IV)
    with pytest.raises(ValueError, match="needs 32"):
        sealer.update_into(b"x" * 16, memoryview(bytearray(31)))
    out = bytearray(64)
    sealer.finalize_into(memoryview(out))
    with pytest.raises(ValueError, match="finalized"):
        sealer.update_into(b"", memoryview(out))
    with pytest.raises(ValueError, match="32 bytes"):
        LegacySealer(KEY[:16], IV)
    with pytest.raises(ValueError, match="16 bytes"):
        LegacySealer(KEY, IV[:8])
    opener = LegacyOpener(KEY)
    with pytest.raises(ValueError, match="needs 16"):
        opener.update_into(b"x" * 48, memoryview(bytearray(15)))
    opener.finalize()
    with pytest.raises(ValueError, match="finalized"):
        opener.finalize()


def test_reprs_hold_no_key() -> None:
    """Neither the sealer's nor the opener's repr shows key or IV bytes."""
    key = b"K" * 32
    for obj in (LegacySealer(key, IV), LegacyOpener(key)):
        text = repr(obj)
        assert "KKKK" not in text
        assert key.hex() not in text


# --- the shared key file ---------------------------------------------------------------------


@settings(max_examples=60)
@given(key=keys, space=st.sampled_from(["", "\n", "  \r\n", "\t"]))
def test_shared_key_forms_all_parse(key: bytes, space: str) -> None:
    """Raw 32 bytes, hex (any case) and base64 (standard, URL-safe, unpadded) all give the key."""
    texts = [
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
    ]
    assert parse_shared_key(key) == Success(key)
    for text in texts:
        assert parse_shared_key((space + text + space).encode()) == Success(key)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"k" * 31,
        b"k" * 33,
        b"ab" * 31,  # 62 hex digits
        b"ab" * 33,  # 66 hex digits
        b"zz" * 32,  # 64 characters, not hex
        base64.b64encode(b"k" * 31),
        base64.b64encode(b"k" * 33),
        base64.b64encode(b"k" * 32)[:-2] + b"!=",
        b"\xff" * 40,
        b"ab" * 16 + b" " + b"ab" * 16,  # hex with a space inside
    ],
)
def test_other_key_files_are_config_invalid_without_key_bytes(data: bytes) -> None:
    """Anything else is ConfigInvalid naming the accepted forms and never echoing the content."""
    result = parse_shared_key(data, "legacy.shared_key")
    failure = result.failure()
    assert isinstance(failure, ConfigInvalid)
    message = failure.describe()
    assert "legacy.shared_key" in message
    assert "64 hexadecimal" in message
    stripped = data.strip()
    if len(stripped) >= 4:
        assert stripped.decode("latin-1") not in message
        assert stripped.hex() not in message
