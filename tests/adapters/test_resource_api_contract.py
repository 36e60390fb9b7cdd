"""Contract of the ``ResourceApi`` and ``KeyFragments`` ports, run against every adapter.

Each adapter is built by a factory in ``ADAPTERS`` and talks to a real reference server on
loopback. Today there is one adapter (httpx); a new one joins by adding a factory. The tests speak
only the ports' methods and the failure values from ``domain.errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from returns.io import IOResult

from splitvault.app.server.runner import RunningServer
from splitvault.domain.errors import AccessDenied, AuthFailed, HardwareMismatch, NotFound
from splitvault.domain.ports import ApiFailure, KeyFragments, ResourceApi
from splitvault.domain.ref import ResourceRef
from tests.support.results import failure, value
from tests.support.server_fixtures import served, user_template  # noqa: F401 - fixtures
from tests.support.server_world import (
    DOWNLOADER,
    OTHER_DOWNLOADER,
    PASSWORD,
    UPLOADER,
    AppSlot,
    ServerWorld,
    running_world,
)


class ApiAdapter(ResourceApi, KeyFragments, Protocol):
    """What the contract needs: both ports on one object."""


class Factory(Protocol):
    """An adapter for one account on one (simulated) machine."""

    def __call__(self, email: str, password: str, *, machine: str = ...) -> ApiAdapter: ...


def _httpx_factory(world: ServerWorld) -> Factory:
    return world.client


ADAPTERS: dict[str, Callable[[ServerWorld], Factory]] = {"httpx": _httpx_factory}


@pytest.fixture(params=sorted(ADAPTERS))
def connect(
    request: pytest.FixtureRequest,
    user_template: Path,
    tmp_path: Path,
    served: tuple[RunningServer, AppSlot],
) -> Iterator[Factory]:
    with running_world(user_template, tmp_path, served) as world:
        yield ADAPTERS[request.param](world)


REF = ResourceRef("models", "resnet.small")
SMALL_PART = b"header+key material+first ciphertext bytes" * 10


def test_uploaded_names_are_listed_sorted(connect: Factory) -> None:
    """An uploader's small parts appear in the folder listing, sorted by name."""
    api = connect(UPLOADER, PASSWORD)
    for name in ("b.bin", "a.bin", "c.bin"):
        value(api.upload_small_part(ResourceRef("models", name), b"x"))
    assert value(api.list_folder("models")) == ("a.bin", "b.bin", "c.bin")


def test_empty_folder_lists_nothing(connect: Factory) -> None:
    """A folder nobody uploaded to lists as empty, not as missing."""
    assert value(connect(DOWNLOADER, PASSWORD).list_folder("nothing-here")) == ()


def test_download_is_the_small_part_opened_on_this_device(connect: Factory) -> None:
    """The download answers the uploaded bytes (the adapter opened the device envelope)."""
    value(connect(UPLOADER, PASSWORD).upload_small_part(REF, SMALL_PART))
    assert value(connect(DOWNLOADER, PASSWORD).download_small_part(REF)) == SMALL_PART


@pytest.mark.parametrize(
    "name", ['say "hi".bin', "per%22cent", "a b", "ü名.bin", "#frag?q=1&x", "semi;colon=x"]
)
def test_odd_names_round_trip(connect: Factory, name: str) -> None:
    """Names with quotes, percent signs, spaces, Unicode or URL syntax arrive unchanged."""
    api = connect(UPLOADER, PASSWORD)
    ref = ResourceRef("odd folder %", name)
    value(api.upload_small_part(ref, b"payload"))
    assert value(api.list_folder(ref.folder)) == (name,)
    assert value(api.download_small_part(ref)) == b"payload"


def test_upload_replaces_the_previous_small_part(connect: Factory) -> None:
    """Uploading again under the same name replaces the bytes (uploads are idempotent puts)."""
    api = connect(UPLOADER, PASSWORD)
    value(api.upload_small_part(REF, b"first"))
    value(api.upload_small_part(REF, b"second"))
    assert value(api.download_small_part(REF)) == b"second"


def test_downloader_cannot_upload(connect: Factory) -> None:
    """A downloader's upload is refused as AccessDenied and stores nothing."""
    result = connect(DOWNLOADER, PASSWORD).upload_small_part(REF, SMALL_PART)
    assert isinstance(failure(result), AccessDenied)
    assert value(connect(UPLOADER, PASSWORD).list_folder(REF.folder)) == ()


def test_second_machine_is_refused_with_the_servers_code(connect: Factory) -> None:
    """The account's first machine enrols; another gets HardwareMismatch (409) that says what
    to do, and the first keeps working."""
    value(connect(UPLOADER, PASSWORD).upload_small_part(REF, SMALL_PART))
    first = connect(OTHER_DOWNLOADER, PASSWORD, machine="first-machine")
    value(first.download_small_part(REF))
    second = connect(OTHER_DOWNLOADER, PASSWORD, machine="second-machine")
    refused = failure(second.download_small_part(REF))
    assert isinstance(refused, HardwareMismatch)
    assert refused.error_code == "HardwareMismatch"
    assert "reset-binding" in refused.message
    assert value(first.download_small_part(REF)) == SMALL_PART


def test_unknown_resource_is_not_found(connect: Factory) -> None:
    """Downloading a name nobody uploaded is NotFound naming the resource."""
    missing = ResourceRef("models", "never-uploaded")
    refused = failure(connect(DOWNLOADER, PASSWORD).download_small_part(missing))
    assert refused == NotFound("models/never-uploaded")


def test_wrong_password_is_auth_failed(connect: Factory) -> None:
    """Every call with a wrong password fails as AuthFailed (401), not as a retryable error."""
    api = connect(DOWNLOADER, "not the password")
    results: list[IOResult[object, ApiFailure]] = [
        api.list_folder("models"),
        api.download_small_part(REF),
        api.get_fragment("1.0.0"),
    ]
    for result in results:
        refused = failure(result)
        assert isinstance(refused, AuthFailed)
        assert refused.status == 401


def test_key_fragments_by_role(connect: Factory) -> None:
    """Uploaders register fragments, anyone logged in reads them, downloaders cannot write."""
    uploader, downloader = connect(UPLOADER, PASSWORD), connect(DOWNLOADER, PASSWORD)
    value(uploader.put_fragment("2.1.0", b"\x00fragment\xff"))
    assert value(downloader.get_fragment("2.1.0")) == b"\x00fragment\xff"
    assert isinstance(failure(downloader.put_fragment("2.1.0", b"evil")), AccessDenied)
    assert value(uploader.get_fragment("2.1.0")) == b"\x00fragment\xff"
    assert isinstance(failure(downloader.get_fragment("9.9.9")), NotFound)
