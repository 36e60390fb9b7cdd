"""``splitvault cache ls | prune | clear``: what the cache holds, and tidying it safely."""

from __future__ import annotations

import fcntl
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from returns.io import IOResult, IOSuccess

from splitvault.adapters.file_cache import FileCache, version_of
from splitvault.app.cli.cache import duration
from splitvault.app.cli.main import main
from splitvault.domain.digest import digest_bytes
from splitvault.domain.errors import Problem
from splitvault.domain.ports import BigPartDigest, RangeSink, Span
from splitvault.domain.ref import ResourceRef
from tests.support.results import value


def cached(root: Path, name: str, size: int, age: float) -> Path:
    """A verified entry of ``size`` bytes for models/NAME, last used ``age`` seconds ago."""
    data = random.Random(name).randbytes(size)
    expected = BigPartDigest(size, digest_bytes(data, 1000, 4096), 1000, 4096)

    def fill(ranges: Sequence[Span], sink: RangeSink) -> IOResult[None, Problem]:
        for low, high in ranges:
            sink.write(low, data[low:high])
        return IOSuccess(None)

    cache = value(FileCache.open(root))
    path: Path = value(cache.fetch(ResourceRef("models", name), expected, fill, IOSuccess))
    stamp = path.parent / f".{version_of(expected)}.verified"
    when = os.path.getmtime(stamp) - age
    os.utime(stamp, (when, when))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["--json", "cache", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_ls_lists_entries_with_size_and_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ls --json lists each entry with its resource, version, size; the total adds up."""
    root = tmp_path / "cache"
    cached(root, "a.bin", 5000, age=10)
    cached(root, "b.bin", 7000, age=20)
    code, report = run(capsys, "ls", "--cache-dir", str(root))
    assert code == 0
    items = report["items"]
    assert isinstance(items, list)
    assert sorted((item["ref"], item["bytes"], item["in_use"]) for item in items) == [
        ("models/a.bin", 5000, False),
        ("models/b.bin", 7000, False),
    ]
    assert report["total_bytes"] == 12000


def test_prune_older_than_and_clear_spare_entries_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prune --older-than 1h removes only the old entry; clear removes the rest except the one a
    reader holds, which is reported as kept."""
    root = tmp_path / "cache"
    cached(root, "old.bin", 3000, age=7200)
    cached(root, "new.bin", 3000, age=60)
    held = cached(root, "held.bin", 3000, age=7200)
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        code, pruned = run(capsys, "prune", "--older-than", "1h", "--cache-dir", str(root))
        assert code == 0
        assert [item["ref"] for item in pruned["removed"]] == ["models/old.bin"]
        code, cleared = run(capsys, "clear", "--cache-dir", str(root))
        assert [item["ref"] for item in cleared["removed"]] == ["models/new.bin"]
        assert [item["ref"] for item in cleared["kept_in_use"]] == ["models/held.bin"]
    finally:
        os.close(fd)
    assert held.exists()


def test_prune_needs_a_duration_and_durations_parse() -> None:
    """Durations read as seconds; prune without --older-than is refused (clear is for that)."""
    assert [duration(text) for text in ("90", "90s", "30m", "12h", "7d", "2w")] == [
        90.0,
        90.0,
        1800.0,
        43200.0,
        604800.0,
        1209600.0,
    ]
    with pytest.raises(SystemExit):
        main(["cache", "prune"])
    with pytest.raises(SystemExit):
        main(["cache", "prune", "--older-than", "soon"])


def test_the_bound_comes_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPLITVAULT_CACHE_MAX_BYTES sets the bound (binary units) that ls reports."""
    monkeypatch.setenv("SPLITVAULT_CACHE_MAX_BYTES", "20GiB")
    monkeypatch.setenv("SPLITVAULT_CONFIG", str(tmp_path / "none.yaml"))
    _, report = run(capsys, "ls", "--cache-dir", str(tmp_path / "cache"))
    assert report["max_bytes"] == 20 * 1024**3
