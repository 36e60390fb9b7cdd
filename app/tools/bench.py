"""``splitvault bench``: how fast seal and open run on this machine, next to a plain file copy.

One run generates a file and measures, on that same file, a plain chunked copy (read and write
1 MiB at a time: the ceiling for any file-to-file transform here), format v1 seal and open (also
without the big part's digest, to show what that step costs), the legacy suite's seal and
open, and ``openssl enc -aes-256-cbc`` both ways. Every operation runs in a fresh child process,
so its peak RSS (``VmHWM``) is its own and can be set against a child that only imports the same
modules (the interpreter baseline). The page cache cannot be dropped without root, so one untimed
warm-up pass runs first and every timed operation reads from the cache alike; before each one a
scratch file is written and deleted so that every operation also writes into equally warm memory.
Each figure is the median of the repetitions, and the CPU seconds show how busy the cores were.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cryptography
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.app.client import pipeline
from splitvault.domain import errors
from splitvault.domain.ref import ResourceRef

_T = TypeVar("_T")

MIB = 1 << 20
_COPY_CHUNK = MIB
_BENCH_REF = ResourceRef("bench", "resource")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
# Room the run needs on disk, in multiples of the size: source, big part, output and scratch.
_DISK_FACTOR = 4.2


class BenchFailed(RuntimeError):
    """An operation under measurement failed (a child exited non-zero or produced wrong bytes)."""


@attrs.frozen
class Measurement:
    """One operation's figures: the median time of the repetitions and the highest peak RSS.

    ``cpu_seconds`` (user + system, median) shows how much of both cores an operation used;
    ``above_baseline`` is the peak RSS minus the interpreter baseline, or None for a program
    that is not our interpreter (openssl).
    """

    name: str
    seconds: float
    runs: tuple[float, ...]
    cpu_seconds: float
    gb_per_s: float
    ratio_to_copy: float
    peak_rss: int
    above_baseline: int | None


@attrs.frozen
class BenchReport:
    """A whole bench run: what was measured, on what, and notes on anything skipped."""

    size: int
    repetitions: int
    cpu_count: int
    workers: int
    baseline_rss: int
    measurements: tuple[Measurement, ...]
    notes: tuple[str, ...]
    versions: tuple[tuple[str, str], ...]


def parse_size(text: str) -> int:
    """Read ``1GiB``, ``512MiB``, ``100M``, ``1.5G`` or plain bytes; raises ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 1GiB, 512MiB, 100M or bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _nproc() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports KiB, macOS bytes.
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def generate_file(path: Path, size: int) -> None:
    """Write ``size`` incompressible-looking bytes fast: rotations of one random MiB."""
    block = os.urandom(MIB)
    with path.open("wb", buffering=0) as out:
        written = 0
        turn = 0
        while written < size:
            rotated = block[turn:] + block[:turn]
            piece = rotated[: min(MIB, size - written)]
            out.write(piece)
            written += len(piece)
            turn = (turn + 4099) % MIB


# --- the child side: one operation per process -------------------------------------------------


def _copy(source: Path, dest: Path) -> None:
    buf = bytearray(_COPY_CHUNK)
    view = memoryview(buf)
    with source.open("rb", buffering=0) as src, dest.open("wb", buffering=0) as dst:
        while True:
            got = src.readinto(buf)
            if not got:
                break
            dst.write(view[:got])


def _child_operation(op: str, args: dict[str, Any]) -> float | None:
    """Run one operation; returns the seconds of its measured part when not the whole of it."""
    workers = args.get("workers")
    if op == "baseline":
        return None
    if op == "copy":
        _copy(Path(args["source"]), Path(args["out"]))
        return None
    if op == "v1-seal":
        sealed = pipeline.seal_file(
            Path(args["source"]),
            Path(args["big"]),
            ref=_BENCH_REF,
            dek=bytes.fromhex(args["key"]),
            file_id=bytes.fromhex(args["file_id"]),
            workers=workers,
        )
        Path(args["small"]).write_bytes(_unwrap(sealed).small_part)
        return None
    if op in {"v1-open", "v1-open-gcm-only"}:
        opened = pipeline.open_file(
            Path(args["small"]).read_bytes(),
            Path(args["big"]),
            Path(args["out"]),
            workers=workers,
            verify_big_digest=op == "v1-open",
        )
        _unwrap(opened)
        return None
    if op == "legacy-seal":
        sealed = pipeline.seal_file_legacy(
            Path(args["source"]),
            Path(args["big"]),
            key=bytes.fromhex(args["key"]),
            iv=bytes.fromhex(args["iv"]),
            workers=workers,
        )
        Path(args["small"]).write_bytes(_unwrap(sealed).small_part)
        return None
    if op == "legacy-open":
        opened = pipeline.open_file_legacy(
            Path(args["small"]).read_bytes(),
            Path(args["big"]),
            Path(args["out"]),
            key=bytes.fromhex(args["key"]),
            workers=workers,
        )
        _unwrap(opened)
        return None
    if op == "warm-download":
        return _warm_download(args)
    raise ValueError(f"unknown bench operation {op!r}")


