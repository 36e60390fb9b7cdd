"""Byte sizes as people type them: the one parser for every ``--size`` and ``--chunk-size``.

``K``/``M``/``G``/``T`` and ``KiB``/``MiB``/``GiB``/``TiB`` are powers of 1024, as in ``dd bs=1M``,
``truncate -s`` and ``head -c``; ``kB``/``MB``/``GB``/``TB`` are powers of 1000 (SI), as in GNU
coreutils. So ``100M`` is 104,857,600 bytes everywhere, in the CLI and in the bench alike. A
fraction is allowed when it gives whole bytes (``1.5G``, not ``1.3B``).
"""

from __future__ import annotations

import re
from fractions import Fraction

from returns.result import Failure, Result, Success

from splitvault.domain.errors import ConfigInvalid

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    _UNITS[_letter] = 1024**_power
    _UNITS[f"{_letter}ib"] = 1024**_power
    _UNITS[f"{_letter}b"] = 1000**_power

_SHAPE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
HINT = "a size like 4096, 64M, 64MiB, 1.5G or 100MB (K/M/G are 1024-based, kB/MB/GB 1000-based)"


def parse_size(text: str, what: str = "size") -> Result[int, ConfigInvalid]:
    """The number of bytes ``text`` means, or ``ConfigInvalid(what, ...)`` saying what to type."""
    match = _SHAPE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        return Failure(ConfigInvalid(what, f"{text!r} is not {HINT}"))
    count = Fraction(match.group(1)) * _UNITS[unit]
    if count.denominator != 1:
        return Failure(ConfigInvalid(what, f"{text!r} is not a whole number of bytes"))
    return Success(int(count))


def format_size(count: int) -> str:
    """A short binary-unit rendering (``256 MiB``, ``1.5 GiB``) for reports."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} B"
