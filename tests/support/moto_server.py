"""A moto S3 server on 127.0.0.1 for tests: a real HTTP endpoint, not in-process patching.

Use it from a conftest::

    from tests.support.moto_server import moto_s3_fixture
    moto_s3 = moto_s3_fixture()            # session-scoped fixture named "moto_s3"

    def test_something(moto_s3):
        bucket = moto_s3.create_bucket()
        keys = moto_s3.create_keys("reader", ["s3:GetObject"], bucket)
        with moto_s3.enforce_iam():        # requests are now checked against IAM policies
            ...

moto keeps its state in the test process: every server started here shares the same buckets and
IAM users, and IAM enforcement is a process-wide switch (``enforce_iam`` restores it on exit).
Bucket names are unique per call, so tests do not see each other's objects.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from splitvault.adapters.s3_cdn import MIB, S3Tuning
from splitvault.domain.config import S3Keys

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Scope = Literal["session", "package", "module", "class", "function"]

REGION = "us-east-1"
# moto accepts any keys while IAM is not enforced; these name the test harness in its logs.
ADMIN_KEYS = S3Keys("AKIAMOTOADMIN0000000", "moto-admin-secret")


class MotoS3:
    """A running moto server and helpers to set buckets and IAM users up on it."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.region = REGION

    def stop(self) -> None:
        """Stop the server thread."""
        self._server.stop()

    def _client(self, service: str, keys: S3Keys) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            region_name=self.region,
        )
        return session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint_url,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def s3_client(self, keys: S3Keys = ADMIN_KEYS) -> S3Client:
        """A plain boto3 S3 client for setting up and inspecting state."""
        client: S3Client = self._client("s3", keys)
        return client

    def create_bucket(self, prefix: str = "splitvault-test") -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.s3_client().create_bucket(Bucket=name)
        return name

    def create_keys(self, user: str, actions: Sequence[str], bucket: str) -> S3Keys:
        """An IAM user allowed ``actions`` on ``bucket`` and its objects, and its access keys.

        Call this before ``enforce_iam`` (setting IAM up is itself an IAM request).
        """
        iam = self._client("iam", ADMIN_KEYS)  # no IAM stubs installed: typed as Any
        name = f"{user}-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": list(actions),
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        iam.put_user_policy(UserName=name, PolicyName="cdn", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return S3Keys(key["AccessKeyId"], key["SecretAccessKey"])

    def _set_auth_threshold(self, count: str) -> str:
        """Set moto's switch (enforce IAM after ``count`` requests); return the previous value."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        return str(answer.get("PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT", "inf"))

    @contextmanager
    def enforce_iam(self) -> Iterator[None]:
        """Within the block, every request must be signed by a known key and allowed by IAM."""
        previous = self._set_auth_threshold("0")
        try:
            yield
        finally:
            self._set_auth_threshold(previous)


@contextmanager
def running_moto_s3() -> Iterator[MotoS3]:
    """Start a moto S3 server on 127.0.0.1 for the duration of the block."""
    server = MotoS3()
    try:
        yield server
    finally:
        server.stop()


def moto_s3_fixture(
    *, name: str = "moto_s3", scope: Scope = "session"
) -> Callable[[], Iterator[MotoS3]]:
    """A pytest fixture that starts one moto server for its scope; assign it in a conftest."""

    def fixture() -> Iterator[MotoS3]:
        with running_moto_s3() as server:
            yield server

    return pytest.fixture(scope=scope, name=name)(fixture)


# The smallest parts S3 allows, so "more than two parts" stays a ~11 MiB object.
SMALL_PARTS = S3Tuning(
    multipart_threshold=5 * MIB,
    multipart_chunksize=5 * MIB,
    max_concurrency=4,
    connect_timeout=5.0,
    read_timeout=30.0,
)


@attrs.frozen
class MotoProcess:
    """A moto S3 server running as a process of its own."""

    endpoint_url: str
    process: subprocess.Popen[bytes]


@contextmanager
def moto_process(log_dir: Path) -> Iterator[MotoProcess]:
    """A moto S3 server in a process of its own on 127.0.0.1, for tests that measure the
    client's process: an in-process server would take the clients' GIL and CPU.
    Its state is its own (IAM is not enforced there); stopped with SIGTERM, then SIGKILL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    endpoint = f"http://127.0.0.1:{port}"
    with open(log_dir / f"moto-{port}.log", "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the moto server exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the moto server did not start") from None
                time.sleep(0.1)
        yield MotoProcess(endpoint, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
