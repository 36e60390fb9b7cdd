"""``splitvault demo``: the main job end to end on the embedded default.

It starts the reference API server and a moto S3 server on 127.0.0.1, creates an uploader and a
downloader, uploads a generated model, downloads it with a cold cache and again with a warm one,
verifies the bytes and shows where each part lives and how fast each step ran. ``--offline`` only
seals and opens a 64 MiB file locally. Everything lives in a temp directory removed at the end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from splitvault.adapters.file_cache import FileCache
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.app.client import pipeline
from splitvault.app.client.bootstrap import Client, bootstrap
from splitvault.app.client.errors import unwrap_or_raise
from splitvault.app.client.usecases import write_atomically
from splitvault.app.server.api import add_user, create_app, grant, set_cdn_config
from splitvault.app.server.runner import RunningServer
from splitvault.domain.config import ClientConfig
from splitvault.domain.ref import ResourceRef
from splitvault.domain.signature import PublisherKey

MiB = 1 << 20


def generate_model(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes (a stand-in for weights); returns their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with path.open("wb") as handle:
        written = 0
        counter = 0
        while written < size:
            # Vary every block so no two chunks are alike (weights are not repetitive either).
            piece = hashlib.sha256(counter.to_bytes(8, "big")).digest() + block[32:]
            piece = piece[: min(MiB, size - written)]
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
            counter += 1
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _rate(size: int, seconds: float) -> str:
    return f"{seconds:6.2f} s  {size / seconds / MiB:8.1f} MiB/s"


def run(*, size: int, offline: bool = False) -> dict[str, Any]:
    """Run the demo; returns its report (``text`` is the human summary)."""
    with tempfile.TemporaryDirectory(prefix="splitvault-demo-") as scratch:
        root = Path(scratch)
        if offline:
            return _offline(root, 64 * MiB)
        return _online(root, size)


def _offline(root: Path, size: int) -> dict[str, Any]:
    model = root / "model.bin"
    expected = generate_model(model, size)
    ref = ResourceRef("local", "model.bin")
    big = root / "model.bin.big"
    started = time.perf_counter()
    parts = unwrap_or_raise(
        pipeline.seal_file(model, big, ref=ref, dek=os.urandom(32), file_id=os.urandom(16))
    )
    sealed = time.perf_counter() - started
    out = root / "restored.bin"
    started = time.perf_counter()
    unwrap_or_raise(
        write_atomically(out, lambda temp: pipeline.open_file(parts.small_part, big, temp))
    )
    opened = time.perf_counter() - started
    verified = file_sha256(out) == expected
    lines = [
        f"offline round trip of a {size // MiB} MiB file",
        f"  small part {len(parts.small_part)} B, big part {parts.big_digest.length} B",
        f"  seal  {_rate(size, sealed)}",
        f"  open  {_rate(size, opened)}",
        f"  verified: {'yes, identical bytes' if verified else 'NO - bytes differ'}",
    ]
    if not verified:
        raise SystemExit("\n".join(lines))
    return {
        "small_bytes": len(parts.small_part),
        "big_bytes": parts.big_digest.length,
        "seal_seconds": sealed,
        "open_seconds": opened,
        "verified": verified,
        "text": "\n".join(lines),
    }


@contextmanager
def _moto_s3() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 - only the demo needs moto
    except ImportError:  # pragma: no cover - the demo extra is missing
        raise SystemExit("the demo needs moto's server: pip install 'splitvault[dev]'") from None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _client(
    url: str,
    email: str,
    password: str,
    cache: Path,
    machine: str,
    *,
    signing_key_file: Path | None = None,
    pinned: tuple[bytes, ...] = (),
) -> Client:
    config = ClientConfig(
        cache_dir=cache,
        api_url=url,
        email=email,
        password=password,
        publisher_signing_key_file=signing_key_file,
        publisher_keys=pinned,
    )
    return unwrap_or_raise(bootstrap(config, hardware=FixedHardware(machine)))


def _online(root: Path, size: int) -> dict[str, Any]:
    lines: list[str] = []
    with _moto_s3() as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="demo-admin",
            aws_secret_access_key="demo-admin-secret",  # noqa: S106 - loopback moto only
        )
        s3.create_bucket(Bucket="models")
        data = root / "server-data"
        unwrap_or_raise(
            set_cdn_config(
                data,
                {
                    "endpoint": endpoint,
                    "bucket": "models",
                    "region": "us-east-1",
                    "read": {"access_key_id": "demo-read", "secret_access_key": "demo-read-s"},
                    "write": {"access_key_id": "demo-write", "secret_access_key": "demo-write-s"},
                },
            )
        )
        passwords = {
            "trainer@example.com": os.urandom(9).hex(),
            "infer@example.com": os.urandom(9).hex(),
        }
        unwrap_or_raise(
            add_user(data, "trainer@example.com", passwords["trainer@example.com"], "uploader")
        )
        unwrap_or_raise(
            add_user(data, "infer@example.com", passwords["infer@example.com"], "downloader")
        )
        # Deny by default: the trainer may publish to models, the inference machine may read it.
        unwrap_or_raise(grant(data, "trainer@example.com", ["models"], read=True, write=True))
        unwrap_or_raise(grant(data, "infer@example.com", ["models"], read=True, write=False))
        model = root / "model.safetensors"
        expected = generate_model(model, size)
        ref = ResourceRef("models", "model.safetensors")
        # The trainer signs every upload with its Ed25519 key (a seed file only it can read).
        seed = os.urandom(32)
        signing_key_file = root / "trainer.ed25519"
        signing_key_file.write_bytes(seed)
        signing_key_file.chmod(0o600)
        with RunningServer(create_app(data)) as server:
            lines.append(f"reference API server  {server.url}   S3 (moto) {endpoint}")
            trainer = _client(
                server.url,
                "trainer@example.com",
                passwords["trainer@example.com"],
                root / "trainer-cache",
                "training-box",
                signing_key_file=signing_key_file,
            )
            started = time.perf_counter()
            uploaded = unwrap_or_raise(trainer.upload(ref, model))
            upload_seconds = time.perf_counter() - started
            trainer.close()
            lines.append(
                f"upload   {size // MiB} MiB                      {_rate(size, upload_seconds)}"
            )

            infer = _client(
                server.url,
                "infer@example.com",
                passwords["infer@example.com"],
                root / "inference-cache",
                "inference-box",
                # The inference machine trusts the trainer's key only, whatever the server says.
                pinned=(PublisherKey.from_seed(seed).public,),
            )
            timings: list[tuple[str, float, bool]] = []
            for label in ("cold cache", "warm cache"):
                out = root / f"restored-{label.split()[0]}.safetensors"
                started = time.perf_counter()
                report = unwrap_or_raise(infer.download(ref, out))
                seconds = time.perf_counter() - started
                same = file_sha256(out) == expected
                timings.append((label, seconds, report.cache_hit))
                lines.append(
                    f"download ({label}, big part from {'cache' if report.cache_hit else 'CDN'})"
                    f"{'':3}{_rate(size, seconds)}  bytes {'identical' if same else 'DIFFER'}"
                )
                if not same:
                    raise SystemExit("\n".join(lines))
            infer.close()
            small_path = f"{data / 'splitvault.db'} ({ref.folder}/{ref.name})"
            # The big part's key names its version: folder/name/<file id>.big.
            listed = s3.list_objects_v2(Bucket="models", Prefix=f"{ref.folder}/{ref.name}/")
            big_key = listed["Contents"][0]["Key"]
            head = s3.head_object(Bucket="models", Key=big_key)
            lines += [
                "where the parts live:",
                f"  small part  {uploaded.small_bytes:>12} B  API server store  {small_path}",
                f"  big part    {head['ContentLength']:>12} B  S3 s3://models/{big_key}",
                f"  big part    {uploaded.big_bytes:>12} B  downloader cache  "
                f"{FileCache(root / 'inference-cache').entry_path(ref)}",
                "no single place holds a usable copy: the small part carries the key material "
                "and the first bytes, the big part the rest.",
            ]
    return {
        "size": size,
        "upload_seconds": upload_seconds,
        "downloads": [
            {"label": label, "seconds": seconds, "cache_hit": hit}
            for label, seconds, hit in timings
        ],
        "small_bytes": uploaded.small_bytes,
        "big_bytes": uploaded.big_bytes,
        "verified": True,
        "text": "\n".join(lines),
    }
