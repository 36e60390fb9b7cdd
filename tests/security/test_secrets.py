"""Secrets never leak into logs, exception messages or reprs.

With every logger that could see a secret at DEBUG (ours, httpx, httpcore, botocore, boto3,
urllib3, s3transfer), the whole flow runs against the real server and a moto S3 server: upload,
download, a small file, listing, image seal and unlock, and a set of failures. Then every log
record (formatted message, args and exception), every exception raised (with its chain) and the
repr of every object the facade and the ``Client`` hand out are searched for the password, JWTs,
the derived transport and password keys, data keys and subkeys (hex, base64, raw), the key
fragment and its archive keys, and both S3 secret keys.

botocore's own DEBUG records carry request signatures (each ``Authorization`` header): that is a
limit of botocore, documented, and our records must never contain one. A ``splitvault -vv`` run
in a subprocess proves the CLI does not switch botocore's DEBUG output on.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from returns.io import IOResult, IOSuccess
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault import ApiClient, ApiCredentials, CDNCredentials, CDNManager
from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.adapters.system import SystemRandom
from splitvault.app.client import images
from splitvault.app.client.bootstrap import Client
from splitvault.app.client.errors import SplitvaultError
from splitvault.domain import device, keys
from splitvault.domain.config import CdnConfig
from splitvault.domain.errors import EngineFailure, Problem
from splitvault.domain.format_v1 import parse_header
from splitvault.domain.ref import ResourceRef
from splitvault.domain.signature import split_signed
from tests.security.hostile import RecordingEngine, capture_debug_logs, ok
from tests.support.devices import derive
from tests.support.dockerd import handmade_archive
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack

REF = ResourceRef("models", "secret-model.onnx")
CONFIG_REF = ResourceRef("configs", "settings.json")
REGISTRY = "registry.test"
VERSION = "v42"
IMAGE = f"{REGISTRY}/api:{VERSION}"
JWT = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{16,}")
HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def forms(secret: str | bytes) -> list[str]:
    """How a secret could appear in text: itself, or for bytes hex, base64 and reprs."""
    if isinstance(secret, str):
        return [secret]
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
        secret.decode("latin-1"),
    ]


def leaks(texts: Iterable[str], secrets: dict[str, str | bytes]) -> list[str]:
    """Which named secrets occur in any of ``texts`` (and which JWTs)."""
    found = []
    joined = "\n".join(texts)
    for name, secret in secrets.items():
        if any(form in joined for form in forms(secret)):
            found.append(name)
    found.extend(f"JWT {match[:12]}..." for match in JWT.findall(joined))
    return found


def exception_texts(error: BaseException) -> Iterator[str]:
    """str and repr of an exception, its failure value and its whole chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield repr(current.args)
        if isinstance(current, SplitvaultError):
            yield repr(current.failure)
            yield current.failure.describe()
        current = current.__cause__ or current.__context__


class TarSaver:
    """An ``ImageSaver`` fake that 'saves' a handmade docker archive naming ``IMAGE``."""

    def save(self, images_: Sequence[str], out: Path) -> IOResult[None, EngineFailure]:
        handmade_archive(out, IMAGE, config=b"{}")
        return IOSuccess(None)


class Flow:
    """Runs the flow, keeping every exception and every object handed out to the caller."""

    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []
        self.failures: list[Problem] = []
        self.exposed: list[object] = []

    def expect_raise(self, action: Callable[[], object]) -> None:
        try:
            action()
        except SplitvaultError as error:
            self.exceptions.append(error)
        else:
            raise AssertionError("expected a SplitvaultError")

    def expect_failure(self, result: IOResult[object, Problem]) -> None:
        assert not is_successful(result)
        self.failures.append(unsafe_perform_io(result.failure()))

    def keep(self, *objects: object) -> None:
        self.exposed.extend(objects)


