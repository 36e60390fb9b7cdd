"""Least privilege: what a downloader receives, holds and can do.

A downloader account is handed ``cdn.yaml`` with read keys only; with moto's IAM enforced those
keys cannot write, delete or start a multipart upload, even through an adapter told to try. The
server's own files stay out of reach of any route. A download-only client, after a full download,
holds no write key anywhere in its object graph (walked with ``gc``; an uploader's client is the
control that shows the walk finds keys when they are there).
"""

from __future__ import annotations

import contextlib
import gc
import types
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

from splitvault import ApiClient, ApiCredentials
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.adapters.s3_cdn import S3Cdn
from splitvault.domain.config import S3Keys
from splitvault.domain.errors import AccessDenied
from splitvault.domain.ref import ResourceRef
from tests.security.hostile import failure, ok
from tests.support.devices import device_login, device_token, open_answer
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack, download, upload

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REF = ResourceRef("models", "least.onnx")


def _cdn_yaml_for(stack: Stack, email: str, machine: str) -> dict[str, object]:
    """``config/cdn.yaml`` as the server serves it to ``email``, opened from its envelope."""
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        login = device_login(http, email, PASSWORD, machine=machine)
        answer = http.post(
            "/resources/get/config", json={"file_name": "cdn.yaml"}, headers=login.headers
        )
    text = open_answer(answer, login.key, "cdn-config", "config/cdn.yaml")
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def _s3(stack: Stack, access: S3Keys) -> S3Client:
    client: S3Client = boto3.session.Session(
        aws_access_key_id=access.access_key_id,
        aws_secret_access_key=access.secret_access_key,
        region_name=stack.moto.region,
    ).client(
        "s3",
        endpoint_url=stack.moto.endpoint_url,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )
    return client


def _denied(call: Callable[[], object]) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    code: str = raised.value.response["Error"]["Code"]
    return code


def test_a_downloaders_cdn_keys_cannot_write_under_iam(stack: Stack, tmp_path: Path) -> None:
    """The downloader's ``cdn.yaml`` has no write section and no write secret; under enforced
    IAM its read keys can read but not put, delete or start a multipart upload, even through an
    ``S3Cdn`` built as a writer around them; the bucket is unchanged."""
    (tmp_path / "model.onnx").write_bytes(b"weights" * 10_000)
    ok(upload(stack.client(UPLOADER), REF, tmp_path / "model.onnx"))
    served = _cdn_yaml_for(stack, DOWNLOADER, "reader-box")
    assert "write" not in served
    assert stack.write_keys.secret_access_key not in yaml.safe_dump(served)
    assert stack.write_keys.access_key_id not in yaml.safe_dump(served)
    read = served["read"]
    assert isinstance(read, dict)
    read_keys = S3Keys(read["access_key_id"], read["secret_access_key"])
    assert read_keys == stack.read_keys

    before = stack.moto.s3_client().list_objects_v2(Bucket=stack.bucket)["Contents"]
    client = _s3(stack, read_keys)
    pretender = S3Cdn(
        endpoint_url=stack.moto.endpoint_url,
        bucket=stack.bucket,
        region=stack.moto.region,
        keys=read_keys,
        writable=True,  # lie to the adapter: the bucket must still refuse
    )
    with stack.moto.enforce_iam():
        body = client.get_object(Bucket=stack.bucket, Key=stack.big_key(REF))["Body"].read()
        assert len(body) > 0
        denied = {
            _denied(
                lambda: client.put_object(Bucket=stack.bucket, Key=stack.big_key(REF), Body=b"x")
            ),
            _denied(
                lambda: client.put_object(Bucket=stack.bucket, Key="models/new.big", Body=b"x")
            ),
            _denied(lambda: client.delete_object(Bucket=stack.bucket, Key=stack.big_key(REF))),
            _denied(
                lambda: client.create_multipart_upload(Bucket=stack.bucket, Key="models/mp.big")
            ),
        }
        assert denied == {"AccessDenied"}
        refused = failure(pretender.upload_file(REF, tmp_path / "model.onnx"))
        assert isinstance(refused, AccessDenied)
    pretender.close()
    after = stack.moto.s3_client().list_objects_v2(Bucket=stack.bucket)["Contents"]
    assert [(o["Key"], o["ETag"]) for o in after] == [(o["Key"], o["ETag"]) for o in before]


