"""The atomic-write discipline: complete file or no change, temp files that can be found later."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitvault.adapters.atomic_file import (
    atomic_path,
    collect_stale_temps,
    fsync_dir,
    is_temp_name,
    temp_name_for,
)


class Boom(Exception):
    """An error raised by the body of atomic_path."""


def test_body_writes_then_final_appears_with_the_mode(tmp_path: Path) -> None:
    """On normal exit the temp becomes the final file with the requested mode; no temp is left."""
    final = tmp_path / "out.bin"
    with atomic_path(final, mode=0o640) as temp:
        assert temp.parent == tmp_path
        assert temp.name.startswith(".out.bin.tmp-")
        assert temp.exists()
        assert not final.exists()
        temp.write_bytes(b"payload")
    assert final.read_bytes() == b"payload"
    assert stat.S_IMODE(final.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["out.bin"]


def test_exception_removes_the_temp_and_keeps_the_old_file(tmp_path: Path) -> None:
    """A failing body leaves the previous final file untouched and removes its temp file."""
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with pytest.raises(Boom), atomic_path(final) as temp:
        temp.write_bytes(b"new but partial")
        raise Boom
    assert final.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_exception_before_any_final_leaves_nothing(tmp_path: Path) -> None:
    """A failing body with no previous file leaves the directory empty."""
    with pytest.raises(Boom), atomic_path(tmp_path / "new.bin"):
        raise Boom
    assert os.listdir(tmp_path) == []


def test_temp_names_are_unique(tmp_path: Path) -> None:
    """Two writers of the same final name get different temp files."""
    final = tmp_path / "same"
    with atomic_path(final) as first, atomic_path(final) as second:
        assert first != second
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert final.read_bytes() == b"1"  # the outer block exits last and wins


def test_missing_directory_raises_oserror(tmp_path: Path) -> None:
    """A final path in a missing directory raises OSError before the body runs."""
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "no" / "file"):
        pytest.fail("the body must not run")


def test_fsync_dir_accepts_a_directory(tmp_path: Path) -> None:
    """fsync_dir works on a directory and rejects a missing one."""
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda name: "/" not in name and "\x00" not in name))
def test_temp_names_are_recognised(name: str) -> None:
    """Every temp name atomic_path makes is recognised as one; plain names are not."""
    assert is_temp_name(temp_name_for(name, "abcd"))
    if not name.startswith("."):
        assert not is_temp_name(name)


def test_collect_stale_temps_removes_only_old_temps(tmp_path: Path) -> None:
    """Only temp files older than the threshold go; fresh temps and ordinary files stay."""
    now = time.time()
    old_temp = tmp_path / ".model.big.tmp-1111"
    fresh_temp = tmp_path / ".model.big.tmp-2222"
    old_plain = tmp_path / "model.big"
    for path in (old_temp, fresh_temp, old_plain):
        path.write_bytes(b"x")
    for path in (old_temp, old_plain):
        os.utime(path, (now - 7200, now - 7200))
    (tmp_path / ".dir.tmp-3333").mkdir()  # a directory is never removed
    removed = collect_stale_temps(tmp_path, 3600, now)
    assert removed == (old_temp,)
    assert sorted(os.listdir(tmp_path)) == [".dir.tmp-3333", fresh_temp.name, old_plain.name]
    assert collect_stale_temps(tmp_path / "absent", 3600, now) == ()
