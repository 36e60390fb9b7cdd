"""Concurrent use: many threads sharing one client, and two processes sharing one cache.

Threads share one ``Client`` (one API session, one CDN client, one cache): every output is the
uploaded plaintext, the account logs in once, and each big part is fetched from S3 once (the
cache's per-entry lock makes later threads wait for the first and then hit the cache). Two
processes downloading the same resource into the same cache fetch the big part once between them.
Eight processes sharing one bounded cache keep it within its bound and never evict an entry in
use.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from splitvault.adapters.file_cache import FileCache
from splitvault.app.client.usecases import DownloadReport
from splitvault.domain.digest import digest_bytes
from splitvault.domain.ref import ResourceRef
from tests.support import worker
from tests.support.fault_proxy import Fault, FaultProxy
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

MiB = 1 << 20
REFS = tuple(ResourceRef("models", f"shared-{index}.bin") for index in range(3))
THREADS = 16


def big_part_gets(proxy: FaultProxy, stack: Stack, ref: ResourceRef) -> int:
    """How many GETs of ``ref``'s big part went through the S3 proxy."""
    return proxy.requests_matching("GET", f"/{stack.bucket}/{stack.big_key(ref)}")


def test_sixteen_threads_share_one_client(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """16 threads, 3 resources, one client: all bytes right, one login, one GET per big part."""
    writer = stack.client(UPLOADER)
    plaintexts = {}
    for index, ref in enumerate(REFS):
        plaintexts[ref] = write_model(tmp_path / "src" / ref.name, MiB + index * 99_991, seed=index)
        value(upload(writer, ref, tmp_path / "src" / ref.name))
    reader = stack.client(DOWNLOADER)

    def one(job: int) -> tuple[ResourceRef, Path, DownloadReport]:
        ref = REFS[job % len(REFS)]
        out = tmp_path / "out" / f"{job}-{ref.name}"
        report: DownloadReport = value(download(reader, ref, out))
        return ref, out, report

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(one, range(THREADS)))

    for ref, out, report in results:
        assert out.read_bytes() == plaintexts[ref]
        assert report.out == out
    assert reader.api.logins == 1
    for ref in REFS:
        assert big_part_gets(s3_proxy, stack, ref) == 1
        assert sum(1 for r, _, report in results if r == ref and not report.cache_hit) == 1


def test_two_processes_share_one_cache(stack: Stack, s3_proxy: FaultProxy, tmp_path: Path) -> None:
    """Two processes download one resource into one cache: one GET, both outputs correct."""
    ref = REFS[0]
    plaintext = write_model(tmp_path / "model.bin", 3 * MiB)
    value(upload(stack.client(UPLOADER), ref, tmp_path / "model.bin"))
    cache = tmp_path / "shared-cache"
    spec = {
        "op": "download",
        "api_url": stack.url,
        "email": DOWNLOADER,
        "password": PASSWORD,
        "machine": "machine-a",
        "cache": str(cache),
        "folder": ref.folder,
        "name": ref.name,
    }
    # Hold the first big-part GET mid-body so the second process arrives while it is under way.
    s3_proxy.behave(Fault("stall", after=MiB, trigger=b"GET /"), times=1)
    first = worker.start({**spec, "path": str(tmp_path / "a.bin")})
    assert s3_proxy.wait_for(lambda seen: seen.stalls == 1, timeout=60)
    second = worker.start({**spec, "path": str(tmp_path / "b.bin")})
    stats = stack.app.state.stats
    for _ in range(600):  # bounded: until the second process has its small part (or 30 s)
        if stats.downloads >= 4:
            break
        s3_proxy.closing.wait(0.05)
    s3_proxy.release()
    results = [worker.outcome(first), worker.outcome(second)]

    assert all(result["ok"] for result in results), results
    assert (tmp_path / "a.bin").read_bytes() == plaintext
    assert (tmp_path / "b.bin").read_bytes() == plaintext
    assert big_part_gets(s3_proxy, stack, ref) == 1
    assert sorted(result["cache_hit"] for result in results) == [False, True]


# -- a bounded cache shared by eight processes -------------------------------------------------

PROCESSES = 8
PART = MiB
BOUND = 10 * PART  # room for every process's entry in use plus one being filled
OBJECTS = 14
FIRST_SEGMENT, SEGMENT_SIZE = 4096, 64 * 1024 + 16


@pytest.mark.slow
def test_the_cache_bound_holds_under_eight_processes_and_spares_entries_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Eight processes fetch random parts (more than fit) through one bounded cache, each
    holding its entry a while: the bytes on disk never pass the bound, evictions do happen,
    and no entry is evicted while a process uses it."""
    cdn_root, cache_root = tmp_path / "cdn", tmp_path / "cache"
    objects = []
    for index in range(OBJECTS):
        data = random.Random(index).randbytes(PART)
        path = cdn_root / "models" / f"part-{index}.bin.big"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        root = digest_bytes(data, FIRST_SEGMENT, SEGMENT_SIZE).hex()
        objects.append(["models", f"part-{index}.bin", PART, root, FIRST_SEGMENT, SEGMENT_SIZE])
    cache_root.mkdir()
    peak = [0]
    stop = threading.Event()

    observer = FileCache(cache_root)  # counts what the bound counts, as `cache list` sees it

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], observer.usage())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    spec = {
        "op": "churn",
        "cache": str(cache_root),
        "cdn": str(cdn_root),
        "max_bytes": BOUND,
        "objects": objects,
        "fetches": 12,
        "hold": 0.05,
    }
    processes = [worker.start({**spec, "seed": seed}) for seed in range(PROCESSES)]
    try:
        results = [worker.outcome(process, timeout=300) for process in processes]
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert all(result["ok"] for result in results), results
    assert [result["failures"] for result in results] == [[]] * PROCESSES
    assert sum(result["fetches"] for result in results) == PROCESSES * 12
    fills = sum(result["fills"] for result in results)
    evicted_in_use = sum(result["evicted_in_use"] for result in results)
    with capsys.disabled():
        print(
            f"\n[8 processes, bound {BOUND} B] peak {peak[0]} B, {fills} fills for "
            f"{PROCESSES * 12} fetches of {OBJECTS} parts, {evicted_in_use} evicted in use"
        )
    assert fills > OBJECTS  # more parts were used than fit: entries were evicted and refetched
    assert peak[0] <= BOUND
    assert evicted_in_use == 0
    assert observer.usage() <= BOUND
