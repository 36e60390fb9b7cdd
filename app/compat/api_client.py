"""``ApiClient`` and ``ApiCredentials``: the resource API client under the original names.

Every documented call of the original keeps its name and positional arguments: ``ApiClient()``
(configuration from ``SPLITVAULT_*`` and the config file, where the original's ``config.yaml``
fields ``url``, ``email``, ``password`` are accepted), ``login()``, ``upload_file(filename,
file_bytes, folder)``, ``load_bytes(filename, folder)``, ``load_big_small_resource(resource_name,
folder, key=None)``, ``upload_big_small_resource(resource, resource_name, folder, key=None)``,
``set_credentials_from_dict(email, password)``, ``upload_to_cdn(bucket, filename, file_bytes)``
and ``download_from_cdn(bucket, filename)``. What changed, on purpose (the README has a row per
call):

- errors raise ``SplitvaultError`` subclasses, never swallowed or returned as ``None``;
- ``load_big_small_resource`` decrypts from the verified cache or the CDN straight into one
  buffer: no plaintext file anywhere, peak memory about the plaintext's size;
  ``open_resource(name, folder)`` is a seekable file object for models larger than memory;
- ``key`` is the original's shared resource key: for v1 resources the publisher key that wraps
  the data key, for resources still in the original format the legacy CBC key;
- every resource is sealed with format v1 (authenticated, per-resource keys);
- nothing is saved to the working directory, and credentials are never written to files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import attrs
from returns.io import IOResult
from returns.result import Failure

from splitvault.adapters.config_files import default_config_path, load_client_config
from splitvault.app.client.bootstrap import Client, bootstrap
from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.app.client.in_memory import (
    MemoryUpload,
    ResourceReader,
    load_into_memory,
    open_reader,
    upload_from_memory,
)
from splitvault.app.client.usecases import (
    DownloadReport,
    UploadReport,
)
from splitvault.cdn_manager import download_bytes, ref_for, upload_bytes
from splitvault.domain.config import ApiCredentials, ClientConfig
from splitvault.domain.device import DeviceKey
from splitvault.domain.errors import LimitExceeded, Problem
from splitvault.domain.legacy import parse_shared_key
from splitvault.domain.ports import Hardware
from splitvault.domain.ref import ResourceRef, parse_folder
from splitvault.domain.token import read_claims

__all__ = ["ApiClient", "ApiCredentials"]

MAX_SMALL_FILE_BYTES = 1 << 20  # the API's request cap; large files belong in a resource
Bytes = bytes | bytearray | memoryview


def _ref(folder: str, name: str) -> ResourceRef:
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


def _shared_key(key: str | bytes | None) -> bytes | None:
    if key is None:
        return None
    raw = key.encode("ascii", "replace") if isinstance(key, str) else bytes(key)
    parsed = parse_shared_key(raw, "key")
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


# Device keys of this process's sessions by device id, for the token-only original call
# ``download_key_fragment(url, token)``: the token names the device, the key stays in memory.
_DEVICE_KEYS: dict[str, DeviceKey] = {}
_DEVICE_KEYS_LOCK = threading.Lock()


def device_key_for(token: str) -> DeviceKey | None:
    """The device key of a token ``session_token`` handed out in this process, if any."""
    claims = read_claims(token)
    device = claims.get("dev") if claims else None
    if not isinstance(device, str):
        return None
    with _DEVICE_KEYS_LOCK:
        return _DEVICE_KEYS.get(device)


class ApiClient:
    """The resource API client with the original's calls, on the new protocol.

    Args:
        credentials: ``ApiCredentials(url, email, password)``; without it the API URL and the
            account come from ``SPLITVAULT_API_URL``/``_EMAIL``/``_PASSWORD`` or the config
            file, or later from ``set_credentials_from_dict(email, password)``.
        config_path: the config file (default ``$SPLITVAULT_CONFIG``, else
            ``$XDG_CONFIG_HOME/splitvault/config.yaml``).
        cache_dir, ca_bundle, publisher_key_file, workers: override the configuration.
        hardware: a ``Hardware`` adapter (default: the Linux probe).
        environ: the environment to read (default ``os.environ``).

    Raises ``ConfigError`` at once for malformed configuration; every call raises a
    ``SplitvaultError`` subclass on failure.
    """

    def __init__(
        self,
        credentials: ApiCredentials | None = None,
        *,
        config_path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        publisher_key_file: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        hardware: Hardware | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        flags: dict[str, object] = {
            "api_url": credentials.url if credentials else None,
            "email": credentials.email if credentials else None,
            "password": credentials.password if credentials else None,
            "cache_dir": cache_dir,
            "ca_bundle": ca_bundle,
            "publisher_key_file": publisher_key_file,
            "workers": workers,
        }
        path = Path(config_path) if config_path is not None else default_config_path(env)
        loaded: IOResult[ClientConfig, Problem] = load_client_config(flags, env, path)
        self._config: ClientConfig = unwrap_or_raise(loaded)
        self._hardware = hardware
        self._client: Client | None = None

    def __repr__(self) -> str:
        return f"ApiClient({self._config.api_url!r}, email={self._config.email!r})"

    def _session(self) -> Client:
        if self._client is None:
            self._client = unwrap_or_raise(bootstrap(self._config, hardware=self._hardware))
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

    # -- the original calls -----------------------------------------------------------------

    def login(self) -> None:
        """Log in now; raises ``AuthError`` when refused (later calls log in by themselves)."""
        unwrap_or_raise(self._session().api.login())

    def set_credentials_from_dict(self, email: str, password: str) -> None:
        """Switch to this account: log in and fetch its CDN configuration, as the original did.

        Raises ``AuthError`` when the login is refused and ``ConfigError`` when the API's
        ``cdn.yaml`` is malformed; the previous session is closed either way.
        """
        self.close()
        self._config = attrs.evolve(self._config, email=email, password=password)
        client = self._session()
        unwrap_or_raise(client.api.login())
        unwrap_or_raise(client.cdn(write=False))

    def upload_file(self, filename: str, file_bytes: Bytes, folder: str) -> None:
        """Store a small file (configs and the like, up to 1 MiB) as ``folder/filename``."""
        ref = _ref(folder, filename)
        data = bytes(file_bytes)
        if len(data) > MAX_SMALL_FILE_BYTES:
            raise to_exception(LimitExceeded(f"the size of {ref}", MAX_SMALL_FILE_BYTES, len(data)))
        unwrap_or_raise(self._session().api.upload_small_part(ref, data))

    def load_bytes(self, filename: str, folder: str) -> bytes:
        """A file stored with ``upload_file``, opened from its transport envelope."""
        client = self._session()
        ref = _ref(folder, filename)
        small_part: IOResult[bytes, Problem] = client.api.download_small_part(ref)
        return unwrap_or_raise(small_part)

    def load_big_small_resource(
        self, resource_name: str, folder: str, key: str | bytes | None = None
    ) -> bytes:
        """A resource's plaintext, decrypted in memory (never through a file).

        ``key`` is the original's shared resource key (64 hex digits or base64 of 32 bytes):
        the publisher key for a v1 resource whose data key it wraps, the CBC key for a resource
        still in the original format. Peak memory is about the plaintext's size; for models
        larger than memory use ``open_resource``.
        """
        loaded = load_into_memory(
            self._session(), _ref(folder, resource_name), shared_key=_shared_key(key)
        )
        return unwrap_or_raise(loaded).data

    def upload_big_small_resource(
        self,
        resource: Bytes | str | os.PathLike[str],
        resource_name: str,
        folder: str,
        key: str | bytes | None = None,
    ) -> UploadReport | MemoryUpload:
        """Seal and upload a resource: big part to cache and CDN, then the small part to the API.

        ``resource`` is the plaintext as bytes (sealed from memory) or a path (streamed from the
        file). ``key`` (optional) is the publisher key that wraps the data key.
        """
        ref = _ref(folder, resource_name)
        publisher_key = _shared_key(key)
        client = self._session()
        if isinstance(resource, bytes | bytearray | memoryview):
            return unwrap_or_raise(
                upload_from_memory(client, ref, resource, publisher_key=publisher_key)
            )
        return unwrap_or_raise(client.upload(ref, Path(resource), publisher_key=publisher_key))

    def upload_to_cdn(self, bucket: str, filename: str, file_bytes: Bytes) -> None:
        """Store ``file_bytes`` as object ``filename`` in ``bucket`` with the uploader's keys."""
        client = self._session()
        ref = ref_for(bucket, filename)
        scratch = client.config.cache_dir
        unwrap_or_raise(
            client.with_cdn(
                True, lambda cdn: upload_bytes(cdn, ref, file_bytes, client.retrier, scratch)
            )
        )

    def download_from_cdn(self, bucket: str, filename: str) -> bytes:
        """Object ``filename`` of ``bucket``, with the downloader's keys."""
        client = self._session()
        ref = ref_for(bucket, filename)
        scratch = client.config.cache_dir
        return unwrap_or_raise(
            client.with_cdn(False, lambda cdn: download_bytes(cdn, ref, client.retrier, scratch))
        )

    # -- beyond the original ------------------------------------------------------------------

    def session_token(self) -> str:
        """The bearer token of this session (logging in if needed), for
        ``binary_split.download_key_fragment(url, token)``. A secret: never log it.

        The token names this machine's device; what the API answers to it is sealed to that
        device, so the device key is remembered in this process for ``download_key_fragment``.
        """
        api = self._session().api
        token = unwrap_or_raise(api.session_token())
        key = api.device_key()
        if key is not None:
            with _DEVICE_KEYS_LOCK:
                _DEVICE_KEYS[key.device_id] = key
        return token

    def open_resource(
        self, name: str, folder: str, key: str | bytes | None = None
    ) -> ResourceReader:
        """A read-only, seekable binary file of the resource's plaintext, decrypted on demand.

        Memory stays at a few chunks whatever the size; nothing is written but the (ciphertext)
        cache entry. Pass it to ``torch.load``, ``onnxruntime.InferenceSession(f.read())``,
        ``zipfile.ZipFile`` or any reader of file objects; close it (or use ``with``).
        """
        reader = open_reader(self._session(), _ref(folder, name), publisher_key=_shared_key(key))
        return unwrap_or_raise(reader)

    def list_files(self, folder: str) -> list[str]:
        """Names in a folder; raises ``InvalidNameError`` for a folder that is not a plain name."""
        parsed = parse_folder(folder)
        if isinstance(parsed, Failure):
            raise to_exception(parsed.failure())
        return list(unwrap_or_raise(self._session().api.list_folder(parsed.unwrap())))

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
