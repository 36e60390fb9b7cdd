"""Configuration: cdn.yaml parsing and rendering, client settings precedence, secrets kept quiet."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.result import Result
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.config_files import (
    default_cache_dir,
    default_config_path,
    load_client_config,
    parse_cdn_yaml,
    render_cdn_yaml,
)
from splitvault.domain.cdn_layout import BucketPerFolder
from splitvault.domain.config import (
    ApiCredentials,
    CdnConfig,
    ClientConfig,
    S3Keys,
    cdn_config_from_mapping,
    client_config_from_mapping,
    original_cdn_config,
)
from splitvault.domain.errors import ConfigInvalid

READ_SECRET = "rEaD/sEcReT+value0001"
WRITE_SECRET = "wRiTe/sEcReT+value0002"
PASSWORD = "correct horse battery staple"

CDN_YAML = f"""\
endpoint: https://s3.example.com
bucket: models
region: eu-central-1
read:
  access_key_id: AKIAREAD
  secret_access_key: {READ_SECRET}
write:
  access_key_id: AKIAWRITE
  secret_access_key: {WRITE_SECRET}
"""


def ok(result: Result[CdnConfig, ConfigInvalid]) -> CdnConfig:
    """The config inside a successful result."""
    assert is_successful(result), result
    return result.unwrap()


def bad(result: Result[object, ConfigInvalid] | IOResult[object, ConfigInvalid]) -> ConfigInvalid:
    """The ConfigInvalid inside a failed result."""
    assert not is_successful(result), result
    if isinstance(result, IOResult):
        problem: object = unsafe_perform_io(result.failure())
    else:
        problem = result.failure()
    assert isinstance(problem, ConfigInvalid)
    return problem


# -- cdn.yaml -----------------------------------------------------------------------------------


def test_cdn_yaml_parses_into_typed_config() -> None:
    """A complete cdn.yaml gives endpoint, bucket, region and both key pairs."""
    config = ok(parse_cdn_yaml(CDN_YAML))
    assert config == CdnConfig(
        endpoint="https://s3.example.com",
        bucket="models",
        region="eu-central-1",
        read_keys=S3Keys("AKIAREAD", READ_SECRET),
        write_keys=S3Keys("AKIAWRITE", WRITE_SECRET),
    )


def test_region_defaults_and_write_is_optional() -> None:
    """Without region and write keys: us-east-1 and a read-only config."""
    text = (
        "endpoint: http://127.0.0.1:9000\nbucket: b1\n"
        "read: {access_key_id: K, secret_access_key: S}\n"
    )
    config = ok(parse_cdn_yaml(text))
    assert config.region == "us-east-1"
    assert config.write_keys is None


def test_render_for_a_downloader_has_no_write_keys() -> None:
    """The downloader's cdn.yaml never holds the write keys; the uploader's round-trips whole."""
    config = ok(parse_cdn_yaml(CDN_YAML))
    downloader = render_cdn_yaml(config, include_write=False)
    assert WRITE_SECRET not in downloader
    assert "AKIAWRITE" not in downloader
    assert ok(parse_cdn_yaml(downloader)) == config.without_write_keys()
    assert ok(parse_cdn_yaml(render_cdn_yaml(config, include_write=True))) == config


def test_malformed_cdn_yaml_names_the_line_without_quoting_it() -> None:
    """Broken YAML is reported with line and column, and the secret on that line is not echoed."""
    text = CDN_YAML.replace(
        f"secret_access_key: {READ_SECRET}", f"secret_access_key: [{READ_SECRET}"
    )
    problem = bad(parse_cdn_yaml(text))
    assert problem.field == "cdn.yaml"
    assert "line " in problem.detail
    assert READ_SECRET not in problem.describe()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("endpoint", "ftp://x"), "endpoint"),
        (("endpoint", None), "endpoint"),
        (("bucket", "has/slash"), "bucket"),
        (("region", 42), "region"),
        (("read", "not a mapping"), "read"),
        (("read", {"access_key_id": "K"}), "read.secret_access_key"),
        (("read", {"access_key_id": "K", "secret_access_key": 12345}), "read.secret_access_key"),
        (("read", {"access_key_id": "K", "secret_access_key": "S", "x": 1}), "read.x"),
        (("write", {"access_key_id": "", "secret_access_key": "S"}), "write.access_key_id"),
        (("wirte", {}), "wirte"),
    ],
)
def test_bad_fields_are_named(change: tuple[str, object], field: str) -> None:
    """Each wrong or unknown field is reported by its dotted name."""
    data: dict[str, object] = {
        "endpoint": "https://s3.example.com",
        "bucket": "models",
        "read": {"access_key_id": "K", "secret_access_key": "S"},
    }
    key, new = change
    if new is None:
        del data[key]
    else:
        data[key] = new
    assert bad(cdn_config_from_mapping(data)).field == field


def test_numeric_secret_is_refused_without_echoing_it() -> None:
    """A secret that YAML read as a number is refused with a hint, its digits never shown."""
    text = CDN_YAML.replace(READ_SECRET, "98765432109876")
    problem = bad(parse_cdn_yaml(text))
    assert problem.field == "read.secret_access_key"
    assert "quote" in problem.detail
    assert "98765432109876" not in problem.describe()


def test_top_level_must_be_a_mapping() -> None:
    """A YAML list or scalar is not a cdn.yaml."""
    assert bad(parse_cdn_yaml("- a\n- b\n")).field == "cdn.yaml"
    assert bad(parse_cdn_yaml("")).field == "cdn.yaml"


@given(st.text(max_size=40).map(lambda tail: "S3CR3T" + tail))
def test_secrets_never_appear_in_reprs(secret: str) -> None:
    """S3 secret keys and the password are not in any repr (nor in str)."""
    keys = S3Keys("AKIAID", secret)
    cdn = CdnConfig("https://e", "b", read_keys=keys, write_keys=keys)
    client = ClientConfig(cache_dir=Path("/c"), email="a@b.c", password=secret)
    for value in (keys, cdn, client):
        assert "S3CR3T" not in repr(value)
        assert "S3CR3T" not in str(value)


# -- the client's configuration -----------------------------------------------------------------


def write_config(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write a config file with the given permissions."""
    path.write_text(text)
    path.chmod(mode)
    return path


