"""Crash safety: a client process SIGKILLed at several points leaves nothing half-done behind.

A worker process (``tests.support.worker``) downloads or uploads a few-MiB resource through the
fault proxies and is killed: while the API holds its request, in the middle of the big part, after
N bytes have passed, while it writes the output, or after a random short delay. Afterwards the
cache entry is absent or complete and verified, the output file absent or complete with the right
bytes, nothing but temp, partial and lock files sits beside them, an upload killed before its API
write has left no small part at the API (the commit point), and the next run succeeds — resuming
the killed download's partial file (asking only for the segments not on disk, plus at most one
range), and removing at once the temp files the killed process left (their writer's lock is gone;
no waiting for them to age).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from splitvault.adapters.atomic_file import is_temp_name, is_temp_of
from splitvault.adapters.file_cache import file_digest, version_of
from splitvault.app.client.usecases import DownloadReport
from splitvault.domain.digest import segment_bounds
from splitvault.domain.ports import BigPartDigest
from splitvault.domain.ref import ResourceRef
from tests.support import worker
from tests.support.fault_proxy import PASS, Fault, FaultProxy
from tests.support.results import value
from tests.support.stack import (
    DOWNLOADER,
    PASSWORD,
    UPLOADER,
    Stack,
    download,
    upload,
    write_model,
)

pytestmark = pytest.mark.slow

MiB = 1 << 20
SIZE = 4 * MiB
REF = ResourceRef("models", "crash-test.bin")
RANGE = 8 * MiB  # what the cache asks the CDN for at a time
# A worker starts in ~0.4 s and finishes in well under a second: kill somewhere in between.
_RANDOM = random.Random(7)
DELAYS = sorted(round(_RANDOM.uniform(0.3, 0.8), 2) for _ in range(3))


@attrs.frozen
class World:
    """Everything one kill needs: the stack, both proxies, and the paths the worker uses."""

    stack: Stack
    s3: FaultProxy
    api: FaultProxy
    cache: Path
    out: Path

    def spec(self, op: str, email: str, path: Path) -> dict[str, Any]:
        return {
            "op": op,
            "api_url": self.api.url,
            "email": email,
            "password": PASSWORD,
            "machine": "machine-a",
            "cache": str(self.cache),
            "folder": REF.folder,
            "name": REF.name,
            "path": str(path),
        }


KillPoint = Callable[[World, subprocess.Popen[str]], None]


def when_api_holds(trigger: bytes) -> tuple[Callable[[World], None], KillPoint]:
    """Hold the request that contains ``trigger`` at the API; kill once it is held."""

    def arm(world: World) -> None:
        world.api.behave(Fault("stall", direction="up", trigger=trigger))

    def wait(world: World, _process: subprocess.Popen[str]) -> None:
        assert world.api.wait_for(lambda seen: seen.stalls >= 1, timeout=60)

    return arm, wait


def when_s3_holds(fault: Fault) -> tuple[Callable[[World], None], KillPoint]:
    """Stall the S3 connection as ``fault`` says; kill once it is stalled."""

    def arm(world: World) -> None:
        world.s3.behave(fault, times=1)

    def wait(world: World, _process: subprocess.Popen[str]) -> None:
        assert world.s3.wait_for(lambda seen: seen.stalls >= 1, timeout=60)

    return arm, wait


def after_bytes(direction: str, count: int) -> tuple[Callable[[World], None], KillPoint]:
    """Let traffic flow; kill as soon as ``count`` bytes went through the S3 proxy that way."""

    def wait(world: World, process: subprocess.Popen[str]) -> None:
        def passed(seen: Any) -> bool:
            moved: int = seen.bytes_down if direction == "down" else seen.bytes_up
            return moved >= count

        world.s3.wait_for(passed, timeout=60)

    return (lambda _world: None), wait


def after_delay(seconds: float) -> tuple[Callable[[World], None], KillPoint]:
    """Kill after a short delay, wherever the worker happens to be."""

    def wait(_world: World, process: subprocess.Popen[str]) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=seconds)

    return (lambda _world: None), wait


def when_temp_appears(
    where: Callable[[World], Path],
) -> tuple[Callable[[World], None], KillPoint]:
    """Kill once a temp file for ``where(world)`` exists (that file is being written)."""

    def wait(world: World, process: subprocess.Popen[str]) -> None:
        final = where(world)
        for _ in range(20_000):  # bounded: ~20 s of 1 ms polls, or until the worker ends
            if process.poll() is not None:
                return
            names = os.listdir(final.parent) if final.parent.exists() else []
            if any(is_temp_of(final.name, name) for name in names):
                return
            time.sleep(0.001)

    return (lambda _world: None), wait


def run_and_kill(
    world: World, spec: dict[str, Any], point: tuple[Callable[[World], None], KillPoint]
) -> None:
    """Start a worker, wait for the kill point, SIGKILL it, then let traffic flow again."""
    arm, wait = point
    arm(world)
    process = worker.start(spec)
    try:
        wait(world, process)
    finally:
        process.kill()  # SIGKILL: no cleanup handlers run
        process.communicate(timeout=30)
        for proxy in (world.s3, world.api):
            proxy.behave(PASS)
            proxy.release(forward=False)  # what the dead client sent never arrives


def entry_root(path: Path, part: BigPartDigest) -> bytes:
    """The big part digest of a cache entry, segmented like ``part``."""
    return file_digest(path, part.first_segment, part.segment_size).root


def sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def ref_dir(world: World) -> Path:
    """The cache directory holding every version of REF."""
    return world.cache / REF.folder / REF.name


def entry_of(world: World, part: BigPartDigest) -> Path:
    """Where the cache entry of this version of REF lives."""
    return ref_dir(world) / f"{version_of(part)}.big"


def recorded_bytes(world: World, part: BigPartDigest) -> int:
    """The bytes of the segments the partial's record says have landed (0 without a record)."""
    record = ref_dir(world) / f".{version_of(part)}.ranges"
    if not record.exists():
        return 0
    bounds = list(segment_bounds(part.length, part.first_segment, part.segment_size))
    lines = record.read_text().splitlines()[1:]
    indexes = {int(line.split()[0]) for line in lines if len(line.split()) == 2}
    return sum(bounds[i][1] - bounds[i][0] for i in indexes if i < len(bounds))


