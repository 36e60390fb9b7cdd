"""Configuration values and their validation: the CDN's coordinates and keys, the client's settings.

Pure: adapters read files and the environment and hand plain mappings to the functions here, which
check every field, convert text from the environment into numbers and paths, and name the field
that is wrong. Secrets (S3 secret keys, the password) are fields with ``repr=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import attrs
from returns.result import Failure, Result, Success

from splitvault.domain.cdn_layout import BucketPerFolder, ObjectLayout, SharedBucket
from splitvault.domain.errors import ConfigInvalid
from splitvault.domain.sizes import parse_size

DEFAULT_REGION = "us-east-1"
ENV_PREFIX = "SPLITVAULT_"


@attrs.frozen
class ApiCredentials:
    """An account of the resource API: where it is, the e-mail and the password.

    The one credentials value of the client: the facade, the configuration and the HTTP adapter
    all carry this. The password never appears in a repr.
    """

    url: str
    email: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class S3Keys:
    """An S3 access key pair; the secret never appears in a repr."""

    access_key_id: str
    secret_access_key: str = attrs.field(repr=False)


@attrs.frozen
class CdnConfig:
    """Where the big parts live and the keys to reach them (the content of ``cdn.yaml``).

    Args:
        endpoint: the S3-compatible endpoint URL.
        bucket: the bucket holding the big parts; ``None`` is the original client's layout, a
            bucket per folder with ``name.big`` at its root.
        region: the signing region.
        read_keys: keys allowed to read objects; a download-only client needs nothing else.
        write_keys: keys allowed to write objects; absent from what downloaders receive.
    """

    endpoint: str
    bucket: str | None
    region: str = DEFAULT_REGION
    read_keys: S3Keys | None = None
    write_keys: S3Keys | None = None

    def without_write_keys(self) -> CdnConfig:
        """The same configuration as a downloader should receive it."""
        return attrs.evolve(self, write_keys=None)

    def object_layout(self) -> ObjectLayout:
        """Where a ref's big part lives under this configuration."""
        return SharedBucket(self.bucket) if self.bucket is not None else BucketPerFolder()


LAYOUT_BUCKET_PER_FOLDER = "bucket-per-folder"
_CDN_FIELDS = ("endpoint", "bucket", "region", "layout", "read", "write")
# The original client's cdn.yaml: one host, a downloader and an uploader key pair, no bucket
# (its layout is a bucket per folder).
ORIGINAL_CDN_FIELDS = (
    "host",
    "downloader_access_key",
    "downloader_access_secret",
    "uploader_access_key",
    "uploader_access_secret",
)
_KEY_FIELDS = ("access_key_id", "secret_access_key")