def _bench_client(args: dict[str, Any]) -> Any:
    """A client of the bench's reference server with a directory CDN and a fixed machine."""
    from splitvault.adapters.directory_cdn import DirectoryCdn
    from splitvault.adapters.fixed_hardware import FixedHardware
    from splitvault.app.client.bootstrap import bootstrap
    from splitvault.domain.config import ClientConfig

    config = ClientConfig(
        cache_dir=Path(args["cache"]),
        api_url=args["url"],
        email=args["email"],
        password=args["password"],
        workers=args.get("workers") or pipeline.default_workers(),
    )
    return _unwrap(
        bootstrap(config, cdn=DirectoryCdn(Path(args["cdn"])), hardware=FixedHardware("bench"))
    )


def _warm_download(args: dict[str, Any]) -> float:
    """What an inference service does at start-up once logged in: small part from the API, big
    part from its cache, open into the output. Client start-up (imports, login, one Argon2id
    derivation) happens first and is not part of the returned seconds."""
    from splitvault.app.client.usecases import download_resource

    client = _bench_client(args)
    try:
        _unwrap(client.api.login())
        transport_key = client.transport_key
        cdn = _unwrap(client.cdn(write=False))
        start = time.perf_counter()
        report = _unwrap(
            download_resource(
                _BENCH_REF,
                Path(args["out"]),
                api=client.api,
                cdn=cdn,
                cache=client.cache,
                fingerprint=client.fingerprint,
                transport_key=transport_key,
                workers=args.get("workers"),
            )
        )
        seconds = time.perf_counter() - start
    finally:
        client.close()
    if args.get("expect_warm", True) and not report.cache_hit:
        raise SystemExit("bench operation failed: the warm download missed the cache")
    return seconds


def _unwrap(result: IOResult[_T, errors.Problem]) -> _T:
    """The success value of an IOResult, or exit the child with the failure's description."""
    if not is_successful(result):
        failure = unsafe_perform_io(result.failure())
        raise SystemExit(f"bench operation failed: {failure.describe()}")
    return unsafe_perform_io(result.unwrap())


