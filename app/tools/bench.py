"""``splitvault bench``: CPU seconds per GiB and wall time of seal, open, upload and download, next
to the peers that do the same job, on one generated file, in one run.

Offline rows: a ``dd bs=1M`` copy (the wall-time baseline: what moving the bytes costs), format v1
seal and open (open verifies the big part's digest, as ``splitvault open`` does), and as peers
``openssl enc -aes-256-ctr`` (a raw cipher that authenticates nothing: the floor for an encrypting
copy) and ``age`` (X25519 + ChaCha20-Poly1305 STREAM: the authenticated streaming peer), each
skipped with a note when not installed. Start-up rows: ``splitvault --help`` and an 8 MiB warm
download (a fresh process: bootstrap, login, small part from the API, big part from the cache).
Online rows (when moto's server and the reference server are installed): our upload and cold
download of ``online_size`` bytes against boto3's ``upload_file``/``download_file`` on the same
moto S3 server, in the same run.

Every row is one fresh child process, measured from outside: wall time from spawn to exit and CPU
seconds (user + system, ``wait4``) of the whole child, interpreter start-up included, so a Python
row and a C peer are measured alike. Peak RSS is the child's own ``VmHWM``. The page cache cannot be
dropped without root, so one untimed warm-up repetition runs first, every row reads from the cache
alike, and before each row a scratch file is written and deleted so every row also writes into
equally warm memory (in a VM that hands freed memory back to its host, only while the kernel
keeps it: ``--hold-freed-memory``, ``freed_memory_held``). "x copy" means one thing everywhere:
the copy's wall time divided by the row's (1.00 = as fast as ``dd``; higher is faster). Figures
are medians of the repetitions, with their spread (min..max).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs

from splitvault.app.tools.bench_child import BENCH_REF as _BENCH_REF
from splitvault.app.tools.bench_child import BUCKET as _BUCKET
from splitvault.app.tools.bench_child import child_main, peak_rss_of
from splitvault.app.tools.bench_child import unwrap as _unwrap
from splitvault.domain.ref import ResourceRef
from splitvault.domain.sizes import GIB, MIB, format_size

__all__ = ["BenchFailed", "BenchReport", "Measurement", "peak_rss_of", "run_bench"]

_WARM_REF = ResourceRef("bench", "warm-8mib")
WARM_SIZE = 8 * MIB
DEFAULT_ONLINE_SIZE = 256 * MIB
# Room the run needs on disk, in multiples of the size: source, big part, output and scratch.
_DISK_FACTOR = 4.2
_PARAMS_COUNTER = itertools.count()
# Free page reporting's knobs (``freed_memory_held``); the kernel refused 600000 ms here.
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")
HOLD_FREED_MS = 300_000


class BenchFailed(RuntimeError):
    """An operation under measurement failed (a child exited non-zero or produced wrong bytes)."""


@attrs.frozen
class Measurement:
    """One row: medians over the repetitions, the runs themselves, the highest peak RSS.

    ``bytes_moved`` is what the row processed (0 for ``--help``); ``cpu_per_gib`` is its CPU
    seconds per GiB of it. ``above_baseline`` is the peak RSS minus the interpreter baseline,
    or None for a program that is not our interpreter.
    """

    name: str
    group: str
    bytes_moved: int
    seconds: float
    runs: tuple[float, ...]
    cpu_seconds: float
    cpu_runs: tuple[float, ...]
    ratio_to_copy: float
    peak_rss: int
    above_baseline: int | None

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu_seconds / (self.bytes_moved / GIB) if self.bytes_moved else 0.0

    @property
    def gb_per_s(self) -> float:
        return self.bytes_moved / max(self.seconds, 1e-9) / 1e9


@attrs.frozen
class BenchReport:
    """A whole bench run: what was measured, on what, and notes on anything skipped."""

    size: int
    online_size: int
    repetitions: int
    cpu_count: int
    workers: int
    baseline_rss: int
    measurements: tuple[Measurement, ...]
    notes: tuple[str, ...]
    versions: tuple[tuple[str, str], ...]

    def row(self, name: str) -> Measurement | None:
        return next((m for m in self.measurements if m.name == name), None)


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


# --- the parent side -----------------------------------------------------------------------------


@attrs.frozen
class _Run:
    seconds: float
    cpu_seconds: float
    peak_rss: int


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


def _run_child(command: Sequence[str], scratch: Path, *, ours: bool, stdin: Path | None) -> _Run:
    """Run one measuring process to the end: wall time, whole-process CPU, own peak RSS.

    Our children report their ``VmHWM`` on stdout; another program's is sampled while it runs.
    Where /proc is missing, ``wait4``'s ``ru_maxrss`` is the fallback.
    """
    out_path, err_path = scratch / "child.out", scratch / "child.err"
    with ExitStack() as files:
        out = files.enter_context(out_path.open("wb"))
        err = files.enter_context(err_path.open("wb"))
        given = files.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        start = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603 -- our interpreter or a peer, arguments built here
            command, stdin=given, stdout=out, stderr=err
        )
        watcher = None if ours else _PeakWatcher(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if watcher is not None:
            watcher.stop()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        detail = err_path.read_text(errors="replace")[-800:]
        raise BenchFailed(f"{' '.join(command[:4])} exited {code}: {detail}")
    peak: int | None = watcher.peak if watcher is not None else None
    if ours:
        lines = out_path.read_text().strip().splitlines()
        peak = json.loads(lines[-1])["peak_rss"] if lines and lines[-1].startswith("{") else None
    fallback = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return _Run(elapsed, usage.ru_utime + usage.ru_stime, peak or fallback)


@attrs.frozen
class _Step:
    name: str
    group: str
    command: tuple[str, ...]
    ours: bool
    bytes_moved: int
    # Files the step writes (removed before it runs) and files to remove once it is checked.
    outputs: tuple[Path, ...] = ()
    verify: tuple[Path, Path] | None = None
    cleanup: tuple[Path, ...] = ()
    stdin: Path | None = None
    before: Callable[[], None] | None = None
    # How many times ``bytes_moved`` the step writes to new files: our cold download writes the
    # cache entry and the output, so it gets twice the freshly freed page cache to write into.
    writes: int = 1


def _python_command(base: Path, op: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The command of a measuring child; its parameters (keys too) go in a 0600 file, not argv."""
    params_path = base / f"{op}-{next(_PARAMS_COUNTER)}.json"
    fd = os.open(params_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(params, handle)
    return (sys.executable, "-m", "splitvault.app.tools.bench_child", op, str(params_path))


def _offline_plan(
    base: Path, source: Path, size: int, workers: int
) -> tuple[list[_Step], list[str]]:
    """The offline rows of one repetition, in order, and notes on what is left out."""
    notes: list[str] = []
    key, file_id, iv = os.urandom(32), os.urandom(16), os.urandom(16)
    steps: list[_Step] = []

    def py(op: str, params: dict[str, Any]) -> tuple[str, ...]:
        return _python_command(base, op, {**params, "workers": workers})

    steps.append(_Step("baseline", "start-up", py("baseline", {}), True, 0))
    copy_out = base / "copy.out"
    dd = shutil.which("dd")
    if dd is None:
        raise BenchFailed("dd is not on PATH: the bench's wall-time baseline is missing")
    steps.append(
        _Step(
            "dd bs=1M copy",
            "copy",
            (dd, f"if={source}", f"of={copy_out}", "bs=1M", "status=none"),
            False,
            size,
            (copy_out,),
            verify=(source, copy_out),
            cleanup=(copy_out,),
        )
    )
    big, small, out = base / "v1.big", base / "v1.small", base / "v1.out"
    secret = {"key": key.hex(), "file_id": file_id.hex()}
    seal_params = {"source": str(source), "big": str(big), "small": str(small), **secret}
    steps.append(_Step("v1 seal", "seal", py("v1-seal", seal_params), True, size, (big, small)))
    open_params = {"big": str(big), "small": str(small), "out": str(out)}
    steps.append(
        _Step(
            "v1 open",
            "open",
            py("v1-open", open_params),
            True,
            size,
            (out,),
            verify=(source, out),
            cleanup=(out, big, small),
        )
    )
    openssl = shutil.which("openssl")
    if openssl is None:
        notes.append("openssl not found on PATH: its rows are left out")
    else:
        enc, dec = base / "openssl.enc", base / "openssl.out"
        common = ("-aes-256-ctr", "-K", key.hex(), "-iv", iv.hex(), "-nosalt")
        steps.append(
            _Step(
                "openssl enc -aes-256-ctr",
                "seal",
                (openssl, "enc", "-e", *common, "-in", str(source), "-out", str(enc)),
                False,
                size,
                (enc,),
            )
        )
        steps.append(
            _Step(
                "openssl dec -aes-256-ctr",
                "open",
                (openssl, "enc", "-d", *common, "-in", str(enc), "-out", str(dec)),
                False,
                size,
                (dec,),
                verify=(source, dec),
                cleanup=(dec, enc),
            )
        )
    age, keygen = shutil.which("age"), shutil.which("age-keygen")
    if age is None or keygen is None:
        notes.append("age not found on PATH (apt-get install age): its rows are left out")
    else:
        identity = base / "age.key"
        subprocess.run(  # noqa: S603 -- age-keygen from PATH, arguments built here
            [keygen, "-o", str(identity)], check=True, capture_output=True
        )
        recipient = subprocess.run(  # noqa: S603
            [keygen, "-y", str(identity)], check=True, capture_output=True, text=True
        ).stdout.strip()
        enc, dec = base / "age.enc", base / "age.out"
        steps.append(
            _Step(
                "age -r",
                "seal",
                (age, "-r", recipient, "-o", str(enc), str(source)),
                False,
                size,
                (enc,),
            )
        )
        steps.append(
            _Step(
                "age -d",
                "open",
                (age, "-d", "-i", str(identity), "-o", str(dec), str(enc)),
                False,
                size,
                (dec,),
                verify=(source, dec),
                cleanup=(dec, enc),
            )
        )
    help_command = (sys.executable, "-m", "splitvault.app.cli.main", "--help")
    steps.append(_Step("splitvault --help", "start-up", help_command, False, 0))
    return steps, notes


class _OnlineWorld:
    """The reference API server and a moto S3 server on loopback, holding two resources.

    The online file (``online_size``) is what the upload and cold-download rows move; an 8 MiB
    resource sits in a downloader's cache for the warm-download row.
    """

    UPLOADER = "bench-uploader@example.com"
    DOWNLOADER = "bench-downloader@example.com"

    def __init__(self, base: Path, source: Path, workers: int, stack: ExitStack) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        from splitvault.app.server.api import add_user, create_app, grant, set_cdn_config
        from splitvault.app.server.runner import RunningServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",  # noqa: S106 - loopback moto only
        )
        s3.create_bucket(Bucket=_BUCKET)
        data = base / "server-data"
        keys = {"access_key_id": "bench", "secret_access_key": "bench-secret"}
        cdn = {"endpoint": self.endpoint, "bucket": _BUCKET, "region": "us-east-1"}
        _unwrap(set_cdn_config(data, {**cdn, "read": keys, "write": keys}))
        self._password = os.urandom(12).hex()
        _unwrap(add_user(data, self.UPLOADER, self._password, "uploader"))
        _unwrap(add_user(data, self.DOWNLOADER, self._password, "downloader"))
        _unwrap(grant(data, self.UPLOADER, [_BENCH_REF.folder], read=True, write=True))
        _unwrap(grant(data, self.DOWNLOADER, [_BENCH_REF.folder], read=True, write=False))
        self._server = RunningServer(create_app(data))
        self._server.start()
        stack.callback(self._server.stop)
        self.base, self.source, self.workers = base, source, workers
        # The warm row's resource, uploaded and fetched once into the downloader's warm cache.
        warm_source = base / "warm.source"
        generate_file(warm_source, WARM_SIZE)
        self._run(
            "upload",
            {
                **self._who(self.UPLOADER, "up-cache"),
                **self._ref(_WARM_REF),
                "source": str(warm_source),
            },
        )
        self._run("download", self._download_params("warm-cache", _WARM_REF, "warm.out", hit=False))
        (base / "warm.out").unlink()
        # The online file, uploaded once untimed so the cold-download rows have it.
        self._run(
            "upload",
            {
                **self._who(self.UPLOADER, "up-cache"),
                **self._ref(_BENCH_REF),
                "source": str(source),
            },
        )
        s3.upload_file(str(source), _BUCKET, "boto3/object")
        shutil.rmtree(base / "up-cache", ignore_errors=True)

    def _who(self, email: str, cache: str) -> dict[str, Any]:
        return {
            "url": self._server.url,
            "email": email,
            "password": self._password,
            "cache": str(self.base / cache),
            "workers": self.workers,
        }

    @staticmethod
    def _ref(ref: ResourceRef) -> dict[str, str]:
        return {"folder": ref.folder, "name": ref.name}

    def _download_params(
        self, cache: str, ref: ResourceRef, out: str, *, hit: bool
    ) -> dict[str, Any]:
        return {
            **self._who(self.DOWNLOADER, cache),
            **self._ref(ref),
            "out": str(self.base / out),
            "expect_hit": hit,
        }

    def _run(self, op: str, params: dict[str, Any]) -> None:
        _run_child(_python_command(self.base, op, params), self.base, ours=True, stdin=None)

    def steps(self, size: int) -> list[_Step]:
        base = self.base
        up_cache, cold_cache = base / "up-cache", base / "cold-cache"
        fresh_ref = ResourceRef("bench", "uploaded")
        upload_params = {
            **self._who(self.UPLOADER, "up-cache"),
            **self._ref(fresh_ref),
            "source": str(self.source),
        }
        cold = self._download_params("cold-cache", _BENCH_REF, "cold.out", hit=False)
        warm = self._download_params("warm-cache", _WARM_REF, "warm.out", hit=True)
        boto3_common = {"endpoint": self.endpoint}

        def clear(*paths: Path) -> Callable[[], None]:
            def remove() -> None:
                for path in paths:
                    shutil.rmtree(path, ignore_errors=True)

            return remove

        return [
            _Step(
                "splitvault upload",
                "upload",
                _python_command(base, "upload", upload_params),
                True,
                size,
                before=clear(up_cache),
                cleanup=(),
            ),
            _Step(
                "boto3 upload_file",
                "upload",
                _python_command(
                    base,
                    "boto3-upload",
                    {**boto3_common, "source": str(self.source), "key": "boto3/uploaded"},
                ),
                True,
                size,
            ),
            _Step(
                "splitvault cold download",
                "download",
                _python_command(base, "download", cold),
                True,
                size,
                (base / "cold.out",),
                verify=(self.source, base / "cold.out"),
                cleanup=(base / "cold.out",),
                before=clear(cold_cache),
                writes=2,
            ),
            _Step(
                "boto3 download_file",
                "download",
                _python_command(
                    base,
                    "boto3-download",
                    {**boto3_common, "key": "boto3/object", "out": str(base / "boto3.out")},
                ),
                True,
                size,
                (base / "boto3.out",),
                verify=(self.source, base / "boto3.out"),
                cleanup=(base / "boto3.out",),
            ),
            _Step(
                "warm download 8 MiB",
                "start-up",
                _python_command(base, "download", warm),
                True,
                WARM_SIZE,
                (base / "warm.out",),
                cleanup=(base / "warm.out",),
            ),
        ]


