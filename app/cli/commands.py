"""The CLI's commands: each takes parsed arguments and returns a JSON-able report.

They raise ``SplitvaultError`` subclasses (through ``unwrap_or_raise``) and never print secrets.
Each imports what it needs inside itself (the pipeline, the client, the servers, docker), so an
offline command such as ``fingerprint`` never loads boto3, httpx or the pipeline.
The ``text`` key of a report is what a person sees when ``--json`` is not given.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure

from splitvault.app.cli.progress import transfer_progress
from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.domain.errors import Problem, StorageFailed
from splitvault.domain.ref import ResourceRef

Report = dict[str, Any]


def parse_ref(folder: str, name: str) -> ResourceRef:
    """A ref from command-line input, or the ``InvalidNameError`` that says what is wrong."""
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


def read_key_file(path: Path, what: str) -> bytes:
    """A 32-byte key from a file (raw, hex or base64), or a ``ConfigError`` naming the file."""
    from splitvault.domain.errors import ConfigInvalid
    from splitvault.domain.legacy import parse_shared_key

    try:
        data = path.read_bytes()
    except OSError as error:
        raise to_exception(ConfigInvalid(what, f"cannot read {path}: {error.strerror}")) from None
    parsed = parse_shared_key(data)
    if isinstance(parsed, Failure):
        raise to_exception(ConfigInvalid(what, f"{path}: {parsed.failure().detail}"))
    return parsed.unwrap()


def _write_bytes(path: Path, data: bytes) -> IOResult[None, Problem]:
    try:
        with path.open("wb") as handle:
            handle.write(data)
    except OSError as error:
        return IOFailure(StorageFailed(str(path), error.strerror or "write failed"))
    return IOSuccess(None)


def seal(args: argparse.Namespace) -> Report:
    """``splitvault seal``: FILE → DIR/NAME.small + DIR/NAME.big, both or neither."""
    from splitvault.app.client import pipeline
    from splitvault.app.client.usecases import write_atomically
    from splitvault.domain.format_v1 import DEFAULT_CHUNK_SIZE

    source: Path = args.file
    ref = parse_ref(args.folder, source.name if args.name is None else args.name)
    if not source.is_file():
        raise to_exception(StorageFailed(str(source), "no such file to seal"))
    small_path = args.out / f"{ref.name}.small"
    big_path = args.out / f"{ref.name}.big"
    size = source.stat().st_size
    publisher_key = (
        read_key_file(args.publisher_key, "publisher key") if args.publisher_key else None
    )
    legacy_key = read_key_file(args.legacy_key, "legacy key") if args.legacy_key else None

    with transfer_progress(f"sealing {ref.name}", size) as progress:

        def seal_into(temp_big: Path) -> IOResult[bytes, Problem]:
            if legacy_key is not None:
                key = legacy_key
                return pipeline.seal_file_legacy(
                    source, temp_big, key=key, iv=os.urandom(16), progress=progress
                ).map(lambda parts: parts.small_part)
            return pipeline.seal_file(
                source,
                temp_big,
                ref=ref,
                dek=os.urandom(32),
                file_id=os.urandom(16),
                chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
                publisher_key=publisher_key,
                wrap_nonce=os.urandom(12) if publisher_key else None,
                progress=progress,
            ).map(lambda parts: parts.small_part)

        def write_big(temp_big: Path) -> IOResult[int, Problem]:
            return seal_into(temp_big).bind(
                lambda small: write_atomically(
                    small_path, lambda temp: _write_bytes(temp, small)
                ).map(lambda _: len(small))
            )

        result = write_atomically(big_path, write_big)
    if isinstance(result, IOFailure) and not big_path.exists():
        small_path.unlink(missing_ok=True)
    small_bytes = unwrap_or_raise(result)
    big_bytes = big_path.stat().st_size
    suite = "legacy-cbc" if args.legacy_key else "v1"
    return {
        "small": str(small_path),
        "big": str(big_path),
        "small_bytes": small_bytes,
        "big_bytes": big_bytes,
        "suite": suite,
        "text": f"sealed {source} ({suite}): {small_path} ({small_bytes} B), "
        f"{big_path} ({big_bytes} B)",
    }


def open_parts(args: argparse.Namespace) -> Report:
    """``splitvault open``: SMALL + BIG → FILE, or no FILE at all."""
    from splitvault.app.client import pipeline
    from splitvault.app.client.usecases import write_atomically

    try:
        small = args.small.read_bytes()
        big_size = args.big.stat().st_size
    except OSError as error:
        raise to_exception(
            StorageFailed(str(error.filename), error.strerror or "cannot read", "read")
        ) from None
    publisher_key = (
        read_key_file(args.publisher_key, "publisher key") if args.publisher_key else None
    )
    legacy_key = read_key_file(args.legacy_key, "legacy key") if args.legacy_key else None
    with transfer_progress(f"opening {args.small.name}", big_size + len(small)) as progress:

        def open_into(temp: Path) -> IOResult[None, Problem]:
            if legacy_key is not None:
                key = legacy_key
                return pipeline.open_file_legacy(small, args.big, temp, key=key, progress=progress)
            return pipeline.open_file(
                small, args.big, temp, publisher_key=publisher_key, progress=progress
            )

        unwrap_or_raise(write_atomically(args.out, open_into))
    size = args.out.stat().st_size
    return {"out": str(args.out), "bytes": size, "text": f"opened {args.out} ({size} B)"}


def _client(args: argparse.Namespace) -> Any:
    """Load the configuration (flags > SPLITVAULT_* > config file) and bootstrap a client."""
    from splitvault.adapters.config_files import default_config_path, load_client_config
    from splitvault.app.client.bootstrap import bootstrap

    flags: dict[str, object] = {
        "api_url": getattr(args, "api_url", None),
        "email": getattr(args, "email", None),
        "cache_dir": getattr(args, "cache_dir", None),
        "ca_bundle": getattr(args, "ca_bundle", None),
        "allow_insecure_http": getattr(args, "insecure_http", None),
    }
    if getattr(args, "password_stdin", False):
        flags["password"] = sys.stdin.readline().rstrip("\n")
    config_path = getattr(args, "config", None) or default_config_path(os.environ)
    config = unwrap_or_raise(load_client_config(flags, os.environ, config_path))
    return unwrap_or_raise(bootstrap(config))


def upload(args: argparse.Namespace) -> Report:
    """``splitvault upload``: seal FILE and store it as FOLDER/NAME."""
    source: Path = args.file
    ref = parse_ref(args.folder, source.name if args.name is None else args.name)
    client = _client(args)
    size = source.stat().st_size if source.is_file() else 0
    try:
        with transfer_progress(f"sealing {ref.name}", size) as progress:
            report = unwrap_or_raise(client.upload(ref, source, progress=progress))
    finally:
        client.close()
    return {
        "ref": str(ref),
        "plaintext_bytes": report.plaintext_bytes,
        "small_bytes": report.small_bytes,
        "big_bytes": report.big_bytes,
        "big_digest": report.big_part.root.hex(),
        "cache_path": str(report.cache_path),
        "text": f"uploaded {ref}: small part {report.small_bytes} B to the API, "
        f"big part {report.big_bytes} B to the CDN",
    }


def download(args: argparse.Namespace) -> Report:
    """``splitvault download``: FOLDER/NAME → FILE, or no FILE at all."""
    ref = parse_ref(args.folder, args.name)
    client = _client(args)
    try:
        with transfer_progress(f"opening {ref.name}", 0) as progress:
            report = unwrap_or_raise(client.download(ref, args.out, progress=progress))
    finally:
        client.close()
    source = "cache" if report.cache_hit else "CDN"
    return {
        "ref": str(ref),
        "out": str(report.out),
        "bytes": report.plaintext_bytes,
        "cache_hit": report.cache_hit,
        "cache_path": str(report.cache_path),
        "text": f"downloaded {ref} to {report.out} ({report.plaintext_bytes} B, big part from "
        f"the {source})",
    }


def _folder_and_name(text: str) -> Any:
    from splitvault.domain.ref import ResourceRef

    folder, _, name = text.partition("/")
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


def list_versions(args: argparse.Namespace) -> Report:
    """``splitvault ls FOLDER/NAME --versions``: the kept versions, newest (current) first."""
    ref = _folder_and_name(args.folder)
    client = _client(args)
    try:
        kept = unwrap_or_raise(client.api.versions(ref))
    finally:
        client.close()
    lines = [
        f"{each.get('version')}  {'current ' if each.get('current') else '        '}"
        f"{each.get('publisher')}"
        for each in kept
    ]
    return {"ref": str(ref), "versions": list(kept), "text": "\n".join(lines)}


def rollback(args: argparse.Namespace) -> Report:
    """``splitvault rollback FOLDER/NAME --to VERSION``."""
    ref = _folder_and_name(args.resource)
    client = _client(args)
    try:
        unwrap_or_raise(client.api.rollback(ref, args.version))
    finally:
        client.close()
    return {
        "ref": str(ref),
        "version": args.version,
        "text": f"{ref} is at version {args.version} again",
    }


def list_folder(args: argparse.Namespace) -> Report:
    """``splitvault ls``: the names in a folder."""
    from splitvault.domain.ref import parse_folder

    if args.versions:
        return list_versions(args)

    parsed = parse_folder(args.folder)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    client = _client(args)
    try:
        names = unwrap_or_raise(client.api.list_folder(parsed.unwrap()))
    finally:
        client.close()
    return {"folder": args.folder, "files": list(names), "text": "\n".join(names)}


def login(args: argparse.Namespace) -> Report:
    """``splitvault login``: check the credentials."""
    client = _client(args)
    try:
        unwrap_or_raise(client.api.login())
    finally:
        client.close()
    return {"email": client.config.email, "text": f"logged in as {client.config.email}"}


def fingerprint(args: argparse.Namespace) -> Report:
    """``splitvault fingerprint``: the components (identifiers masked) and the value."""
    from splitvault.adapters.linux_hardware import LinuxHardware
    from splitvault.app.client.bootstrap import HARDWARE_APP_KEY
    from splitvault.domain.fingerprint import mask

    probed = LinuxHardware(HARDWARE_APP_KEY).fingerprint()
    shown = {
        name: (mask(name, value) if value is not None else None)
        for name, value in probed.components
    }
    lines = [
        f"{name:16} {value if value is not None else '(absent)'}" for name, value in shown.items()
    ]
    lines.append(f"{'fingerprint':16} {probed.value}")
    return {"components": shown, "fingerprint": probed.value, "text": "\n".join(lines)}


def serve(args: argparse.Namespace) -> Report:
    """``splitvault serve``: the reference resource API server, until SIGTERM or Ctrl-C."""
    from splitvault.app.server import serving

    options = serving.ServeOptions(
        data=args.data,
        database_url=args.database_url,
        host=args.host,
        port=args.port,
        workers=args.workers,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        concurrency=args.concurrency,
        keep_alive=args.keep_alive,
        header_timeout=args.header_timeout,
        graceful_seconds=args.graceful_seconds,
        device_limit=args.device_limit,
        approve_devices=args.approve_devices,
    )
    problem = serving.check(options)
    if problem is not None:
        raise to_exception(problem)
    serving.serve(options)
    return {"text": "server stopped"}


def users_add(args: argparse.Namespace) -> Report:
    """``splitvault users add EMAIL --role R --data DIR``: the password is read from stdin."""
    from splitvault.app.server.api import add_user

    password = sys.stdin.readline().rstrip("\n")
    if not password:
        from splitvault.domain.errors import ConfigInvalid

        raise to_exception(ConfigInvalid("password", "read an empty password from stdin"))
    unwrap_or_raise(add_user(args.data, args.email, password, args.role))
    return {"email": args.email, "role": args.role, "text": f"added {args.email} ({args.role})"}


def _images_config() -> Any:
    from splitvault.app.client.images import ImagesConfig

    parsed = ImagesConfig.from_env(os.environ)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


def _engine() -> Any:
    from splitvault.adapters.docker_cli import DockerCliEngine

    return DockerCliEngine(docker_host=os.environ.get("DOCKER_HOST"))


def seal_images(args: argparse.Namespace) -> Report:
    """``splitvault seal-images``: docker save, encrypt under a new fragment, register it."""
    from splitvault.app.client.images import check_version
    from splitvault.app.client.images import seal_images as seal

    bad_version = check_version(args.version)
    if bad_version is not None:  # before the login that the signing key may need
        raise to_exception(bad_version)
    client = _client(args)
    try:
        # The key file's key, else the account's default key (derived at login), as uploads.
        signing_key = unwrap_or_raise(client.upload_signing_key())
        with transfer_progress(f"sealing images {args.version}", 0) as progress:
            report = unwrap_or_raise(
                seal(
                    args.images,
                    args.version,
                    args.out,
                    engine_cli=_engine(),
                    fragments=client.api,
                    random=client.random,
                    progress=progress,
                    signing_key=signing_key,
                )
            )
    finally:
        client.close()
    signer = _key_id(report.publisher_key)
    return {
        "out": str(args.out),
        "version": args.version,
        "publisher_key": signer,
        "text": f"sealed {len(report.images)} image(s) as version {args.version} into "
        f"{args.out} ({report.archive_bytes} bytes, "
        + (f"signed by {signer})" if signer else "unsigned)"),
    }


def _key_id(public: bytes | None) -> str | None:
    from splitvault.domain.signature import key_id

    return None if public is None else key_id(public)


def unlock_images(args: argparse.Namespace) -> Report:
    """``splitvault unlock-images``: fragment, decrypt, docker load, check every service image."""
    from splitvault.app.client.images import unlock_images as unlock

    config = _images_config()
    client = _client(args)
    # A missing archive is reported by the use case (NotFound, exit 4), not by this stat.
    size = args.archive.stat().st_size if args.archive.is_file() else 0
    try:
        with transfer_progress(f"unlocking {args.archive.name}", size) as progress:
            report = unwrap_or_raise(
                unlock(
                    args.archive,
                    args.version,
                    fragments=client.api,
                    engine=_engine(),
                    services=config.services,
                    registry=config.registry,
                    progress=progress,
                    pinned=client.config.publisher_keys,
                )
            )
    finally:
        client.close()
    signer = _key_id(report.publisher_key)
    return {
        "version": args.version,
        "kind": report.kind.value,
        "images": list(report.images),
        "publisher_key": signer,
        "text": f"unlocked version {args.version}: {len(report.images)} image(s) present ("
        + (f"signed by {signer})" if signer else "unsigned)"),
    }


def demo(args: argparse.Namespace) -> Report:
    """``splitvault demo``: the main job end to end on loopback servers."""
    from splitvault.app.tools import demo as run_demo

    return run_demo.run(size=args.size, offline=args.offline)


def bench(args: argparse.Namespace) -> Report:
    """``splitvault bench``: CPU per GiB and wall time of every path, next to its peers."""
    from splitvault.app.tools import bench as run_bench

    report = run_bench.run_bench(
        args.size,
        args.repetitions,
        online_size=None if args.offline else args.online_size,
        hold_freed_memory=args.hold_freed_memory,
    )
    return {**run_bench.report_json(report), "text": run_bench.render(report)}