def allowed_in_cache(name: str) -> bool:
    """An entry, its stamp, the lock, a partial and its record, an incoming store, a temp."""
    return (
        name.endswith((".big", ".verified", ".partial", ".ranges"))
        or name in (".lock", ".incoming")
        or is_temp_name(name)
    )


def check_no_junk(world: World) -> None:
    """Only the final files, temps, partials and locks sit in the cache folder and output dir."""
    folder = ref_dir(world)
    cache_names = os.listdir(folder) if folder.exists() else []
    assert all(allowed_in_cache(name) for name in cache_names), cache_names
    out_names = os.listdir(world.out.parent) if world.out.parent.exists() else []
    assert all(name == world.out.name or is_temp_of(world.out.name, name) for name in out_names), (
        out_names
    )


def temps_left(world: World) -> list[Path]:
    """The temp files the killed process left in the cache folder and beside the output."""
    found = []
    for directory in (ref_dir(world), world.out.parent):
        if directory.exists():
            found += [directory / name for name in os.listdir(directory) if is_temp_name(name)]
    return found


def settled(world: World, part: BigPartDigest) -> list[str]:
    """What a finished cache folder holds: the entry, its stamp and the lock."""
    version = version_of(part)
    return sorted([f"{version}.big", f".{version}.verified", ".lock"])


@pytest.fixture
def world(stack: Stack, s3_proxy: FaultProxy, api_proxy: FaultProxy, tmp_path: Path) -> World:
    """A stack with both proxies and fresh cache and output paths for the worker."""
    return World(stack, s3_proxy, api_proxy, tmp_path / "cache", tmp_path / "out" / "model.bin")


