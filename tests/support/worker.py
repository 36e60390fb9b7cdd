"""A splitvault client in its own process, for crash and multi-process tests.

Run ``python -m tests.support.worker '<json spec>'`` from the repository root. The spec names the
operation (``download``, ``upload``, or ``churn``: random fetches from a bounded cache shared with
other workers, see ``churn``), the API URL and account, the simulated machine, the cache
directory, the resource and the local file. The worker builds a client through the real
composition root, runs the use case with the client's retrier and prints one JSON line: ``{"ok":
true, ...report}`` or ``{"ok": false, "failure": "<type>", "detail": "..."}``. Its exit code is 0
on success and 1 on a failure; a test may SIGKILL it at any moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.app.client.bootstrap import Client, bootstrap
from splitvault.domain.config import ClientConfig
from splitvault.domain.errors import Problem
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy

WORKER_RETRIES = RetryPolicy(base_delay=0.01, max_delay=0.1, max_attempts=4, budget=20.0)
REPO_ROOT = Path(__file__).resolve().parents[2]


def start(spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start a worker process for ``spec`` (from the test process); stdout is piped."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.worker", json.dumps(spec)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def outcome(process: subprocess.Popen[str], timeout: float = 120.0) -> dict[str, Any]:
    """Wait (bounded) for a worker and return its JSON line; raises if it printed none."""
    out, err = process.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"worker exited {process.returncode} without a result:\n{err}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run(spec: dict[str, Any]) -> IOResult[dict[str, Any], Problem]:
    """Build a client from ``spec`` and run its operation; the report as a plain dict."""
    config = ClientConfig(
        cache_dir=Path(spec["cache"]),
        api_url=spec["api_url"],
        email=spec["email"],
        password=spec["password"],
        read_timeout=float(spec.get("read_timeout", 60.0)),
    )
    built = bootstrap(config, hardware=FixedHardware(spec["machine"]), retry_policy=WORKER_RETRIES)
    ref = ResourceRef(spec["folder"], spec["name"])
    path = Path(spec["path"])

    def operate(client: Client) -> IOResult[dict[str, Any], Problem]:
        try:
            return _operate(client, spec["op"], ref, path)
        finally:
            client.close()

    return built.bind(operate)


def _operate(
    client: Client, op: str, ref: ResourceRef, path: Path
) -> IOResult[dict[str, Any], Problem]:
    if op == "download":
        return client.download(ref, path).map(
            lambda report: {
                "cache_hit": report.cache_hit,
                "fill_starts": list(report.fill_starts),
                "bytes": report.plaintext_bytes,
            }
        )
    return client.upload(ref, path).map(
        lambda report: {"big_bytes": report.big_bytes, "big_digest": report.big_part.root.hex()}
    )


def download_loop(spec: dict[str, Any]) -> IOResult[dict[str, Any], Problem]:
    """Download the resource ``count`` times, each into a fresh cache when ``cold``.

    Failures are counted, not fatal: a race test wants every outcome. The report lists the
    SHA-256 of each output, so the test can check the bytes against every version published.
    """
    import hashlib

    from returns.io import IOSuccess

    digests: list[str] = []
    failures: list[str] = []
    out = Path(spec["path"])
    for index in range(int(spec["count"])):
        cache = Path(spec["cache"]) / str(index) if spec["cold"] else Path(spec["cache"])
        result = run({**spec, "op": "download", "cache": str(cache)})
        if is_successful(result):
            digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
            out.unlink()
        else:
            problem = unsafe_perform_io(result.failure())
            failures.append(f"{type(problem).__name__}: {problem.describe()}")
    return IOSuccess({"digests": digests, "failures": failures})


def churn(spec: dict[str, Any]) -> IOResult[dict[str, Any], Problem]:
    """Fetch random entries of a bounded cache shared with other processes, holding each.

    The objects sit in a directory CDN; each use holds its entry ``hold`` seconds and checks at
    the end that the entry still has its name and inode (it was not evicted while in use).
    """
    import random
    import time

    from returns.io import IOSuccess

    from splitvault.adapters.directory_cdn import DirectoryCdn
    from splitvault.adapters.file_cache import FileCache
    from splitvault.domain.ports import BigPartDigest, RangeSink, Span

    cache = unsafe_perform_io(
        FileCache.open(Path(spec["cache"]), max_bytes=int(spec["max_bytes"])).unwrap()
    )
    cdn = DirectoryCdn(Path(spec["cdn"]))
    chooser = random.Random(int(spec["seed"]))
    stats = {"fetches": 0, "fills": 0, "evicted_in_use": 0}
    failures: list[str] = []

    for _ in range(int(spec["fetches"])):
        folder, name, length, root, first, size = chooser.choice(spec["objects"])
        ref = ResourceRef(folder, name)
        expected = BigPartDigest(length, bytes.fromhex(root), first, size)

        def fill(ranges: Any, sink: RangeSink, ref: ResourceRef = ref) -> IOResult[None, Problem]:
            stats["fills"] += 1
            spans: list[Span] = list(ranges)
            return cdn.download_ranges(ref, spans, sink).map(lambda _: None)

        def use(path: Path) -> IOResult[int, Problem]:
            inode = os.stat(path).st_ino
            time.sleep(float(spec["hold"]))
            try:
                still = os.stat(path).st_ino == inode
            except FileNotFoundError:
                still = False
            if not still:
                stats["evicted_in_use"] += 1
            return IOSuccess(inode)

        result = cache.fetch(ref, expected, fill, use)
        if is_successful(result):
            stats["fetches"] += 1
        else:
            failures.append(unsafe_perform_io(result.failure()).describe())
    return IOSuccess({**stats, "failures": failures})


def main(argv: list[str]) -> int:
    """Run the spec in ``argv[1]``; print the outcome as JSON."""
    spec = json.loads(argv[1])
    operations = {"churn": churn, "download-loop": download_loop}
    result = operations.get(spec.get("op", ""), run)(spec)
    if is_successful(result):
        print(json.dumps({"ok": True, **unsafe_perform_io(result.unwrap())}), flush=True)
        return 0
    problem: Problem = unsafe_perform_io(result.failure())
    outcome = {"ok": False, "failure": type(problem).__name__, "detail": problem.describe()}
    print(json.dumps(outcome), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
