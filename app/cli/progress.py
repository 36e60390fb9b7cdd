"""Progress for long transfers: a rich bar on a terminal when rich is installed, nothing otherwise.

Every producer (the pipeline, the CDN adapters) reports deltas, the bytes done since its last call
(``client.pipeline.Progress``); the bar adds them, so its total is the bytes moved. ``rich`` is the
optional ``[cli]`` extra and is imported only when a bar is really drawn: without it, or off a
terminal, the commands run the same with no bar.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TransferBar:
    """A thread-safe delta counter, drawn as a bar when one is shown.

    Call it with the bytes done since the last call; ``done`` is their sum.
    """

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self.done = 0
        self._bar = bar
        self._task = task
        self._lock = threading.Lock()

    def __call__(self, delta: int) -> None:
        with self._lock:
            self.done += delta
            if self._bar is not None:
                self._bar.update(self._task, advance=delta)


def rich_available() -> bool:
    """Whether the ``[cli]`` extra (rich) is installed, without importing it."""
    return importlib.util.find_spec("rich") is not None


@contextmanager
def transfer_progress(
    description: str, total: int, *, enabled: bool | None = None
) -> Iterator[TransferBar]:
    """Yield a ``TransferBar`` for a transfer of ``total`` bytes (0: unknown).

    The bar is drawn on stderr when ``enabled`` (default: stderr is a terminal) and rich is
    installed; the counter counts either way.
    """
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show or not rich_available():
        yield TransferBar()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        yield TransferBar(bar, bar.add_task(description, total=total or None))
