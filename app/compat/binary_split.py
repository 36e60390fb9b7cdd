"""The original ``binary_split`` functions for the image loader, as plain Python that raises.

Scripts written against the original module keep working: ``download_key_fragment``,
``decrypt_archive``, ``docker_load`` and ``check_images_loaded`` have the original names and
positional parameters. Where the original fell short, these do better, and say so:

- errors raise typed ``SplitvaultError`` subclasses (``client.errors``) instead of being swallowed;
- the service list and registry prefix come from configuration (``SPLITVAULT_IMAGE_REGISTRY``,
  ``SPLITVAULT_IMAGE_SERVICES``), not a list in the code;
- ``download_key_fragment`` calls the API's ``GET /keys/{version}``; the original signature has no
  version, so it is a keyword argument defaulting to ``SPLITVAULT_IMAGE_VERSION``;
- ``decrypt_archive`` streams, also reads the authenticated v1 archive (detected by magic), and
  writes the output through a 0600 temp file renamed only on success, so a failure leaves nothing.

The engine used by ``docker_load`` and ``check_images_loaded`` is the ``docker`` CLI with the
caller's ``DOCKER_HOST`` unless one is passed in.
"""

from __future__ import annotations

import os
from pathlib import Path

from returns.result import Failure

from splitvault.adapters.docker_cli import DockerCliEngine
from splitvault.adapters.http_key_fragments import DEFAULT_TIMEOUT, HttpKeyFragments
from splitvault.app.client import images
from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.domain.archive import ArchiveKind
from splitvault.domain.errors import ConfigInvalid
from splitvault.domain.ports import ContainerEngine


def _config() -> images.ImagesConfig:
    parsed = images.ImagesConfig.from_env(os.environ)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


def _engine(engine: ContainerEngine | None) -> ContainerEngine:
    return engine if engine is not None else DockerCliEngine()


def download_key_fragment(
    resource_api_url: str,
    token: str,
    *,
    version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bytes:
    """The key fragment of ``version`` from ``{resource_api_url}/keys/{version}``.

    ``token`` is the bearer token from ``/login``. ``version`` defaults to
    ``SPLITVAULT_IMAGE_VERSION``. One request, no retry. Raises ``ConfigError`` when no version
    is known, ``AuthError`` (401/403), ``NotFoundError`` (no fragment for that version) or
    ``NetworkError``.
    """
    if version is None:
        version = os.environ.get(images.ENV_VERSION) or None
    if version is None:
        raise to_exception(
            ConfigInvalid(images.ENV_VERSION, "no version given; pass version= or set the variable")
        )
    problem = images.check_version(version)
    if problem is not None:
        raise to_exception(problem)
    fragments = HttpKeyFragments(resource_api_url, token, timeout=timeout)
    return unwrap_or_raise(fragments.get_fragment(version))


def decrypt_archive(
    encrypted_path: str | os.PathLike[str], key_fragment: bytes, output_path: str | os.PathLike[str]
) -> ArchiveKind:
    """Decrypt an image archive (legacy CBC or v1) into ``output_path``; returns which kind.

    Raises ``IntegrityError`` for a wrong fragment or a corrupt archive (``output_path`` is then
    not created), ``NotFoundError`` for a missing archive, ``StorageError`` on I/O failures.
    """
    return unwrap_or_raise(
        images.decrypt_archive(Path(encrypted_path), key_fragment, Path(output_path))
    )


def docker_load(
    tar_path: str | os.PathLike[str], *, engine: ContainerEngine | None = None
) -> tuple[str, ...]:
    """``docker load`` an image tar; returns the names the engine reported as loaded.

    Raises ``EngineError`` when the engine is unreachable or refuses the tar (a truncated tar is
    refused before the engine sees it).
    """
    return unwrap_or_raise(_engine(engine).load(Path(tar_path)))


def check_images_loaded(
    version: str,
    *,
    engine: ContainerEngine | None = None,
    config: images.ImagesConfig | None = None,
) -> bool:
    """Whether every configured service's image ``{registry}/{service}:{version}`` is present.

    Returns ``False`` when any is missing (use ``client.images.find_missing`` to learn which).
    Raises ``ConfigError`` for missing configuration, ``InvalidNameError`` for a version that is
    not a valid tag and ``EngineError`` when the engine cannot answer.
    """
    chosen = config if config is not None else _config()
    names = chosen.image_names(version)
    if isinstance(names, Failure):
        raise to_exception(names.failure())
    missing = unwrap_or_raise(images.find_missing(_engine(engine), names.unwrap()))
    return not missing
