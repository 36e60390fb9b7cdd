"""The CLI refuses explicitly empty names and folders, and says read when a read failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitvault.app.cli.main import main
from splitvault.domain.errors import StorageFailed


@pytest.mark.parametrize(
    "flags", [["--name", ""], ["--folder", ""]], ids=["empty-name", "empty-folder"]
)
def test_an_explicitly_empty_name_or_folder_is_refused(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--name ''`` is bad input (exit 2), not silently the file's name; nothing is written."""
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights")
    out = tmp_path / "out"
    code = main(["seal", str(source), "--out", str(out), *flags])
    assert code == 2
    assert "empty" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_read_failure_is_described_as_a_read() -> None:
    """``describe`` names the action that failed and what to do about it."""
    read = StorageFailed("/data/model.bin", "Permission denied", "read").describe()
    assert read.startswith("could not read /data/model.bin: Permission denied")
    assert "permissions" in read
    full = StorageFailed("/out/model.bin", "No space left on device").describe()
    assert full.startswith("could not write /out/model.bin") and "free some space" in full
