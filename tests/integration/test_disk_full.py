"""A full disk (ENOSPC) mid-write: the previous cache entry or output file stays intact.

The cache or the output directory sits on a small tmpfs mounted for the test (the suite runs as
root in CI). Where mounting is not allowed, the same scenarios run with the write calls of the
sealing pipeline and the S3 adapter wrapped so that writes under the "small disk" fail with
ENOSPC past its size — the failure then comes from the same place, one layer closer.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from splitvault.adapters import ranges
from splitvault.adapters.file_cache import FileCache
from splitvault.app.client import pipeline
from splitvault.domain.errors import StorageFailed
from splitvault.domain.ref import ResourceRef
from tests.support.fault_proxy import FaultProxy
from tests.support.results import failure, value
from tests.support.stack import DOWNLOADER, UPLOADER, Stack, download, upload, write_model

MiB = 1 << 20
REF = ResourceRef("models", "roomy.bin")
SmallDisk = Callable[[str, int], Path]


class WriteBudget:
    """The fallback: writes to files under a registered root fail with ENOSPC past its size."""

    def __init__(self) -> None:
        self.roots: dict[Path, int] = {}

    def check(self, fd: int, count: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        for root, size in self.roots.items():
            if root in target.parents:
                used = sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())
                if used + count > size:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        pwrite_all = pipeline._pwrite_all
        write_all = ranges.write_all

        def checked_pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
            self.check(fd, len(buf))
            pwrite_all(fd, buf, offset)

        def checked_write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
            self.check(fd, len(data))
            write_all(fd, data, offset)

        monkeypatch.setattr(pipeline, "_pwrite_all", checked_pwrite_all)
        monkeypatch.setattr(ranges, "write_all", checked_write_all)


def _mount_tmpfs(path: Path, size: int) -> bool:
    if os.environ.get("SPLITVAULT_TEST_NO_TMPFS"):
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    """``make(name, size)``: a directory on a file system that holds only ``size`` bytes."""
    mounted: list[Path] = []
    budget = WriteBudget()

    def make(name: str, size: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        if _mount_tmpfs(path, size):
            mounted.append(path)
        else:
            if not budget.roots:
                budget.install(monkeypatch)
            budget.roots[path] = size
        return path

    try:
        yield make
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def test_a_full_cache_keeps_the_previous_entry_when_sealing(
    stack: Stack, small_disk: SmallDisk, tmp_path: Path
) -> None:
    """Re-uploading a larger version onto a full cache fails as StorageFailed; v1 is untouched."""
    cache = small_disk("uploader-cache", 6 * MiB)
    writer = stack.client(UPLOADER, cache=cache)
    first = write_model(tmp_path / "v1.bin", MiB, seed=1)
    value(upload(writer, REF, tmp_path / "v1.bin"))
    entry = FileCache(cache).entry_path(REF)
    before = digest(entry)
    small_before = stack.small_part(REF)

    write_model(tmp_path / "v2.bin", 8 * MiB, seed=2)
    problem = failure(upload(writer, REF, tmp_path / "v2.bin"))

    assert isinstance(problem, StorageFailed)
    assert digest(entry) == before
    stamp = f".{entry.name.removesuffix('.big')}.verified"
    assert sorted(os.listdir(entry.parent)) == sorted([entry.name, stamp, ".lock"])
    assert stack.small_part(REF) == small_before  # nothing was committed
    out = tmp_path / "still-v1.bin"
    value(download(stack.client(DOWNLOADER), REF, out))
    assert out.read_bytes() == first


def test_a_full_output_disk_keeps_the_previous_output(
    stack: Stack, small_disk: SmallDisk, tmp_path: Path
) -> None:
    """Opening a new version onto a full disk fails as StorageFailed; the old output stays."""
    outputs = small_disk("outputs", 3 * MiB)
    writer = stack.client(UPLOADER)
    reader = stack.client(DOWNLOADER)
    first = write_model(tmp_path / "v1.bin", MiB, seed=1)
    value(upload(writer, REF, tmp_path / "v1.bin"))
    out = outputs / "model.bin"
    value(download(reader, REF, out))

    write_model(tmp_path / "v2.bin", 5 * MiB // 2, seed=2)
    value(upload(writer, REF, tmp_path / "v2.bin"))
    problem = failure(download(reader, REF, out))

    assert isinstance(problem, StorageFailed)
    assert out.read_bytes() == first
    assert os.listdir(outputs) == ["model.bin"]


def test_a_full_cache_fails_the_download_at_once(
    stack: Stack, s3_proxy: FaultProxy, small_disk: SmallDisk, tmp_path: Path
) -> None:
    """A big part that does not fit the cache: StorageFailed, not retried, no output file."""
    cache = small_disk("reader-cache", 2 * MiB)
    write_model(tmp_path / "model.bin", 4 * MiB)
    value(upload(stack.client(UPLOADER), REF, tmp_path / "model.bin"))
    reader = stack.client(DOWNLOADER, cache=cache)
    out = tmp_path / "out" / "model.bin"

    problem = failure(download(reader, REF, out))

    assert isinstance(problem, StorageFailed)
    assert s3_proxy.requests_matching("GET", f"/{stack.bucket}/{stack.big_key(REF)}") == 1
    assert not out.exists()
    assert not FileCache(cache).entry_path(REF).exists()
    assert sorted(os.listdir(cache / REF.folder / REF.name)) == [".lock"]  # no partial left


def test_a_full_cache_during_a_fill_keeps_the_old_entry_and_names_the_partial(
    stack: Stack, small_disk: SmallDisk, tmp_path: Path
) -> None:
    """A new version that fills the disk mid-fill: the error names the partial that filled,
    the partial and its record are gone, and the old version's entry is intact and serves."""
    cache = small_disk("reader-cache", 6 * MiB)
    writer = stack.client(UPLOADER)
    reader = stack.client(DOWNLOADER, cache=cache)
    first = write_model(tmp_path / "v1.bin", MiB, seed=1)
    value(upload(writer, REF, tmp_path / "v1.bin"))
    value(download(reader, REF, tmp_path / "v1.out"))
    old_entry = FileCache(cache).entry_path(REF)
    before = digest(old_entry)

    write_model(tmp_path / "v2.bin", 12 * MiB, seed=2)
    value(upload(writer, REF, tmp_path / "v2.bin"))
    problem = failure(download(reader, REF, tmp_path / "v2.out"))

    assert isinstance(problem, StorageFailed)
    assert problem.what.startswith(str(cache / REF.folder / REF.name / "."))
    assert problem.what.endswith(".partial")
    assert "No space left" in problem.describe()
    names = os.listdir(cache / REF.folder / REF.name)
    assert not [name for name in names if name.endswith((".partial", ".ranges"))], names
    assert digest(old_entry) == before
    assert not (tmp_path / "v2.out").exists()
    # The old version still opens from its entry (a rollback or a reader of it loses nothing).
    assert sorted(name for name in names if name.endswith(".big")) == [old_entry.name]
    assert (tmp_path / "v1.out").read_bytes() == first
