"""The client under network faults: a fault proxy between it and the moto S3 server or the API.

One reset (or cut) in the middle of a big part resumes and yields the same bytes; persistent
resets end in a typed failure after the retry budget with nothing left at the output; a stalled
peer fails as ``TimedOut`` after the configured timeout instead of hanging; an API that refuses
connections ends in ``Transient``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from returns.io import IOResult

from splitvault.app.client.usecases import DownloadReport
from splitvault.domain.errors import Problem, TimedOut, Transient
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.results import failure, value
from tests.support.stack import (
    DOWNLOADER,
    QUICK_RETRIES,
    UPLOADER,
    Stack,
    download,
    upload,
    write_model,
)

MiB = 1 << 20
SEGMENT = MiB + 16  # a big-part segment: one ciphertext chunk's share, with its tag
REF = ResourceRef("models", "faulty.onnx")
T = TypeVar("T")


def uploaded(stack: Stack, tmp_path: Path, size: int) -> tuple[bytes, int]:
    """Upload a model of ``size`` bytes; return its plaintext and its big part's length."""
    plaintext = write_model(tmp_path / "model.onnx", size)
    report = value(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    return plaintext, report.big_bytes


def leftovers(directory: Path) -> list[str]:
    """Everything in ``directory`` (temp files included)."""
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def bounded(action: Callable[[], T], seconds: float = 60.0) -> T:
    """Run ``action`` in a thread and fail the test if it hangs (a hang guard, not a timing)."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(action()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    return results[0]


def test_one_reset_mid_download_resumes_with_the_same_bytes(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A reset halfway through the big part is retried from the bytes already on disk."""
    plaintext, big = uploaded(stack, tmp_path, 6 * MiB)
    reader = stack.client(DOWNLOADER)
    s3_proxy.behave(Fault("reset", after=3 * MiB, trigger=b"GET /"), times=1)
    before = s3_proxy.snapshot().bytes_down
    report: DownloadReport = value(download(reader, REF, tmp_path / "out" / "model.onnx"))
    assert (tmp_path / "out" / "model.onnx").read_bytes() == plaintext
    assert s3_proxy.snapshot().resets == 1
    # Only the segment the reset broke was fetched again, not the part from its first hole.
    assert big <= report.fetched_bytes <= big + SEGMENT
    assert s3_proxy.snapshot().bytes_down - before < big + 2 * SEGMENT
    assert leftovers(tmp_path / "out") == ["model.onnx"]


def test_a_clean_cut_mid_download_is_resumed(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A connection closed early (short body) is retried from where it stopped."""
    plaintext, _ = uploaded(stack, tmp_path, 4 * MiB)
    reader = stack.client(DOWNLOADER)
    s3_proxy.behave(Fault("cut", after=2 * MiB + 100, trigger=b"GET /"), times=1)
    report: DownloadReport = value(download(reader, REF, tmp_path / "out.onnx"))
    assert (tmp_path / "out.onnx").read_bytes() == plaintext
    assert s3_proxy.snapshot().cuts == 1
    assert len(report.fill_starts) >= 2  # the cut range was asked for again
    assert report.fetched_bytes <= report.big_bytes + SEGMENT


def test_persistent_resets_fail_typed_and_leave_no_output(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Every connection reset: a Transient failure after the attempt cap, nothing at the output."""
    uploaded(stack, tmp_path, 2 * MiB)
    reader = stack.client(DOWNLOADER)
    s3_proxy.behave(Fault("reset", after=64 * 1024))
    out = tmp_path / "out" / "model.onnx"
    problem = failure(download(reader, REF, out))
    assert isinstance(problem, Transient)
    assert "attempts" in problem.detail
    assert s3_proxy.snapshot().resets == QUICK_RETRIES.max_attempts
    assert not out.exists()
    assert leftovers(out.parent) == []
    assert not reader.cache.entry_path(REF).exists()  # type: ignore[attr-defined]


def test_a_stalled_s3_peer_times_out(stack: Stack, s3_proxy: FaultProxy, tmp_path: Path) -> None:
    """S3 stops sending mid-body: TimedOut after the configured 1 s read timeout, no hang."""
    uploaded(stack, tmp_path, 2 * MiB)
    reader = stack.client(
        DOWNLOADER, read_timeout=1.0, policy=RetryPolicy(base_delay=0.01, max_attempts=2)
    )
    s3_proxy.behave(Fault("stall", after=MiB))
    out = tmp_path / "out.onnx"
    problem = failure(bounded(lambda: download(reader, REF, out)))
    assert problem == TimedOut(f"CDN object {stack.big_key(REF)}", 1.0)
    assert s3_proxy.snapshot().stalls == 2  # one per attempt
    assert not out.exists()


def test_a_stalled_api_times_out(stack: Stack, api_proxy: FaultProxy, tmp_path: Path) -> None:
    """The API never answers the download request: TimedOut after the 1 s timeout, no hang."""
    uploaded(stack, tmp_path, 100_000)
    reader = stack.client(
        DOWNLOADER,
        api_url=api_proxy.url,
        read_timeout=1.0,
        policy=RetryPolicy(base_delay=0.01, max_attempts=2),
    )
    api_proxy.behave(Fault("stall", direction="up", trigger=b"POST /resources/get/models"))
    out = tmp_path / "out.onnx"
    problem: Problem = failure(bounded(lambda: download(reader, REF, out)))  # type: ignore[assignment]
    assert problem == TimedOut(f"download of {REF}", 1.0)
    assert api_proxy.snapshot().stalls == 2
    assert not out.exists()


def test_an_api_refusing_connections_is_transient(
    stack: Stack, api_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Nothing accepts connections at the API's address: Transient after the retry budget."""
    reader = stack.client(DOWNLOADER, api_url=api_proxy.url)
    api_proxy.refuse(True)
    out = tmp_path / "out.onnx"
    result: IOResult[DownloadReport, Problem] = download(reader, REF, out)
    problem = failure(result)
    assert isinstance(problem, Transient)
    assert "connect" in problem.detail
    assert "attempts" in problem.detail
    assert api_proxy.snapshot().connections == 0
    assert not out.exists()


def test_the_big_part_is_verified_after_a_resumed_download(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """After a resumed fill, the cache entry is exactly the uploaded big part."""
    _, big = uploaded(stack, tmp_path, 3 * MiB)
    uploader_entry = stack.clients[0].cache.entry_path(REF)  # type: ignore[attr-defined]
    expected = hashlib.sha256(uploader_entry.read_bytes()).digest()
    reader = stack.client(DOWNLOADER)
    s3_proxy.behave(Fault("reset", after=2 * MiB, trigger=b"GET /"), times=1)
    report: DownloadReport = value(download(reader, REF, tmp_path / "out.onnx"))
    assert report.cache_path.stat().st_size == big
    assert hashlib.sha256(report.cache_path.read_bytes()).digest() == expected


def test_one_retry_layer_only(stack: Stack, s3_proxy: FaultProxy, tmp_path: Path) -> None:
    """Every S3 answer reset: the CDN sees exactly the policy's attempts, not botocore's on top."""
    uploaded(stack, tmp_path, 100_000)
    reader = stack.client(DOWNLOADER, policy=RetryPolicy(base_delay=0.01, max_attempts=3))
    s3_proxy.behave(Fault("reset", after=0))
    problem = failure(download(reader, REF, tmp_path / "out.onnx"))
    assert isinstance(problem, Transient)
    assert s3_proxy.snapshot().resets == 3
    assert s3_proxy.requests_matching("HEAD", f"/{stack.bucket}/{stack.big_key(REF)}") == 3


def test_a_reset_during_the_cdn_upload_is_retried(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """The big part's PUT reset halfway: the upload is sent again and the resource is whole."""
    s3_proxy.behave(Fault("reset", direction="up", after=MiB, trigger=b"PUT /"), times=1)
    plaintext, _ = uploaded(stack, tmp_path, 3 * MiB)
    assert s3_proxy.snapshot().resets == 1
    assert s3_proxy.requests_matching("PUT", f"/{stack.bucket}/{stack.big_key(REF)}") == 2
    value(download(stack.client(DOWNLOADER), REF, tmp_path / "out.onnx"))
    assert (tmp_path / "out.onnx").read_bytes() == plaintext


def test_a_stalled_s3_upload_times_out(stack: Stack, s3_proxy: FaultProxy, tmp_path: Path) -> None:
    """S3 stops reading the PUT body: TimedOut after the configured 1 s, nothing committed."""
    write_model(tmp_path / "model.onnx", 3 * MiB)
    writer = stack.client(
        UPLOADER, read_timeout=1.0, connect_timeout=1.0, policy=RetryPolicy(max_attempts=1)
    )
    s3_proxy.behave(Fault("stall", direction="up", after=MiB, trigger=b"PUT /"))
    problem = failure(bounded(lambda: upload(writer, REF, tmp_path / "model.onnx")))
    # The new version's own key (nothing was committed, so no version is known to the server).
    assert isinstance(problem, TimedOut) and problem.seconds == 1.0
    assert problem.what.startswith(f"CDN object {REF.folder}/{REF.name}/")
    assert not stack.has_small_part(REF)


# -- the Must-show figures: finished ranges are never fetched twice --------------------------------

FLAKY_SIZE = 128 * MiB


@pytest.mark.slow
def test_every_third_connection_dropped_still_finishes_refetching_little(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every third S3 connection reset 3 MiB into its answers: the 128 MiB download finishes
    with the same bytes, refetching under 10 % of the big part, within the default attempt cap
    of attempts without progress."""
    plaintext, big = uploaded(stack, tmp_path, FLAKY_SIZE)
    reader = stack.client(DOWNLOADER, policy=RetryPolicy(base_delay=0.01, max_delay=0.05))
    s3_proxy.behave(Fault("reset", after=3 * MiB), every=3)
    before = s3_proxy.snapshot()
    out = tmp_path / "out" / "model.onnx"
    report: DownloadReport = value(download(reader, REF, out))
    after = s3_proxy.snapshot()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(plaintext).digest()
    assert after.resets - before.resets >= 2  # the link really was flaky
    refetched = report.fetched_bytes - big
    wire = after.bytes_down - before.bytes_down
    with capsys.disabled():
        print(
            f"\n[every third connection reset] {after.resets - before.resets} resets, "
            f"{len(report.fill_starts)} fills, refetched {refetched} B "
            f"({100 * refetched / big:.2f} %), {wire - big} B over the wire beyond the part"
        )
    assert refetched <= big // 10
    assert wire - big <= big // 10


@pytest.mark.slow
def test_one_stall_refetches_at_most_one_range(
    stack: Stack, s3_proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One S3 connection stalls 2 MiB into a range: only that range times out, every other range
    finishes meanwhile, and the retry refetches at most that one range (8 MiB)."""
    plaintext, big = uploaded(stack, tmp_path, 48 * MiB)
    reader = stack.client(DOWNLOADER, read_timeout=2.0)
    s3_proxy.behave(Fault("stall", after=2 * MiB, trigger=b"GET /"), times=1)
    out = tmp_path / "out" / "model.onnx"
    report: DownloadReport = value(bounded(lambda: download(reader, REF, out), seconds=120))
    s3_proxy.release(forward=False)
    assert out.read_bytes() == plaintext
    assert s3_proxy.snapshot().stalls == 1
    refetched = report.fetched_bytes - big
    with capsys.disabled():
        print(f"\n[one stall] refetched {refetched} B of a {big} B part")
    assert refetched <= 8 * MiB