def load(flags: dict[str, object], environ: dict[str, str], path: Path) -> ClientConfig:
    """Load a client config that must be valid."""
    result = load_client_config(flags, environ, path)
    assert is_successful(result), result
    return unsafe_perform_io(result.unwrap())


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    """Each field comes from the highest layer that sets it: flags, then env, then the file."""
    path = write_config(
        tmp_path / "config.yaml",
        "api_url: https://file.example\nemail: file@example.com\nworkers: 2\nread_timeout: 5\n",
    )
    environ = {
        "HOME": str(tmp_path),
        "SPLITVAULT_EMAIL": "env@example.com",
        "SPLITVAULT_WORKERS": "8",
    }
    config = load({"workers": 16, "email": None}, environ, path)
    assert config.api_url == "https://file.example"  # file only
    assert config.email == "env@example.com"  # env over file; the flag was not given
    assert config.workers == 16  # flag over env
    assert config.read_timeout == 5.0
    assert config.cache_dir == tmp_path / ".cache" / "splitvault"  # the default


def test_defaults_follow_xdg_and_home_is_expanded(tmp_path: Path) -> None:
    """XDG directories are honoured and ~ in a path setting means $HOME."""
    environ = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/xdg/config", "XDG_CACHE_HOME": "/xdg/cache"}
    assert default_config_path(environ) == Path("/xdg/config/splitvault/config.yaml")
    assert default_cache_dir(environ) == Path("/xdg/cache/splitvault")
    assert default_config_path({"SPLITVAULT_CONFIG": "/etc/sv.yaml"}) == Path("/etc/sv.yaml")
    config = load({"cache_dir": "~/models"}, environ, tmp_path / "absent.yaml")
    assert config.cache_dir == Path("/home/u/models")


