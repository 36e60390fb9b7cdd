"""The one unwrap helper for tests: the value or the failure of an ``IOResult``."""

from __future__ import annotations

from typing import TypeVar

from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

T = TypeVar("T")


def value(result: IOResult[T, object]) -> T:
    """The success value of an ``IOResult`` (fails the test with the failure otherwise)."""
    assert is_successful(result), result
    return unsafe_perform_io(result.unwrap())


def failure(result: IOResult[object, object]) -> object:
    """The failure value of an ``IOResult`` (fails the test on success)."""
    assert not is_successful(result), result
    return unsafe_perform_io(result.failure())