def _run_flow(stack: Stack, tmp_path: Path, flow: Flow) -> tuple[Client, Client]:
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(300_000))
    (tmp_path / "settings.json").write_bytes(b'{"threshold": 0.5}')
    home = {"HOME": str(tmp_path)}
    publisher = ApiClient(
        ApiCredentials(stack.url, UPLOADER, PASSWORD),
        cache_dir=tmp_path / "pub-cache",
        hardware=FixedHardware("publisher-box"),
        environ=home,
    )
    reader = ApiClient(
        ApiCredentials(stack.url, DOWNLOADER, PASSWORD),
        cache_dir=tmp_path / "reader-cache",
        hardware=FixedHardware("reader-box"),
        environ=home,
    )
    with publisher, reader:
        flow.keep(publisher, reader, ApiCredentials(stack.url, DOWNLOADER, PASSWORD))
        flow.keep(publisher.upload_resource_file(model, REF.name, REF.folder))
        publisher.upload_file(
            CONFIG_REF.name, (tmp_path / "settings.json").read_bytes(), CONFIG_REF.folder
        )
        flow.keep(reader.download_resource_file(REF.name, REF.folder, tmp_path / "got.onnx"))
        flow.keep(reader.download_resource_file(REF.name, REF.folder, tmp_path / "again.onnx"))
        assert reader.load_bytes(CONFIG_REF.name, CONFIG_REF.folder) == b'{"threshold": 0.5}'
        assert reader.list_files(REF.folder) == [REF.name]
        assert (tmp_path / "got.onnx").read_bytes() == model.read_bytes()
        # Failures: a missing resource, a wrong password, another machine, a read-only upload.
        flow.expect_raise(lambda: reader.download_resource_file("absent", "models", tmp_path / "x"))
        flow.expect_raise(lambda: reader.load_bytes("absent", "configs"))
        with ApiClient(
            ApiCredentials(stack.url, DOWNLOADER, "wrong password"),
            cache_dir=tmp_path / "c2",
            environ=home,
        ) as wrong:
            flow.expect_raise(wrong.login)
        with ApiClient(
            ApiCredentials(stack.url, DOWNLOADER, PASSWORD),
            cache_dir=tmp_path / "c3",
            hardware=FixedHardware("thief-box"),
            environ=home,
        ) as thief:
            flow.expect_raise(lambda: thief.load_bytes(CONFIG_REF.name, CONFIG_REF.folder))
        read_only = CDNManager(
            CdnConfig(stack.moto.endpoint_url, stack.bucket, read_keys=stack.read_keys)
        )
        downloader_only = CDNCredentials(
            stack.moto.endpoint_url,
            stack.read_keys.access_key_id,
            stack.read_keys.secret_access_key,
        )
        flow.keep(read_only, downloader_only, CDNManager(downloader_only))
        flow.expect_raise(lambda: read_only.upload("models", "evil.onnx.big", model.read_bytes()))
        # A raw object at the original's key (our big parts sit under their version's key).
        raw = f"{REF.folder}/{REF.name}.raw.big"
        stack.moto.s3_client().put_object(Bucket=stack.bucket, Key=raw, Body=b"raw object")
        assert read_only.download(REF.folder, f"{REF.name}.raw.big", dest=tmp_path / "raw.big")

    # Images: seal with the uploader's client, unlock with the downloader's.
    sealer, loader = (
        stack.client(UPLOADER, machine="publisher-box"),
        stack.client(DOWNLOADER, machine="reader-box"),
    )
    archive = tmp_path / "images.svlt"
    flow.keep(
        ok(
            images.seal_images(
                [IMAGE],
                VERSION,
                archive,
                engine_cli=TarSaver(),
                fragments=sealer.api,
                random=SystemRandom(),
            )
        )
    )
    engine = RecordingEngine(present=[IMAGE])

    def unlock(path: Path, version: str) -> IOResult[images.UnlockReport, Problem]:
        return images.unlock_images(
            path,
            version,
            fragments=loader.api,
            engine=engine,
            services=["api"],
            registry=REGISTRY,
            workdir=tmp_path,
        )

    flow.keep(ok(unlock(archive, VERSION)))
    tampered = tmp_path / "tampered.svlt"
    data = bytearray(archive.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    flow.expect_failure(unlock(tampered, VERSION))
    flow.expect_failure(unlock(archive, "v43"))  # no fragment for that version
    assert len(engine.loads) == 1
    for client in (sealer, loader):
        flow.keep(
            client,
            client.api,
            client.cache,
            client.hardware,
            client.config,
            client.api.device_key(),
            ok(client.cdn(write=False)),
        )
    flow.keep(ok(sealer.cdn(write=True)))
    return sealer, loader


def _secrets(stack: Stack, sealer: Client, loader: Client) -> dict[str, str | bytes]:
    """Every secret the flow handled, by name."""
    found: dict[str, str | bytes] = {
        "password": PASSWORD,
        "read secret key": stack.read_keys.secret_access_key,
        "write secret key": stack.write_keys.secret_access_key,
    }
    for email, machine in (
        (UPLOADER, "publisher-box"),
        (DOWNLOADER, "reader-box"),
        (DOWNLOADER, "thief-box"),
    ):
        account = ok(stack.store.get_account(email))
        assert account is not None
        found[f"device key {email}@{machine}"] = derive(PASSWORD, account.salt, machine).private
        password_key = device.password_key(PASSWORD, account.salt)
        found[f"password key {email}"] = password_key
        found[f"default publisher seed {email}"] = device.publisher_seed(password_key)
    for client in (sealer, loader):
        session_key = client.api.device_key()
        assert session_key is not None
        found[f"session device key {client.config.email}"] = session_key.private
    signed = split_signed(stack.small_part(REF))  # every upload is signed
    assert signed is not None
    header, _ = parse_header(signed.inner).unwrap()
    dek = header.dek_field
    subkeys = keys.data_subkeys(dek, header.file_id)
    found |= {
        "data key": dek,
        "chunk key": subkeys.chunk_key,
        "header MAC key": subkeys.header_mac_key,
    }
    fragment = stack.fragment(VERSION)
    assert fragment is not None
    found |= {
        "key fragment": fragment,
        "archive data key": keys.archive_dek(fragment),
        "archive wrap key": keys.hkdf(fragment, b"splitvault/v1/archive-dek-wrap"),
    }
    for token_holder in (sealer.api, loader.api):
        token = token_holder._auth._token
        assert token is not None
        found[f"token of {token_holder!r}"] = token
    return found


def test_no_secret_in_any_log_record_exception_or_repr(stack: Stack, tmp_path: Path) -> None:
    """The whole flow at DEBUG logs no secret anywhere, raises no exception that holds one, and
    hands out no object whose repr shows one; our own records carry no request signature."""
    flow = Flow()
    with capture_debug_logs() as logs:
        sealer, loader = _run_flow(stack, tmp_path, flow)
    secrets = _secrets(stack, sealer, loader)

    assert len(logs.records) > 50, "the loggers were not capturing"
    assert leaks(logs.texts(), secrets) == []

    ours = logs.texts("splitvault")
    assert any("bound" in text or "fetching" in text for text in ours)
    # botocore logs each request's signature at DEBUG (its limit, not ours): collect every
    # 64-hex-digit value it logged and make sure none reached our records.
    signatures = {sig for text in logs.texts("botocore") for sig in HEX64.findall(text)}
    for text in ours:
        assert "Signature=" not in text and "Authorization" not in text and "Bearer" not in text
        assert not any(signature in text for signature in signatures)

    assert len(flow.exceptions) == 5 and len(flow.failures) == 2
    exception_text = [text for error in flow.exceptions for text in exception_texts(error)]
    failure_text = [repr(f) for f in flow.failures] + [f.describe() for f in flow.failures]
    assert leaks(exception_text + failure_text, secrets) == []

    reprs = [repr(obj) for obj in flow.exposed]
    assert leaks(reprs, secrets) == []


def test_a_verbose_cli_does_not_switch_on_library_debug_logs(stack: Stack, tmp_path: Path) -> None:
    """``splitvault -vv login`` and ``download`` (a subprocess, real logging setup) print our
    DEBUG records but no botocore signature, no Authorization header, no token, no password."""
    (tmp_path / "model.onnx").write_bytes(os.urandom(50_000))
    with ApiClient(
        ApiCredentials(stack.url, UPLOADER, PASSWORD),
        cache_dir=tmp_path / "pub-cache",
        hardware=FixedHardware("publisher-box"),
        environ={"HOME": str(tmp_path)},
    ) as publisher:
        publisher.upload_resource_file(tmp_path / "model.onnx", REF.name, REF.folder)
    env = {
        **os.environ,
        "SPLITVAULT_API_URL": stack.url,
        "SPLITVAULT_EMAIL": DOWNLOADER,
        "SPLITVAULT_PASSWORD": PASSWORD,
        "SPLITVAULT_CACHE_DIR": str(tmp_path / "cli-cache"),
        "SPLITVAULT_CONFIG": str(tmp_path / "absent.yaml"),
    }
    out = tmp_path / "cli.onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "splitvault.app.cli.main",
            "-vv",
            "download",
            REF.name,
            "--folder",
            REF.folder,
            "--out",
            str(out),
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (tmp_path / "model.onnx").read_bytes()
    assert "DEBUG splitvault." in done.stderr
    for needle in ("Signature=", "Authorization", "AWS4-HMAC-SHA256", "Bearer", PASSWORD):
        assert needle not in done.stderr
    assert JWT.search(done.stderr) is None
    assert stack.read_keys.secret_access_key not in done.stderr
