"""The ``ContainerEngine`` port over the Docker Engine API on the daemon's unix socket.

``POST /images/load?quiet=1`` receives the archive as the request body, streamed from the file in
1 MiB pieces with a ``Content-Length`` (never read whole), and answers ``200`` with JSON lines. A
failed load still answers ``200``: the failure is a line carrying ``error``/``errorDetail``, so
the body is read to the end and any such line turns the load into an ``EngineFailed`` with the
daemon's own message. ``stream`` lines saying ``Loaded image: NAME`` or ``Loaded image ID:
sha256:...`` name what was loaded. ``GET /images/{name}/json`` answers ``404`` for an absent
image. The archive is checked to be whole first (``adapters.image_archive``), because dockerd
keeps the images it registered before it found a truncation. httpx types stay inside this
module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.adapters.image_archive import check_image_archive
from splitvault.adapters.lean_httpx import httpx
from splitvault.domain.errors import EngineFailed, EngineFailure

log = logging.getLogger("splitvault.docker_api")

DEFAULT_TIMEOUT = 600.0
CONNECT_TIMEOUT = 10.0
READ_PIECE = 1 << 20
_BASE_URL = "http://docker"
_LOADED = "Loaded image: "
_LOADED_ID = "Loaded image ID: "
_MAX_MESSAGE = 500


def parse_load_lines(lines: Iterable[str]) -> tuple[tuple[str, ...], str | None]:
    """Read ``/images/load`` JSON lines: ``(loaded names, the first error message or None)``.

    Lines that are not JSON objects are ignored (a daemon may interleave blank keep-alives);
    an ``errorDetail.message`` is preferred over the terser ``error`` field.
    """
    loaded: list[str] = []
    error: str | None = None
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            item = json.loads(text)
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        detail = item.get("errorDetail")
        message = detail.get("message") if isinstance(detail, dict) else None
        if message is None and "error" in item:
            message = item["error"]
        if message is not None and error is None:
            error = str(message).strip() or "unspecified error"
        stream = item.get("stream")
        if isinstance(stream, str):
            for raw in stream.splitlines():
                piece = raw.strip()
                for prefix in (_LOADED_ID, _LOADED):
                    if piece.startswith(prefix):
                        loaded.append(piece[len(prefix) :].strip())
                        break
    return tuple(loaded), error


def _daemon_message(response: httpx.Response) -> str:
    """The ``message`` of a Docker error body, or its text, shortened."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:_MAX_MESSAGE]
    return response.text.strip()[:_MAX_MESSAGE] or response.reason_phrase


def _pieces(handle: BinaryIO) -> Iterator[bytes]:
    while piece := handle.read(READ_PIECE):
        yield piece


def _check_name(name: str) -> str | None:
    """Why ``name`` cannot go into a URL path, or ``None``: refuse anything that could escape it."""
    if not name or len(name) > 512:
        return "an image name is 1 to 512 characters"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in name):
        return "an image name has no spaces or control characters"
    if name.startswith("/") or ".." in name.split("/"):
        return "an image name has no leading '/' or '..' component"
    return None


class DockerApiEngine:
    """A ``ContainerEngine`` speaking the Docker Engine API over the daemon's unix socket.

    Args:
        socket_path: the daemon's socket (``/var/run/docker.sock`` or a private one).
        timeout: seconds to wait for the daemon between bytes (a large load may take this long
            to answer); connecting gives up after ``CONNECT_TIMEOUT``.

    Fails with ``EngineFailed`` when the socket is missing or refuses, the daemon stalls, answers
    with an error status, or reports an error line inside a ``200`` load response.
    """

    def __init__(self, socket_path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._socket_path = socket_path
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"DockerApiEngine(socket_path={str(self._socket_path)!r})"

    def _client(self) -> httpx.Client:
        # One client per call: calls are few and a unix-socket connection is cheap, and nothing
        # is left open between them.
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self._socket_path)),
            base_url=_BASE_URL,
            timeout=httpx.Timeout(self._timeout, connect=min(CONNECT_TIMEOUT, self._timeout)),
        )

    def _transport_failure(self, what: str, error: httpx.HTTPError) -> EngineFailed:
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            return EngineFailed(
                f"the docker daemon at {self._socket_path} is not reachable: {error}; "
                "check that dockerd is running and the socket path is right"
            )
        if isinstance(error, httpx.TimeoutException):
            return EngineFailed(
                f"{what}: the docker daemon at {self._socket_path} did not answer within "
                f"{self._timeout:g} s"
            )
        return EngineFailed(
            f"{what}: the connection to the docker daemon at {self._socket_path} failed: "
            f"{type(error).__name__}: {error}"
        )

    def load(self, tar: Path) -> IOResult[tuple[str, ...], EngineFailure]:
        """Stream ``tar`` to ``POST /images/load``; returns the names the daemon reported."""
        return check_image_archive(tar).bind(lambda _: self._post_archive(tar))

    def _post_archive(self, tar: Path) -> IOResult[tuple[str, ...], EngineFailure]:
        what = f"loading {tar}"
        try:
            handle = tar.open("rb")
        except OSError as error:
            return IOFailure(
                EngineFailed(f"cannot read the image archive {tar}: {error.strerror or error}")
            )
        try:
            with handle, self._client() as client:
                size = str(tar.stat().st_size)
                with client.stream(
                    "POST",
                    "/images/load",
                    params={"quiet": "1"},
                    headers={"Content-Type": "application/x-tar", "Content-Length": size},
                    content=_pieces(handle),
                ) as response:
                    if response.status_code != httpx.codes.OK:
                        response.read()
                        return IOFailure(
                            EngineFailed(
                                f"{what}: the daemon answered {response.status_code}: "
                                f"{_daemon_message(response)}"
                            )
                        )
                    loaded, refused = parse_load_lines(response.iter_lines())
        except httpx.HTTPError as http_error:
            return IOFailure(self._transport_failure(what, http_error))
        except OSError as os_error:
            return IOFailure(
                EngineFailed(
                    f"cannot read the image archive {tar}: {os_error.strerror or os_error}"
                )
            )
        if refused is not None:
            return IOFailure(EngineFailed(f"the docker daemon refused {tar}: {refused}"))
        if not loaded:
            return IOFailure(EngineFailed(f"{what}: the daemon reported no loaded image"))
        log.info("loaded %d image(s) from %s", len(loaded), tar)
        return IOSuccess(loaded)

    def has_image(self, name: str) -> IOResult[bool, EngineFailure]:
        """Whether ``name`` is present, through ``GET /images/{name}/json``."""
        invalid = _check_name(name)
        if invalid is not None:
            return IOFailure(EngineFailed(f"cannot look up image {name!r}: {invalid}"))
        what = f"inspecting image {name}"
        try:
            with self._client() as client:
                response = client.get(f"/images/{quote(name, safe='/:@')}/json")
        except httpx.HTTPError as error:
            return IOFailure(self._transport_failure(what, error))
        if response.status_code == httpx.codes.OK:
            return IOSuccess(True)
        if response.status_code == httpx.codes.NOT_FOUND:
            return IOSuccess(False)
        return IOFailure(
            EngineFailed(
                f"{what}: the daemon answered {response.status_code}: {_daemon_message(response)}"
            )
        )
