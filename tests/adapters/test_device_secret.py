"""``load_device_secret``: created once (0600, 32 random bytes), read back, refused when wrong."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from splitvault.adapters.config_files import load_device_secret
from splitvault.adapters.system import SystemRandom
from splitvault.domain.errors import ConfigInvalid
from tests.support.results import failure, value


def test_a_missing_secret_is_created_0600_and_then_read_back(tmp_path: Path) -> None:
    """The first call creates 32 random bytes readable by the owner only; the next one reads
    the same bytes; no setting means no secret."""
    path = tmp_path / "device.secret"
    created = value(load_device_secret(path, SystemRandom()))
    assert created is not None and len(created) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert value(load_device_secret(path, SystemRandom())) == created
    assert value(load_device_secret(None, SystemRandom())) is None


def test_a_wrong_or_exposed_secret_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A short file, or one that group or others can read, is a ConfigInvalid naming the
    setting; neither is overwritten."""
    short = tmp_path / "short.secret"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    refused = failure(load_device_secret(short, SystemRandom()))
    assert isinstance(refused, ConfigInvalid) and refused.field == "device_secret_file"
    assert "31 bytes" in refused.detail and short.read_bytes() == b"x" * 31
    exposed = tmp_path / "exposed.secret"
    exposed.write_bytes(os.urandom(32))
    exposed.chmod(0o644)
    refused = failure(load_device_secret(exposed, SystemRandom()))
    assert isinstance(refused, ConfigInvalid) and "chmod 600" in refused.detail
    unwritable = tmp_path / "no-such-dir" / "device.secret"
    assert isinstance(failure(load_device_secret(unwritable, SystemRandom())), ConfigInvalid)
