"""httpx without its command-line tool, for every adapter that speaks HTTP through it.

``import httpx`` also imports its command-line client when ``click`` is installed, and with it
``rich`` and ``pygments``: about half of httpx's import cost (0.05-0.15 CPU-s per process here),
paid by every download for a tool we never run. A ``None`` entry in ``sys.modules`` makes importing
that module raise ``ImportError`` (the import system's documented behaviour), so httpx takes its own
fallback for a missing CLI. Only ``httpx._main`` is affected, only when httpx is not loaded yet, and
``python -m httpx`` runs in a process of its own. The adapters import httpx from here.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not importable"

import httpx  # noqa: E402 - must follow the line above

__all__ = ["httpx"]
