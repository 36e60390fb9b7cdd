"""The Cdn contract, run against every adapter (S3 on a moto server, a directory); S3 specifics.

What every adapter must do: round-trip an object larger than two multipart chunks, resume a
download from ``start`` without touching the bytes before it, answer ``NotFound`` for a missing
object, overwrite, store empty objects and names with spaces and Unicode, and never show a partial
object under the final key after a failure part-way through an upload.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.io import IOFailure, IOResult, IOSuccess
from returns.result import Success
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.directory_cdn import DirectoryCdn
from splitvault.adapters.s3_cdn import MIB, S3Cdn, S3Tuning
from splitvault.domain.config import CdnConfig, S3Keys
from splitvault.domain.errors import (
    AccessDenied,
    NotFound,
    RemoteError,
    StorageFailed,
    TimedOut,
    Transient,
)
from splitvault.domain.ref import ResourceRef
from tests.support.moto_server import ADMIN_KEYS, SMALL_PARTS, MotoS3
from tests.support.recording_proxy import RecordingProxy

AnyCdn = S3Cdn | DirectoryCdn

REF = ResourceRef("models", "resnet.bin")
MULTIPART_SIZE = 2 * 5 * MIB + 123_457  # three 5 MiB chunks, the last one short


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and return the path."""
    path.write_bytes(data)
    return path


def failure_of(result: IOResult[object, object]) -> object:
    """The failure value of an IOResult that must have failed."""
    assert isinstance(result, IOFailure), f"expected a failure, got {result!r}"
    return unsafe_perform_io(result.failure())


def value_of(result: IOResult[object, object]) -> object:
    """The value of an IOResult that must have succeeded."""
    assert isinstance(result, IOSuccess), f"expected success, got {result!r}"
    return unsafe_perform_io(result.unwrap())


def round_trip(cdn: AnyCdn, ref: ResourceRef, dest: Path) -> bytes:
    """Download the whole object into ``dest`` and return its bytes."""
    size = value_of(cdn.download_file(ref, dest))
    data = dest.read_bytes()
    assert size == len(data)
    return data


class FailAfter:
    """A progress callback that fails like a read error once ``limit`` bytes have gone through."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self._lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self._lock:
            self.seen += count
            if self.seen >= self.limit:
                raise OSError(5, "injected read failure")


# -- the contract -------------------------------------------------------------------------------


def test_round_trip_of_an_object_larger_than_two_parts(cdn: AnyCdn, tmp_path: Path) -> None:
    """An object of more than two multipart chunks comes back byte for byte, with its size."""
    data = payload(MULTIPART_SIZE)
    assert value_of(cdn.upload_file(REF, write(tmp_path / "src", data))) is None
    assert value_of(cdn.size(REF)) == len(data)
    back = round_trip(cdn, REF, tmp_path / "dest")
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("start", [1, 5 * MIB, 5 * MIB + 7, MULTIPART_SIZE - 1])
def test_download_resumes_from_start_leaving_earlier_bytes(
    cdn: AnyCdn, tmp_path: Path, start: int
) -> None:
    """Bytes [start:] arrive at their offsets; bytes before start are left exactly as they were."""
    data = payload(MULTIPART_SIZE, seed=2)
    value_of(cdn.upload_file(REF, write(tmp_path / "src", data)))
    marker = b"\xa5" * start  # not the object's bytes, so any overwrite would show
    dest = write(tmp_path / "dest", marker)
    assert value_of(cdn.download_file(REF, dest, start=start)) == len(data)
    got = dest.read_bytes()
    assert got[:start] == marker
    assert got[start:] == data[start:]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(start=st.integers(0, 3000), prior=st.binary(max_size=4000))
def test_resume_property_for_any_start_and_prior_content(
    cdn: AnyCdn, tmp_path: Path, start: int, prior: bytes
) -> None:
    """For any start and earlier dest content: bytes before start kept, the rest the object's."""
    data = payload(3000, seed=17)
    source = tmp_path / "src"
    if not source.exists():
        value_of(cdn.upload_file(REF, write(source, data)))
    dest = write(tmp_path / "dest", prior)
    assert value_of(cdn.download_file(REF, dest, start=start)) == len(data)
    got = dest.read_bytes()
    kept = min(start, len(prior))
    assert got[:kept] == prior[:kept]
    assert got[start:] == data[start:]
    assert len(got) == len(data)


