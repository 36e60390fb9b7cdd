"""The measuring child of ``splitvault bench``: one operation per process, and nothing else.

The bench runs every row of ours as ``python -m splitvault.app.tools.bench_child OP PARAMS``, so
the child imports only this module and what its operation needs: the parent's tables, statistics,
subprocess and temp-file machinery (about 11 ms of CPU per process) would otherwise be billed to
every row, the seal and open rows above all. The parameters (keys too) come in a 0600 JSON file;
the child prints its own peak RSS as JSON on its last line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from returns.io import IOResult
from returns.pipeline import is_successful
from returns.unsafe import unsafe_perform_io

from splitvault.domain import errors
from splitvault.domain.ref import ResourceRef

_T = TypeVar("_T")

BENCH_REF = ResourceRef("bench", "resource")
BUCKET = "bench"


def child_operation(op: str, args: dict[str, Any]) -> None:
    """Run one operation; it imports only what it needs, so its start-up cost is its own."""
    workers = args.get("workers")
    if op == "baseline":
        return
    if op in {"v1-seal", "v1-open"}:
        from splitvault.app.client import pipeline

        if op == "v1-seal":
            sealed = pipeline.seal_file(
                Path(args["source"]),
                Path(args["big"]),
                ref=BENCH_REF,
                dek=bytes.fromhex(args["key"]),
                file_id=bytes.fromhex(args["file_id"]),
                workers=workers,
            )
            Path(args["small"]).write_bytes(unwrap(sealed).small_part)
        else:
            opened = pipeline.open_file(
                Path(args["small"]).read_bytes(),
                Path(args["big"]),
                Path(args["out"]),
                workers=workers,
            )
            unwrap(opened)
        return
    if op in {"upload", "download"}:
        client = bench_client(args)
        try:
            ref = ResourceRef(args["folder"], args["name"])
            if op == "upload":
                unwrap(client.upload(ref, Path(args["source"])))
            else:
                report = unwrap(client.download(ref, Path(args["out"])))
                if report.cache_hit != args["expect_hit"]:
                    raise SystemExit(f"bench operation failed: cache hit was {report.cache_hit}")
        finally:
            client.close()
        return
    if op in {"boto3-upload", "boto3-download"}:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=args["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",  # noqa: S106 - loopback moto only
        )
        if op == "boto3-upload":
            s3.upload_file(args["source"], BUCKET, args["key"])
        else:
            s3.download_file(BUCKET, args["key"], args["out"])
        return
    raise ValueError(f"unknown bench operation {op!r}")


def bench_client(args: dict[str, Any]) -> Any:
    """A client of the bench's reference server, through the real composition root."""
    from splitvault.adapters.fixed_hardware import FixedHardware
    from splitvault.app.client.bootstrap import bootstrap
    from splitvault.domain.config import ClientConfig

    config = ClientConfig(
        cache_dir=Path(args["cache"]),
        api_url=args["url"],
        email=args["email"],
        password=args["password"],
        workers=args["workers"],
    )
    return unwrap(bootstrap(config, hardware=FixedHardware("bench")))


def unwrap(result: IOResult[_T, errors.Problem]) -> _T:
    """The success value of an IOResult, or exit the child with the failure's description."""
    if not is_successful(result):
        failure = unsafe_perform_io(result.failure())
        raise SystemExit(f"bench operation failed: {failure.describe()}")
    return unsafe_perform_io(result.unwrap())


def peak_rss_of(pid: int | str = "self") -> int | None:
    """A process's own peak RSS in bytes (``VmHWM``), or None where /proc does not say.

    Not ``ru_maxrss``: Linux carries the parent's peak across fork and exec into it, so a child
    of a large parent would report the parent's size.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def child_main(argv: Sequence[str]) -> None:
    """Entry point of a measuring child: run one operation, print its own peak RSS as JSON."""
    op = argv[0]
    args = json.loads(Path(argv[1]).read_text()) if len(argv) > 1 else {}
    child_operation(op, args)
    print(json.dumps({"peak_rss": peak_rss_of()}))


if __name__ == "__main__":
    child_main(sys.argv[1:])
