"""Scripts written from the seed documents run unmodified against the reference server and S3.

The three shapes the original client served (``seeds/000``: api_client and cdn_manager used by
train and exports and start_inference; ``seeds/002``: the loader's binary_split), each calling the
documented names with the documented positional arguments: a train/export script, an inference
start-up configured by an original-style ``config.yaml``, and a loader service that unlocks a
version's images into a real dockerd. Plus the original's data: a resource published in the
original format (AES-CBC under one shared key, no header) with its big part in the original layout
(the folder is the bucket, ``name.big`` at its root), read online with ``key``.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault import ApiClient, ApiCredentials, CDNCredentials, CDNManager, binary_split
from splitvault.adapters.docker_cli import DockerCliEngine
from splitvault.adapters.linux_hardware import LinuxHardware
from splitvault.adapters.system import SystemRandom
from splitvault.app.client import images
from splitvault.app.client.bootstrap import HARDWARE_APP_KEY
from splitvault.app.client.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
)
from splitvault.app.server.api import grant, set_cdn_config
from splitvault.domain.config import S3Keys
from splitvault.domain.legacy import seal_legacy_bytes
from splitvault.domain.ref import ResourceRef
from splitvault.domain.signature import split_signed
from tests.support.dockerd import (  # noqa: F401 - `dockerd` is a fixture pytest finds by name
    PrivateDockerd,
    dockerd,
    image_name,
    import_image,
    list_images,
    remove_images,
)
from tests.support.results import value
from tests.support.stack import DOWNLOADER, PASSWORD, UPLOADER, Stack

SHARED_KEY = bytes(range(32))  # the original's one resource key, as scripts held it (hex)
KEY_HEX = SHARED_KEY.hex()
READ = ["s3:GetObject", "s3:ListBucket"]
WRITE = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:AbortMultipartUpload"]


@pytest.fixture
def script_env(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment a deployed script runs in: SPLITVAULT_* and a private home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("SPLITVAULT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SPLITVAULT_API_URL", stack.url)
    for name in ("SPLITVAULT_EMAIL", "SPLITVAULT_PASSWORD", "SPLITVAULT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SPLITVAULT_IMAGE_REGISTRY", "SPLITVAULT_IMAGE_SERVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SPLITVAULT_IMAGE_VERSION", raising=False)
    return home


def _as(monkeypatch: pytest.MonkeyPatch, email: str, cache: Path) -> None:
    monkeypatch.setenv("SPLITVAULT_EMAIL", email)
    monkeypatch.setenv("SPLITVAULT_PASSWORD", PASSWORD)
    monkeypatch.setenv("SPLITVAULT_CACHE_DIR", str(cache))


def _original_layout(stack: Stack) -> tuple[str, S3Keys, S3Keys]:
    """A folder whose bucket is its own name (the original layout), with IAM key pairs."""
    folder = f"orig-{uuid.uuid4().hex[:10]}"
    stack.moto.s3_client().create_bucket(Bucket=folder)
    value(grant(stack.store, UPLOADER, [folder], read=True, write=True))
    value(grant(stack.store, DOWNLOADER, [folder], read=True, write=False))
    return (
        folder,
        stack.moto.create_keys("downloader", READ, folder),
        stack.moto.create_keys("uploader", WRITE, folder),
    )


def _serve_original_cdn_yaml(stack: Stack, downloader: S3Keys, uploader: S3Keys) -> None:
    """The server's cdn.yaml in the original's fields: host and two key pairs, no bucket."""
    stored = set_cdn_config(
        stack.data_dir,
        {
            "host": stack.moto.endpoint_url,
            "downloader_access_key": downloader.access_key_id,
            "downloader_access_secret": downloader.secret_access_key,
            "uploader_access_key": uploader.access_key_id,
            "uploader_access_secret": uploader.secret_access_key,
        },
    )
    assert is_successful(stored), unsafe_perform_io(stored.failure()).describe()


def _zip_model(size: int) -> bytes:
    """A model file a loader reads through a file object (as torch.load reads its zip)."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("model/data.pkl", b"\x80\x04K*.")
        archive.writestr("model/weights", os.urandom(size))
    return sink.getvalue()