def _type_name(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _text(value: object, field: str) -> Result[str, ConfigInvalid]:
    if not isinstance(value, str):
        # Never echo the value: it may be a secret that YAML read as a number.
        return Failure(
            ConfigInvalid(field, f"expected text, got {_type_name(value)} (quote it in YAML)")
        )
    if not value.strip():
        return Failure(ConfigInvalid(field, "must not be empty"))
    if value != value.strip():
        return Failure(ConfigInvalid(field, "must not start or end with whitespace"))
    return Success(value)


def _url(value: object, field: str) -> Result[str, ConfigInvalid]:
    def check(text: str) -> Result[str, ConfigInvalid]:
        if not text.startswith(("http://", "https://")):
            return Failure(ConfigInvalid(field, "must be an http:// or https:// URL"))
        return Success(text)

    return _text(value, field).bind(check)


def _unknown(data: Mapping[object, object], known: tuple[str, ...], prefix: str) -> str | None:
    for key in data:
        if key not in known:
            return f"{prefix}{key}"
    return None


def _keys(data: object, field: str) -> Result[S3Keys, ConfigInvalid]:
    if not isinstance(data, Mapping):
        return Failure(
            ConfigInvalid(
                field, f"expected a mapping with {', '.join(_KEY_FIELDS)}, got {_type_name(data)}"
            )
        )
    unknown = _unknown(data, _KEY_FIELDS, f"{field}.")
    if unknown is not None:
        return Failure(ConfigInvalid(unknown, f"unknown field; expected {', '.join(_KEY_FIELDS)}"))
    return _text(data.get("access_key_id"), f"{field}.access_key_id").bind(
        lambda key_id: _text(data.get("secret_access_key"), f"{field}.secret_access_key").map(
            lambda secret: S3Keys(key_id, secret)
        )
    )


def _bucket(value: object) -> Result[str, ConfigInvalid]:
    def check(text: str) -> Result[str, ConfigInvalid]:
        # Loose on purpose: S3-compatible stores accept more than AWS does, but a separator or a
        # space in a bucket name is always a mistake.
        if any(char in text for char in "/\\ ?#") or len(text) > 255:
            return Failure(ConfigInvalid("bucket", "not a bucket name"))
        return Success(text)

    return _text(value, "bucket").bind(check)


def host_url(value: object, field: str = "host") -> Result[str, ConfigInvalid]:
    """The original's ``host``: a URL, or a bare host name meaning ``https://`` on it."""

    def with_scheme(text: str) -> Result[str, ConfigInvalid]:
        if "://" in text:
            return _url(text, field)
        if any(char in text for char in "/\\ ?#@"):
            return Failure(ConfigInvalid(field, "expected a host name or an http(s):// URL"))
        return Success(f"https://{text}")

    return _text(value, field).bind(with_scheme)


def original_cdn_config(
    host: object,
    downloader_access_key: object,
    downloader_access_secret: object,
    uploader_access_key: object | None = None,
    uploader_access_secret: object | None = None,
) -> Result[CdnConfig, ConfigInvalid]:
    """The original client's CDN credentials as a ``CdnConfig`` (a bucket per folder).

    The downloader pair becomes the read keys, the uploader pair (both or neither) the write keys.
    """
    uploader_given = uploader_access_key is not None or uploader_access_secret is not None

    def write_keys() -> Result[S3Keys | None, ConfigInvalid]:
        if not uploader_given:
            return Success(None)
        return _text(uploader_access_key, "uploader_access_key").bind(
            lambda key_id: _text(uploader_access_secret, "uploader_access_secret").map(
                lambda secret: S3Keys(key_id, secret)
            )
        )

    return host_url(host).bind(
        lambda endpoint: _text(downloader_access_key, "downloader_access_key").bind(
            lambda key_id: _text(downloader_access_secret, "downloader_access_secret").bind(
                lambda secret: write_keys().map(
                    lambda write: CdnConfig(
                        endpoint=endpoint,
                        bucket=None,
                        read_keys=S3Keys(key_id, secret),
                        write_keys=write,
                    )
                )
            )
        )
    )


def _original_cdn_mapping(data: Mapping[object, object]) -> Result[CdnConfig, ConfigInvalid]:
    """The original's fields; with a ``bucket`` (and ``region``) beside them, one bucket holds
    every folder (our layout), without one a bucket per folder (the original's)."""
    known = (*ORIGINAL_CDN_FIELDS, "bucket", "region")
    unknown = _unknown(data, known, "")
    if unknown is not None:
        return Failure(
            ConfigInvalid(
                unknown, "unknown field in an original-style cdn.yaml; expected " + ", ".join(known)
            )
        )
    built = original_cdn_config(
        data.get("host"),
        data.get("downloader_access_key"),
        data.get("downloader_access_secret"),
        data.get("uploader_access_key"),
        data.get("uploader_access_secret"),
    )
    bucket = data.get("bucket")
    region = data.get("region", DEFAULT_REGION)
    return built.bind(
        lambda config: (Success(None) if bucket is None else _bucket(bucket)).bind(
            lambda named: _text(region, "region").map(
                lambda text: attrs.evolve(config, bucket=named, region=text)
            )
        )
    )


def _bucket_of(data: Mapping[object, object]) -> Result[str | None, ConfigInvalid]:
    layout = data.get("layout")
    if layout is None:
        return _bucket(data.get("bucket")).map(lambda bucket: bucket)
    if layout != LAYOUT_BUCKET_PER_FOLDER:
        return Failure(ConfigInvalid("layout", f"expected {LAYOUT_BUCKET_PER_FOLDER} or nothing"))
    if data.get("bucket") is not None:
        return Failure(ConfigInvalid("bucket", f"must be absent with layout {layout}"))
    return Success(None)


def cdn_config_from_mapping(data: object) -> Result[CdnConfig, ConfigInvalid]:
    """Validate the parsed content of ``cdn.yaml``, in splitvault's shape or the original's.

    splitvault's shape is ``{endpoint, bucket, region?, read: {access_key_id, secret_access_key},
    write?: {...}}`` (``region`` defaults to ``us-east-1``; ``layout: bucket-per-folder`` instead of
    ``bucket`` selects the original layout). The original client's shape is ``{host,
    downloader_access_key, downloader_access_secret, uploader_access_key?,
    uploader_access_secret?}`` and means a bucket per folder. Fails with ``ConfigInvalid`` naming
    the first wrong field (``read.secret_access_key``, ``endpoint``, ...); values are never echoed.
    """
    if not isinstance(data, Mapping):
        return Failure(
            ConfigInvalid("cdn.yaml", f"expected a mapping at the top, got {_type_name(data)}")
        )
    if any(field in data for field in ORIGINAL_CDN_FIELDS):
        return _original_cdn_mapping(data)
    unknown = _unknown(data, _CDN_FIELDS, "")
    if unknown is not None:
        return Failure(ConfigInvalid(unknown, f"unknown field; expected {', '.join(_CDN_FIELDS)}"))
    region_raw = data.get("region", DEFAULT_REGION)
    write_raw = data.get("write")
    return (
        _url(data.get("endpoint"), "endpoint")
        .bind(
            lambda endpoint: _bucket_of(data).bind(
                lambda bucket: _text(region_raw, "region").map(
                    lambda region: (endpoint, bucket, region)
                )
            )
        )
        .bind(
            lambda where: _keys(data.get("read"), "read").bind(
                lambda read: (
                    Success(None) if write_raw is None else _keys(write_raw, "write")
                ).map(
                    lambda write: CdnConfig(
                        endpoint=where[0],
                        bucket=where[1],
                        region=where[2],
                        read_keys=read,
                        write_keys=write,
                    )
                )
            )
        )
    )


def cdn_config_to_mapping(config: CdnConfig, *, include_write: bool) -> dict[str, object]:
    """The ``cdn.yaml`` mapping for a role: write keys only when ``include_write``."""
    data: dict[str, object] = {"endpoint": config.endpoint}
    if config.bucket is None:
        data["layout"] = LAYOUT_BUCKET_PER_FOLDER
    else:
        data["bucket"] = config.bucket
    data["region"] = config.region
    if config.read_keys is not None:
        data["read"] = attrs.asdict(config.read_keys)
    if include_write and config.write_keys is not None:
        data["write"] = attrs.asdict(config.write_keys)
    return data


# -- the client's configuration ---------------------------------------------------------------

CdnMode = Literal["api", "directory"]
CDN_MODES: tuple[CdnMode, ...] = ("api", "directory")


@attrs.frozen
class ClientConfig:
    """Everything the client needs, after flags, environment and file have been merged.

    Args:
        cache_dir: root of the local big-part cache.
        api_url: the resource API (``None`` for offline commands such as ``seal``/``open``).
        email, password: the API login; the password never appears in a repr.
        cdn_mode: ``api`` (``cdn.yaml`` fetched through the API) or ``directory`` (``cdn_dir``).
        cdn_dir: the directory acting as the CDN when ``cdn_mode`` is ``directory``.
        ca_bundle: a CA bundle for TLS to the API, instead of the system store.
        connect_timeout, read_timeout: seconds, for the API and the CDN.
        workers: parallel transfers and crypto threads.
        publisher_key_file: file holding the publisher key that wraps data keys, if used.
        publisher_signing_key_file: file holding this publisher's Ed25519 seed (32 bytes, raw or
            64 hex digits); every upload is signed with it.
        publisher_keys: pinned publisher public keys (64 hex digits each); when any is pinned,
            every download must be signed by one of them, whatever the server vouches for.
        cache_max_bytes: the bound on the bytes the cache holds (``None``: no bound); least
            recently used entries are evicted past it, never one in use. A whole number of
            bytes or a size such as ``20GiB``.
        device_secret_file: a file of 32 random bytes (created 0600 when absent) mixed into the
            device key, so that the password and a copied fingerprint value are not enough to
            open what the API seals to this machine (``None``: the key is derived from those two
            alone, as the original client's "per user and per hardware").
        allow_insecure_http: allow ``http://`` to an API that is not on loopback (the password
            and tokens then cross the network in the clear).
    """

    cache_dir: Path
    api_url: str | None = None
    email: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    cdn_mode: CdnMode = "api"
    cdn_dir: Path | None = None
    ca_bundle: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    workers: int = 4
    publisher_key_file: Path | None = None
    cache_max_bytes: int | None = None
    publisher_signing_key_file: Path | None = None
    publisher_keys: tuple[bytes, ...] = ()
    device_secret_file: Path | None = None
    allow_insecure_http: bool = False


CLIENT_FIELDS: tuple[str, ...] = tuple(field.name for field in attrs.fields(ClientConfig))
SECRET_CLIENT_FIELDS = frozenset({"password"})
MAX_WORKERS = 256


def env_name(field: str) -> str:
    """The environment variable that sets a client field: ``SPLITVAULT_<FIELD>``."""
    return ENV_PREFIX + field.upper()


def _path(value: object, field: str) -> Result[Path, ConfigInvalid]:
    if isinstance(value, Path):
        return Success(value)
    return _text(value, field).map(Path)


def _positive_float(value: object, field: str) -> Result[float, ConfigInvalid]:
    number: float
    if isinstance(value, bool):
        return Failure(ConfigInvalid(field, "expected a number of seconds, got a boolean"))
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return Failure(ConfigInvalid(field, f"expected a number of seconds, got {value!r}"))
    else:
        return Failure(ConfigInvalid(field, f"expected a number, got {_type_name(value)}"))
    if not math.isfinite(number) or number <= 0:
        return Failure(ConfigInvalid(field, "must be a positive, finite number of seconds"))
    return Success(number)


def _workers(value: object, field: str) -> Result[int, ConfigInvalid]:
    number: int
    if isinstance(value, bool):
        return Failure(ConfigInvalid(field, "expected a whole number, got a boolean"))
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        shown = repr(value) if isinstance(value, str) else _type_name(value)
        return Failure(ConfigInvalid(field, f"expected a whole number, got {shown}"))
    if not 1 <= number <= MAX_WORKERS:
        return Failure(ConfigInvalid(field, f"must be between 1 and {MAX_WORKERS}"))
    return Success(number)


def _cdn_mode(value: object, field: str) -> Result[CdnMode, ConfigInvalid]:
    for mode in CDN_MODES:
        if value == mode:
            return Success(mode)
    return Failure(ConfigInvalid(field, f"expected one of {', '.join(CDN_MODES)}"))


def _secret_text(value: object, field: str) -> Result[str, ConfigInvalid]:
    # Unlike other text, a password may have surrounding spaces; it must only be text.
    if not isinstance(value, str) or not value:
        return Failure(ConfigInvalid(field, "expected non-empty text (quote it in YAML)"))
    return Success(value)


def _byte_size(value: object, field: str) -> Result[int, ConfigInvalid]:
    """A byte count: a whole number, or a size as ``domain.sizes`` reads it (``20GiB``)."""
    if isinstance(value, bool):
        return Failure(ConfigInvalid(field, "expected a size in bytes, got a boolean"))
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        parsed = parse_size(value, field)
        if isinstance(parsed, Failure):
            return parsed
        number = parsed.unwrap()
    else:
        return Failure(ConfigInvalid(field, f"expected a size in bytes, got {_type_name(value)}"))
    if number < 1:
        return Failure(
            ConfigInvalid(field, "must be at least 1 byte (leave it unset for no bound)")
        )
    return Success(number)


def _public_keys(value: object, field: str) -> Result[tuple[bytes, ...], ConfigInvalid]:
    """A list of Ed25519 public keys in hex (YAML list, or comma-separated text)."""
    items: object = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return Failure(
            ConfigInvalid(field, f"expected a list of hex keys, got {_type_name(value)}")
        )
    keys: list[bytes] = []
    for item in items:
        text = item.strip() if isinstance(item, str) else ""
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:  # an Ed25519 public key
            return Failure(ConfigInvalid(field, "each key must be 64 hex digits (32 bytes)"))
        keys.append(key)
    return Success(tuple(keys))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(value: object, field: str) -> Result[bool, ConfigInvalid]:
    if isinstance(value, bool):
        return Success(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return Success(value.strip().lower() in _TRUE)
    return Failure(ConfigInvalid(field, "expected true or false"))


_Parser = Callable[[object, str], Result[object, ConfigInvalid]]
_CLIENT_PARSERS: dict[str, _Parser] = {
    "cache_dir": _path,
    "api_url": _url,
    "email": _text,
    "password": _secret_text,
    "cdn_mode": _cdn_mode,
    "cdn_dir": _path,
    "ca_bundle": _path,
    "connect_timeout": _positive_float,
    "read_timeout": _positive_float,
    "workers": _workers,
    "publisher_key_file": _path,
    "cache_max_bytes": _byte_size,
    "publisher_signing_key_file": _path,
    "publisher_keys": _public_keys,
    "device_secret_file": _path,
    "allow_insecure_http": _flag,
}


def client_config_from_mapping(
    data: Mapping[str, object], *, sources: Mapping[str, str] | None = None
) -> Result[ClientConfig, ConfigInvalid]:
    """Validate merged client settings (field name → raw value) into a ``ClientConfig``.

    Values may be typed (from YAML or flags) or text (from the environment). ``None`` means unset.
    ``sources`` says where each field came from (``"SPLITVAULT_WORKERS"``, a file path) so the
    error can point there. Fails with ``ConfigInvalid`` naming the first wrong field.
    """
    where = sources or {}

    def located(problem: ConfigInvalid) -> ConfigInvalid:
        source = where.get(problem.field)
        if source is None:
            return problem
        return ConfigInvalid(problem.field, f"{problem.detail} (from {source})")

    values: dict[str, object] = {}
    for key, raw in data.items():
        parser = _CLIENT_PARSERS.get(key)
        if parser is None:
            return Failure(
                located(ConfigInvalid(key, f"unknown setting; known: {', '.join(CLIENT_FIELDS)}"))
            )
        if raw is None:
            continue
        parsed = parser(raw, key)
        if isinstance(parsed, Failure):
            return Failure(located(parsed.failure()))
        values[key] = parsed.unwrap()
    if "cache_dir" not in values:
        return Failure(ConfigInvalid("cache_dir", "required"))
    if values.get("cdn_mode") == "directory" and "cdn_dir" not in values:
        return Failure(ConfigInvalid("cdn_dir", "required when cdn_mode is 'directory'"))
    return Success(ClientConfig(**values))  # type: ignore[arg-type]
