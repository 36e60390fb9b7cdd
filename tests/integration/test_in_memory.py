"""Plaintext in memory only: bounded peaks, exact bytes, and no plaintext file anywhere.

Memory is measured in a child process (``VmHWM`` from /proc, reset with ``clear_refs`` after the
imports, the login and a warm-up read, so the figure is what the call itself added):
``load_big_small_resource`` of 512 MiB must add under 512 + 64 MiB, ``open_resource`` of 1 GiB read
at random offsets and then end to end must add under 64 MiB, and every read must equal the
plaintext. The plaintext is a deterministic function of a 1 MiB block, so the child checks any range
without holding a second copy. Speed is never asserted here (``splitvault bench`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitvault import ApiClient, ApiCredentials
from splitvault.adapters.file_cache import FileCache
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.domain.ref import ResourceRef
from tests.support.inotify import CreatedFiles
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack

MIB = 1 << 20
STEP = 4099  # each MiB of plaintext is the block rotated by a further STEP bytes

_CHILD = textwrap.dedent(
    """
    import hashlib, json, random, re, sys
    from pathlib import Path
    from splitvault import ApiClient, ApiCredentials
    from splitvault.adapters.fixed_hardware import FixedHardware

    MIB, STEP = 1 << 20, 4099
    mode, url, email, password, cache, cdn, folder, name, block_path, size = sys.argv[1:11]
    size = int(size)
    block = Path(block_path).read_bytes()

    def status(field):
        text = Path("/proc/self/status").read_text()
        return int(re.search(field + r":\\s+(\\d+) kB", text).group(1)) * 1024

    def expected(offset, length):
        out = bytearray()
        while length:
            index, within = divmod(offset, MIB)
            turn = (index * STEP) % MIB
            rotated = block[turn:] + block[:turn]
            take = min(length, MIB - within)
            out += rotated[within : within + take]
            offset += take
            length -= take
        return bytes(out)

    client = ApiClient(
        ApiCredentials(url, email, password),
        cache_dir=cache,
        hardware=FixedHardware("memory-box"),
        workers=2,
        environ={"HOME": cache, "SPLITVAULT_CDN_MODE": "directory", "SPLITVAULT_CDN_DIR": cdn},
    )
    with client.open_resource("warm-up.bin", folder) as warm:  # login, keys, CDN, threads
        warm.read()
    whole_process = status("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    baseline = status("VmRSS")
    checks = 0
    if mode == "load":
        data = client.load_big_small_resource(name, folder)
        assert isinstance(data, bytes) and len(data) == size
        digest = hashlib.sha256(data).hexdigest()
        del data
    else:
        chooser = random.Random(7)
        with client.open_resource(name, folder) as handle:
            for _ in range(300):
                offset = chooser.randrange(size)
                length = chooser.choice([1, 17, 4096, MIB - 3, MIB + 5, 3 * MIB])
                handle.seek(offset)
                got = handle.read(length)
                assert got == expected(offset, min(length, size - offset)), offset
                checks += 1
            handle.seek(-10, 2)
            assert handle.read(100) == expected(size - 10, 10)
            handle.seek(0)
            hasher = hashlib.sha256()
            while piece := handle.read(4 * MIB):
                hasher.update(piece)
            digest = hasher.hexdigest()
    print(json.dumps({"peak": status("VmHWM"), "baseline": baseline, "before": whole_process,
                      "digest": digest, "checks": checks}))
    """
)


def _plaintext(path: Path, block: bytes, size: int) -> str:
    """Write the deterministic plaintext of ``size`` bytes; return its SHA-256."""
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(-(-size // MIB)):
            turn = (index * STEP) % MIB
            piece = (block[turn:] + block[:turn])[: min(MIB, size - index * MIB)]
            hasher.update(piece)
            out.write(piece)
    return hasher.hexdigest()


@pytest.fixture
def memory_world(stack: Stack, tmp_path: Path) -> Iterator[tuple[Stack, Path, Path, Path]]:
    """The reference server, a directory CDN and a cache shared by publisher and reader."""
    cache, cdn = tmp_path / "cache", tmp_path / "cdn"
    cdn.mkdir()
    block = tmp_path / "block"
    block.write_bytes(random.Random(3).randbytes(MIB))
    yield stack, cache, cdn, block


def _publisher(stack: Stack, cache: Path, cdn: Path) -> ApiClient:
    return ApiClient(
        ApiCredentials(stack.url, UPLOADER, PASSWORD),
        cache_dir=cache,
        hardware=FixedHardware("publisher-box"),
        environ={
            "HOME": str(cache),
            "SPLITVAULT_CDN_MODE": "directory",
            "SPLITVAULT_CDN_DIR": str(cdn),
        },
    )


def _publish(world: tuple[Stack, Path, Path, Path], name: str, size: int) -> str:
    stack, cache, cdn, block = world
    source = cache.parent / f"{name}.plain"
    digest = _plaintext(source, block.read_bytes(), size)
    with _publisher(stack, cache, cdn) as publisher:
        publisher.upload_big_small_resource(source, name, "models")
        publisher.upload_big_small_resource(b"warm" * 1000, "warm-up.bin", "models")
    source.unlink()
    return digest


def _measure(
    world: tuple[Stack, Path, Path, Path], mode: str, name: str, size: int
) -> dict[str, int | str]:
    stack, cache, cdn, block = world
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            mode,
            stack.url,
            DOWNLOADER,
            PASSWORD,
            str(cache),
            str(cdn),
            "models",
            name,
            str(block),
            str(size),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured: dict[str, int | str] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{mode} {size >> 20} MiB: {json.dumps(measured)}")
    return measured


@pytest.mark.slow
def test_load_big_small_resource_of_512_mib_adds_under_576_mib(
    memory_world: tuple[Stack, Path, Path, Path],
) -> None:
    """One preallocated buffer: the call adds the plaintext plus bounded buffers, never twice."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.fail("needs /proc/self/clear_refs to measure the call's own peak")
    size = 512 * MIB
    digest = _publish(memory_world, "big.bin", size)
    measured = _measure(memory_world, "load", "big.bin", size)
    assert measured["digest"] == digest
    added = int(measured["peak"]) - int(measured["baseline"])
    assert added < size + 64 * MIB, f"the call added {added / MIB:.1f} MiB"


@pytest.mark.slow
def test_open_resource_of_1_gib_with_random_seeks_adds_under_64_mib(
    memory_world: tuple[Stack, Path, Path, Path],
) -> None:
    """300 random reads (1 B to 3 MiB) and a full read equal the plaintext in bounded memory."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.fail("needs /proc/self/clear_refs to measure the call's own peak")
    size = 1024 * MIB + 12345  # not a whole number of chunks
    digest = _publish(memory_world, "huge.bin", size)
    measured = _measure(memory_world, "open", "huge.bin", size)
    assert measured["digest"] == digest and measured["checks"] == 300
    added = int(measured["peak"]) - int(measured["baseline"])
    assert added < 64 * MIB, f"the reads added {added / MIB:.1f} MiB"


# --- no plaintext file ---------------------------------------------------------------------------


CACHE_SUFFIXES = (".big", ".partial", ".ranges", ".verified", ".lock", ".incoming")


def _cache_artifact(path: Path) -> bool:
    """A folder, an entry, a partial, a stamp or a lock of the cache, or a temp file of one."""
    if path.is_dir():
        return True
    name = path.name.split(".tmp-", 1)[0]
    return name.endswith(CACHE_SUFFIXES)


def _holds(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("cache_state", ["cold", "warm"])
def test_no_plaintext_file_is_created_by_either_call(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_state: str
) -> None:
    """inotify on the temp dir, the cache dir and the working directory during
    load_big_small_resource and open_resource: nothing in the temp dir or the working
    directory, and in the cache only ciphertext (the entry, its partial, stamp and lock)."""
    plaintext = random.Random(11).randbytes(3 * MIB + 77)
    marker = plaintext[2 * MIB : 2 * MIB + 64]
    temp, cwd, cache = tmp_path / "tmp", tmp_path / "cwd", tmp_path / "reader-cache"
    for directory in (temp, cwd, cache):
        directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(cwd)
    with ApiClient(
        ApiCredentials(stack.url, UPLOADER, PASSWORD),
        cache_dir=tmp_path / "publisher-cache",
        hardware=FixedHardware("publisher-box"),
        environ={"HOME": str(tmp_path)},
    ) as publisher:
        publisher.upload_big_small_resource(plaintext, "secret.bin", "models")
    reader = ApiClient(
        ApiCredentials(stack.url, DOWNLOADER, PASSWORD),
        cache_dir=cache,
        hardware=FixedHardware("reader-box"),
        environ={"HOME": str(tmp_path)},
    )
    if cache_state == "warm":
        assert reader.load_big_small_resource("secret.bin", "models") == plaintext
    with CreatedFiles([temp, cwd, cache]) as created:
        assert reader.load_big_small_resource("secret.bin", "models") == plaintext
        with reader.open_resource("secret.bin", "models") as handle:
            handle.seek(2 * MIB)
            assert handle.read(64) == marker
            handle.seek(0)
            assert handle.read() == plaintext
    reader.close()
    outside_cache = sorted(p for p in created.paths if cache not in p.parents)
    assert outside_cache == []
    assert [p for p in created.paths if p.is_file() and _holds(p, marker)] == []
    assert [p for p in created.paths if not _cache_artifact(p)] == []
    if cache_state == "cold":
        assert any(p.name.endswith(".big") for p in created.paths)  # the watch saw the fill
    entry = FileCache(cache).entry_path(ResourceRef("models", "secret.bin"))
    assert entry.is_file() and marker not in entry.read_bytes()
