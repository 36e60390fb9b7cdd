"""The CLI's commands: each takes parsed arguments and returns a JSON-able report.

They raise ``SplitvaultError`` subclasses (through ``unwrap_or_raise``) and never print secrets.
The ``text`` key of a report is what a person sees when ``--json`` is not given.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure as ResultFailure

from app.errors import to_exception, unwrap_or_raise
from app.progress import transfer_progress
from app.usecases import write_atomically
from domain.errors import Failure, StorageFailed
from domain.ref import ResourceRef

Report = dict[str, Any]


def parse_ref(folder: str, name: str) -> ResourceRef:
    """A ref from command-line input, or the ``InvalidNameError`` that says what is wrong."""
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, ResultFailure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


def read_key_file(path: Path, what: str) -> bytes:
    """A 32-byte key from a file (raw, hex or base64), or a ``ConfigError`` naming the file."""
    from domain.errors import ConfigInvalid
    from domain.legacy import parse_shared_key

    try:
        data = path.read_bytes()
    except OSError as error:
        raise to_exception(ConfigInvalid(what, f"cannot read {path}: {error.strerror}")) from None
    parsed = parse_shared_key(data)
    if isinstance(parsed, ResultFailure):
        raise to_exception(ConfigInvalid(what, f"{path}: {parsed.failure().detail}"))
    return parsed.unwrap()


def _write_bytes(path: Path, data: bytes) -> IOResult[None, Failure]:
    try:
        with path.open("wb") as handle:
            handle.write(data)
    except OSError as error:
        return IOFailure(StorageFailed(str(path), error.strerror or "write failed"))
    return IOSuccess(None)


def seal(args: argparse.Namespace) -> Report:
    """``splitvault seal``: FILE → DIR/NAME.small + DIR/NAME.big, both or neither."""
    from app import pipeline
    from domain.format_v1 import DEFAULT_CHUNK_SIZE

    source: Path = args.file
    ref = parse_ref(args.folder, args.name or source.name)
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

        def seal_into(temp_big: Path) -> IOResult[bytes, Failure]:
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

        def write_big(temp_big: Path) -> IOResult[int, Failure]:
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
    from app import pipeline

    try:
        small = args.small.read_bytes()
        big_size = args.big.stat().st_size
    except OSError as error:
        raise to_exception(
            StorageFailed(str(error.filename), error.strerror or "cannot read")
        ) from None
    publisher_key = (
        read_key_file(args.publisher_key, "publisher key") if args.publisher_key else None
    )
    legacy_key = read_key_file(args.legacy_key, "legacy key") if args.legacy_key else None
    with transfer_progress(f"opening {args.small.name}", big_size + len(small)) as progress:

        def open_into(temp: Path) -> IOResult[None, Failure]:
            if legacy_key is not None:
                key = legacy_key
                return pipeline.open_file_legacy(small, args.big, temp, key=key, progress=progress)
            return pipeline.open_file(
                small, args.big, temp, publisher_key=publisher_key, progress=progress
            )

        unwrap_or_raise(write_atomically(args.out, open_into))
    size = args.out.stat().st_size
    return {"out": str(args.out), "bytes": size, "text": f"opened {args.out} ({size} B)"}


def _not_yet(args: argparse.Namespace) -> Report:
    print(f"splitvault {args.command}: not available in this build", file=sys.stderr)
    raise SystemExit(1)


upload = download = list_folder = login = fingerprint = serve = users_add = _not_yet
seal_images = unlock_images = demo = bench = _not_yet
