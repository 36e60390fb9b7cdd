"""``check_images_loaded(version)`` checks what the archive declared, narrowed by config."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from returns.io import IOResult, IOSuccess

from splitvault import binary_split
from splitvault.app.client.errors import InvalidNameError
from splitvault.domain.errors import EngineFailure
from tests.support.dockerd import rootfs_tar

NAMES = ("reg.example/api:1.4", "reg.example/worker:1.4", "reg.example/api:1.3")


class FakeEngine:
    """Holds some images; records every name it was asked about and every tar loaded."""

    def __init__(self, present: Sequence[str] = ()) -> None:
        self.present = set(present)
        self.asked: list[str] = []
        self.loaded: list[Path] = []

    def load(self, tar: Path) -> IOResult[tuple[str, ...], EngineFailure]:
        self.loaded.append(tar)
        return IOSuccess(())

    def has_image(self, name: str) -> IOResult[bool, EngineFailure]:
        self.asked.append(name)
        return IOSuccess(name in self.present)


def _archive(path: Path, tags: Sequence[str]) -> Path:
    manifest = json.dumps(
        [{"Config": "config.json", "RepoTags": list(tags), "Layers": ["layer/layer.tar"]}]
    ).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in (
            ("layer/layer.tar", rootfs_tar("hi")),
            ("config.json", b"{}"),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPLITVAULT_STATE_DIR", str(tmp_path / "state"))
    for name in ("SPLITVAULT_IMAGE_SERVICES", "SPLITVAULT_IMAGE_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "state"


def test_loading_records_the_images_per_version(tmp_path: Path) -> None:
    """docker_load remembers the manifest's tags, grouped by their version."""
    engine = FakeEngine()
    binary_split.docker_load(_archive(tmp_path / "a.tar", NAMES), engine=engine)
    assert engine.loaded == [tmp_path / "a.tar"]
    assert binary_split.declared_images("1.4") == NAMES[:2]
    assert binary_split.declared_images("1.3") == NAMES[2:]
    assert binary_split.declared_images("9.9") is None


def test_without_configuration_the_declared_images_are_checked(tmp_path: Path) -> None:
    """No service list anywhere: the recorded images decide, and all must be present."""
    binary_split.docker_load(_archive(tmp_path / "a.tar", NAMES), engine=FakeEngine())
    assert binary_split.check_images_loaded("1.4", engine=FakeEngine(NAMES)) is True
    partial = FakeEngine(NAMES[:1])
    assert binary_split.check_images_loaded("1.4", engine=partial) is False
    assert partial.asked == list(NAMES[:2])


def test_configured_services_narrow_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPLITVAULT_IMAGE_SERVICES=api checks only api; a service not declared is never there."""
    binary_split.docker_load(_archive(tmp_path / "a.tar", NAMES), engine=FakeEngine())
    monkeypatch.setenv("SPLITVAULT_IMAGE_SERVICES", "api")
    only_api = FakeEngine(NAMES[:1])
    assert binary_split.check_images_loaded("1.4", engine=only_api) is True
    assert only_api.asked == [NAMES[0]]
    monkeypatch.setenv("SPLITVAULT_IMAGE_SERVICES", "api,cache")
    assert binary_split.check_images_loaded("1.4", engine=FakeEngine(NAMES)) is False


def test_a_version_never_unlocked_here_is_not_loaded() -> None:
    """Nothing recorded and nothing configured: False, without asking the engine."""
    engine = FakeEngine(NAMES)
    assert binary_split.check_images_loaded("1.4", engine=engine) is False
    assert engine.asked == []


def test_configured_registry_and_services_name_the_images_when_nothing_was_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The configuration alone still works as before: {registry}/{service}:{version}."""
    monkeypatch.setenv("SPLITVAULT_IMAGE_REGISTRY", "reg.example")
    monkeypatch.setenv("SPLITVAULT_IMAGE_SERVICES", "api,worker")
    engine = FakeEngine(NAMES)
    assert binary_split.check_images_loaded("1.4", engine=engine) is True
    assert engine.asked == list(NAMES[:2])


def test_a_version_that_is_not_a_tag_is_refused() -> None:
    """``InvalidNameError`` before any lookup."""
    with pytest.raises(InvalidNameError):
        binary_split.check_images_loaded("../1.4", engine=FakeEngine())
