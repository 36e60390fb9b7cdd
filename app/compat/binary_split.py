"""The original ``binary_split`` functions for the image loader, as plain Python that raises.

Scripts written against the original module keep working: ``download_key_fragment(
resource_api_url, token)``, ``decrypt_archive(encrypted_path, key_fragment, output_path)``,
``docker_load(tar_path)`` and ``check_images_loaded(version)`` have the original names and
positional parameters. Where the original fell short, these do better, and say so:

- errors raise typed ``SplitvaultError`` subclasses (``client.errors``) instead of being swallowed;
- ``download_key_fragment`` without a version fetches the latest registered one (``GET /keys``),
  as the original's one-version world did; ``version=`` (or ``SPLITVAULT_IMAGE_VERSION``) picks one;
- no service list in the code: ``decrypt_archive`` and ``docker_load`` record the image names the
  archive's manifest declares (per version, in the state directory), and ``check_images_loaded``
  checks those by default; ``SPLITVAULT_IMAGE_SERVICES`` (with ``SPLITVAULT_IMAGE_REGISTRY``)
  narrows the check to those services, or names the images when nothing was recorded;
- ``decrypt_archive`` streams, also reads the authenticated v1 archive (detected by magic), and
  writes the output through a 0600 temp file renamed only on success, so a failure leaves nothing.

The engine used by ``docker_load`` and ``check_images_loaded`` is the ``docker`` CLI with the
caller's ``DOCKER_HOST`` unless one is passed in.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from returns.io import IOResult
from returns.pipeline import is_successful
from returns.result import Failure
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.atomic_file import atomic_path
from splitvault.adapters.config_files import default_state_dir
from splitvault.adapters.docker_cli import DockerCliEngine
from splitvault.adapters.http_key_fragments import DEFAULT_TIMEOUT, HttpKeyFragments
from splitvault.adapters.image_archive import ArchiveContents, inspect_image_archive
from splitvault.api_client import device_key_for
from splitvault.app.client import images
from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.domain.archive import ArchiveKind
from splitvault.domain.errors import EngineFailure
from splitvault.domain.ports import ContainerEngine

log = logging.getLogger("splitvault.binary_split")

_RECORDS = "images"


def _engine(engine: ContainerEngine | None) -> ContainerEngine:
    return engine if engine is not None else DockerCliEngine()


def download_key_fragment(
    resource_api_url: str,
    token: str,
    *,
    version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bytes:
    """The key fragment of an image archive version, from the resource API.

    ``token`` is the bearer token of a session (``ApiClient.session_token()``). ``version``
    defaults to ``SPLITVAULT_IMAGE_VERSION``; with neither, the latest registered fragment is
    fetched (``GET /keys``), as the original's call without a version did. One request, no
    retry. Raises ``AuthError`` (401/403), ``NotFoundError`` (no such fragment),
    ``InvalidNameError`` (a version that is not a tag) or ``NetworkError``.
    """
    chosen = version if version is not None else (os.environ.get(images.ENV_VERSION) or None)
    fragments = HttpKeyFragments(
        resource_api_url, token, device=device_key_for(token), timeout=timeout
    )
    if chosen is None:
        latest = unwrap_or_raise(fragments.get_latest_fragment())
        log.info("using the latest registered image version, %s", latest[0])
        return latest[1]
    problem = images.check_version(chosen)
    if problem is not None:
        raise to_exception(problem)
    return unwrap_or_raise(fragments.get_fragment(chosen))


def _tag_version(name: str) -> str | None:
    last = name.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last:
        return None
    return last.rsplit(":", 1)[1]


def _service(name: str) -> str:
    return name.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def _record_path(version: str, environ: Mapping[str, str]) -> Path:
    return default_state_dir(environ) / _RECORDS / f"{version}.json"


def _record_declared_images(tar: Path, environ: Mapping[str, str]) -> None:
    """Remember, per version, the image names ``tar``'s manifest declares.

    Best effort on purpose: the archive was decrypted or loaded either way, and a record that
    cannot be written only means ``check_images_loaded`` needs the configured services.
    """
    inspected: IOResult[ArchiveContents, EngineFailure] = inspect_image_archive(tar)
    if not is_successful(inspected):
        return
    contents = unsafe_perform_io(inspected.unwrap())
    by_version: dict[str, list[str]] = {}
    for name in contents.repo_tags:
        tag = _tag_version(name)
        if tag is not None and images.check_version(tag) is None:
            by_version.setdefault(tag, []).append(name)
    for version, names in by_version.items():
        path = _record_path(version, environ)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, mode=0o644) as temp:
                temp.write_text(json.dumps({"version": version, "images": sorted(set(names))}))
        except OSError as error:
            log.warning("could not record the images of version %s: %s", version, error.strerror)


def declared_images(
    version: str, environ: Mapping[str, str] | None = None
) -> tuple[str, ...] | None:
    """The images the archive of ``version`` declared when it was unlocked here, if recorded."""
    path = _record_path(version, os.environ if environ is None else environ)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    names = data.get("images") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    return tuple(names)


def decrypt_archive(
    encrypted_path: str | os.PathLike[str], key_fragment: bytes, output_path: str | os.PathLike[str]
) -> ArchiveKind:
    """Decrypt an image archive (legacy CBC or v1) into ``output_path``; returns which kind.

    Records the image names its manifest declares, so ``check_images_loaded(version)`` knows
    them. Raises ``IntegrityError`` for a wrong fragment or a corrupt archive (``output_path`` is
    then not created), ``NotFoundError`` for a missing archive, ``StorageError`` on I/O failures.
    """
    output = Path(output_path)
    kind = unwrap_or_raise(images.decrypt_archive(Path(encrypted_path), key_fragment, output))
    _record_declared_images(output, os.environ)
    return kind


def docker_load(
    tar_path: str | os.PathLike[str], *, engine: ContainerEngine | None = None
) -> tuple[str, ...]:
    """``docker load`` an image tar; returns the names the engine reported as loaded.

    Raises ``EngineError`` when the engine is unreachable or refuses the tar (a truncated tar is
    refused before the engine sees it).
    """
    tar = Path(tar_path)
    loaded = unwrap_or_raise(_engine(engine).load(tar))
    _record_declared_images(tar, os.environ)
    return loaded


def _configured_services(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get(images.ENV_SERVICES) or ""
    return tuple(service.strip() for service in raw.split(",") if service.strip())


def _names_to_check(
    version: str, config: images.ImagesConfig | None, environ: Mapping[str, str]
) -> tuple[str, ...] | None:
    """The images ``version`` needs, or None when nothing says which (never unlocked here)."""
    declared = declared_images(version, environ)
    services = config.services if config is not None else _configured_services(environ)
    if declared is not None:
        if not services:
            return declared
        chosen = tuple(name for name in declared if _service(name) in services)
        absent = [service for service in services if service not in map(_service, declared)]
        if absent:
            # A configured service the archive did not declare cannot have been loaded from it.
            log.info("version %s declared no image for %s", version, ", ".join(absent))
            return None
        return chosen
    if config is None:
        if not services:
            return None
        parsed = images.ImagesConfig.from_env(environ)
        if isinstance(parsed, Failure):
            raise to_exception(parsed.failure())
        config = parsed.unwrap()
    names = config.image_names(version)
    if isinstance(names, Failure):
        raise to_exception(names.failure())
    return names.unwrap()


def check_images_loaded(
    version: str,
    *,
    engine: ContainerEngine | None = None,
    config: images.ImagesConfig | None = None,
) -> bool:
    """Whether every image of ``version`` is present in the engine.

    By default the images are the ones the version's archive declared when it was decrypted or
    loaded here; configured services (``config``, or ``SPLITVAULT_IMAGE_SERVICES``) narrow that
    to those services, and name the images (``{registry}/{service}:{version}``) when nothing was
    recorded. ``False`` when any is missing, and when nothing says which images the version has
    (it was never unlocked on this machine). Raises ``InvalidNameError`` for a version that is
    not a valid tag, ``ConfigError`` for malformed image settings and ``EngineError`` when the
    engine cannot answer.
    """
    problem = images.check_version(version)
    if problem is not None:
        raise to_exception(problem)
    names = _names_to_check(version, config, os.environ)
    if not names:
        return False
    missing = unwrap_or_raise(images.find_missing(_engine(engine), _unique(names)))
    return not missing


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


__all__ = [
    "check_images_loaded",
    "declared_images",
    "decrypt_archive",
    "docker_load",
    "download_key_fragment",
]