def test_bad_environment_value_names_field_and_variable(tmp_path: Path) -> None:
    """A malformed value says which field and where it came from."""
    problem = bad(load_client_config({}, {"SPLITVAULT_WORKERS": "many"}, tmp_path / "none"))
    assert problem.field == "workers"
    assert "SPLITVAULT_WORKERS" in problem.detail


def test_malformed_config_file_names_file_and_line(tmp_path: Path) -> None:
    """Broken YAML in the config file is reported with its path and line, never its content."""
    path = write_config(
        tmp_path / "config.yaml", f"email: a@b.c\npassword: {PASSWORD}\nworkers: [4\n"
    )
    problem = bad(load_client_config({}, {}, path))
    assert str(path) in problem.field
    assert "line 3, column 10" in problem.detail  # where the unclosed "[" is
    assert PASSWORD not in problem.describe()


def test_unknown_setting_in_file_is_named(tmp_path: Path) -> None:
    """A typo in the config file is an error naming the key, not silently ignored."""
    path = write_config(tmp_path / "config.yaml", "wokers: 4\n")
    problem = bad(load_client_config({}, {}, path))
    assert problem.field == "wokers"
    assert str(path) in problem.detail


def test_directory_mode_needs_a_directory(tmp_path: Path) -> None:
    """cdn_mode directory without cdn_dir is refused; with it the path is kept."""
    missing = tmp_path / "none.yaml"
    assert bad(load_client_config({"cdn_mode": "directory"}, {}, missing)).field == "cdn_dir"
    config = load({"cdn_mode": "directory", "cdn_dir": str(tmp_path)}, {}, missing)
    assert (config.cdn_mode, config.cdn_dir) == ("directory", tmp_path)
    assert bad(load_client_config({"cdn_mode": "ftp"}, {}, missing)).field == "cdn_mode"


def test_password_in_a_group_readable_file_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config file holding a password readable by others gets a warning; 0600 does not."""
    text = f"email: a@b.c\npassword: {PASSWORD}\n"
    loose = write_config(tmp_path / "loose.yaml", text, mode=0o644)
    tight = write_config(tmp_path / "tight.yaml", text, mode=0o600)
    harmless = write_config(tmp_path / "harmless.yaml", "workers: 3\n", mode=0o644)
    with caplog.at_level(logging.WARNING, logger="splitvault.config_files"):
        assert load({}, {}, loose).password == PASSWORD
        warned = [record.getMessage() for record in caplog.records]
        caplog.clear()
        load({}, {}, tight)
        load({}, {}, harmless)
    assert len(warned) == 1
    assert "chmod 600" in warned[0]
    assert PASSWORD not in warned[0]
    assert caplog.records == []


def test_timeouts_and_workers_are_checked() -> None:
    """Zero, negative, non-numeric and boolean values are refused with the field named."""
    base: dict[str, object] = {"cache_dir": "/c"}
    for field, raw in [
        ("read_timeout", "0"),
        ("connect_timeout", -1),
        ("connect_timeout", True),
        ("workers", 0),
        ("workers", "2.5"),
        ("api_url", "example.com"),
    ]:
        assert bad(client_config_from_mapping({**base, field: raw})).field == field
    good = client_config_from_mapping({**base, "read_timeout": "2.5", "workers": "3"}).unwrap()
    assert (good.read_timeout, good.workers) == (2.5, 3)


# -- the original client's fields ----------------------------------------------------------------

ORIGINAL_CDN_YAML = f"""\
host: https://cdn.example.com
downloader_access_key: AKIADOWN
downloader_access_secret: {READ_SECRET}
uploader_access_key: AKIAUP
uploader_access_secret: {WRITE_SECRET}
"""


def test_the_original_cdn_yaml_means_a_bucket_per_folder() -> None:
    """The original's five fields: downloader pair read, uploader pair write, no bucket."""
    config = ok(parse_cdn_yaml(ORIGINAL_CDN_YAML))
    assert config == CdnConfig(
        endpoint="https://cdn.example.com",
        bucket=None,
        read_keys=S3Keys("AKIADOWN", READ_SECRET),
        write_keys=S3Keys("AKIAUP", WRITE_SECRET),
    )
    assert config.object_layout() == BucketPerFolder()
    assert READ_SECRET not in repr(config) and WRITE_SECRET not in repr(config)