DOWNLOAD_POINTS = {
    "api-holds-the-small-part": when_api_holds(b"POST /resources/get/models"),
    "s3-stalls-mid-big-part": when_s3_holds(Fault("stall", after=2 * MiB, trigger=b"GET /")),
    "after-3-MiB-down": after_bytes("down", 3 * MiB),
    "while-writing-the-output": when_temp_appears(lambda world: world.out),
    **{f"after-{delay}-s": after_delay(delay) for delay in DELAYS},
}


@pytest.mark.parametrize("point", list(DOWNLOAD_POINTS))
def test_a_killed_download_leaves_a_consistent_state(
    world: World, tmp_path: Path, point: str
) -> None:
    """After a SIGKILL: cache entry and output absent or complete, no junk, next run succeeds."""
    stack = world.stack
    plaintext = write_model(tmp_path / "src.bin", SIZE)
    uploaded = value(upload(stack.client(UPLOADER), REF, tmp_path / "src.bin"))
    big_part = uploaded.big_part

    run_and_kill(world, world.spec("download", DOWNLOADER, world.out), DOWNLOAD_POINTS[point])

    entry = entry_of(world, big_part)
    assert not entry.exists() or entry_root(entry, big_part) == big_part.root
    assert not world.out.exists() or world.out.read_bytes() == plaintext
    check_no_junk(world)
    on_disk = big_part.length if entry.exists() else recorded_bytes(world, big_part)
    left = temps_left(world)

    report: DownloadReport = value(
        download(stack.client(DOWNLOADER, cache=world.cache), REF, world.out)
    )
    assert world.out.read_bytes() == plaintext
    assert entry_root(entry, big_part) == big_part.root
    # The rerun asked only for what was not on disk, plus at most one range.
    assert report.fetched_bytes <= big_part.length - on_disk + RANGE
    assert not any(path.exists() for path in left)  # the dead writer's temps went at once
    assert sorted(os.listdir(world.out.parent)) == [world.out.name]
    assert sorted(os.listdir(ref_dir(world))) == settled(world, big_part)


UPLOAD_POINTS = {
    "while-sealing-into-the-cache": when_temp_appears(lambda world: ref_dir(world) / ".incoming"),
    "s3-stalls-mid-upload": when_s3_holds(
        Fault("stall", after=MiB, direction="up", trigger=b"PUT /")
    ),
    "api-holds-the-commit": when_api_holds(b"POST /resources/models"),
    "after-2-MiB-up": after_bytes("up", 2 * MiB),
    **{f"after-{delay}-s": after_delay(delay) for delay in DELAYS},
}


@pytest.mark.parametrize("point", list(UPLOAD_POINTS))
def test_a_killed_upload_commits_all_or_nothing(world: World, tmp_path: Path, point: str) -> None:
    """After a SIGKILL: a small part at the API only if its big part is complete on the CDN."""
    stack = world.stack
    source = tmp_path / "src.bin"
    plaintext = write_model(source, SIZE)

    run_and_kill(world, world.spec("upload", UPLOADER, source), UPLOAD_POINTS[point])

    s3 = stack.moto.s3_client()
    objects = s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])
    on_cdn = [item["Key"] for item in objects]
    if point in ("s3-stalls-mid-upload", "api-holds-the-commit"):
        assert not stack.has_small_part(REF)  # killed before the API write: nothing committed
    if point == "s3-stalls-mid-upload":
        assert on_cdn == []  # an interrupted PUT leaves no object
    if point == "api-holds-the-commit":
        # The big part is there under its own version's key, orphaned but harmless.
        assert len(on_cdn) == 1 and on_cdn[0].startswith(f"{REF.folder}/{REF.name}/")
    entries = list(ref_dir(world).glob("*.big")) if ref_dir(world).exists() else []
    entry = entries[0] if entries else ref_dir(world) / "none.big"
    if entry.exists() and on_cdn:
        cdn_bytes = s3.get_object(Bucket=stack.bucket, Key=on_cdn[0])["Body"].read()
        assert hashlib.sha256(cdn_bytes).digest() == sha256(entry)
    if stack.has_small_part(REF):
        # Committed: the resource is whole and opens to the uploaded bytes.
        out = tmp_path / "committed.bin"
        value(download(stack.client(DOWNLOADER, machine="machine-a"), REF, out))
        assert out.read_bytes() == plaintext
    check_no_junk(world)
    left = temps_left(world)

    report = value(upload(stack.client(UPLOADER, cache=world.cache), REF, source))
    out = tmp_path / "after.bin"
    value(download(stack.client(DOWNLOADER, cache=tmp_path / "reader-cache"), REF, out))
    assert out.read_bytes() == plaintext
    assert not any(path.exists() for path in left)
    assert sorted(os.listdir(ref_dir(world))) == settled(world, report.big_part)


