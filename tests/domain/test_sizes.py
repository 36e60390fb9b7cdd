"""The one size parser: binary K/M/G, SI kB/MB/GB, whole bytes only, clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Success

from splitvault.domain.errors import ConfigInvalid
from splitvault.domain.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("100M", 104_857_600),
        ("100MiB", 104_857_600),
        ("100mb", 100_000_000),
        ("1G", 1 << 30),
        ("1.5G", 3 << 29),
        ("64 KiB", 65536),
        ("2kB", 2000),
        ("1T", 1 << 40),
        (" 7b ", 7),
    ],
)
def test_sizes_parse_to_bytes(text: str, size: int) -> None:
    """Binary letters are 1024-based and SI units 1000-based, as in GNU coreutils."""
    assert parse_size(text) == Success(size)


@pytest.mark.parametrize("text", ["1 parsec", "", "M", "-5", "1.3B", "1e9", "0x10"])
def test_nonsense_is_refused_with_what_to_type(text: str) -> None:
    """A bad size is ConfigInvalid naming the flag and quoting the input."""
    result = parse_size(text, "--size")
    assert isinstance(result, Failure)
    problem = result.failure()
    assert isinstance(problem, ConfigInvalid)
    assert problem.field == "--size" and repr(text) in problem.detail


@given(st.integers(0, 1 << 50))
def test_plain_byte_counts_round_trip(count: int) -> None:
    """Any decimal byte count parses to itself."""
    assert parse_size(str(count)) == Success(count)


def test_format_size_is_short() -> None:
    """Reports show binary units."""
    assert [format_size(n) for n in (5, 2048, 256 << 20, 3 << 29)] == [
        "5 B",
        "2 KiB",
        "256 MiB",
        "1.5 GiB",
    ]