# --- a train/export script ----------------------------------------------------------------------


def test_a_train_export_script_runs_unmodified(
    stack: Stack, script_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ApiClient(), login(), upload_big_small_resource(bytes, name, folder, key), upload_file,
    upload_to_cdn and CDNManager(CDNCredentials(...)).upload/download as train.py used them."""
    _as(monkeypatch, UPLOADER, tmp_path / "trainer-cache")
    model = _zip_model(3_000_000)
    folder, downloader, uploader = _original_layout(stack)
    monkeypatch.chdir(tmp_path)

    # --- the script, as written against the original client ---
    api_client = ApiClient()
    api_client.login()
    api_client.upload_big_small_resource(model, "model.pt", "models", KEY_HEX)
    api_client.upload_file("classes.json", b'["cat", "dog"]', "models")
    api_client.upload_to_cdn("models", "export-notes.big", b"exported at epoch 10")
    cdn = CDNManager(
        CDNCredentials(
            stack.moto.endpoint_url,
            downloader.access_key_id,
            downloader.secret_access_key,
            uploader.access_key_id,
            uploader.secret_access_key,
        )
    )
    uploaded = cdn.upload(folder, "dataset.big", bytearray(b"labelled frames" * 1000))
    downloaded = cdn.download(folder, "dataset.big")
    # --- end of the script ---

    assert uploaded is True and downloaded is True
    assert (tmp_path / "dataset.big").read_bytes() == b"labelled frames" * 1000
    s3 = stack.moto.s3_client()
    original_layout = s3.get_object(Bucket=folder, Key="dataset.big")["Body"].read()
    assert original_layout == b"labelled frames" * 1000
    assert s3.get_object(Bucket=stack.bucket, Key="models/export-notes.big")["Body"].read() == (
        b"exported at epoch 10"
    )
    assert cdn.download(folder, "absent.big") is False
    assert cdn.last_failure is not None and "absent.big" in cdn.last_failure.describe()
    api_client.close()

    _as(monkeypatch, DOWNLOADER, tmp_path / "reader-cache")
    with ApiClient() as reader:
        assert reader.load_big_small_resource("model.pt", "models", KEY_HEX) == model
        with pytest.raises(IntegrityError, match="publisher key"):
            reader.load_big_small_resource("model.pt", "models")
        assert reader.load_bytes("classes.json", "models") == b'["cat", "dog"]'
        assert reader.download_from_cdn("models", "export-notes.big") == b"exported at epoch 10"


def test_upload_big_small_resource_still_takes_a_path(
    stack: Stack, script_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path as ``resource`` streams the file; the bytes come back identical."""
    _as(monkeypatch, UPLOADER, tmp_path / "cache")
    data = os.urandom(1_500_000)
    (tmp_path / "weights.bin").write_bytes(data)
    with ApiClient() as client:
        client.upload_big_small_resource(str(tmp_path / "weights.bin"), "weights.bin", "models")
        assert client.load_big_small_resource("weights.bin", "models") == data


# --- an inference start-up ----------------------------------------------------------------------


def test_an_inference_start_up_configured_by_an_original_config_yaml(
    stack: Stack,
    script_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """config.yaml in the original's fields (url, email, password) configures ApiClient(); a
    readable password gets the warning; the model loads as bytes and as a file object."""
    model = _zip_model(2_000_000)
    with ApiClient(ApiCredentials(stack.url, UPLOADER, PASSWORD), cache_dir=tmp_path / "pub") as up:
        up.upload_big_small_resource(model, "detector.pt", "models")
        up.upload_file("thresholds.json", b'{"conf": 0.4}', "models")
    monkeypatch.delenv("SPLITVAULT_API_URL")
    config = script_env / ".config" / "splitvault" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"url: {stack.url}\nemail: {DOWNLOADER}\npassword: '{PASSWORD}'\n")
    config.chmod(0o644)
    monkeypatch.setenv("SPLITVAULT_CACHE_DIR", str(tmp_path / "edge-cache"))

    # --- start_inference.py ---
    with caplog.at_level(logging.WARNING, logger="splitvault"):
        api_client = ApiClient()
    model_bytes = api_client.load_big_small_resource("detector.pt", "models")
    thresholds = api_client.load_bytes("thresholds.json", "models")
    # --- end ---

    assert model_bytes == model and isinstance(model_bytes, bytes)
    assert thresholds == b'{"conf": 0.4}'
    warned = [r.getMessage() for r in caplog.records if "holds a secret" in r.getMessage()]
    assert warned and "chmod 600" in warned[0] and PASSWORD not in warned[0]
    with api_client.open_resource("detector.pt", "models") as handle:
        with zipfile.ZipFile(handle) as archive:
            assert archive.read("model/data.pkl") == b"\x80\x04K*."
        handle.seek(0)
        assert handle.read() == model
    with pytest.raises(NotFoundError):
        api_client.load_big_small_resource("absent.pt", "models")
    with pytest.raises(InvalidNameError):
        api_client.load_big_small_resource("../detector.pt", "models")
    api_client.close()


def test_a_malformed_config_file_is_refused_at_construction(
    script_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ``url`` and ``api_url`` in one file: ``ConfigError`` naming them, at ``ApiClient()``."""
    config = script_env / "bad.yaml"
    config.write_text("url: https://a.example\napi_url: https://b.example\n")
    monkeypatch.setenv("SPLITVAULT_CONFIG", str(config))
    with pytest.raises(ConfigError, match="api_url or url"):
        ApiClient()


# --- the original's data --------------------------------------------------------------------------


def test_a_resource_in_the_original_format_and_layout_is_read_online_with_key(
    stack: Stack, script_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small part at the API, ``name.big`` at the root of the folder's bucket, AES-CBC under the
    shared key: ``load_big_small_resource(name, folder, key)`` returns the plaintext; the server's
    original-style cdn.yaml reaches that layout; a wrong or missing key is refused."""
    folder, downloader, uploader = _original_layout(stack)
    _serve_original_cdn_yaml(stack, downloader, uploader)
    plaintext = os.urandom(700_001)
    small, big = seal_legacy_bytes(plaintext, SHARED_KEY, os.urandom(16))
    publisher = stack.client(UPLOADER)
    assert is_successful(publisher.api.upload_small_part(ResourceRef(folder, "yolo.pt"), small))
    stack.moto.s3_client().put_object(Bucket=folder, Key="yolo.pt.big", Body=big)
    _as(monkeypatch, DOWNLOADER, tmp_path / "cache")

    with ApiClient() as api_client:
        assert api_client.load_big_small_resource("yolo.pt", folder, KEY_HEX) == plaintext
        assert api_client.download_from_cdn(folder, "yolo.pt.big") == big
        with pytest.raises(ConfigError, match="original format"):
            api_client.load_big_small_resource("yolo.pt", folder)
        with pytest.raises(IntegrityError):
            api_client.load_big_small_resource("yolo.pt", folder, bytes(32).hex())
        with pytest.raises(AuthError):
            api_client.upload_to_cdn(folder, "evil.big", b"downloaders hold read keys only")
    assert not list((tmp_path / "cache").rglob(".legacy-*"))


# --- a loader service with a real dockerd ---------------------------------------------------------


@pytest.fixture
def loader_version(dockerd: PrivateDockerd) -> Iterator[str]:
    version = f"seed{os.getpid()}x{uuid.uuid4().hex[:6]}"
    yield version
    remove_images(dockerd, [image_name("seed.test", s, version) for s in ("api", "worker")])


@pytest.mark.docker
@pytest.mark.usefixtures("script_env")
def test_a_loader_service_unlocks_and_checks_a_version_without_configuration(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dockerd: PrivateDockerd,
    loader_version: str,
) -> None:
    """set_credentials_from_dict(email, password), a session token, download_key_fragment(url,
    token) fetching the latest version, decrypt_archive, docker_load and check_images_loaded
    (the images the archive declared, no service list configured)."""
    version = loader_version
    names = [image_name("seed.test", service, version) for service in ("api", "worker")]
    for name in names:
        import_image(dockerd, name)
    archive = tmp_path / f"images-{version}.svlt"
    sealed = images.seal_images(
        names,
        version,
        archive,
        engine_cli=DockerCliEngine(dockerd.docker_host),
        fragments=stack.client(UPLOADER).api,
        random=SystemRandom(),
    )
    assert is_successful(sealed)
    remove_images(dockerd, names)
    monkeypatch.setenv("DOCKER_HOST", dockerd.docker_host)
    monkeypatch.setenv("SPLITVAULT_CACHE_DIR", str(tmp_path / "loader-cache"))
    tar = tmp_path / "images.tar"

    # --- the loader's main.py ---
    api_client = ApiClient()
    api_client.set_credentials_from_dict(DOWNLOADER, PASSWORD)
    before = binary_split.check_images_loaded(version)
    key_fragment = binary_split.download_key_fragment(stack.url, api_client.session_token())
    binary_split.decrypt_archive(str(archive), key_fragment, str(tar))
    binary_split.docker_load(str(tar))
    after = binary_split.check_images_loaded(version)
    # --- end ---

    assert before is False and after is True
    assert set(names) <= list_images(dockerd)
    assert binary_split.declared_images(version) == tuple(sorted(names))
    monkeypatch.setenv("SPLITVAULT_IMAGE_SERVICES", "api")
    assert binary_split.check_images_loaded(version) is True  # narrowed to one service
    monkeypatch.setenv("SPLITVAULT_IMAGE_SERVICES", "api,cache")
    assert binary_split.check_images_loaded(version) is False  # the archive declared no cache
    with pytest.raises(AuthError):
        api_client.set_credentials_from_dict(DOWNLOADER, "wrong password")
    api_client.close()


def test_migrate_republishes_an_original_format_resource_as_v1(
    stack: Stack,
    script_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``splitvault migrate NAME --folder F --key-file K``: afterwards the small part is v1,
    the plaintext reads back without the shared key, and a second run leaves it alone."""
    from splitvault.app.cli.main import main
    from splitvault.domain.format_v1 import MAGIC

    folder, downloader, uploader = _original_layout(stack)
    _serve_original_cdn_yaml(stack, downloader, uploader)
    plaintext = os.urandom(400_000)
    small, big = seal_legacy_bytes(plaintext, SHARED_KEY, os.urandom(16))
    ref = ResourceRef(folder, "old.pt")
    # This machine's real fingerprint: the CLI below enrols it, and the account's one device
    # must be the same one.
    this_machine = LinuxHardware(HARDWARE_APP_KEY).fingerprint().value
    uploader_client = stack.client(UPLOADER, machine=this_machine)
    assert is_successful(uploader_client.api.upload_small_part(ref, small))
    stack.moto.s3_client().put_object(Bucket=folder, Key="old.pt.big", Body=big)
    key_file = tmp_path / "shared.key"
    key_file.write_text(KEY_HEX + "\n")
    _as(monkeypatch, UPLOADER, tmp_path / "migrate-cache")

    command = ["migrate", "old.pt", "--folder", folder, "--key-file", str(key_file)]
    assert main(["--json", *command]) == 0
    assert f'"migrated": ["{folder}/old.pt"]' in capsys.readouterr().out
    migrated = split_signed(stack.small_part(ref))  # v1, signed by the uploader's account key
    assert migrated is not None and migrated.inner.startswith(MAGIC)
    _as(monkeypatch, DOWNLOADER, tmp_path / "reader-cache")
    with ApiClient() as reader:
        assert reader.load_big_small_resource("old.pt", folder) == plaintext
    _as(monkeypatch, UPLOADER, tmp_path / "migrate-cache")
    assert main(command) == 0
    assert "already v1" in capsys.readouterr().out
