"""Concurrent use: many threads sharing one client, and two processes sharing one cache.

Threads share one ``Client`` (one API session, one CDN client, one cache): every output is the
uploaded plaintext, the account logs in once, and each big part is fetched from S3 once (the
cache's per-entry lock makes later threads wait for the first and then hit the cache). Two
processes downloading the same resource into the same cache fetch the big part once between them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from splitvault.app.client.usecases import DownloadReport
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
    return proxy.requests_matching("GET", f"/{stack.bucket}/{ref.key}")


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