def test_the_original_layout_survives_rendering_per_role() -> None:
    """Rendered for a downloader it keeps the layout and drops the uploader pair."""
    config = ok(parse_cdn_yaml(ORIGINAL_CDN_YAML))
    downloader = render_cdn_yaml(config, include_write=False)
    assert "layout: bucket-per-folder" in downloader
    assert WRITE_SECRET not in downloader and "AKIAUP" not in downloader
    assert ok(parse_cdn_yaml(downloader)) == config.without_write_keys()
    assert ok(parse_cdn_yaml(render_cdn_yaml(config, include_write=True))) == config


@pytest.mark.parametrize(
    ("host", "endpoint"),
    [("cdn.example.com", "https://cdn.example.com"), ("http://127.0.0.1:9000", None)],
)
def test_a_bare_host_means_https(host: str, endpoint: str | None) -> None:
    """``host`` may be a host name (https assumed) or a URL kept as it is."""
    config = ok(original_cdn_config(host, "AKIA", "secret"))
    assert config.endpoint == (endpoint or host)
    assert config.write_keys is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (ORIGINAL_CDN_YAML.replace("host: https://cdn.example.com\n", ""), "host"),
        (ORIGINAL_CDN_YAML.replace("uploader_access_key: AKIAUP\n", ""), "uploader_access_key"),
        (ORIGINAL_CDN_YAML + "bucket: models\n", "bucket"),
        (ORIGINAL_CDN_YAML.replace("https://cdn.example.com", "cdn example"), "host"),
        (CDN_YAML.replace("bucket: models\n", "layout: bucket-per-folder\nbucket: m\n"), "bucket"),
        (CDN_YAML.replace("bucket: models\n", "layout: sideways\n"), "layout"),
    ],
)
def test_a_wrong_original_field_is_named(text: str, field: str) -> None:
    """A missing, half-given, unknown or malformed field is refused by name, never echoed."""
    problem = bad(parse_cdn_yaml(text))
    assert problem.field == field
    assert READ_SECRET not in problem.describe()


def test_the_original_config_yaml_url_is_our_api_url(tmp_path: Path) -> None:
    """``url`` in the file is ``api_url``; giving both is refused naming them."""
    path = tmp_path / "config.yaml"
    path.write_text("url: https://api.example.com\nemail: a@example.com\n")
    path.chmod(0o600)
    loaded = unsafe_perform_io(load_client_config({}, {"HOME": str(tmp_path)}, path).unwrap())
    assert loaded.api_url == "https://api.example.com" and loaded.email == "a@example.com"
    path.write_text("url: https://a.example.com\napi_url: https://b.example.com\n")
    problem = bad(load_client_config({}, {"HOME": str(tmp_path)}, path))
    assert "url" in problem.field and "api_url or url" in problem.detail


def test_api_credentials_hide_the_password() -> None:
    """The one credentials value keeps url and e-mail visible, the password out of its repr."""
    credentials = ApiCredentials("https://api.example.com", "a@example.com", PASSWORD)
    assert PASSWORD not in repr(credentials) and "a@example.com" in repr(credentials)
