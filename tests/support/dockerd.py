"""A private Docker daemon for the test run, and tiny test images built without a registry.

``dockerd`` (a session-scoped fixture) starts ``dockerd`` with the vfs storage driver, no
iptables and no bridge, on a socket, data root, exec root and pid file inside one temp
directory, so it never touches ``/var/run/docker.sock`` or the machine's images; it waits for
``GET /_ping`` and tears everything down afterwards. When dockerd is not installed or cannot
start, the tests that need it are skipped — or fail when the ``CI`` environment variable is set,
because CI installs it and a silent skip would hide a broken setup.

Test images are ``docker import`` of a one-file rootfs tar made with ``tarfile``, named
``<registry>/<service>:<version>``; ``save_archive`` writes several into one ``docker save`` tar.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import httpx
import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 120.0
_LOG_TAIL_LINES = 25
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


@attrs.frozen
class PrivateDockerd:
    """A running private daemon: where to reach it and the directory it owns."""

    socket_path: Path
    docker_host: str
    root: Path


class DockerdUnavailable(Exception):
    """dockerd is not installed or did not start; the message says why."""


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


def _ping(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://docker"
        ) as client:
            response = client.get("/_ping", timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="sv-dockerd-"))
    if len(str(root / "docker.sock")) > _MAX_SOCKET_PATH:
        # A long TMPDIR would overflow sun_path; /tmp is short.
        shutil.rmtree(root)
        root = Path(tempfile.mkdtemp(prefix="sv-dockerd-", dir="/tmp"))
    return root


def _stop(process: subprocess.Popen[bytes], root: Path) -> None:
    """Stop dockerd (and the containerd it spawned), unmount leftovers, remove the root."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    # dockerd stops its containerd on a clean shutdown; after a kill, stop it by its pid file.
    for pid_file in root.glob("exec/containerd/*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    # Deepest first, so nested mounts come off before their parents.
    points = sorted(
        (line.split()[1] for line in mounts if line.split()[1].startswith(str(root))),
        key=len,
        reverse=True,
    )
    for point in points:
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def start_dockerd() -> tuple[subprocess.Popen[bytes], PrivateDockerd]:
    """Start a private dockerd and wait until it answers; raise ``DockerdUnavailable`` if not."""
    binary = shutil.which("dockerd")
    if binary is None:
        raise DockerdUnavailable("dockerd is not installed (apt-get install docker.io)")
    if shutil.which("docker") is None:
        raise DockerdUnavailable("the docker CLI is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise DockerdUnavailable("dockerd needs root to start")
    root = _make_root()
    socket_path = root / "docker.sock"
    config = root / "daemon.json"
    config.write_text("{}\n")
    log_path = root / "dockerd.log"
    command = [
        binary,
        "--config-file",
        str(config),
        "--storage-driver",
        "vfs",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--host",
        f"unix://{socket_path}",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "dockerd.pid"),
    ]
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        except OSError as error:
            shutil.rmtree(root, ignore_errors=True)
            raise DockerdUnavailable(f"could not run {binary}: {error}") from None
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if _ping(socket_path):
            return process, PrivateDockerd(socket_path, f"unix://{socket_path}", root)
        exited = process.poll()
        if exited is not None or time.monotonic() > deadline:
            reason = (
                f"dockerd exited with status {exited}"
                if exited is not None
                else f"dockerd did not answer /_ping within {START_TIMEOUT:g} s"
            )
            tail = _log_tail(log_path)
            _stop(process, root)
            raise DockerdUnavailable(f"{reason}; the end of its log:\n{tail}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[PrivateDockerd]:
    """A private dockerd for the whole session; skipped (or failed under CI) if it cannot run."""
    try:
        process, daemon = start_dockerd()
    except DockerdUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a real dockerd: {error}", pytrace=False)
        pytest.skip(f"no private dockerd: {error}")
    try:
        yield daemon
    finally:
        _stop(process, daemon.root)


def docker(daemon: PrivateDockerd, *args: str, stdin: bytes | None = None) -> str:
    """Run the docker CLI against the private daemon; return stdout, raise with stderr."""
    env = dict(os.environ, DOCKER_HOST=daemon.docker_host)
    env.pop("DOCKER_CONTEXT", None)
    done = subprocess.run(
        ["docker", *args],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}): {stderr}")
    return done.stdout.decode(errors="replace")


def rootfs_tar(text: str) -> bytes:
    """A minimal rootfs: one text file, as a tar in memory."""
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        info.mode = 0o644
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def handmade_archive(out: Path, repo_tag: str, *, config: bytes) -> Path:
    """A structurally complete ``docker save``-style archive written by hand.

    ``manifest.json`` names ``config.json`` (with the given bytes) and one layer, so the archive
    passes the adapters' completeness check; what the daemon makes of ``config`` is up to it.
    """
    layer = rootfs_tar(f"handmade {repo_tag}\n")
    manifest = json.dumps(
        [{"Config": "config.json", "RepoTags": [repo_tag], "Layers": ["layer/layer.tar"]}]
    ).encode()
    with tarfile.open(out, mode="w") as archive:
        for name, data in (
            ("layer/layer.tar", layer),
            ("config.json", config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return out


def image_name(registry: str, service: str, version: str) -> str:
    """``<registry>/<service>:<version>``."""
    return f"{registry}/{service}:{version}"


def import_image(daemon: PrivateDockerd, name: str) -> str:
    """Create image ``name`` from a one-file rootfs (its content names the image); return its id."""
    return docker(daemon, "import", "-", name, stdin=rootfs_tar(f"image {name}\n")).strip()


def list_images(daemon: PrivateDockerd) -> frozenset[str]:
    """Every image in the daemon, tagged ones as ``repo:tag`` and all of them by id."""
    out = docker(
        daemon, "image", "ls", "-a", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"
    )
    found: set[str] = set()
    for line in out.splitlines():
        image_id, _, tagged = line.partition(" ")
        found.add(image_id)
        if tagged and "<none>" not in tagged:
            found.add(tagged)
    return frozenset(found)


def remove_images(daemon: PrivateDockerd, names: Sequence[str]) -> None:
    """Remove images if present (ignores absent ones)."""
    present = list_images(daemon)
    targets = [name for name in names if name in present]
    if targets:
        docker(daemon, "image", "rm", "--force", *targets)


def save_archive(
    daemon: PrivateDockerd, names: Sequence[str], out: Path, *, keep: bool = False
) -> Path:
    """Import each name, ``docker save`` them all into ``out``, then remove them (unless ``keep``).

    Removing them afterwards means a later load really loads them.
    """
    for name in names:
        import_image(daemon, name)
    docker(daemon, "save", "-o", str(out), *names)
    if not keep:
        remove_images(daemon, names)
    return out
