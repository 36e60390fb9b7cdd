"""The one atomic writer: complete file or no change; a dead writer's temp goes at once."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.adapters.atomic_file import (
    FlushBehind,
    atomic_path,
    collect_dead_temps,
    collect_dead_temps_of,
    fsync_dir,
    is_temp_name,
    temp_name_for,
    write_atomically,
)
from splitvault.domain.errors import Problem, StorageFailed
from tests.support.results import failure, value


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


def test_a_dead_writers_temp_goes_at_once_a_live_ones_stays(tmp_path: Path) -> None:
    """A temp whose lock is free (its writer died) is removed however fresh it is; a temp whose
    writer holds its lock stays, as do ordinary files and directories."""
    final = tmp_path / "model.big"
    dead = tmp_path / temp_name_for(final.name, "0123456789abcdef")
    dead.write_bytes(b"x" * 1000)  # written a moment ago: age says nothing
    (tmp_path / ".dir.tmp-3333").mkdir()
    final.write_bytes(b"old")
    with atomic_path(final) as live:
        removed = collect_dead_temps_of(final)
        assert removed == (dead,)
        assert live.exists()
        live.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == [".dir.tmp-3333", "model.big"]
    assert collect_dead_temps(tmp_path / "absent") == ()


def test_a_killed_writer_leaves_a_temp_the_next_write_removes(tmp_path: Path) -> None:
    """A process SIGKILLed inside atomic_path leaves its temp; the next write_atomically of the
    same file removes it before writing, and only the final file is left."""
    final = tmp_path / "out.bin"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from splitvault.adapters.atomic_file import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as temp:\n"
        "    temp.write_bytes(b'partial' * 1000)\n"
        "    print('inside', flush=True)\n"
        "    time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(final)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "inside"
        left = [name for name in os.listdir(tmp_path) if is_temp_name(name)]
        assert len(left) == 1
        process.kill()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    written = write_atomically(final, lambda temp: IOSuccess(temp.write_bytes(b"whole")))
    assert value(written) == 5
    assert os.listdir(tmp_path) == ["out.bin"]
    assert final.read_bytes() == b"whole"


def test_write_atomically_returns_the_failure_and_leaves_nothing(tmp_path: Path) -> None:
    """A write that fails (returned or raised OSError) leaves the old file and no temp; the
    OSError becomes StorageFailed naming the final file."""
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    refused = StorageFailed("source", "unreadable")
    assert failure(write_atomically(final, lambda _temp: IOFailure(refused))) == refused

    def full(temp: Path) -> IOResult[None, Problem]:
        temp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    problem = failure(write_atomically(final, full))
    assert problem == StorageFailed(str(final), os.strerror(errno.ENOSPC))
    assert os.listdir(tmp_path) == ["out.bin"]
    assert final.read_bytes() == b"old"


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The fds ``os.fdatasync`` is called on (really flushed), in order."""
    calls: list[int] = []
    real = os.fdatasync

    def recorded(fd: int) -> None:
        real(fd)
        calls.append(fd)

    monkeypatch.setattr(os, "fdatasync", recorded)
    yield calls


def test_flush_behind_flushes_while_the_writes_go_on(tmp_path: Path, flushes: list[int]) -> None:
    """Under ``every`` bytes nothing is flushed; at ``every`` a flush runs on a thread of its
    own, before ``close``, and covers what was written before it."""
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        quiet = FlushBehind(fd, every=1000)
        os.write(fd, b"x" * 999)
        quiet.wrote(999)
        assert quiet.close() is None
        assert flushes == []
        behind = FlushBehind(fd, every=1000)
        os.write(fd, b"y" * 1000)
        behind.wrote(1000)
        pause = threading.Event()
        for _ in range(500):
            if flushes:
                break
            pause.wait(0.01)
        assert flushes == [fd]  # flushed before close: in the background
        assert behind.close() is None
        behind.wrote(5000)  # after close: counted, never flushed
        assert flushes == [fd]
    finally:
        os.close(fd)


def test_a_failed_background_flush_is_raised_by_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails the background flush fails the output: ``close`` returns the error,
    raised, the atomic writer removes the temp and names the file instead of renaming it."""

    met = threading.Event()

    def failing(_fd: int) -> None:
        met.set()
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", failing)
    final = tmp_path / "out.bin"

    def write(temp: Path) -> IOResult[None, Problem]:
        fd = os.open(temp, os.O_WRONLY)
        flusher = FlushBehind(fd, every=10)
        try:
            os.write(fd, b"z" * 10)
            flusher.wrote(10)
            assert met.wait(5)
        finally:
            met_error = flusher.close()
            os.close(fd)
        if met_error is not None:
            raise met_error
        return IOSuccess(None)

    problem = failure(write_atomically(final, write))
    assert problem == StorageFailed(str(final), os.strerror(errno.EIO))
    assert os.listdir(tmp_path) == []