def _online_available() -> str | None:
    """Why the online rows cannot run here, or None when they can."""
    import importlib.util

    for module, extra in (("moto", "demo"), ("starlette", "server"), ("boto3", "")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (splitvault[{extra or 'dev'}]): online rows left out"
    return None


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


@contextmanager
def freed_memory_held(
    parameters: Path = PAGE_REPORTING, *, hold: bool, hold_ms: int = HOLD_FREED_MS
) -> Iterator[str]:
    """Hold back free page reporting for the body (``hold``); yields the report's note on it.

    Without free page reporting nothing changes. Otherwise a row whose file lands in memory the
    host took back pays up to 2 s/GiB more than one that reuses what the previous scratch file
    freed, and which one a row gets depends on when the kernel last reported: a row that writes
    twice as many bytes (our cold download: cache entry and output) pays twice. With ``hold``
    (root only) ``min_free_ms`` is raised for the body, so the scratch file's pages stay with
    the guest and every row writes into equally warm memory; the old value is restored after,
    even when the body fails. Without ``hold``, or when the value cannot be written, the note
    says so and nothing changes.
    """
    knob = parameters / "min_free_ms"
    try:
        before = knob.read_text(encoding="ascii").strip()
    except OSError:
        yield ""
        return
    if not before.isdigit():
        yield f"free page reporting: min_free_ms reads {before!r}, not a number; left as is"
        return
    if int(before) >= hold_ms:
        yield f"free page reporting: memory is handed back after {before} ms free, left as is"
        return
    on = (
        f"free page reporting is on here (memory free for {before} ms goes back to the host, "
        "and a first write into it costs about 2 s/GiB more)"
    )
    if not hold:
        yield f"{on}: rows that write new files vary with it; --hold-freed-memory (root) holds it"
        return
    try:
        knob.write_text(str(hold_ms), encoding="ascii")
    except OSError as error:
        yield f"{on}; could not hold it ({error.strerror or error}): rows vary with it"
        return
    try:
        yield f"{on}: held for the run (min_free_ms {before} -> {hold_ms}, restored after)"
    finally:
        knob.write_text(before, encoding="ascii")


def _unlink(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _version(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _compile_bytecode() -> list[str]:
    """Compile splitvault's modules to bytecode first, as installing a wheel does.

    Every row runs in a fresh process. In a checkout that never wrote its ``__pycache__``
    (``PYTHONDONTWRITEBYTECODE`` set, as on this machine) each row of ours would compile about
    40 modules from source, 0.22 CPU-s here, where boto3's rows load the bytecode pip wrote.
    A note when it cannot (a read-only install without bytecode).
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("splitvault")
    if spec is None or not spec.submodule_search_locations:
        return ["splitvault's modules were not found to compile"]
    roots = list(spec.submodule_search_locations)
    if all(compileall.compile_dir(root, quiet=2) for root in roots):
        return []
    return [f"could not compile bytecode under {', '.join(roots)}: our rows include compiling"]


def run_bench(
    size: int,
    repetitions: int = 3,
    workdir: Path | None = None,
    *,
    workers: int | None = None,
    online_size: int | None = DEFAULT_ONLINE_SIZE,
    on_step: Callable[[str, int], None] | None = None,
    hold_freed_memory: bool = False,
    page_reporting: Path = PAGE_REPORTING,
) -> BenchReport:
    """Measure every row on one generated ``size``-byte file (``online_size`` for S3 rows).

    ``online_size=None`` leaves the online rows out. ``hold_freed_memory`` holds back the
    guest's free page reporting (``page_reporting``) for the run (``freed_memory_held``). Files
    go to a fresh directory under ``workdir`` (the system temp directory by default), removed
    at the end. ``on_step(name, repetition)`` is called before each measured row. Raises
    ``ValueError`` for a size or repetition count below 1, ``OSError`` when the disk lacks room
    for four copies of the file, ``BenchFailed`` when an operation fails or writes wrong bytes.
    """
    from splitvault.app.client.pipeline import default_workers

    if size < 1 or repetitions < 1:
        raise ValueError("the bench needs a size and a repetition count of at least 1")
    threads = default_workers() if workers is None else workers
    base = Path(tempfile.mkdtemp(prefix="splitvault-bench-", dir=workdir))
    try:
        with ExitStack() as stack:
            free = shutil.disk_usage(base).free
            if free < _DISK_FACTOR * size:
                raise OSError(
                    28, f"the bench needs {_DISK_FACTOR * size / GIB:.1f} GiB free in {base}"
                )
            source = base / "source"
            generate_file(source, size)
            steps, notes = _offline_plan(base, source, size, threads)
            notes.append(
                stack.enter_context(freed_memory_held(page_reporting, hold=hold_freed_memory))
            )
            notes += _compile_bytecode()
            missing = (
                _online_available() if online_size is not None else "online rows not asked for"
            )
            if missing is None and online_size is not None:
                online_source = base / "online.source"
                generate_file(online_source, online_size)
                world = _OnlineWorld(base, online_source, threads, stack)
                steps += world.steps(online_size)
            else:
                notes.append(missing or "")
            samples = _measure(base, steps, size, repetitions, on_step)
            versions = (
                ("python", sys.version.split()[0]),
                ("openssl", _version(("openssl", "version"))),
                ("age", _version(("age", "--version"))),
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    baseline = int(statistics.median(run.peak_rss for run in samples.pop("baseline")))
    copy_seconds = statistics.median(run.seconds for run in samples["dd bs=1M copy"])
    by_name = {step.name: step for step in steps}
    measurements = []
    for name, runs in samples.items():
        step = by_name[name]
        seconds = statistics.median(run.seconds for run in runs)
        peak = max(run.peak_rss for run in runs)
        measurements.append(
            Measurement(
                name=name,
                group=step.group,
                bytes_moved=step.bytes_moved,
                seconds=seconds,
                runs=tuple(run.seconds for run in runs),
                cpu_seconds=statistics.median(run.cpu_seconds for run in runs),
                cpu_runs=tuple(run.cpu_seconds for run in runs),
                ratio_to_copy=copy_seconds / max(seconds, 1e-9)
                if step.group in {"copy", "seal", "open"}
                else 0.0,
                peak_rss=peak,
                above_baseline=peak - baseline if step.ours else None,
            )
        )
    return BenchReport(
        size=size,
        online_size=online_size or 0,
        repetitions=repetitions,
        cpu_count=_nproc(),
        workers=threads,
        baseline_rss=baseline,
        measurements=tuple(measurements),
        notes=(
            "CPU s = user + system seconds of the whole child process (start-up included), "
            "median; CPU/GiB = that per GiB moved",
            "x copy = dd bs=1M copy wall time / the row's wall time (1.00 = as fast as dd)",
            "one untimed warm-up repetition ran first; every row reads from the page cache",
            *[note for note in notes if note],
        ),
        versions=versions,
    )


def _measure(
    base: Path,
    steps: Sequence[_Step],
    size: int,
    repetitions: int,
    on_step: Callable[[str, int], None] | None,
) -> dict[str, list[_Run]]:
    samples: dict[str, list[_Run]] = {step.name: [] for step in steps}
    # Repetition 0 is the warm-up: it puts the sources (and the interpreter) in the page cache.
    for repetition in range(repetitions + 1):
        for step in steps:
            if on_step is not None and repetition:
                on_step(step.name, repetition)
            _unlink(step.outputs)
            if step.before is not None:
                step.before()
            if step.bytes_moved >= MIB:
                _prime_page_cache(base, step.writes * step.bytes_moved)
            run = _run_child(step.command, base, ours=step.ours, stdin=step.stdin)
            if step.verify is not None and not _same_bytes(*step.verify):
                raise BenchFailed(f"{step.name} did not give back the source's bytes")
            _unlink(step.cleanup)
            if repetition:
                samples[step.name].append(run)
    return samples


def _mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def targets(report: BenchReport) -> list[tuple[str, float, float, bool]]:
    """The issue's targets as ``(what, measured, bound, met)``: ratios from this run."""
    found: list[tuple[str, float, float, bool]] = []

    def ratio(a: str, b: str, what: str, bound: float, *, cpu: bool, at_most: bool = True) -> None:
        first, second = report.row(a), report.row(b)
        if first is None or second is None:
            return
        x = (first.cpu_seconds / second.cpu_seconds) if cpu else (first.seconds / second.seconds)
        found.append((what, x, bound, x <= bound if at_most else x >= bound))

    for op, peer_age, peer_ssl in (
        ("v1 seal", "age -r", "openssl enc -aes-256-ctr"),
        ("v1 open", "age -d", "openssl dec -aes-256-ctr"),
    ):
        ratio(op, peer_age, f"{op} CPU / age CPU (< 1)", 1.0, cpu=True)
        ratio(op, peer_ssl, f"{op} CPU / openssl-ctr CPU (<= 1.1)", 1.1, cpu=True)
        row = report.row(op)
        if row is not None:
            found.append(
                (f"{op} x copy (>= 0.6)", row.ratio_to_copy, 0.6, row.ratio_to_copy >= 0.6)
            )
            found.append(
                (f"{op} peak RSS MiB (<= 64)", row.peak_rss / MIB, 64, row.peak_rss <= 64 * MIB)
            )
    for name, bound in (("splitvault --help", 0.15), ("warm download 8 MiB", 0.4)):
        row = report.row(name)
        if row is not None:
            found.append(
                (f"{name} CPU s (< {bound})", row.cpu_seconds, bound, row.cpu_seconds < bound)
            )
    for ours, theirs in (
        ("splitvault upload", "boto3 upload_file"),
        ("splitvault cold download", "boto3 download_file"),
    ):
        ratio(ours, theirs, f"{ours} wall / {theirs} (<= 1.05)", 1.05, cpu=False)
        ratio(ours, theirs, f"{ours} CPU / {theirs} (<= 1.05)", 1.05, cpu=True)
    return found


def render(report: BenchReport) -> str:
    """The report as a table for people."""
    lines = [
        f"splitvault bench: {format_size(report.size)} file offline, "
        f"{format_size(report.online_size)} online; median of {report.repetitions} runs "
        f"(spread min..max), {report.cpu_count} cores, {report.workers} workers",
        f"interpreter baseline peak RSS: {_mib(report.baseline_rss)}",
        "",
        f"{'row':<26}{'wall s':>8}{'spread':>12}{'x copy':>8}{'CPU s':>8}{'CPU/GiB':>9}"
        f"{'spread':>12}{'peak RSS':>11}",
    ]
    for m in report.measurements:
        per_gib = [cpu / (m.bytes_moved / GIB) for cpu in m.cpu_runs] if m.bytes_moved else [0.0]
        copy = f"{m.ratio_to_copy:.2f}" if m.ratio_to_copy else "-"
        per = f"{m.cpu_per_gib:.2f}" if m.bytes_moved >= MIB * 64 else "-"
        per_spread = _spread(per_gib) if m.bytes_moved >= MIB * 64 else "-"
        lines.append(
            f"{m.name:<26}{m.seconds:>8.3f}{_spread(m.runs):>12}{copy:>8}{m.cpu_seconds:>8.2f}"
            f"{per:>9}{per_spread:>12}{_mib(m.peak_rss):>11}"
        )
    lines += ["", "targets (ratios from this run):"]
    for what, measured, bound, met in targets(report):
        lines.append(f"  {'ok  ' if met else 'MISS'} {what:<58} {measured:6.2f}  (bound {bound:g})")
    lines.append("")
    lines.extend(f"note: {note}" for note in report.notes)
    lines.append("versions: " + ", ".join(f"{name} {value}" for name, value in report.versions))
    return "\n".join(lines)


def report_json(report: BenchReport) -> dict[str, Any]:
    """The report as plain JSON-ready values for scripts (``--json``)."""
    return {
        "size": report.size,
        "online_size": report.online_size,
        "repetitions": report.repetitions,
        "cpu_count": report.cpu_count,
        "workers": report.workers,
        "baseline_rss": report.baseline_rss,
        "measurements": [
            {
                "name": m.name,
                "group": m.group,
                "bytes": m.bytes_moved,
                "seconds": m.seconds,
                "runs": list(m.runs),
                "cpu_seconds": m.cpu_seconds,
                "cpu_runs": list(m.cpu_runs),
                "cpu_per_gib": m.cpu_per_gib,
                "gb_per_s": m.gb_per_s,
                "ratio_to_copy": m.ratio_to_copy,
                "peak_rss": m.peak_rss,
                "above_baseline": m.above_baseline,
            }
            for m in report.measurements
        ],
        "targets": [
            {"what": what, "measured": measured, "bound": bound, "met": met}
            for what, measured, bound, met in targets(report)
        ],
        "notes": list(report.notes),
        "versions": dict(report.versions),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # the measuring child's old entry point
        child_main(sys.argv[2:])
    else:
        raise SystemExit(
            "run the bench as `splitvault bench` or splitvault.app.tools.bench.run_bench()"
        )
