"""Watch directory trees for created files with Linux inotify (ctypes; no extra package).

A snapshot before and after misses a file created and deleted in between (a decrypted temp file
is exactly that); inotify reports every creation as it happens. New sub-directories are watched
as they appear (and scanned, so files made before the watch landed are not lost).
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ISDIR = 0x40000000
_MASK = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE
_EVENT = struct.Struct("iIII")


class CreatedFiles:
    """Every path created (or moved in, or written) under ``roots`` while inside ``with``."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._dirs: dict[int, Path] = {}
        self.paths: set[Path] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        for root in roots:
            self._watch_tree(root, record=False)

    def _watch(self, directory: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd >= 0:
            self._dirs[wd] = directory

    def _watch_tree(self, root: Path, *, record: bool) -> None:
        self._watch(root)
        for path in root.rglob("*"):
            if path.is_dir():
                self._watch(path)
            if record:
                self.paths.add(path)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if ready:
                self._drain()
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                parent = self._dirs.get(wd)
                if parent is None or not raw:
                    continue
                path = parent / os.fsdecode(raw)
                self.paths.add(path)
                if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch_tree(path, record=True)

    def __enter__(self) -> CreatedFiles:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)
