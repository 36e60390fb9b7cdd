"""A download that will miss the cache builds its CDN client while the small part travels.

``Client.download`` starts fetching ``cdn.yaml`` (and building the S3 client) in the background
when the cache holds no entry of the resource, so the two API round trips overlap instead of
following each other; a download the cache may serve never does, and one build serves both the
prefetch and the download (single flight). Checked against the real server, whose requests the
stack's middleware records (and, here, delays) on a timeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from splitvault.domain.ref import ResourceRef
from tests.support.results import value
from tests.support.stack import DOWNLOADER, UPLOADER, Stack, download, upload, write_model

SMALL_PARTS = "/resources/get/models"
CDN_CONFIG = "/resources/get/config"
HOLD = 0.5  # seconds the server holds each small-part request


@pytest.fixture
def published(stack: Stack, tmp_path: Path) -> Iterator[tuple[ResourceRef, bytes]]:
    ref = ResourceRef("models", "prefetch.bin")
    data = write_model(tmp_path / "model.bin", 1 << 20)
    value(upload(stack.client(UPLOADER, cache=tmp_path / "up-cache"), ref, tmp_path / "model.bin"))
    stack.faults.delay(SMALL_PARTS, HOLD)
    try:
        yield ref, data
    finally:
        stack.faults.delay(SMALL_PARTS, 0)


def _requests(stack: Stack, prefix: str, since: float) -> list[tuple[float, float]]:
    timeline = stack.faults.timeline
    return [(s, e) for path, s, e in timeline if path.startswith(prefix) and s >= since]


def test_a_cold_download_fetches_cdn_yaml_while_the_small_part_travels(
    stack: Stack, tmp_path: Path, published: tuple[ResourceRef, bytes]
) -> None:
    ref, data = published
    since = max((end for _, _, end in stack.faults.timeline), default=0.0)
    client = stack.client(DOWNLOADER, cache=tmp_path / "cold-cache")
    value(download(client, ref, tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == data
    small = _requests(stack, SMALL_PARTS, since)
    config = _requests(stack, CDN_CONFIG, since)
    assert len(small) == 1
    assert len(config) == 1  # the prefetch and the download's own need: one fetch
    assert config[0][0] < small[0][1]  # cdn.yaml was asked for before the small part answered


def test_a_download_the_cache_can_serve_never_fetches_cdn_yaml(
    stack: Stack, tmp_path: Path, published: tuple[ResourceRef, bytes]
) -> None:
    ref, data = published
    cache = tmp_path / "warm-cache"
    value(download(stack.client(DOWNLOADER, cache=cache), ref, tmp_path / "first.bin"))
    since = max(end for _, _, end in stack.faults.timeline)
    fresh = stack.client(DOWNLOADER, cache=cache)  # a new process's client: no CDN built yet
    value(download(fresh, ref, tmp_path / "warm.bin"))
    assert (tmp_path / "warm.bin").read_bytes() == data
    assert len(_requests(stack, SMALL_PARTS, since)) == 1
    assert _requests(stack, CDN_CONFIG, since) == []


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, True),
        ({"AWS_REQUEST_CHECKSUM_CALCULATION": "when_supported"}, True),
        ({"AWS_REQUEST_CHECKSUM_CALCULATION": " WHEN_REQUIRED "}, False),
    ],
)
def test_part_checksums_follow_boto3s_switch(environ: dict[str, str], wanted: bool) -> None:
    """Upload parts carry CRC32s unless boto3's own setting asks for checksums only when
    required (a store that refuses the headers): one switch for both clients."""
    from splitvault.app.client.bootstrap import _part_checksums_wanted

    assert _part_checksums_wanted(environ) is wanted