def test_no_route_reaches_the_servers_own_files(stack: Stack) -> None:
    """Through the config folder, key fragments or listings, no account reads ``users.json`` or
    ``jwt.key`` and nobody can overwrite ``cdn.yaml``."""
    for email in (DOWNLOADER, UPLOADER):
        auth = {"Authorization": f"Bearer {device_token(stack.url, email, PASSWORD)}"}
        with httpx.Client(base_url=stack.url, headers=auth) as http:
            for name in ("users.json", "jwt.key", "cdn.yaml.tmp", "CDN.YAML"):
                answer = http.post(
                    "/resources/get/config",
                    json={"file_name": name},
                )
                assert answer.status_code == 404, (name, answer.text)
            for version in ("jwt", "users", "jwt.key"):
                assert http.get(f"/keys/{version}").status_code == 404
            assert http.get("/resources/list/config").json() == {"files": ["cdn.yaml"]}
            upload = http.post(
                "/resources/config",
                files={"file": ("cdn.yaml", b"endpoint: http://attacker", "text/plain")},
            )
            assert upload.status_code == 403
    assert b"attacker" not in (ok(stack.store.get_setting("cdn_config")) or b"")


_SKIP = (types.ModuleType, type, types.FrameType, types.CodeType)


def _reachable_texts(root: object, *, depth: int = 14, limit: int = 400_000) -> Iterator[str]:
    """Every str (and decoded bytes) reachable from ``root`` through instance references.

    Modules, classes, code and a function's globals are not followed: they lead to the whole
    interpreter, not to what this object holds. Closures and defaults are followed.
    """
    seen: set[int] = set()
    queue: deque[tuple[object, int]] = deque([(root, 0)])
    while queue and len(seen) < limit:
        obj, level = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            yield obj
            continue
        if isinstance(obj, bytes | bytearray | memoryview):
            yield bytes(obj).decode("latin-1")
            continue
        if isinstance(obj, _SKIP) or level >= depth:
            continue
        if isinstance(obj, dict) and "__builtins__" in obj:
            continue  # a module's globals
        if isinstance(obj, types.FunctionType):
            children: list[object] = list(obj.__defaults__ or ())
            for cell in obj.__closure__ or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    children.append(cell.cell_contents)
        else:
            children = gc.get_referents(obj)
        queue.extend((child, level + 1) for child in children)


def _holds(root: object, secret: str) -> bool:
    return any(secret in text for text in _reachable_texts(root))


def test_a_download_only_client_never_holds_the_write_keys(stack: Stack, tmp_path: Path) -> None:
    """After full downloads through the ``Client`` and the facade, no object reachable from a
    downloader's client holds the write secret or write key id; the same walk finds them in an
    uploader's client (the control)."""
    (tmp_path / "model.onnx").write_bytes(b"weights" * 20_000)
    writer = stack.client(UPLOADER)
    ok(upload(writer, REF, tmp_path / "model.onnx"))
    assert _holds(writer, stack.write_keys.secret_access_key), "the walk cannot see keys"

    reader = stack.client(DOWNLOADER, machine="reader-box")
    ok(download(reader, REF, tmp_path / "client.onnx"))
    assert failure(reader.cdn(write=True))  # asking for write access changes nothing
    facade = ApiClient(
        ApiCredentials(stack.url, DOWNLOADER, PASSWORD),
        cache_dir=tmp_path / "facade-cache",
        hardware=FixedHardware("reader-box"),
    )
    facade.download_resource_file(REF.name, REF.folder, tmp_path / "facade.onnx")
    assert (tmp_path / "facade.onnx").read_bytes() == (tmp_path / "model.onnx").read_bytes()

    for root in (reader, facade):
        assert _holds(root, stack.read_keys.secret_access_key), "the reader's keys are reachable"
        assert not _holds(root, stack.write_keys.secret_access_key)
        assert not _holds(root, stack.write_keys.access_key_id)
    facade.close()
