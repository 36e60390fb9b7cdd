"""``CDNCredentials`` and ``CDNManager`` with the original's positional fields and return values."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from splitvault.app.client.errors import AuthError, ConfigError, InvalidNameError
from splitvault.cdn_manager import CDNCredentials, CDNManager, ref_for
from splitvault.domain.cdn_layout import BucketPerFolder
from splitvault.domain.config import CdnConfig, S3Keys
from splitvault.domain.errors import Transient
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy

DOWN_SECRET = "d0wnl0ader-secret-value"
UP_SECRET = "upl0ader-secret-value"
ONE_ATTEMPT = RetryPolicy(max_attempts=1, budget=1.0)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_five_positional_fields_bind_where_the_original_meant() -> None:
    """host, downloader pair, uploader pair: read keys, write keys, a bucket per folder."""
    credentials = CDNCredentials("cdn.example.com", "AKIADOWN", DOWN_SECRET, "AKIAUP", UP_SECRET)
    assert isinstance(credentials, CdnConfig)
    assert credentials.endpoint == "https://cdn.example.com"
    assert credentials.read_keys == S3Keys("AKIADOWN", DOWN_SECRET)
    assert credentials.write_keys == S3Keys("AKIAUP", UP_SECRET)
    assert credentials.object_layout() == BucketPerFolder()
    shown = repr(credentials) + repr(CDNManager(credentials))
    assert DOWN_SECRET not in shown and UP_SECRET not in shown


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (("", "AKIA", "s"), "host"),
        (("cdn.example.com", "", "s"), "downloader_access_key"),
        (("cdn.example.com", "AKIA", "s", "AKIAUP"), "uploader_access_secret"),
        (("cdn example", "AKIA", "s"), "host"),
    ],
)
def test_a_missing_or_malformed_field_is_a_config_error_naming_it(
    fields: tuple[str, ...], named: str
) -> None:
    """Refused at construction, not at the first transfer; no value is echoed."""
    with pytest.raises(ConfigError, match=named) as raised:
        CDNCredentials(*fields)
    assert "AKIA" not in str(raised.value)


@pytest.mark.parametrize(
    ("bucket", "filename", "ref"),
    [
        ("models", "model.big", ResourceRef("models", "model")),
        ("models", "model.onnx", ResourceRef("models", "model.onnx")),
        ("models", "model.onnx.big", ResourceRef("models", "model.onnx")),
    ],
)
def test_bucket_and_filename_name_a_big_part(bucket: str, filename: str, ref: ResourceRef) -> None:
    """``name.big`` is the big part of ``name``; a name without ``.big`` is its own resource."""
    assert ref_for(bucket, filename) == ref


@pytest.mark.parametrize(("bucket", "filename"), [("../x", "m.big"), ("models", ".big")])
def test_a_hostile_bucket_or_filename_is_refused_by_name(bucket: str, filename: str) -> None:
    """``InvalidNameError`` saying which argument, before any request."""
    with pytest.raises(InvalidNameError, match="bucket" if bucket != "models" else "filename"):
        ref_for(bucket, filename)


def test_without_uploader_keys_an_upload_raises_before_any_request() -> None:
    """A downloader-only manager refuses uploads at once (the endpoint is a closed port)."""
    manager = CDNManager(CDNCredentials(f"http://127.0.0.1:{_closed_port()}", "AKIA", "s"))
    with pytest.raises(AuthError, match="uploader"):
        manager.upload("models", "m.big", b"x")


def test_a_failed_transfer_returns_false_and_keeps_the_reason(tmp_path: Path) -> None:
    """The documented bool, and ``last_failure`` says what happened; nothing is written."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    manager = CDNManager(
        CDNCredentials(endpoint, "AKIA", "s", "AKIAUP", "u"), retry_policy=ONE_ATTEMPT
    )
    assert manager.download("models", "m.big", dest=tmp_path / "m.big") is False
    assert isinstance(manager.last_failure, Transient)
    assert manager.upload("models", "m.big", b"x") is False
    assert not (tmp_path / "m.big").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_manager_takes_only_the_credentials_value() -> None:
    """The original's first argument is the credentials; anything else is a TypeError."""
    with pytest.raises(TypeError, match="CDNCredentials"):
        CDNManager("https://cdn.example.com")  # type: ignore[arg-type]
