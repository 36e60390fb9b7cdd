"""Progress reporting for long transfers: a rich progress bar on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextmanager
def transfer_progress(
    description: str, total: int, *, enabled: bool | None = None
) -> Iterator[Callable[[int], None]]:
    """Yield a thread-safe callback taking byte counts done since the last call."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield _ignore
        return
    lock = threading.Lock()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int) -> None:
            with lock:
                bar.update(task, advance=done)

        yield advance


def _ignore(_done: int) -> None:
    return None
