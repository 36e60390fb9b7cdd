"""``splitvault cache ls | prune [--older-than DURATION] | clear``: look into and tidy the cache.

In the spirit of ``huggingface-cli scan-cache`` / ``delete-cache``: ``ls`` shows every entry (one
per resource version), unfinished fills and temp files with their size, last use and whether a
process is using them; ``prune`` removes what was last used longer ago than ``--older-than``;
``clear`` removes everything. Neither ever removes an entry a reader holds or a fill in progress
(they are listed as kept). The cache directory and its bound come from the usual configuration
(``--cache-dir``, ``SPLITVAULT_CACHE_DIR``, the config file).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any

# ``format_size`` is imported where it is used: ``splitvault --help`` registers this module's
# arguments and must not import returns and the domain's errors on the way (about 0.03 CPU-s).

Report = dict[str, Any]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration(text: str) -> float:
    """Seconds from ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` (a bare number is seconds)."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 12h, 7d or 2w")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cache`` command's own arguments."""
    parser.add_argument("action", choices=("ls", "prune", "clear"), help="what to do")
    parser.add_argument(
        "--older-than",
        type=duration,
        metavar="DURATION",
        help="prune: only what was last used longer ago than this (12h, 7d, 2w)",
    )
    parser.add_argument("--cache-dir", type=Path, help="local cache of big parts")
    parser.add_argument("--config", type=Path, help="config file (default in the user config dir)")


def _open_cache(args: argparse.Namespace) -> Any:
    from splitvault.adapters.config_files import default_config_path, load_client_config
    from splitvault.adapters.file_cache import FileCache
    from splitvault.app.client.errors import unwrap_or_raise

    flags: dict[str, object] = {"cache_dir": args.cache_dir}
    config_path = args.config or default_config_path(os.environ)
    config = unwrap_or_raise(load_client_config(flags, os.environ, config_path))
    return unwrap_or_raise(FileCache.open(config.cache_dir, max_bytes=config.cache_max_bytes))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _item(item: Any) -> dict[str, Any]:
    return {
        "ref": f"{item.folder}/{item.name}",
        "version": item.version,
        "kind": item.kind,
        "bytes": item.size,
        "last_used": item.last_used,
        "in_use": item.in_use,
        "path": str(item.path),
    }


def _table(items: list[dict[str, Any]], now: float) -> list[str]:
    from splitvault.domain.sizes import format_size

    if not items:
        return ["(empty)"]
    rows = [("RESOURCE", "VERSION", "KIND", "SIZE", "LAST USED", "IN USE")]
    for item in items:
        rows.append(
            (
                item["ref"],
                item["version"][:12] or "-",
                item["kind"],
                format_size(item["bytes"]),
                _age(now - item["last_used"]),
                "yes" if item["in_use"] else "",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def run(args: argparse.Namespace) -> Report:
    """``splitvault cache``: list, prune or clear."""
    from splitvault.domain.sizes import format_size

    cache = _open_cache(args)
    now = time.time()
    if args.action == "ls":
        if args.older_than is not None:
            raise SystemExit("splitvault cache ls: --older-than goes with prune")
        items = [_item(item) for item in cache.items()]
        total = sum(item["bytes"] for item in items)
        bound = cache.max_bytes
        lines = _table(items, now)
        lines.append(
            f"{len(items)} item(s), {format_size(total)} in {cache.root}"
            + (f" (bound {format_size(bound)})" if bound is not None else " (no bound)")
        )
        return {
            "root": str(cache.root),
            "max_bytes": bound,
            "total_bytes": total,
            "items": items,
            "text": "\n".join(lines),
        }
    older_than = args.older_than if args.action == "prune" else None
    if args.action == "prune" and older_than is None:
        raise SystemExit("splitvault cache prune: say --older-than DURATION (or use clear)")
    removed = [_item(item) for item in cache.prune(older_than=older_than)]
    kept = [_item(item) for item in cache.items()]
    in_use = [item for item in kept if item["in_use"]]
    freed = sum(item["bytes"] for item in removed)
    text = [f"removed {len(removed)} item(s), freed {format_size(freed)}"]
    if in_use:
        text.append(f"kept {len(in_use)} item(s) in use")
    return {
        "root": str(cache.root),
        "removed": removed,
        "freed_bytes": freed,
        "kept_in_use": in_use,
        "remaining_bytes": sum(item["bytes"] for item in kept),
        "text": "; ".join(text),
    }