def test_download_from_the_end_writes_nothing_and_beyond_it_fails(
    cdn: AnyCdn, tmp_path: Path
) -> None:
    """start == size is a finished download; start > size is refused and dest is untouched."""
    data = payload(1000, seed=3)
    value_of(cdn.upload_file(REF, write(tmp_path / "src", data)))
    dest = write(tmp_path / "dest", data)
    assert value_of(cdn.download_file(REF, dest, start=len(data))) == len(data)
    assert dest.read_bytes() == data
    problem = failure_of(cdn.download_file(REF, dest, start=len(data) + 1))
    assert isinstance(problem, RemoteError)
    assert problem.status == 416
    assert dest.read_bytes() == data


def test_a_range_past_the_end_fails_the_call_before_any_byte_moves(
    cdn: AnyCdn, tmp_path: Path
) -> None:
    """The port's promise the cache relies on instead of a probe: a call asking beyond the
    object is refused with 416 as a whole, and the in-bounds ranges beside it hand over nothing."""
    data = payload(3 * 1000, seed=4)
    value_of(cdn.upload_file(REF, write(tmp_path / "src", data)))
    handed: list[tuple[int, int]] = []

    class Sink:
        def write(self, offset: int, chunk: bytes | memoryview) -> None:
            handed.append((offset, len(chunk)))

        def landed(self) -> int:
            return sum(size for _, size in handed)

    problem = failure_of(cdn.download_ranges(REF, [(0, 1000), (2000, 3001)], Sink()))
    assert isinstance(problem, RemoteError)
    assert problem.status == 416
    assert handed == []
    assert value_of(cdn.download_ranges(REF, [(0, 1000), (2000, 3000)], Sink())) == len(data)
    assert sum(size for _, size in handed) == 2000


def test_download_cuts_a_longer_destination_to_the_object_size(cdn: AnyCdn, tmp_path: Path) -> None:
    """A destination holding more bytes than the object ends exactly as long as the object."""
    data = payload(4096, seed=4)
    value_of(cdn.upload_file(REF, write(tmp_path / "src", data)))
    dest = write(tmp_path / "dest", b"\x00" * 10_000)
    assert round_trip(cdn, REF, dest) == data


def test_missing_object_is_not_found(cdn: AnyCdn, tmp_path: Path) -> None:
    """size and download of an absent object answer NotFound and create no destination."""
    missing = ResourceRef("models", "absent.bin")
    assert isinstance(failure_of(cdn.size(missing)), NotFound)
    dest = tmp_path / "dest"
    assert isinstance(failure_of(cdn.download_file(missing, dest)), NotFound)
    assert not dest.exists()


def test_overwrite_replaces_the_object(cdn: AnyCdn, tmp_path: Path) -> None:
    """A second upload under the same ref replaces the first, including its size."""
    value_of(cdn.upload_file(REF, write(tmp_path / "a", payload(6 * MIB, seed=5))))
    second = payload(777, seed=6)
    value_of(cdn.upload_file(REF, write(tmp_path / "b", second)))
    assert value_of(cdn.size(REF)) == len(second)
    assert round_trip(cdn, REF, tmp_path / "dest") == second


def test_empty_object_round_trips(cdn: AnyCdn, tmp_path: Path) -> None:
    """An empty file is stored as an empty object and downloads as an empty file."""
    value_of(cdn.upload_file(REF, write(tmp_path / "src", b"")))
    assert value_of(cdn.size(REF)) == 0
    assert round_trip(cdn, REF, tmp_path / "dest") == b""


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("my models", "final model v2.bin"),
        ("modèles", "Ünïcödé 模型 名前.bin"),
        ("a+b=c", "percent%20and&amp;[brackets]*?.bin"),
    ],
)
def test_names_with_spaces_and_unicode(cdn: AnyCdn, tmp_path: Path, folder: str, name: str) -> None:
    """Spaces, accents, CJK and URL-special characters survive as object names."""
    ref = ResourceRef(folder, name)
    data = payload(2048, seed=7)
    value_of(cdn.upload_file(ref, write(tmp_path / "src", data)))
    assert value_of(cdn.size(ref)) == len(data)
    assert round_trip(cdn, ref, tmp_path / "dest") == data


