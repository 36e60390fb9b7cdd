"""Two ``splitvault serve`` processes on one PostgreSQL act as one server.

Uploads go through one, downloads through the other, at the same time; a login throttle tripped on
one holds on the other; a password changed with ``splitvault admin`` ends a session on both.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest
from returns.pipeline import is_successful

from splitvault.domain.ref import ResourceRef
from tests.support.devices import device_token
from tests.support.postgres import PostgresCluster
from tests.support.results import value
from tests.support.server_fixtures import ServeProcess, prepare_database, serve_process
from tests.support.stack import (
    DOWNLOADER,
    OTHER_DOWNLOADER,
    PASSWORD,
    UPLOADER,
    Stack,
    download,
    upload,
    write_model,
)

MiB = 1 << 20


@attrs.frozen
class Pair:
    """Two servers on one database, and the URL of that database."""

    a: ServeProcess
    b: ServeProcess
    database_url: str = attrs.field(repr=False)


@pytest.fixture
def pair(stack: Stack, postgres_cluster: PostgresCluster, tmp_path: Path) -> Iterator[Pair]:
    """Two servers (separate processes, separate ports) on one fresh PostgreSQL database."""
    url = postgres_cluster.new_database()
    prepare_database(stack, url)
    with (
        serve_process(tmp_path, "--database-url", url, name="a") as a,
        serve_process(tmp_path, "--database-url", url, name="b") as b,
    ):
        yield Pair(a, b, url)


def _token(url: str, email: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(f"{url}/login", json={"email": email, "password": password}, timeout=30)


def test_uploads_through_one_download_through_the_other_concurrently(
    stack: Stack, pair: Pair, tmp_path: Path
) -> None:
    """While one thread uploads three resources through A, four download through B (cold caches);
    every download is byte-exact and every upload is then downloadable through B."""
    first = ResourceRef("models", "first.bin")
    sources = {first: write_model(tmp_path / "src" / "first.bin", 2 * MiB, seed=1)}
    writer = stack.client(UPLOADER, api_url=pair.a.url)
    value(upload(writer, first, tmp_path / "src" / "first.bin"))
    later = [ResourceRef("models", f"later-{i}.bin") for i in range(3)]
    errors: list[str] = []
    done = threading.Event()
    lock = threading.Lock()
    downloads: list[int] = []

    def publish() -> None:
        try:
            for index, ref in enumerate(later):
                path = tmp_path / "src" / ref.name
                data = write_model(path, MiB + index * 4099, seed=10 + index)
                with lock:
                    sources[ref] = data
                value(upload(writer, ref, path))
        except AssertionError as error:
            errors.append(f"upload: {error}")
        finally:
            done.set()

    def fetch(index: int) -> None:
        reader = stack.client(DOWNLOADER, api_url=pair.b.url, cache=tmp_path / f"cache-{index}")
        round_ = 0
        while not done.is_set() or round_ < 2:
            out = tmp_path / "out" / f"{index}-{round_}.bin"
            cold = stack.client(
                DOWNLOADER, api_url=pair.b.url, cache=tmp_path / f"cold-{index}-{round_}"
            )
            result = download(cold if round_ % 2 else reader, first, out)
            if not is_successful(result):
                errors.append(f"download {index}: {result}")
            elif (
                hashlib.sha256(out.read_bytes()).digest() != hashlib.sha256(sources[first]).digest()
            ):
                errors.append(f"download {index}: wrong bytes")
            with lock:
                downloads.append(index)
            round_ += 1

    threads = [threading.Thread(target=publish)]
    threads += [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(downloads) >= 8
    reader = stack.client(DOWNLOADER, api_url=pair.b.url, cache=tmp_path / "after")
    for ref in later:
        out = tmp_path / "after-out" / ref.name
        value(download(reader, ref, out))
        assert out.read_bytes() == sources[ref]
    listing_b = httpx.get(
        f"{pair.b.url}/resources/list/models",
        headers={"Authorization": f"Bearer {device_token(pair.b.url, DOWNLOADER, PASSWORD)}"},
    ).json()
    assert sorted(listing_b["files"]) == sorted(ref.name for ref in [first, *later])


def test_a_login_throttle_tripped_on_one_server_holds_on_the_other(pair: Pair) -> None:
    """Five wrong passwords through A: the sixth attempt through B, even the right one, is 429."""
    for _ in range(5):
        assert _token(pair.a.url, OTHER_DOWNLOADER, "wrong").status_code == 401
    refused = _token(pair.b.url, OTHER_DOWNLOADER)
    assert refused.status_code == 429, refused.text
    assert refused.json()["ErrorCode"] == "TooManyAttempts"
    assert int(refused.headers["retry-after"]) >= 1
    # Another account is untouched on either server.
    assert _token(pair.b.url, DOWNLOADER).status_code == 200


def test_a_password_changed_with_the_admin_cli_ends_sessions_on_both(pair: Pair) -> None:
    """Tokens from A and from B stop working on both after ``admin users passwd``; the new
    password logs in on both."""
    tokens = [device_token(server.url, DOWNLOADER, PASSWORD) for server in (pair.a, pair.b)]
    for server in (pair.a, pair.b):
        for token in tokens:
            listed = httpx.get(
                f"{server.url}/resources/list/models",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert listed.status_code == 200
    changed = subprocess.run(
        [
            sys.executable,
            "-m",
            "splitvault.app.cli.main",
            "admin",
            "users",
            "passwd",
            DOWNLOADER,
            "--database-url",
            pair.database_url,
        ],
        input="a brand new password\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert changed.returncode == 0, changed.stderr
    for server in (pair.a, pair.b):
        for token in tokens:
            ended = httpx.get(
                f"{server.url}/resources/list/models",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert ended.status_code == 401
            assert ended.json()["ErrorCode"] == "SessionEnded"
        assert _token(server.url, DOWNLOADER, "a brand new password").status_code == 200
        assert _token(server.url, DOWNLOADER).status_code == 401


def test_ops_endpoints_answer_on_both(pair: Pair) -> None:
    """/healthz and /readyz are 200 on both; /metrics counts this process's logins."""
    for server in (pair.a, pair.b):
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["status"] == "ready" and ready["schema"] >= 1
    assert _token(pair.a.url, DOWNLOADER).status_code == 200
    metrics_a = httpx.get(f"{pair.a.url}/metrics").text
    metrics_b = httpx.get(f"{pair.b.url}/metrics").text
    assert "splitvault_logins_total 1.0" in metrics_a
    assert "splitvault_logins_total 0.0" in metrics_b
    assert 'splitvault_requests_total{method="POST",route="login",status="200"} 1.0' in metrics_a
