"""The ``ContainerEngine`` port through the ``docker`` command-line client.

``docker load -i`` loads an image archive and prints one ``Loaded image: NAME`` (or ``Loaded image
ID: sha256:...``) line per image; ``docker image inspect`` answers whether an image exists (exit
code 1 with "No such image" means absent). Every other outcome — the binary missing, the daemon
down, a refused archive, a hung command — becomes an ``EngineFailed`` that says what happened.
The archive is checked to be whole first (``adapters.image_archive``): dockerd keeps the images
it registered before it found a truncation. The daemon is chosen with ``DOCKER_HOST`` in the
child's environment only, so a private daemon never changes the caller's process environment.
``docker save`` (the publisher side) is here too, outside the port, because only the CLI can
write an archive without buffering it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from returns.io import IOFailure, IOResult, IOSuccess

from splitvault.adapters.image_archive import check_image_archive
from splitvault.domain.errors import EngineFailed, EngineFailure

log = logging.getLogger("splitvault.docker_cli")

DEFAULT_TIMEOUT = 600.0
_LOADED = "Loaded image: "
_LOADED_ID = "Loaded image ID: "
# What the client prints when it cannot reach the daemon (wording varies across versions).
_UNREACHABLE = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "error during connect",
)


def parse_loaded(stdout: str) -> tuple[str, ...]:
    """The image names (or ``sha256:`` ids) in ``docker load`` output, in order."""
    names: list[str] = []
    for line in stdout.splitlines():
        text = line.strip()
        for prefix in (_LOADED_ID, _LOADED):
            if text.startswith(prefix):
                names.append(text[len(prefix) :].strip())
                break
    return tuple(names)


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"


class DockerCliEngine:
    """A ``ContainerEngine`` that runs the ``docker`` CLI.

    Args:
        docker_host: the daemon's address (``unix:///path/docker.sock``) passed to the CLI as
            ``DOCKER_HOST``; ``None`` uses the CLI's own default (environment or context).
        binary: the CLI to run (a name on ``PATH`` or a path).
        timeout: seconds one command may take before it is killed.

    Fails with ``EngineFailed`` when the binary is missing, the daemon is not reachable, the
    command times out or the daemon refuses the archive.
    """

    def __init__(
        self,
        docker_host: str | None = None,
        binary: str = "docker",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._docker_host = docker_host
        self._binary = binary
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"DockerCliEngine(docker_host={self._docker_host!r}, binary={self._binary!r})"

    @property
    def _where(self) -> str:
        return self._docker_host or os.environ.get("DOCKER_HOST") or "the default socket"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._docker_host is not None:
            env["DOCKER_HOST"] = self._docker_host
            # A context would be ignored anyway; drop it so the CLI does not warn about it.
            env.pop("DOCKER_CONTEXT", None)
        return env

    def _run(
        self, args: Sequence[str], what: str
    ) -> IOResult[subprocess.CompletedProcess[str], EngineFailure]:
        command = [self._binary, *args]
        try:
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                command,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self._timeout,
                check=False,
            )
        except FileNotFoundError:
            return IOFailure(
                EngineFailed(
                    f"the docker CLI {self._binary!r} was not found; install it "
                    "(apt-get install docker.io) or configure its path"
                )
            )
        except subprocess.TimeoutExpired:
            return IOFailure(
                EngineFailed(f"{what} did not finish within {self._timeout:g} s at {self._where}")
            )
        except OSError as error:
            return IOFailure(
                EngineFailed(f"could not run {self._binary!r}: {error.strerror or error}")
            )
        return IOSuccess(done)

    def _failed(self, what: str, done: subprocess.CompletedProcess[str]) -> EngineFailed:
        message = _last_lines(done.stderr or done.stdout)
        lowered = message.lower()
        if any(marker in lowered for marker in _UNREACHABLE):
            return EngineFailed(f"the docker daemon at {self._where} is not reachable: {message}")
        return EngineFailed(f"{what} failed (exit {done.returncode}): {message}")

    def load(self, tar: Path) -> IOResult[tuple[str, ...], EngineFailure]:
        """``docker load -i tar``; returns the names the CLI reported as loaded."""
        what = f"docker load of {tar}"

        def outcome(
            done: subprocess.CompletedProcess[str],
        ) -> IOResult[tuple[str, ...], EngineFailure]:
            if done.returncode != 0:
                return IOFailure(self._failed(what, done))
            loaded = parse_loaded(done.stdout)
            if not loaded:
                return IOFailure(
                    EngineFailed(f"{what} reported no image: {_last_lines(done.stdout)}")
                )
            log.info("loaded %d image(s) from %s", len(loaded), tar)
            return IOSuccess(loaded)

        return (
            check_image_archive(tar)
            .bind(lambda _: self._run(["load", "-i", str(tar)], what))
            .bind(outcome)
        )

    def has_image(self, name: str) -> IOResult[bool, EngineFailure]:
        """Whether ``name`` is present, through ``docker image inspect``."""
        what = f"docker image inspect {name}"

        def outcome(done: subprocess.CompletedProcess[str]) -> IOResult[bool, EngineFailure]:
            if done.returncode == 0:
                return IOSuccess(True)
            if done.returncode == 1 and "no such image" in done.stderr.lower():
                return IOSuccess(False)
            return IOFailure(self._failed(what, done))

        # "--" so a name starting with "-" is never read as an option.
        return self._run(["image", "inspect", "--format", "{{.Id}}", "--", name], what).bind(
            outcome
        )

    def save(self, images: Sequence[str], out: Path) -> IOResult[None, EngineFailure]:
        """``docker save -o out IMAGES...``: write the images into one archive tar."""
        if not images:
            return IOFailure(EngineFailed("docker save needs at least one image"))
        what = f"docker save of {', '.join(images)}"

        def outcome(done: subprocess.CompletedProcess[str]) -> IOResult[None, EngineFailure]:
            if done.returncode != 0:
                return IOFailure(self._failed(what, done))
            return IOSuccess(None)

        return self._run(["save", "-o", str(out), "--", *images], what).bind(outcome)
