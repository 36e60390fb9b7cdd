"""A structural check of a ``docker save`` archive before any engine sees it.

dockerd loads an archive image by image and keeps what it registered before it hit a problem: a
truncated archive can leave an untagged image behind even though the load failed. So both
container-engine adapters first check that the tar is whole: it parses to its end (tarfile
notices a cut inside the last member, whose data must end where the next header would start),
and every config and layer ``manifest.json`` names is a member (``repositories`` alone marks the
pre-1.10 format, which is accepted as it is). For an uncompressed archive only headers are read,
seeking over member data; a compressed one is decompressed once. The contents are not judged: a
well-formed archive the daemon dislikes is the daemon's to refuse.
"""

from __future__ import annotations

import json
import lzma
import tarfile
import zlib
from pathlib import Path
from typing import Any

from returns.io import IOFailure, IOResult, IOSuccess

from domain.errors import EngineFailed, EngineFailure

MANIFEST = "manifest.json"
LEGACY_REPOSITORIES = "repositories"
MAX_MANIFEST_BYTES = 16 << 20
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _referenced(manifest: Any) -> list[str] | None:
    """Every member a ``docker save`` manifest names, or ``None`` if it is not one."""
    if not isinstance(manifest, list) or not manifest:
        return None
    names: list[str] = []
    for entry in manifest:
        if not isinstance(entry, dict):
            return None
        config, layers = entry.get("Config"), entry.get("Layers")
        if not isinstance(config, str) or not isinstance(layers, list):
            return None
        if not all(isinstance(layer, str) for layer in layers):
            return None
        names.append(config)
        names.extend(layers)
    return names


def _normal(name: str) -> str:
    return name.removeprefix("./")


def check_image_archive(tar: Path) -> IOResult[None, EngineFailure]:
    """Check that ``tar`` is a whole image archive; ``EngineFailed`` naming the file if not."""

    def bad(detail: str) -> IOResult[None, EngineFailure]:
        return IOFailure(EngineFailed(f"{tar} is not a complete docker image archive: {detail}"))

    if not tar.is_file():
        return IOFailure(EngineFailed(f"the image archive {tar} does not exist"))
    try:
        with tarfile.open(tar, "r:*") as archive:
            members = {_normal(member.name): member for member in archive.getmembers()}
            manifest_member = members.get(MANIFEST)
            if manifest_member is None:
                if LEGACY_REPOSITORIES in members:
                    return IOSuccess(None)
                return bad(f"it has neither {MANIFEST} nor {LEGACY_REPOSITORIES} (truncated?)")
            if manifest_member.size > MAX_MANIFEST_BYTES:
                return bad(f"its {MANIFEST} is {manifest_member.size} bytes")
            extracted = archive.extractfile(manifest_member)
            if extracted is None:
                return bad(f"its {MANIFEST} is not a regular file")
            raw = extracted.read()
    except _READ_ERRORS as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0].rstrip(":")
        return bad(f"it does not read as a tar ({reason})")
    try:
        referenced = _referenced(json.loads(raw))
    except ValueError:
        return bad(f"its {MANIFEST} is not JSON")
    if referenced is None:
        return bad(f"its {MANIFEST} does not list images with Config and Layers")
    missing = sorted({name for name in referenced if _normal(name) not in members})
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        return bad(f"{len(missing)} file(s) its {MANIFEST} names are absent: {shown} (truncated?)")
    return IOSuccess(None)
