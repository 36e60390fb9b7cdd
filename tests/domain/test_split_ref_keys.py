"""The split rule, resource references and key derivation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Success

from splitvault.domain import keys
from splitvault.domain.errors import InvalidRef
from splitvault.domain.ref import MAX_NAME_BYTES, ResourceRef
from splitvault.domain.split import SplitRule, join, split


@given(st.binary(max_size=20_000))
def test_join_undoes_split_and_the_rule_holds(stream: bytes) -> None:
    """join(split(x)) == x, and the small part is min(3 KiB, 30 %) of x."""
    small, big = split(stream)
    assert join(small, big) == stream
    assert len(small) == min(3072, len(stream) * 30 // 100)


def test_split_rule_for_every_length_up_to_12k() -> None:
    """The small length is monotone and capped at 3 KiB for every length 0..12000."""
    rule = SplitRule()
    previous = 0
    for length in range(12_001):
        small = rule.small_length(length)
        assert small == min(3072, length * 30 // 100)
        assert previous <= small <= length
        previous = small


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "a\x00b",
        "tab\there",
        " lead",
        "trail ",
        ".hidden",
        "x" * (MAX_NAME_BYTES + 1),
        "\uff4d\uff4f\uff44\uff45\uff4c",  # full-width "model"
        "zero\u200bwidth",
        "nb\u00a0sp",
        "rtl\u202eexe",
    ],
)
def test_hostile_names_are_refused(name: str) -> None:
    """Separators, dot names, control and look-alike characters, over-long names are refused."""
    result = ResourceRef.parse("models", name)
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), InvalidRef)
    assert isinstance(ResourceRef.parse(name, "ok"), Failure)
    with pytest.raises(ValueError, match="invalid"):
        ResourceRef("models", name)


@pytest.mark.parametrize("name", ["model.onnx", "with space.bin", "модель-β.pt", "a" * 200])
def test_plain_names_are_accepted(name: str) -> None:
    """Names with spaces, Unicode letters and up to the byte limit are accepted."""
    ref = ResourceRef.parse("models", name)
    assert isinstance(ref, Success)
    assert ref.unwrap().key == f"models/{name}.big"


def test_parse_refuses_non_text() -> None:
    """A folder or name that is not a string is refused, not crashed on."""
    assert isinstance(ResourceRef.parse(3, "x"), Failure)
    assert isinstance(ResourceRef.parse("x", None), Failure)


def test_subkeys_are_independent() -> None:
    """Chunk key, MAC key and commitment differ from each other and from the data key."""
    sub = keys.data_subkeys(bytes(32), bytes(16))
    values = {sub.chunk_key, sub.header_mac_key, sub.commitment, bytes(32)}
    assert len(values) == 4
    assert "chunk_key" not in repr(sub) or bytes(32).hex() not in repr(sub)
    assert sub.chunk_key.hex() not in repr(sub)


def test_a_versioned_ref_names_its_version_in_the_object_key() -> None:
    """Each version's big part has its own key, so a re-publish never overwrites the current one;
    the ref's text (the envelope's context, messages) and the original's key stay as they were."""
    ref = ResourceRef("models", "m.onnx")
    versioned = ref.at("00112233445566778899aabbccddeeff")
    assert versioned.key == "models/m.onnx/00112233445566778899aabbccddeeff.big"
    assert ref.key == "models/m.onnx.big"
    assert str(versioned) == str(ref) == "models/m.onnx"
    assert versioned.unversioned == ref
    with pytest.raises(ValueError):
        ref.at("../escape")
