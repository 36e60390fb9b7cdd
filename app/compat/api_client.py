"""``ApiClient`` and ``ApiCredentials``: the resource API client under the original names.

Scripts written against the original client keep their method names. What changed, on purpose:

- nothing is saved to the working directory: downloads go where the caller says;
- errors are raised as ``SplitvaultError`` subclasses, never swallowed or returned as ``None``;
- credentials come from arguments, the environment or the config file, never from files the client
  writes;
- ``load_big_small_resource`` still returns bytes for compatibility, but it streams through a temp
  file; prefer ``download_resource_file`` for anything large;
- every resource is sealed with format v1 (authenticated, per-resource keys) instead of the shared
  CBC key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import attrs
from returns.io import IOResult
from returns.result import Failure

from splitvault.adapters.config_files import default_cache_dir
from splitvault.app.client.bootstrap import Client, bootstrap
from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.app.client.usecases import (
    DownloadReport,
    UploadReport,
    open_small_part,
)
from splitvault.cdn_manager import (
    CDNCredentials,
    CDNManager,
    download_resuming,
    ref_from_key,
)
from splitvault.domain.config import ClientConfig
from splitvault.domain.errors import ConfigInvalid, LimitExceeded, Problem, StorageFailed
from splitvault.domain.ports import Cdn, Hardware
from splitvault.domain.ref import ResourceRef, parse_folder


@attrs.frozen
class ApiCredentials:
    """An API account: e-mail and password (hidden from reprs)."""

    email: str
    password: str = attrs.field(repr=False)


def _ref(folder: str, name: str) -> ResourceRef:
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


class ApiClient:
    """The resource API client with the original method names, on the new protocol.

    Args:
        api_url: the resource API's base URL.
        credentials: the account; ``login(email, password)`` may set it later.
        cache_dir: the big-part cache (default: the user cache directory).
        ca_bundle: CA certificates for the API's TLS, instead of the system store.
        hardware: a ``Hardware`` adapter (default: the Linux probe).
        publisher_key_file: a file with the publisher key, if data keys are wrapped.

    Every method raises a ``SplitvaultError`` subclass on failure.
    """

    def __init__(
        self,
        api_url: str,
        credentials: ApiCredentials | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        hardware: Hardware | None = None,
        publisher_key_file: str | os.PathLike[str] | None = None,
        workers: int = 4,
    ) -> None:
        self._api_url = api_url
        self._credentials = credentials
        self._cache_dir = Path(cache_dir) if cache_dir else _default_cache_dir()
        self._ca_bundle = Path(ca_bundle) if ca_bundle else None
        self._hardware = hardware
        self._publisher_key_file = Path(publisher_key_file) if publisher_key_file else None
        self._workers = workers
        self._cdn_override: Cdn | None = None
        self._client: Client | None = None

    def __repr__(self) -> str:
        email = self._credentials.email if self._credentials else None
        return f"ApiClient({self._api_url!r}, email={email!r})"

    def _session(self) -> Client:
        if self._client is None:
            if self._credentials is None:
                raise to_exception(ConfigInvalid("credentials", "call login(email, password)"))
            config = ClientConfig(
                cache_dir=self._cache_dir,
                api_url=self._api_url,
                email=self._credentials.email,
                password=self._credentials.password,
                ca_bundle=self._ca_bundle,
                workers=self._workers,
                publisher_key_file=self._publisher_key_file,
            )
            self._client = unwrap_or_raise(
                bootstrap(config, hardware=self._hardware, cdn=self._cdn_override)
            )
        return self._client

    def close(self) -> None:
        """Release connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the original methods ---------------------------------------------------------------

    def login(self, email: str | None = None, password: str | None = None) -> None:
        """Log in (with new credentials if given); raises ``AuthError`` when refused."""
        if email is not None and password is not None:
            self.close()
            self._credentials = ApiCredentials(email, password)
        unwrap_or_raise(self._session().api.login())

    def set_credentials_from_dict(self, data: Mapping[str, object]) -> None:
        """Use these CDN credentials instead of the ``cdn.yaml`` the API serves."""
        credentials = CDNCredentials.from_dict(data)
        writable = bool(data.get("writable", False))
        self._cdn_override = CDNManager(credentials, writable=writable).cdn
        self.close()

    def upload_file(self, file_path: str | os.PathLike[str], folder: str) -> None:
        """Store a small file at the API as it is (configs and the like, up to 1 MiB)."""
        path = Path(file_path)
        ref = _ref(folder, path.name)
        data = _read_small(path)
        unwrap_or_raise(self._session().api.upload_small_part(ref, data))

    def load_bytes(self, file_name: str, folder: str) -> bytes:
        """A file stored with ``upload_file``, opened from its transport envelope."""
        client = self._session()
        ref = _ref(folder, file_name)
        envelope: IOResult[bytes, Problem] = client.api.download_small_part(ref, client.fingerprint)
        return unwrap_or_raise(
            envelope.bind(lambda sealed: open_small_part(ref, sealed, client.transport_key))
        )

    def list_files(self, folder: str) -> list[str]:
        """Names in a folder; raises ``InvalidNameError`` for a folder that is not a plain name."""
        parsed = parse_folder(folder)
        if isinstance(parsed, Failure):
            raise to_exception(parsed.failure())
        return list(unwrap_or_raise(self._session().api.list_folder(parsed.unwrap())))

    def upload_big_small_resource(
        self, file_path: str | os.PathLike[str], folder: str, name: str | None = None
    ) -> UploadReport:
        """Seal and upload a file (big part to the CDN, small part to the API)."""
        path = Path(file_path)
        return self.upload_resource_file(path, name or path.name, folder)

    def load_big_small_resource(self, resource_name: str, folder: str) -> bytes:
        """A resource's plaintext as bytes. Holds the whole file in memory: prefer
        ``download_resource_file`` for large resources."""
        with tempfile.TemporaryDirectory(prefix="splitvault-") as scratch:
            out = Path(scratch) / "resource"
            self.download_resource_file(resource_name, folder, out)
            return out.read_bytes()

    def upload_to_cdn(self, file_path: str | os.PathLike[str], key: str) -> None:
        """Upload a file to the CDN under ``key`` with the uploader's keys."""
        client = self._session()
        ref = ref_from_key(key)
        unwrap_or_raise(
            client.with_cdn(
                True,
                lambda cdn: client.retrier.run(
                    f"upload of {key}", lambda: cdn.upload_file(ref, Path(file_path))
                ),
            )
        )

    def download_from_cdn(self, key: str, file_path: str | os.PathLike[str]) -> None:
        """Download ``key`` from the CDN into ``file_path`` (atomically)."""
        client = self._session()
        ref = ref_from_key(key)

        unwrap_or_raise(
            client.with_cdn(
                False, lambda cdn: download_resuming(cdn, ref, file_path, client.retrier)
            )
        )

    # -- streaming ---------------------------------------------------------------------------

    def upload_resource_file(
        self, path: str | os.PathLike[str], name: str, folder: str
    ) -> UploadReport:
        """Seal ``path`` and upload it as ``folder/name``, streaming (constant memory)."""
        return unwrap_or_raise(self._session().upload(_ref(folder, name), Path(path)))

    def download_resource_file(
        self, name: str, folder: str, out_path: str | os.PathLike[str]
    ) -> DownloadReport:
        """Download ``folder/name`` into ``out_path``, streaming; nothing is left on failure."""
        return unwrap_or_raise(self._session().download(_ref(folder, name), Path(out_path)))


def _read_small(path: Path) -> bytes:
    limit = 1 << 20
    try:
        size = path.stat().st_size
        if size > limit:
            # Small files only: large ones belong in upload_resource_file.
            raise to_exception(LimitExceeded(f"the size of {path}", limit, size))
        return path.read_bytes()
    except OSError as error:
        raise to_exception(StorageFailed(str(path), error.strerror or "cannot read")) from None


def _default_cache_dir() -> Path:
    return default_cache_dir(os.environ)
