"""Configuration files and the environment: YAML in, validated values out.

``cdn.yaml`` (the CDN's endpoint, bucket and keys) is parsed here and validated by the pure
``domain.config.cdn_config_from_mapping``; ``render_cdn_yaml`` writes it back per role for the
server. The client's configuration is merged from flags > environment (``SPLITVAULT_*``) > a YAML
file (``$XDG_CONFIG_HOME/splitvault/config.yaml`` by default; the original client's ``url``,
``email``, ``password`` fields are accepted) and validated by
``domain.config.client_config_from_mapping``. A config file that holds a password and can be read
by group or others gets a warning. Malformed YAML is reported by line and column, never by quoting
the file (it may hold a secret).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Failure, Result, Success

from splitvault.domain.config import (
    CLIENT_FIELDS,
    SECRET_CLIENT_FIELDS,
    CdnConfig,
    ClientConfig,
    cdn_config_from_mapping,
    cdn_config_to_mapping,
    client_config_from_mapping,
    env_name,
)
from splitvault.domain.errors import ConfigInvalid
from splitvault.domain.ports import Random

log = logging.getLogger("splitvault.config_files")

MAX_CONFIG_BYTES = 64 * 1024  # a config file is a few lines; anything larger is the wrong file
CONFIG_ENV = "SPLITVAULT_CONFIG"
# The original client's config.yaml held ApiCredentials(url, email, password); its ``url`` is
# our ``api_url`` (``email`` and ``password`` are the same names), so its files keep working.
ORIGINAL_CLIENT_FIELDS = {"url": "api_url"}


def _load_yaml(text: str, what: str) -> Result[object, ConfigInvalid]:
    # Imported on use: a warm download with no config file never parses YAML (15 ms of import).
    import yaml  # noqa: PLC0415 - lazy: the warm path parses no YAML

    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        return Failure(ConfigInvalid(what, f"larger than {MAX_CONFIG_BYTES} bytes"))
    try:
        loaded: object = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        # problem/context are parser descriptions; str(error) would quote the offending line.
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = error.context or ""
        start = error.context_mark
        if context and start is not None and start is not mark:
            context += f" (started at line {start.line + 1}, column {start.column + 1})"
        reason = "; ".join(part for part in (context, error.problem) if part)
        return Failure(ConfigInvalid(what, f"malformed YAML{where}: {reason}"))
    except yaml.YAMLError as error:
        return Failure(ConfigInvalid(what, f"malformed YAML: {type(error).__name__}"))
    return Success(loaded)


def parse_cdn_yaml(text: str) -> Result[CdnConfig, ConfigInvalid]:
    """Parse and validate ``cdn.yaml``; fails naming the line (bad YAML) or the field."""
    return _load_yaml(text, "cdn.yaml").bind(cdn_config_from_mapping)


def render_cdn_yaml(config: CdnConfig, include_write: bool) -> str:
    """``cdn.yaml`` for one role; downloaders get ``include_write=False``: no write keys."""
    import yaml  # noqa: PLC0415 - lazy: the warm path parses no YAML

    return yaml.safe_dump(
        cdn_config_to_mapping(config, include_write=include_write),
        sort_keys=False,
        allow_unicode=True,
    )


# -- the client's configuration ---------------------------------------------------------------


def default_config_path(environ: Mapping[str, str]) -> Path:
    """``$SPLITVAULT_CONFIG``, else ``$XDG_CONFIG_HOME/splitvault/config.yaml`` (``~/.config``)."""
    explicit = environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_CONFIG_HOME") or str(Path(_home(environ)) / ".config")
    return Path(base) / "splitvault" / "config.yaml"


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/splitvault`` (``~/.cache/splitvault``)."""
    base = environ.get("XDG_CACHE_HOME") or str(Path(_home(environ)) / ".cache")
    return Path(base) / "splitvault"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$SPLITVAULT_STATE_DIR``, else ``$XDG_STATE_HOME/splitvault`` (``~/.local/state``).

    What this machine remembers between runs that is not a cache (the images an archive declared).
    """
    explicit = environ.get("SPLITVAULT_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_STATE_HOME") or str(Path(_home(environ)) / ".local" / "state")
    return Path(base) / "splitvault"


def _home(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or str(Path.home())


def _expand_home(value: object, environ: Mapping[str, str]) -> object:
    if isinstance(value, str) and (value == "~" or value.startswith("~/")):
        return _home(environ) + value[1:]
    return value


_PATH_FIELDS = frozenset(
    {
        "cache_dir",
        "cdn_dir",
        "ca_bundle",
        "publisher_key_file",
        "publisher_signing_key_file",
        "device_secret_file",
    }
)


def _read_config_file(path: Path) -> IOResult[dict[str, object], ConfigInvalid]:
    what = f"config file {path}"
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return IOSuccess({})
    except OSError as error:
        return IOFailure(ConfigInvalid(what, f"cannot be read: {error.strerror}"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return IOFailure(ConfigInvalid(what, "is not UTF-8 text"))
    return IOResult.from_result(
        _load_yaml(text, what).bind(lambda data: _settings(data, what, path, mode))
    )


def _settings(
    data: object, what: str, path: Path, mode: int
) -> Result[dict[str, object], ConfigInvalid]:
    if data is None:
        return Success({})
    if not isinstance(data, Mapping):
        return Failure(ConfigInvalid(what, "expected a mapping of settings at the top"))
    settings = {str(key): value for key, value in data.items()}
    for original, ours in ORIGINAL_CLIENT_FIELDS.items():
        if original in settings:
            if ours in settings:
                return Failure(
                    ConfigInvalid(f"{what}: {original}", f"give {ours} or {original}, not both")
                )
            settings[ours] = settings.pop(original)
    secrets_held = sorted(key for key in SECRET_CLIENT_FIELDS if settings.get(key))
    if secrets_held and stat.S_IMODE(mode) & 0o077:
        log.warning(
            "%s holds a secret (%s) and is readable by group or others (mode %03o); "
            "run: chmod 600 %s",
            path,
            ", ".join(secrets_held),
            stat.S_IMODE(mode),
            path,
        )
    return Success(settings)


def load_client_config(
    flags: Mapping[str, object], environ: Mapping[str, str], config_path: Path
) -> IOResult[ClientConfig, ConfigInvalid]:
    """Merge flags > environment (``SPLITVAULT_<FIELD>``) > YAML file > defaults, then validate.

    ``flags`` maps field names to values; ``None`` means the flag was not given. A missing config
    file is fine; an unreadable or malformed one is a ``ConfigInvalid`` naming the file and line.
    A bad value is a ``ConfigInvalid`` naming the field and where it came from.
    """

    def merge(from_file: dict[str, object]) -> IOResult[ClientConfig, ConfigInvalid]:
        merged: dict[str, object] = {"cache_dir": str(default_cache_dir(environ))}
        sources: dict[str, str] = {"cache_dir": "the default"}
        for key, value in from_file.items():
            merged[key] = value
            sources[key] = str(config_path)
        for key in CLIENT_FIELDS:
            value = environ.get(env_name(key))
            if value is not None and value != "":
                merged[key] = value
                sources[key] = env_name(key)
        for key, value in flags.items():
            if value is not None:
                merged[key] = value
                sources[key] = f"--{key.replace('_', '-')}"
        expanded = {
            key: _expand_home(value, environ) if key in _PATH_FIELDS else value
            for key, value in merged.items()
        }
        return IOResult.from_result(client_config_from_mapping(expanded, sources=sources))

    return _read_config_file(config_path).bind(merge)


# --- the device secret ---------------------------------------------------------------------------

DEVICE_SECRET_BYTES = 32


def load_device_secret(path: Path | None, random: Random) -> IOResult[bytes | None, ConfigInvalid]:
    """The device secret in ``path`` (``None`` when none is configured), created when absent.

    A new secret is 32 random bytes written 0600 with ``O_EXCL`` (two processes starting at once
    cannot each write their own: the loser reads the winner's) and fsynced before it is used,
    since a key derived from a secret that a crash then loses would lock this machine out.
    An existing file must be exactly 32 bytes and not readable by group or others.
    """
    if path is None:
        return IOSuccess(None)
    field = "device_secret_file"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _read_device_secret(path)
    except OSError as error:
        return IOFailure(ConfigInvalid(field, f"cannot create {path}: {error.strerror}"))
    secret = random.token_bytes(DEVICE_SECRET_BYTES)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)
    except OSError as error:
        path.unlink(missing_ok=True)  # never leave a short secret behind
        return IOFailure(ConfigInvalid(field, f"cannot write {path}: {error.strerror}"))
    log.info("created a device secret in %s", path)
    return IOSuccess(secret)


def _read_device_secret(path: Path) -> IOResult[bytes | None, ConfigInvalid]:
    field = "device_secret_file"
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(DEVICE_SECRET_BYTES + 1)
    except OSError as error:
        return IOFailure(ConfigInvalid(field, f"cannot read {path}: {error.strerror}"))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return IOFailure(
            ConfigInvalid(field, f"{path} is readable by others; chmod 600 it (it is a key)")
        )
    if len(data) != DEVICE_SECRET_BYTES:
        return IOFailure(
            ConfigInvalid(
                field,
                f"{path} holds {len(data)} bytes, not {DEVICE_SECRET_BYTES}; restore it from a "
                "backup, or delete it (this machine then enrols as a new device)",
            )
        )
    return IOSuccess(data)