def test_a_download_killed_with_ranges_in_flight_resumes_without_holes(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed while several ranges are in flight (one stalled, later ones done): the rerun asks
    only for the segments not on disk (the stalled range's among them) plus at most one range,
    not for everything from the first hole."""
    stack = world.stack
    plaintext = write_model(tmp_path / "src.bin", 40 * MiB)
    uploaded = value(upload(stack.client(UPLOADER), REF, tmp_path / "src.bin"))
    part = uploaded.big_part
    arm, stalled = when_s3_holds(Fault("stall", after=2 * MiB, trigger=b"Range: bytes=0-"))

    def later_ranges_landed(world: World, process: subprocess.Popen[str]) -> None:
        stalled(world, process)
        for _ in range(2000):  # bounded: until ranges past the stalled one are on disk (~20 s)
            if recorded_bytes(world, part) > 16 * MiB:
                return
            time.sleep(0.01)

    run_and_kill(world, world.spec("download", DOWNLOADER, world.out), (arm, later_ranges_landed))
    on_disk = recorded_bytes(world, part)
    assert on_disk > 16 * MiB  # later ranges landed beyond the stalled first one

    report: DownloadReport = value(
        download(stack.client(DOWNLOADER, cache=world.cache), REF, world.out)
    )
    assert world.out.read_bytes() == plaintext
    assert entry_root(entry_of(world, part), part) == part.root
    missing = part.length - on_disk
    with capsys.disabled():
        print(
            f"\n[kill mid-download] {on_disk} B on disk, {missing} B missing, rerun fetched "
            f"{report.fetched_bytes} B ({report.fetched_bytes - missing} B beyond the missing)"
        )
    assert report.fetched_bytes <= missing + RANGE
    assert sorted(os.listdir(ref_dir(world))) == settled(world, part)


def test_ten_killed_multipart_uploads_leave_nothing_after_one_good_upload(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten uploaders SIGKILLed while their multipart upload is under way leave unfinished
    uploads in the bucket; the next good upload of the key aborts every one of them."""
    stack = world.stack
    source = tmp_path / "src.bin"
    plaintext = write_model(source, 20 * MiB)

    def parts_under_way(world: World, process: subprocess.Popen[str]) -> None:
        seen = len(world.s3.snapshot().requests)

        def a_part_was_sent(counters: Any) -> bool:
            return any("partNumber=" in path for _, path in counters.requests[seen:])

        world.s3.wait_for(a_part_was_sent, timeout=60)

    for _ in range(10):
        run_and_kill(
            world, world.spec("upload", UPLOADER, source), ((lambda _w: None), parts_under_way)
        )
    s3 = stack.moto.s3_client()

    def unfinished() -> list[str]:
        uploads = s3.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", [])
        return [upload["Key"] for upload in uploads]

    before = unfinished()
    assert len(before) >= 5, before  # the kills really left unfinished uploads behind

    value(upload(stack.client(UPLOADER, cache=world.cache), REF, source))
    with capsys.disabled():
        print(f"\n[multipart] {len(before)} unfinished after 10 kills, {len(unfinished())} after")
    assert unfinished() == []
    out = tmp_path / "after.bin"
    value(download(stack.client(DOWNLOADER, cache=tmp_path / "reader-cache"), REF, out))
    assert out.read_bytes() == plaintext
