"""The CLI starts lean: ``--help`` loads no command code, a warm download never builds an S3
client, and no download imports boto3, botocore or httpx's command-line tool.

Each check runs the real entry point in a fresh interpreter and reports which heavy modules it
loaded; CPU time is the bench's business, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from splitvault.domain.ref import ResourceRef
from tests.support.results import value
from tests.support.stack import OTHER_DOWNLOADER, PASSWORD, UPLOADER, Stack, upload, write_model

HEAVY = [
    "boto3",
    "botocore",
    "s3transfer",
    "splitvault.adapters.s3_http",
    "click",  # httpx's command-line tool pulls in click, rich and pygments
    "pygments",
    "httpx",
    "cryptography",
    "rich",
    "yaml",
    "splitvault.app.cli.commands",
    "splitvault.app.cli.admin",
    "splitvault.app.client.pipeline",
    "splitvault.domain.errors",
    "returns.result",
]

_PROBE = """
import json, sys
from splitvault.app.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
"""


def _run(args: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % HEAVY, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_help_loads_no_command_code() -> None:
    """``splitvault --help`` and a subcommand's help import none of the heavy modules (not even
    the domain's errors or the admin commands); ``admin --help`` builds the admin tree."""
    for args in (["--help"], ["download", "--help"], ["bench", "--help"]):
        report = _run(args)
        assert report == {"code": 0, "loaded": []}, args
    admin = _run(["admin", "--help"])
    assert admin["code"] == 0 and "splitvault.app.cli.admin" in admin["loaded"]  # type: ignore[operator]


def test_a_bad_size_is_refused_by_the_one_parser() -> None:
    """``--size 1parsec`` is a usage error (exit 2) saying what a size looks like."""
    done = subprocess.run(
        [sys.executable, "-m", "splitvault.app.cli.main", "bench", "--size", "1parsec"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "64M" in done.stderr and "'1parsec'" in done.stderr


def test_downloads_import_only_what_they_use(stack: Stack, tmp_path: Path) -> None:
    """The cold download builds our S3 client and the warm one, served by the cache, does not;
    neither loads boto3, botocore or httpx's command-line tool (click, rich, pygments)."""
    ref = ResourceRef("models", "warm.bin")
    data = write_model(tmp_path / "model.bin", 3 << 20)
    value(upload(stack.client(UPLOADER), ref, tmp_path / "model.bin"))
    flags = ["--folder", "models", "--api-url", stack.url, "--email", OTHER_DOWNLOADER]
    flags += ["--cache-dir", str(tmp_path / "cache"), "--config", str(tmp_path / "none.yaml")]
    env = {"SPLITVAULT_PASSWORD": PASSWORD}
    runs = []
    for name in ("cold", "warm"):
        out = tmp_path / f"{name}.bin"
        runs.append(_run(["--json", "download", "warm.bin", "--out", str(out), *flags], env))
        assert out.read_bytes() == data
    cold, warm = runs
    never = {"boto3", "botocore", "s3transfer", "click", "rich", "pygments"}
    assert cold["code"] == 0 and warm["code"] == 0
    assert "splitvault.adapters.s3_http" in cold["loaded"]  # type: ignore[operator]
    assert "splitvault.adapters.s3_http" not in warm["loaded"]  # type: ignore[operator]
    assert "httpx" in warm["loaded"]  # type: ignore[operator]
    # No config file and no cdn.yaml to read: the warm download parses no YAML at all.
    assert "yaml" in cold["loaded"] and "yaml" not in warm["loaded"]  # type: ignore[operator]
    assert never.isdisjoint(cold["loaded"]) and never.isdisjoint(warm["loaded"])  # type: ignore[arg-type]
