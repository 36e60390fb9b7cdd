"""Re-publishing a resource while others download it, through the real server and moto S3.

A big part's object key names its version (``folder/name/<file_id>.big``), so a re-publish writes
beside the current version and the API's switch of the small part is the commit point. Shown here:
a loop re-publishing while 8 processes download from cold caches and 8 from a warm one ends with
zero failures and every output equal to one of the published versions; and a re-publish killed
between the CDN write and the API write leaves the published version downloadable from a cold
cache, with the new big part an orphan beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from splitvault.app.cli.admin import resources_gc
from splitvault.app.cli.main import main
from splitvault.app.server.accounts import reset_binding
from splitvault.domain.ref import ResourceRef
from tests.integration.test_crash import UPLOAD_POINTS, World, after_bytes, run_and_kill
from tests.support import worker
from tests.support.fault_proxy import FaultProxy
from tests.support.results import value
from tests.support.stack import (
    DOWNLOADER,
    PASSWORD,
    UPLOADER,
    Stack,
    download,
    upload,
    write_model,
)

pytestmark = pytest.mark.slow

REF = ResourceRef("models", "republished.bin")
SIZE = 96 * 1024
PROCESSES = 8  # of each kind: cold caches, and one shared warm cache
DOWNLOADS_EACH = 3
MAX_PUBLISHES = 40  # a bound on the loop, should the downloaders hang


def _publish(stack: Stack, source: Path, seed: int, published: set[str]) -> None:
    data = write_model(source, SIZE + seed * 4099, seed=seed)
    # Recorded before the upload: a downloader may see the new version the moment it commits.
    published.add(hashlib.sha256(data).hexdigest())
    value(upload(stack.client(UPLOADER, cache=source.parent / "up-cache"), REF, source))


def test_republishing_while_sixteen_processes_download(stack: Stack, tmp_path: Path) -> None:
    published: set[str] = set()
    source = tmp_path / "src" / "model.bin"
    _publish(stack, source, 0, published)
    warm = tmp_path / "warm-cache"
    value(download(stack.client(DOWNLOADER, cache=warm), REF, tmp_path / "warm.bin"))
    spec = {
        "op": "download-loop",
        "api_url": stack.url,
        "email": DOWNLOADER,
        "password": PASSWORD,
        "machine": "machine-a",
        "folder": REF.folder,
        "name": REF.name,
        "count": DOWNLOADS_EACH,
    }
    processes = [
        worker.start(
            {
                **spec,
                "cold": cold,
                "cache": str(tmp_path / f"cold-{index}" if cold else warm),
                "path": str(tmp_path / f"out-{cold}-{index}.bin"),
            }
        )
        for cold in (True, False)
        for index in range(PROCESSES)
    ]
    publishes = 0
    try:
        while any(p.poll() is None for p in processes) and publishes < MAX_PUBLISHES:
            publishes += 1
            _publish(stack, source, publishes, published)
        results = [worker.outcome(process, timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)

    failures = [failure for result in results for failure in result.get("failures", ["no"])]
    digests = [digest for result in results for digest in result.get("digests", [])]
    print(
        f"[re-publish race] {publishes} publishes, {len(digests)} downloads, "
        f"{len(set(digests))} versions seen, {len(failures)} failures"
    )
    assert failures == []
    assert len(digests) == 2 * PROCESSES * DOWNLOADS_EACH
    assert set(digests) <= published  # zero wrong bytes: every output is a published version
    assert publishes >= 2, "the downloads ended before a re-publish: no race was run"


@pytest.fixture
def world(stack: Stack, s3_proxy: FaultProxy, api_proxy: FaultProxy, tmp_path: Path) -> World:
    """A stack with both proxies in front (the kill points hold traffic there)."""
    return World(stack, s3_proxy, api_proxy, tmp_path / "cache", tmp_path / "out" / "model.bin")


@pytest.mark.parametrize(
    "point", ["s3-stalls-mid-upload", "api-holds-the-commit", "after-100-kB-up"]
)
def test_a_killed_republish_leaves_the_published_version_downloadable(
    world: World, tmp_path: Path, point: str
) -> None:
    stack = world.stack
    source = tmp_path / "src" / "model.bin"
    first = write_model(source, 2 * SIZE, seed=1)
    value(upload(stack.client(UPLOADER, cache=tmp_path / "up-cache"), REF, source))
    current = stack.small_part(REF)
    current_key = stack.big_key(REF)
    write_model(source, 3 << 20, seed=2)  # past the 1 MiB where the S3 stall is armed

    points = {**UPLOAD_POINTS, "after-100-kB-up": after_bytes("up", 100_000)}
    killed_spec = {**world.spec("upload", UPLOADER, source), "name": REF.name}
    run_and_kill(world, killed_spec, points[point])

    assert stack.small_part(REF) == current  # the commit point was never reached
    keys = {
        item["Key"]
        for item in stack.moto.s3_client()
        .list_objects_v2(Bucket=stack.bucket, Prefix=f"{REF.folder}/{REF.name}/")
        .get("Contents", [])
    }
    assert current_key in keys  # the published version's big part was not touched
    out = tmp_path / "cold-out.bin"
    value(download(stack.client(DOWNLOADER, cache=tmp_path / "cold"), REF, out))
    assert out.read_bytes() == first

    # gc: the orphan (and any unfinished multipart upload) goes, the published version stays.
    def listed() -> set[str]:
        page = stack.moto.s3_client().list_objects_v2(Bucket=stack.bucket)
        return {item["Key"] for item in page.get("Contents", [])}

    orphans = listed() - {current_key}
    if point == "api-holds-the-commit":
        assert orphans, "the kill came after the CDN write: its big part should be an orphan"
    report = resources_gc(argparse.Namespace(yes=True, min_age=0.0), stack.store)
    assert report["big_parts_removed"] == len(orphans)
    assert listed() == {current_key}
    uploads = stack.moto.s3_client().list_multipart_uploads(Bucket=stack.bucket)
    assert uploads.get("Uploads", []) == []
    value(download(stack.client(DOWNLOADER, cache=tmp_path / "cold-2"), REF, out))
    assert out.read_bytes() == first


def test_rollback_restores_an_earlier_version_for_cold_and_warm_caches(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "src" / "model.bin"
    writer = stack.client(UPLOADER, cache=tmp_path / "up-cache")
    first = write_model(source, SIZE, seed=11)
    value(upload(writer, REF, source))
    first_version = value(writer.api.versions(REF))[0]["version"]
    warm = stack.client(DOWNLOADER, cache=tmp_path / "warm")
    value(download(warm, REF, tmp_path / "w1.bin"))
    second = write_model(source, SIZE + 1, seed=12)
    value(upload(writer, REF, source))
    value(download(warm, REF, tmp_path / "w2.bin"))
    assert (tmp_path / "w2.bin").read_bytes() == second

    kept = value(warm.api.versions(REF))
    assert [each["current"] for each in kept] == [True, False]
    assert kept[1]["version"] == first_version
    refused = warm.api.rollback(REF, str(first_version))  # a reader may not roll back
    assert "AccessDenied" in str(refused) and "may not write" in str(refused)
    value(writer.api.rollback(REF, str(first_version)))

    assert value(warm.api.versions(REF))[0]["version"] == first_version
    value(download(warm, REF, tmp_path / "w3.bin"))
    assert (tmp_path / "w3.bin").read_bytes() == first
    cold = stack.client(DOWNLOADER, cache=tmp_path / "cold")
    report = value(download(cold, REF, tmp_path / "c.bin"))
    assert not report.cache_hit
    assert (tmp_path / "c.bin").read_bytes() == first


def test_the_cli_lists_versions_and_rolls_back(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "src" / "model.bin"
    writer = stack.client(UPLOADER, cache=tmp_path / "up-cache")
    first = write_model(source, SIZE, seed=21)
    value(upload(writer, REF, source))
    write_model(source, SIZE, seed=22)
    value(upload(writer, REF, source))
    # The CLI runs on this machine's real fingerprint: a second device of the uploader, past the
    # default limit of one, so the operator frees the binding first (as the refusal tells them).
    value(reset_binding(stack.store, UPLOADER))
    monkeypatch.setenv("SPLITVAULT_EMAIL", UPLOADER)
    monkeypatch.setenv("SPLITVAULT_PASSWORD", PASSWORD)
    monkeypatch.setenv("SPLITVAULT_CACHE_DIR", str(tmp_path / "cli-cache"))
    monkeypatch.setenv("SPLITVAULT_CONFIG_DIR", str(tmp_path / "no-config"))
    flags = ["--api-url", stack.url]
    capsys.readouterr()
    assert main(["--json", "ls", str(REF), "--versions", *flags]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [each["current"] for each in listed["versions"]] == [True, False]
    older = listed["versions"][1]["version"]
    assert main(["rollback", str(REF), "--to", older, *flags]) == 0
    assert main(["rollback", str(REF), "--to", "f" * 32, *flags]) != 0  # not a kept version
    out = tmp_path / "after.bin"
    value(download(stack.client(DOWNLOADER, cache=tmp_path / "cold"), REF, out))
    assert out.read_bytes() == first