@pytest.mark.parametrize("size", [1 * MIB, MULTIPART_SIZE])
def test_failed_upload_leaves_nothing_under_a_new_name(
    cdn: AnyCdn, tmp_path: Path, size: int
) -> None:
    """An upload that fails part-way (single or multipart) leaves no object behind."""
    source = write(tmp_path / "src", payload(size, seed=8))
    result = cdn.upload_file(REF, source, progress=FailAfter(size // 2))
    assert isinstance(result, IOFailure)
    assert isinstance(failure_of(cdn.size(REF)), NotFound)


@pytest.mark.parametrize("size", [1 * MIB, MULTIPART_SIZE])
def test_failed_overwrite_keeps_the_previous_object(cdn: AnyCdn, tmp_path: Path, size: int) -> None:
    """An overwrite that fails part-way leaves the previous object whole and readable."""
    old = payload(3000, seed=9)
    value_of(cdn.upload_file(REF, write(tmp_path / "old", old)))
    source = write(tmp_path / "new", payload(size, seed=10))
    assert isinstance(cdn.upload_file(REF, source, progress=FailAfter(size // 2)), IOFailure)
    assert value_of(cdn.size(REF)) == len(old)
    assert round_trip(cdn, REF, tmp_path / "dest") == old


@pytest.mark.parametrize("garbage", [0, MULTIPART_SIZE + 10], ids=["new dest", "longer dest"])
def test_interrupted_download_leaves_a_resumable_prefix(
    cdn: AnyCdn, tmp_path: Path, garbage: int
) -> None:
    """A download that fails part-way leaves only correct bytes; resuming from there completes."""
    data = payload(MULTIPART_SIZE, seed=16)
    value_of(cdn.upload_file(REF, write(tmp_path / "src", data)))
    dest = write(tmp_path / "dest", b"\xff" * garbage)
    problem = failure_of(cdn.download_file(REF, dest, progress=FailAfter(6 * MIB)))
    assert isinstance(problem, StorageFailed)
    kept = dest.read_bytes()
    assert len(kept) < len(data)
    assert kept == data[: len(kept)]
    assert value_of(cdn.download_file(REF, dest, start=len(kept))) == len(data)
    assert dest.read_bytes() == data


def test_missing_source_is_a_storage_failure(cdn: AnyCdn, tmp_path: Path) -> None:
    """Uploading a file that does not exist fails as a local storage problem, storing nothing."""
    problem = failure_of(cdn.upload_file(REF, tmp_path / "nope"))
    assert isinstance(problem, StorageFailed)
    assert isinstance(failure_of(cdn.size(REF)), NotFound)


def test_progress_counts_every_byte(cdn: AnyCdn, tmp_path: Path) -> None:
    """The progress callbacks of an upload and a download add up to the object size."""
    data = payload(MULTIPART_SIZE, seed=11)
    sent: list[int] = []
    value_of(cdn.upload_file(REF, write(tmp_path / "src", data), progress=sent.append))
    received: list[int] = []
    value_of(cdn.download_file(REF, tmp_path / "dest", progress=received.append))
    assert sum(sent) == len(data)
    assert sum(received) == len(data)


# -- S3 specifics: least privilege, error mapping, timeouts ---------------------------------------

READ_ACTIONS = ["s3:GetObject", "s3:ListBucket"]
WRITE_ACTIONS = [
    "s3:GetObject",
    "s3:ListBucket",
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:ListBucketMultipartUploads",
]


def test_failed_multipart_upload_is_aborted(
    s3_cdn: S3Cdn, moto_s3: MotoS3, s3_bucket: str, tmp_path: Path
) -> None:
    """A multipart upload that fails part-way is aborted: no parts linger in the bucket."""
    source = write(tmp_path / "src", payload(MULTIPART_SIZE, seed=12))
    assert isinstance(s3_cdn.upload_file(REF, source, progress=FailAfter(6 * MIB)), IOFailure)
    uploads = moto_s3.s3_client().list_multipart_uploads(Bucket=s3_bucket)
    assert uploads.get("Uploads", []) == []


def test_parts_go_unsigned_and_whole_through_a_proxy(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through an ``HTTP_PROXY`` (honoured as botocore did), each part is one request whose
    payload is not SHA-256 signed (UNSIGNED-PAYLOAD: the bytes are authenticated ciphertext under
    a signed digest) and whose body is the whole part; ranged GETs ask for exactly their bytes with
    ``If-Match``; the object comes back whole."""
    data = payload(MULTIPART_SIZE, seed=32)
    proxy = RecordingProxy()
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    cdn = S3Cdn.writer(
        moto_s3.endpoint_url, s3_bucket, ADMIN_KEYS, region=moto_s3.region, tuning=SMALL_PARTS
    )
    try:
        value_of(cdn.upload_file(REF, write(tmp_path / "src", data)))
        assert round_trip(cdn, REF, tmp_path / "dest") == data
    finally:
        cdn.close()
        proxy.close()
    parts = [one for one in proxy.requests("PUT") if "partNumber=" in one.target]
    part = SMALL_PARTS.multipart_chunksize
    expected = [min(part, len(data) - low) for low in range(0, len(data), part)]
    assert sorted(one.body_length for one in parts) == sorted(expected)
    assert {one.headers["x-amz-content-sha256"] for one in parts} == {"UNSIGNED-PAYLOAD"}
    # Each part carries the CRC32 of the bytes that really went, so the store checks them.
    assert all(
        one.headers["x-amz-checksum-crc32"]
        == base64.b64encode(one.body_crc32.to_bytes(4, "big")).decode()
        for one in parts
    )
    creates = [one for one in proxy.requests("POST") if one.target.endswith("?uploads=")]
    assert [one.headers.get("x-amz-checksum-algorithm") for one in creates] == ["CRC32"]
    object_gets = [one for one in proxy.requests("GET") if "?" not in one.target]
    ranges = sorted(one.headers["range"] for one in object_gets)
    assert ranges == sorted(
        f"bytes={low}-{min(low + part, len(data)) - 1}" for low in range(0, len(data), part)
    )
    assert all("if-match" in one.headers for one in object_gets)
    assert all(one.target.startswith(moto_s3.endpoint_url + "/") for one in proxy.seen)


@pytest.mark.parametrize("checksums", [True, False])
def test_part_checksums_are_what_the_store_records(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path, checksums: bool
) -> None:
    """With part checksums (the default) the store keeps a composite CRC32 of the parts; without
    them (``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``) no checksum is sent and the store
    falls back on its own full-object default."""
    tuning = attrs.evolve(SMALL_PARTS, part_checksums=checksums)
    cdn = S3Cdn.writer(
        moto_s3.endpoint_url, s3_bucket, ADMIN_KEYS, region=moto_s3.region, tuning=tuning
    )
    data = payload(MULTIPART_SIZE, seed=34)
    try:
        value_of(cdn.upload_file(REF, write(tmp_path / "src", data)))
        assert round_trip(cdn, REF, tmp_path / "dest") == data
    finally:
        cdn.close()
    head = moto_s3.s3_client().head_object(Bucket=s3_bucket, Key=REF.key, ChecksumMode="ENABLED")
    part = SMALL_PARTS.multipart_chunksize
    count = -(-len(data) // part)
    if checksums:
        crcs = b"".join(
            zlib.crc32(data[low : low + part]).to_bytes(4, "big")
            for low in range(0, len(data), part)
        )
        composite = base64.b64encode(zlib.crc32(crcs).to_bytes(4, "big")).decode()
        # S3 writes the part count after a dash; moto's HEAD leaves it out.
        assert head["ChecksumCRC32"] in {composite, f"{composite}-{count}"}
    else:
        assert "ChecksumCRC32" not in head


def test_a_source_that_shrinks_mid_upload_fails_and_is_aborted(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path
) -> None:
    """A source cut short while its parts are read fails as a storage problem naming it; the
    multipart upload is aborted and no object appears."""
    # One part in flight, so the cut lands between part 1's read and part 2's.
    tuning = attrs.evolve(SMALL_PARTS, max_concurrency=1)
    s3_cdn = S3Cdn.writer(
        moto_s3.endpoint_url, s3_bucket, ADMIN_KEYS, region=moto_s3.region, tuning=tuning
    )
    source = write(tmp_path / "src", payload(MULTIPART_SIZE, seed=33))

    def truncate_once(_: int) -> None:
        if source.stat().st_size == MULTIPART_SIZE:
            os.truncate(source, 6 * MIB)

    problem = failure_of(s3_cdn.upload_file(REF, source, progress=truncate_once))
    assert isinstance(problem, StorageFailed)
    assert "shrank" in problem.describe() and str(source) in problem.describe()
    assert isinstance(failure_of(s3_cdn.size(REF)), NotFound)
    uploads = moto_s3.s3_client().list_multipart_uploads(Bucket=s3_bucket)
    assert uploads.get("Uploads", []) == []
    s3_cdn.close()


def test_the_next_upload_aborts_stale_multipart_uploads_of_its_key(
    s3_cdn: S3Cdn, moto_s3: MotoS3, s3_bucket: str, tmp_path: Path
) -> None:
    """Unfinished multipart uploads of the key (a killed uploader's) are aborted by the next
    successful upload; another key's are left alone."""
    client = moto_s3.s3_client()
    for key in (REF.key, REF.key, "models/other.bin.big"):
        started = client.create_multipart_upload(Bucket=s3_bucket, Key=key)
        client.upload_part(
            Bucket=s3_bucket, Key=key, UploadId=started["UploadId"], PartNumber=1, Body=b"x"
        )
    value_of(s3_cdn.upload_file(REF, write(tmp_path / "src", payload(1000, seed=31))))
    left = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [upload["Key"] for upload in left] == ["models/other.bin.big"]


def test_read_keys_cannot_put_under_iam(moto_s3: MotoS3, s3_bucket: str, tmp_path: Path) -> None:
    """With IAM enforced, read keys download but the server refuses their puts; write keys put."""
    read_keys = moto_s3.create_keys("reader", READ_ACTIONS, s3_bucket)
    write_keys = moto_s3.create_keys("writer", WRITE_ACTIONS, s3_bucket)
    data = payload(4096, seed=13)
    source = write(tmp_path / "src", data)
    endpoint = moto_s3.endpoint_url
    with moto_s3.enforce_iam():
        writer = S3Cdn.writer(endpoint, s3_bucket, write_keys, tuning=SMALL_PARTS)
        assert value_of(writer.upload_file(REF, source)) is None
        # A writer built with read keys by mistake: the bucket itself says no.
        misbuilt = S3Cdn.writer(endpoint, s3_bucket, read_keys, tuning=SMALL_PARTS)
        other = write(tmp_path / "other", payload(4096, seed=14))
        denied = failure_of(misbuilt.upload_file(REF, other))
        assert isinstance(denied, AccessDenied)
        assert "AccessDenied" in denied.detail
        reader = S3Cdn.reader(endpoint, s3_bucket, read_keys, tuning=SMALL_PARTS)
        assert round_trip(reader, REF, tmp_path / "dest") == data
    assert round_trip(writer, REF, tmp_path / "dest2") == data


def test_reader_refuses_uploads_without_asking_the_server(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path
) -> None:
    """A reader answers AccessDenied locally: even with keys that could write, nothing is put."""
    reader = S3Cdn.reader(moto_s3.endpoint_url, s3_bucket, ADMIN_KEYS, tuning=SMALL_PARTS)
    problem = failure_of(reader.upload_file(REF, write(tmp_path / "src", b"x")))
    assert isinstance(problem, AccessDenied)
    assert "read-only" in problem.detail
    assert isinstance(failure_of(reader.size(REF)), NotFound)


def test_reader_from_config_holds_only_the_read_keys() -> None:
    """Built from a cdn.yaml that has both pairs, a reader signs with the read keys: the request
    that reaches the endpoint names the read key and holds neither secret."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def answer_once() -> None:
        connection, _ = server.accept()
        with connection:
            received.append(connection.recv(65536))
            connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    config = CdnConfig(
        endpoint=f"http://127.0.0.1:{server.getsockname()[1]}",
        bucket="models",
        read_keys=S3Keys("AKIAREAD", "read-secret"),
        write_keys=S3Keys("AKIAWRITE", "write-secret"),
    )
    reader = value_of_result(S3Cdn.from_config(config, write=False))
    assert isinstance(failure_of(reader.size(REF)), NotFound)
    thread.join(timeout=5)
    server.close()
    reader.close()
    request = received[0]
    assert b"Credential=AKIAREAD/" in request
    assert b"AKIAWRITE" not in request and b"secret" not in request
    assert not reader.writable
    assert "secret" not in repr(reader)
    no_write = S3Cdn.from_config(config.without_write_keys(), write=True)
    assert no_write.failure().field == "write"


def value_of_result(result: object) -> S3Cdn:
    """The S3Cdn inside a successful pure Result."""
    assert isinstance(result, Success)
    cdn = result.unwrap()
    assert isinstance(cdn, S3Cdn)
    return cdn


@pytest.mark.parametrize(
    "keys",
    [S3Keys("AKIANOSUCHKEY0000000", "whatever-secret-value"), None],
    ids=["unknown key id", "wrong secret"],
)
def test_bad_keys_are_access_denied(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path, keys: S3Keys | None
) -> None:
    """An unknown key id or a wrong secret is AccessDenied, and the secret is not in the error."""
    real = moto_s3.create_keys("reader", READ_ACTIONS, s3_bucket)
    used = keys or S3Keys(real.access_key_id, "wrong-secret-value")
    with moto_s3.enforce_iam():
        reader = S3Cdn.reader(moto_s3.endpoint_url, s3_bucket, used, tuning=SMALL_PARTS)
        problem = failure_of(reader.download_file(REF, tmp_path / "dest"))
    assert isinstance(problem, AccessDenied)
    assert "403" in problem.detail
    assert used.secret_access_key not in problem.describe()


def test_missing_bucket_is_not_found(moto_s3: MotoS3, tmp_path: Path) -> None:
    """A bucket that does not exist is NotFound naming the bucket, for uploads too."""
    cdn = S3Cdn.writer(moto_s3.endpoint_url, "no-such-bucket-here", ADMIN_KEYS, tuning=SMALL_PARTS)
    problem = failure_of(cdn.upload_file(REF, write(tmp_path / "src", b"data")))
    assert isinstance(problem, NotFound)
    assert "no-such-bucket-here" in problem.what


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_refused_connection_is_transient(tmp_path: Path) -> None:
    """Nothing listening on the endpoint is a Transient failure (one attempt: retries are the
    core's)."""
    tuning = S3Tuning(connect_timeout=2.0, read_timeout=2.0)
    cdn = S3Cdn.reader(
        f"http://127.0.0.1:{_closed_port()}", "models", S3Keys("AKIAX", "s"), tuning=tuning
    )
    problem = failure_of(cdn.download_file(REF, tmp_path / "dest"))
    assert isinstance(problem, Transient)
    assert not (tmp_path / "dest").exists()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a stalled peer)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_stalled_endpoint_times_out(silent_endpoint: str, tmp_path: Path) -> None:
    """A peer that accepts but never answers fails as TimedOut with the configured read timeout."""
    tuning = S3Tuning(connect_timeout=1.0, read_timeout=0.5)
    cdn = S3Cdn.reader(silent_endpoint, "models", S3Keys("AKIAX", "s"), tuning=tuning)
    problem = failure_of(cdn.size(REF))
    assert problem == TimedOut(f"CDN object {REF.key}", 0.5)


def test_tuning_keeps_the_pool_at_least_as_large_as_concurrency() -> None:
    """Every part in flight gets a pooled connection; parts are at least S3's 5 MiB."""
    assert S3Tuning(max_concurrency=32).pool_size >= 32
    assert S3Tuning(max_concurrency=1).pool_size >= 1
    with pytest.raises(ValueError, match="5 MiB"):
        S3Tuning(multipart_chunksize=MIB)


def test_directory_cdn_refuses_a_folder_linked_outside_its_root(tmp_path: Path) -> None:
    """A folder symlinked out of the CDN root is neither read nor written."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "resnet.bin.big").write_bytes(b"secret")
    (root / "models").symlink_to(outside)
    cdn = DirectoryCdn(root)
    assert isinstance(failure_of(cdn.size(REF)), AccessDenied)
    assert isinstance(failure_of(cdn.download_file(REF, tmp_path / "dest")), AccessDenied)
    assert isinstance(failure_of(cdn.upload_file(REF, write(tmp_path / "s", b"x"))), AccessDenied)
    assert (outside / "resnet.bin.big").read_bytes() == b"secret"


def test_directory_cdn_leaves_no_temp_files_after_a_failed_upload(tmp_path: Path) -> None:
    """The temp file of a failed upload is removed; the folder holds only finished objects."""
    cdn = DirectoryCdn(tmp_path / "root")
    value_of(cdn.upload_file(REF, write(tmp_path / "a", b"old")))
    source = write(tmp_path / "b", payload(3 * MIB, seed=15))
    assert isinstance(
        failure_of(cdn.upload_file(REF, source, progress=FailAfter(MIB))), StorageFailed
    )
    assert sorted(p.name for p in (tmp_path / "root" / "models").iterdir()) == ["resnet.bin.big"]
