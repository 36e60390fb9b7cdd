"""``splitvault migrate``: re-publish resources still in the original format as format v1.

For each name, the original-format resource (AES-CBC under the shared key, no header) is read
online with that key, in memory (no plaintext file), sealed as v1 (authenticated chunks, its own
data key, wrapped under the publisher key when one is given) and uploaded under the same name;
the API write of the new small part is the commit point. The result is read back and compared
with the original's SHA-256 before it is reported as migrated. A resource already in v1 is left
alone. Memory: each resource's plaintext once.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from returns.result import Failure

from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.domain.errors import ConfigInvalid, CorruptResource


def _key(path: Path | None, field: str) -> bytes | None:
    from splitvault.domain.legacy import parse_shared_key

    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise to_exception(ConfigInvalid(field, f"cannot read {path}: {error.strerror}")) from None
    parsed = parse_shared_key(data, field)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


def migrate(args: argparse.Namespace) -> dict[str, Any]:
    """Handler of ``splitvault migrate``."""
    from splitvault.app.cli.commands import _client, parse_ref
    from splitvault.app.client.in_memory import load_into_memory, upload_from_memory

    shared = _key(args.key_file, "key_file")
    publisher = _key(args.publisher_key, "publisher_key")
    refs = [parse_ref(args.folder, name) for name in args.names]
    client = _client(args)
    migrated: list[str] = []
    skipped: list[str] = []
    try:
        for ref in refs:
            loaded = unwrap_or_raise(load_into_memory(client, ref, shared_key=shared))
            if not loaded.legacy:
                skipped.append(str(ref))
                continue
            digest = hashlib.sha256(loaded.data).digest()
            unwrap_or_raise(upload_from_memory(client, ref, loaded.data, publisher_key=publisher))
            del loaded
            back = unwrap_or_raise(load_into_memory(client, ref, shared_key=publisher))
            if back.legacy or hashlib.sha256(back.data).digest() != digest:
                raise to_exception(
                    CorruptResource(str(ref), "the re-published resource reads back differently")
                )
            migrated.append(str(ref))
    finally:
        client.close()
    lines = [f"migrated {name} to v1" for name in migrated]
    lines += [f"{name} is already v1; left alone" for name in skipped]
    return {"migrated": migrated, "already_v1": skipped, "text": "\n".join(lines)}