def peak_rss_of(pid: int | str = "self") -> int | None:
    """A process's own peak RSS in bytes (``VmHWM``), or None where /proc does not say.

    Not ``ru_maxrss``: Linux carries the parent's peak across fork and exec into it, so a child
    of a large parent would report the parent's size.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_main(argv: Sequence[str]) -> None:
    """Entry point of a measuring child: run one operation, print its time and peak as JSON."""
    op = argv[0]
    args = json.loads(Path(argv[1]).read_text()) if len(argv) > 1 else {}
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    measured = _child_operation(op, args)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    if measured is not None:
        seconds = measured
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak_rss_of()}))


# --- the parent side -----------------------------------------------------------------------------


@attrs.frozen
class _Run:
    seconds: float
    cpu_seconds: float
    peak_rss: int


def _child_env() -> dict[str, str]:
    """The environment of a child: ours, with this checkout first on the import path."""
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + existing if existing else "")}


class _PeakWatcher:
    """Samples a foreign child's ``VmHWM`` while it runs (a program that cannot report it)."""

    def __init__(self, pid: int) -> None:
        self.peak: int | None = None
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.005):
            seen = peak_rss_of(self._pid)
            if seen is not None:
                self.peak = max(self.peak or 0, seen)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _run_child(command: Sequence[str], scratch: Path, *, self_timed: bool) -> _Run:
    """Run one measuring process to the end and collect its time and own peak RSS.

    A Python child times itself (interpreter start-up excluded) and reports its ``VmHWM``;
    another program is timed from outside and its ``VmHWM`` sampled while it runs. Where /proc
    is missing, ``wait4``'s ``ru_maxrss`` is the fallback (it includes the parent's size).
    """
    out_path, err_path = scratch / "child.out", scratch / "child.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603 -- our interpreter or openssl, arguments built here
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=_child_env()
        )
        watcher = None if self_timed else _PeakWatcher(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if watcher is not None:
            watcher.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        detail = err_path.read_text(errors="replace")[-800:]
        raise BenchFailed(f"{' '.join(command[:4])} exited {proc.returncode}: {detail}")
    peak: int | None = watcher.peak if watcher is not None else None
    cpu = usage.ru_utime + usage.ru_stime
    if self_timed:
        reported = json.loads(out_path.read_text().strip().splitlines()[-1])
        elapsed, cpu = float(reported["seconds"]), float(reported["cpu_seconds"])
        peak = reported["peak_rss"]
    return _Run(elapsed, cpu, peak if peak is not None else _maxrss_bytes(usage.ru_maxrss))


@attrs.frozen
class _Step:
    name: str
    command: tuple[str, ...]
    self_timed: bool
    # Files the step writes (removed before it runs) and files to remove once the pair is done.
    outputs: tuple[Path, ...]
    verify: Path | None = None
    cleanup: tuple[Path, ...] = ()


def _python_command(base: Path, op: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The command of a measuring child; its parameters (keys too) go in a 0600 file, not argv."""
    params_path = base / f"{op}.json"
    fd = os.open(params_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(params, handle)
    return (sys.executable, "-m", "splitvault.app.tools.bench", "--child", op, str(params_path))


def _plan(
    base: Path, source: Path, workers: int, openssl: str | None
) -> tuple[list[_Step], list[str]]:
    """The steps of one repetition, in order, and notes on what is left out."""
    notes: list[str] = []
    key, file_id, iv = os.urandom(32), os.urandom(16), os.urandom(16)
    steps: list[_Step] = []

    def py(op: str, params: dict[str, Any]) -> tuple[str, ...]:
        return _python_command(base, op, {**params, "workers": workers})

    steps.append(_Step("baseline", py("baseline", {}), True, ()))
    copy_out = base / "copy.out"
    steps.append(
        _Step(
            "plain copy",
            py("copy", {"source": str(source), "out": str(copy_out)}),
            True,
            (copy_out,),
            verify=copy_out,
            cleanup=(copy_out,),
        )
    )
    for suite, seal_op, open_op, secret in (
        ("v1", "v1-seal", "v1-open", {"key": key.hex(), "file_id": file_id.hex()}),
        ("legacy", "legacy-seal", "legacy-open", {"key": key.hex(), "iv": iv.hex()}),
    ):
        big, small, out = base / f"{suite}.big", base / f"{suite}.small", base / f"{suite}.out"
        seal_params = {"source": str(source), "big": str(big), "small": str(small), **secret}
        open_params = {"big": str(big), "small": str(small), "out": str(out), **secret}
        steps.append(_Step(f"{suite} seal", py(seal_op, seal_params), True, (big, small)))
        if suite == "v1":
            # The same open without the big part's digest (chunks still authenticated): shows
            # what the one serial step costs.
            steps.append(
                _Step(
                    "v1 open -sha",
                    py("v1-open-gcm-only", open_params),
                    True,
                    (out,),
                    verify=out,
                    cleanup=(out,),
                )
            )
        steps.append(
            _Step(
                f"{suite} open",
                py(open_op, open_params),
                True,
                (out,),
                verify=out,
                cleanup=(out, big, small),
            )
        )
    if openssl is None:
        notes.append("openssl not found on PATH: its rows are left out")
    else:
        enc, dec = base / "openssl.enc", base / "openssl.out"
        common = ("-aes-256-cbc", "-K", key.hex(), "-iv", iv.hex(), "-nosalt")
        steps.append(
            _Step(
                "openssl enc",
                (openssl, "enc", "-e", *common, "-in", str(source), "-out", str(enc)),
                False,
                (enc,),
            )
        )
        steps.append(
            _Step(
                "openssl dec",
                (openssl, "enc", "-d", *common, "-in", str(enc), "-out", str(dec)),
                False,
                (dec,),
                verify=dec,
                cleanup=(dec, enc),
            )
        )
        notes.append(
            "openssl enc runs with its default buffer size and is timed from process start"
        )
    return steps, notes


def _same_bytes(expected: Path, got: Path) -> bool:
    """Cheap spot check of an output: same size, same first, middle and last MiB."""
    size = expected.stat().st_size
    if got.stat().st_size != size:
        return False
    with expected.open("rb") as a, got.open("rb") as b:
        for offset in {0, max(0, size // 2 - MIB // 2), max(0, size - MIB)}:
            a.seek(offset)
            b.seek(offset)
            if a.read(MIB) != b.read(MIB):
                return False
    return True


def _prime_page_cache(base: Path, size: int) -> None:
    """Write and delete a scratch file a little larger than ``size``.

    Each operation writes a new file, and a VM that hands freed memory back to its host makes
    the first write into such memory up to 1 s/GiB slower. Freeing a file's worth of page cache
    just before every operation gives every one (the copy too) equally warm pages.
    """
    scratch = base / "scratch"
    block = bytes(MIB)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(-(-(size + size // 16) // MIB)):
            os.write(fd, block)
    finally:
        os.close(fd)
        scratch.unlink()


def _unlink(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _version(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


class _DownloadWorld:
    """A reference API server on loopback holding the bench file as a resource, and a
    downloader whose cache already holds the big part (filled by one untimed download)."""

    EMAIL = "bench-downloader@example.com"

    def __init__(self, base: Path, source: Path, workers: int) -> None:
        from splitvault.adapters.directory_cdn import DirectoryCdn
        from splitvault.adapters.fixed_hardware import FixedHardware
        from splitvault.app.client.bootstrap import bootstrap
        from splitvault.app.server.api import add_user, create_app
        from splitvault.app.server.runner import RunningServer
        from splitvault.domain.config import ClientConfig

        self._password = os.urandom(12).hex()
        data = base / "server-data"
        uploader = "bench-uploader@example.com"
        _unwrap(add_user(data, uploader, self._password, "uploader"))
        _unwrap(add_user(data, self.EMAIL, self._password, "downloader"))
        self._server = RunningServer(create_app(data))
        self._server.start()
        self.cdn = base / "cdn"
        self.cache = base / "download-cache"
        config = ClientConfig(
            cache_dir=base / "upload-cache",
            api_url=self._server.url,
            email=uploader,
            password=self._password,
            workers=workers,
        )
        client = _unwrap(
            bootstrap(config, cdn=DirectoryCdn(self.cdn), hardware=FixedHardware("bench"))
        )
        try:
            _unwrap(client.upload(_BENCH_REF, source))
        finally:
            client.close()
        shutil.rmtree(base / "upload-cache", ignore_errors=True)
        # One cold download fills the downloader's cache; every timed one is then warm.
        _warm_download({**self.params(base / "download.out", workers), "expect_warm": False})
        (base / "download.out").unlink()

    def params(self, out: Path, workers: int) -> dict[str, Any]:
        return {
            "url": self._server.url,
            "email": self.EMAIL,
            "password": self._password,
            "cache": str(self.cache),
            "cdn": str(self.cdn),
            "out": str(out),
            "workers": workers,
        }

    def step(self, base: Path, workers: int) -> _Step:
        out = base / "download.out"
        return _Step(
            "warm download",
            _python_command(base, "warm-download", self.params(out, workers)),
            True,
            (out,),
            verify=out,
            cleanup=(out,),
        )

    def close(self) -> None:
        self._server.stop()


def run_bench(
    size: int,
    repetitions: int = 3,
    workdir: Path | None = None,
    *,
    workers: int | None = None,
    on_step: Callable[[str, int], None] | None = None,
) -> BenchReport:
    """Measure copy, v1, legacy and openssl on one generated ``size``-byte file.

    Files go to a fresh directory under ``workdir`` (the system temp directory by default),
    removed at the end. ``on_step(name, repetition)`` is called before each measured step, for
    progress output. Raises ``ValueError`` for a size or repetition count below 1, ``OSError``
    when the disk lacks room for four copies of the file, ``BenchFailed`` when an operation
    fails or writes wrong bytes.
    """
    if size < 1 or repetitions < 1:
        raise ValueError("the bench needs a size and a repetition count of at least 1")
    threads = pipeline.default_workers() if workers is None else workers
    base = Path(tempfile.mkdtemp(prefix="splitvault-bench-", dir=workdir))
    try:
        free = shutil.disk_usage(base).free
        if free < _DISK_FACTOR * size:
            raise OSError(
                28, f"the bench needs {_DISK_FACTOR * size / 2**30:.1f} GiB free in {base}"
            )
        source = base / "source"
        generate_file(source, size)
        openssl = shutil.which("openssl")
        steps, notes = _plan(base, source, threads, openssl)
        server = _DownloadWorld(base, source, threads)
        steps.append(server.step(base, threads))
        notes.append(
            "warm download = download_resource in a fresh, logged-in client process: the small "
            "part from the reference server on loopback, the big part from the cache (stamp "
            "checked), open, fsync and rename; its CPU s and peak RSS include the client's "
            "start-up (imports, login, one Argon2id derivation with its 19 MiB)"
        )
        samples: dict[str, list[_Run]] = {step.name: [] for step in steps}
        # Repetition 0 is the warm-up: it puts the source (and the interpreter) in the page cache.
        for repetition in range(repetitions + 1):
            for step in steps:
                if on_step is not None and repetition:
                    on_step(step.name, repetition)
                _unlink(step.outputs)
                _prime_page_cache(base, size)
                run = _run_child(step.command, base, self_timed=step.self_timed)
                if step.verify is not None and not _same_bytes(source, step.verify):
                    raise BenchFailed(f"{step.name} did not give back the source's bytes")
                _unlink(step.cleanup)
                if repetition:
                    samples[step.name].append(run)
        versions = (
            ("python", sys.version.split()[0]),
            ("cryptography", cryptography.__version__),
            ("openssl", _version((openssl, "version")) if openssl else "absent"),
        )
        server.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    baseline = int(statistics.median(run.peak_rss for run in samples.pop("baseline")))
    copy_seconds = statistics.median(run.seconds for run in samples["plain copy"])
    measurements = []
    for name, runs in samples.items():
        seconds = statistics.median(run.seconds for run in runs)
        peak = max(run.peak_rss for run in runs)
        measurements.append(
            Measurement(
                name=name,
                seconds=seconds,
                runs=tuple(run.seconds for run in runs),
                cpu_seconds=statistics.median(run.cpu_seconds for run in runs),
                gb_per_s=size / max(seconds, 1e-9) / 1e9,
                ratio_to_copy=copy_seconds / max(seconds, 1e-9),
                peak_rss=peak,
                above_baseline=None if name.startswith("openssl") else peak - baseline,
            )
        )
    return BenchReport(
        size=size,
        repetitions=repetitions,
        cpu_count=_nproc(),
        workers=threads,
        baseline_rss=baseline,
        measurements=tuple(measurements),
        notes=(
            "x copy = copy time / operation time (1.00 = as fast as the plain copy)",
            "v1 open -sha = v1 open without the big part's digest (every chunk still "
            "authenticated)",
            "one untimed warm-up pass ran first; every operation reads from the page cache",
            "before each operation a scratch file of the same size is written and deleted, "
            "so every operation writes into equally warm memory",
            *notes,
        ),
        versions=versions,
    )


def _mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


def render(report: BenchReport) -> str:
    """The report as a table for people."""
    lines = [
        f"splitvault bench: {_size_text(report.size)} file, median of {report.repetitions} "
        f"runs, {report.cpu_count} cores, {report.workers} workers",
        f"interpreter baseline peak RSS: {_mib(report.baseline_rss)}",
        "",
        f"{'operation':<14}{'seconds':>9}{'GB/s':>8}{'x copy':>8}{'CPU s':>8}{'peak RSS':>12}"
        f"{'above base':>12}",
    ]
    for m in report.measurements:
        above = _mib(m.above_baseline) if m.above_baseline is not None else "-"
        lines.append(
            f"{m.name:<14}{m.seconds:>9.3f}{m.gb_per_s:>8.2f}{m.ratio_to_copy:>8.2f}"
            f"{m.cpu_seconds:>8.2f}{_mib(m.peak_rss):>12}{above:>12}"
        )
    lines.append("")
    lines.extend(f"note: {note}" for note in report.notes)
    lines.append("versions: " + ", ".join(f"{name} {value}" for name, value in report.versions))
    return "\n".join(lines)


def report_json(report: BenchReport) -> dict[str, Any]:
    """The report as plain JSON-ready values for scripts (``--json``)."""
    return {
        "size": report.size,
        "repetitions": report.repetitions,
        "cpu_count": report.cpu_count,
        "workers": report.workers,
        "baseline_rss": report.baseline_rss,
        "measurements": [
            {
                "name": m.name,
                "seconds": m.seconds,
                "runs": list(m.runs),
                "cpu_seconds": m.cpu_seconds,
                "gb_per_s": m.gb_per_s,
                "ratio_to_copy": m.ratio_to_copy,
                "peak_rss": m.peak_rss,
                "above_baseline": m.above_baseline,
            }
            for m in report.measurements
        ],
        "notes": list(report.notes),
        "versions": dict(report.versions),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        raise SystemExit(
            "run the bench as `splitvault bench` or splitvault.app.tools.bench.run_bench()"
        )
