"""A structural check of a ``docker save`` archive before any engine sees it.

dockerd loads an archive image by image and keeps what it registered before it hit a problem: a
truncated archive can leave an untagged image behind even though the load failed. So both
container-engine adapters first check that the tar is whole: it parses to its end (tarfile
notices a cut inside the last member, whose data must end where the next header would start),
and every config and layer ``manifest.json`` names is a member (``repositories`` alone marks the
pre-1.10 format, whose layers are not checked). For an uncompressed archive only headers are read,
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

import attrs
from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.domain.errors import EngineFailed, EngineFailure

MANIFEST = "manifest.json"
LEGACY_REPOSITORIES = "repositories"
MAX_MANIFEST_BYTES = 16 << 20
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


@attrs.frozen
class ArchiveContents:
    """What a complete image archive says it holds: the ``repo:tag`` names it will load."""

    repo_tags: tuple[str, ...]


def _manifest_entries(manifest: Any) -> tuple[list[str], list[str]] | None:
    """``(members named, repo tags)`` of a ``docker save`` manifest, or ``None`` if not one."""
    if not isinstance(manifest, list) or not manifest:
        return None
    names: list[str] = []
    tags: list[str] = []
    for entry in manifest:
        if not isinstance(entry, dict):
            return None
        config, layers = entry.get("Config"), entry.get("Layers")
        repo_tags = entry.get("RepoTags") or []
        if not isinstance(config, str) or not isinstance(layers, list):
            return None
        if not isinstance(repo_tags, list):
            return None
        if not all(isinstance(item, str) for item in (*layers, *repo_tags)):
            return None
        names.append(config)
        names.extend(layers)
        tags.extend(repo_tags)
    return names, tags


def _repositories_tags(repositories: Any) -> list[str] | None:
    """Repo tags of a pre-1.10 ``repositories`` file (``{repo: {tag: id}}``), or ``None``."""
    if not isinstance(repositories, dict):
        return None
    tags: list[str] = []
    for repo, by_tag in repositories.items():
        if not isinstance(by_tag, dict):
            return None
        tags.extend(f"{repo}:{tag}" for tag in by_tag)
    return tags


def _normal(name: str) -> str:
    return name.removeprefix("./")


def inspect_image_archive(tar: Path) -> IOResult[ArchiveContents, EngineFailure]:
    """Check that ``tar`` is a whole image archive and say which names it holds.

    Fails with ``EngineFailed`` naming the file when it is missing, does not read as a tar, has
    no (readable) ``manifest.json`` or ``repositories``, or lacks a file its manifest names.
    """

    def bad(detail: str) -> IOResult[ArchiveContents, EngineFailure]:
        return IOFailure(EngineFailed(f"{tar} is not a complete docker image archive: {detail}"))

    if not tar.is_file():
        return IOFailure(EngineFailed(f"the image archive {tar} does not exist"))
    try:
        with tarfile.open(tar, "r:*") as archive:
            members = {_normal(member.name): member for member in archive.getmembers()}
            index = members.get(MANIFEST) or members.get(LEGACY_REPOSITORIES)
            if index is None:
                return bad(f"it has neither {MANIFEST} nor {LEGACY_REPOSITORIES} (truncated?)")
            if index.size > MAX_MANIFEST_BYTES:
                return bad(f"its {index.name} is {index.size} bytes")
            extracted = archive.extractfile(index)
            if extracted is None:
                return bad(f"its {index.name} is not a regular file")
            raw = extracted.read()
    except _READ_ERRORS as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0].rstrip(":")
        return bad(f"it does not read as a tar ({reason})")
    what = _normal(index.name)
    try:
        parsed = json.loads(raw)
    except ValueError:
        return bad(f"its {what} is not JSON")
    if what == LEGACY_REPOSITORIES:
        legacy_tags = _repositories_tags(parsed)
        if legacy_tags is None:
            return bad(f"its {what} does not map repositories to tags")
        return IOSuccess(ArchiveContents(tuple(legacy_tags)))
    entries = _manifest_entries(parsed)
    if entries is None:
        return bad(f"its {what} does not list images with Config and Layers")
    referenced, tags = entries
    missing = sorted({name for name in referenced if _normal(name) not in members})
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        return bad(f"{len(missing)} file(s) its {what} names are absent: {shown} (truncated?)")
    return IOSuccess(ArchiveContents(tuple(tags)))


def check_image_archive(tar: Path) -> IOResult[None, EngineFailure]:
    """``inspect_image_archive`` for callers that only need to know the archive is whole."""
    return inspect_image_archive(tar).map(lambda _: None)
