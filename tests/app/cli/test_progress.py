"""One delta-based progress type: a bar's total is the bytes moved, with or without rich."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitvault.app.cli.progress import TransferBar, rich_available, transfer_progress
from splitvault.app.client.pipeline import open_file, seal_file
from splitvault.domain.ref import ResourceRef
from tests.support.results import value

REF = ResourceRef("models", "bar.bin")
SIZE = 8 * (1 << 20) + 5  # 8 MiB and a bit: the size on which totals once over-counted 4.5x


@pytest.mark.parametrize("drawn", [False, True])
def test_a_bars_total_is_the_bytes_moved(tmp_path: Path, drawn: bool) -> None:
    """Sealing then opening 8 MiB through a bar counts exactly the file's size each time."""
    if drawn and not rich_available():
        pytest.fail("the [cli] extra (rich) is part of the dev install")
    source = tmp_path / "source"
    source.write_bytes(os.urandom(SIZE))
    with transfer_progress("sealing", SIZE, enabled=drawn) as bar:
        parts = value(
            seal_file(
                source, tmp_path / "big", ref=REF, dek=b"k" * 32, file_id=b"f" * 16, progress=bar
            )
        )
    assert bar.done == SIZE
    with transfer_progress("opening", SIZE, enabled=drawn) as bar:
        value(open_file(parts.small_part, tmp_path / "big", tmp_path / "out", progress=bar))
    assert bar.done == SIZE


def test_the_counter_is_thread_safe() -> None:
    """Deltas from many threads add up."""
    import threading

    bar = TransferBar()

    def count() -> None:
        for _ in range(10_000):
            bar(3)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bar.done == 120_000


def test_the_cli_works_without_rich(tmp_path: Path) -> None:
    """With rich unavailable (the plain install), seal and open run and print no bar."""
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(3 << 20))
    probe = (
        "import sys; sys.modules['rich'] = None\n"
        "from splitvault.app.cli.main import main\n"
        "from splitvault.app.cli import progress\n"
        "assert not progress.rich_available()\n"
        "with progress.transfer_progress('x', 10, enabled=True) as bar: bar(10)\n"
        "assert bar.done == 10\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "parts"
    for args in (
        ["seal", str(source), "--out", str(out)],
        [
            "open",
            str(out / "model.bin.small"),
            str(out / "model.bin.big"),
            "--out",
            str(tmp_path / "back"),
        ],
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "back").read_bytes() == source.read_bytes()
