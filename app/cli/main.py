"""The ``splitvault`` command line.

Each subcommand parses its flags, builds what it needs through ``client.bootstrap`` and prints
either a short human summary or, with ``--json``, one JSON object on stdout. Failures print what
went wrong on stderr and exit with the code of their kind (``client.errors``): 2 bad input, 3 auth,
4 not found, 5 integrity, 6 network, 7 configuration, 8 hardware mismatch, 9 local storage,
10 container engine.

Start-up is lazy: this module imports only argparse and the size parser; a subcommand is
registered by the NAME of its function in ``cli.commands``, which is imported only once the
arguments are parsed (``--help`` never loads it), and each command imports the heavy modules
(boto3, httpx, cryptography, rich, the servers) it needs itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], dict[str, Any]]
log = logging.getLogger("splitvault.cli")
# Libraries whose DEBUG output -vv must not switch on (see main).
LIBRARY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore")


ADMIN_HELP = "operate a server's store: users, grants, devices, CDN"


def _size(text: str) -> int:
    """argparse's view of ``domain.sizes.parse_size`` (the one size parser)."""
    # Imported on use: ``--help`` never parses a size, and returns and the domain's errors cost
    # about 0.03 CPU-s to import.
    from returns.result import Failure

    from splitvault.domain.sizes import parse_size

    parsed = parse_size(text)
    if isinstance(parsed, Failure):
        raise argparse.ArgumentTypeError(parsed.failure().detail)
    return parsed.unwrap()


def build_parser(*, admin_commands: bool = True) -> argparse.ArgumentParser:
    """The argument parser with every subcommand.

    ``admin_commands=False`` lists ``admin`` without its subcommands, whose module imports the
    store ports (about 0.02 CPU-s): ``main`` asks for them only when ``admin`` is on the line.
    """
    parser = argparse.ArgumentParser(
        prog="splitvault",
        description="Encrypt and split valuable files between a resource API and a CDN.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: str | Handler, help_text: str) -> argparse.ArgumentParser:
        """Register subcommand ``name`` run by ``cli.commands.<handler>``, or by
        ``cli.<module>.<function>`` for ``handler = "module:function"`` (imported lazily)."""
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        return p

    p = command("seal", "seal", "seal a file into DIR/NAME.small and DIR/NAME.big (offline)")
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, required=True, help="directory for the two parts")
    p.add_argument("--folder", default="local")
    p.add_argument("--name", help="resource name (default: the file's name)")
    p.add_argument("--chunk-size", type=_size, default=None, help="v1 chunk size (default 1MiB)")
    p.add_argument("--publisher-key", type=Path, help="file holding a 32-byte publisher key")
    p.add_argument("--legacy-key", type=Path, help="seal in the legacy CBC suite with this key")

    p = command("open", "open_parts", "join and decrypt SMALL and BIG into FILE (offline)")
    p.add_argument("small", type=Path)
    p.add_argument("big", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--publisher-key", type=Path)
    p.add_argument("--legacy-key", type=Path, help="open a legacy CBC pair with this key")

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api-url", help="resource API base URL (SPLITVAULT_API_URL)")
        p.add_argument("--email", help="account e-mail (SPLITVAULT_EMAIL)")
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from stdin (else SPLITVAULT_PASSWORD or the config file)",
        )
        p.add_argument("--cache-dir", type=Path, help="local cache of big parts")
        p.add_argument("--ca-bundle", type=Path, help="CA bundle for the API's TLS certificate")
        p.add_argument(
            "--insecure-http",
            action="store_true",
            default=None,
            help="allow http:// to a non-loopback API (password and tokens in the clear)",
        )
        p.add_argument("--config", type=Path, help="config file (default in the user config dir)")

    p = command("upload", "upload", "seal FILE and upload it as FOLDER/NAME")
    p.add_argument("file", type=Path)
    p.add_argument("--folder", required=True)
    p.add_argument("--name")
    client_flags(p)

    p = command("download", "download", "download FOLDER/NAME into FILE")
    p.add_argument("name")
    p.add_argument("--folder", required=True)
    p.add_argument("--out", type=Path, required=True)
    client_flags(p)

    p = command("ls", "list_folder", "list the resources of a folder (or one's versions)")
    p.add_argument("folder", help="FOLDER, or FOLDER/NAME with --versions")
    p.add_argument("--versions", action="store_true", help="the kept versions of FOLDER/NAME")
    client_flags(p)

    p = command("rollback", "rollback", "make a kept version of FOLDER/NAME current again")
    p.add_argument("resource", help="FOLDER/NAME")
    p.add_argument("--to", required=True, dest="version", help="a version from ls --versions")
    client_flags(p)

    p = command("login", "login", "check the credentials against the API")
    client_flags(p)

    p = command("fingerprint", "fingerprint", "show this machine's hardware fingerprint")

    p = command("serve", "serve", "run the reference resource API server")
    store = p.add_mutually_exclusive_group(required=True)
    store.add_argument("--data", type=Path, help="server data directory (embedded SQLite store)")
    store.add_argument("--database-url", help="postgresql://… shared by several servers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1, help="server processes on this host")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--concurrency", type=int, default=1024, help="open connections at most")
    p.add_argument("--keep-alive", type=float, default=5.0, help="idle keep-alive seconds")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a request's head may take before the connection is closed",
    )
    p.add_argument("--graceful-seconds", type=float, default=30.0, help="drain time on SIGTERM")
    p.add_argument(
        "--device-limit", type=int, default=1, help="active devices per account (default 1)"
    )
    p.add_argument(
        "--approve-devices",
        action="store_true",
        help="keep every further device pending until 'splitvault admin devices approve ID'",
    )

    p = command("users", "users_add", "add a user (same as: splitvault admin users add)")
    p.add_argument("action", choices=["add"])
    p.add_argument("email")
    p.add_argument("--role", choices=["uploader", "downloader", "admin"], required=True)
    p.add_argument("--data", type=Path, required=True)

    if admin_commands:
        from splitvault.app.cli import admin

        admin.register(command, ADMIN_HELP)
    else:
        command("admin", "admin:no_group", ADMIN_HELP)

    p = command("seal-images", "seal_images", "docker save IMAGES and encrypt the archive")
    p.add_argument("images", nargs="+")
    p.add_argument("--version", required=True)
    p.add_argument("--out", type=Path, required=True)
    client_flags(p)

    p = command("unlock-images", "unlock_images", "decrypt, docker load and check images")
    p.add_argument("archive", type=Path)
    p.add_argument("--version", required=True)
    client_flags(p)

    p = command("migrate", "migrate:migrate", "re-publish original-format resources as format v1")
    p.add_argument("names", nargs="+", help="resource names in FOLDER")
    p.add_argument("--folder", required=True)
    p.add_argument(
        "--key-file", type=Path, required=True, help="file holding the original's shared key"
    )
    p.add_argument(
        "--publisher-key", type=Path, help="wrap the new data keys under this publisher key"
    )
    client_flags(p)

    p = command("demo", "demo", "run the main job end to end on loopback servers")
    p.add_argument("--size", type=_size, default=256 << 20)
    p.add_argument("--offline", action="store_true", help="only seal and open a 64 MiB file")

    p = command(
        "bench", "bench", "CPU per GiB and wall time of seal/open/upload/download next to peers"
    )
    p.add_argument("--size", type=_size, default=1 << 30, help="offline file size (1GiB)")
    p.add_argument("--online-size", type=_size, default=256 << 20, help="S3 rows' size (256MiB)")
    p.add_argument("--offline", action="store_true", help="leave out the S3 rows")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument(
        "--hold-freed-memory",
        action="store_true",
        help="in a VM with free page reporting, keep freed memory in the guest for the run (root)",
    )

    from splitvault.app.cli import cache

    cache.add_arguments(command("cache", "cache:run", "list, prune or clear the local cache"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(admin_commands="admin" in words)
    args = parser.parse_args(words)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if level < logging.INFO:
        # -vv is DEBUG for splitvault only: httpx's and httpcore's DEBUG records print request
        # headers and wire detail (boto3's and botocore's, for code that embeds us, signatures).
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    from splitvault.app.client.errors import SplitvaultError

    if callable(args.handler):  # admin's leaves carry their handler (admin.py stays light)
        handler: Handler = args.handler
    else:
        module, _, function = str(args.handler).rpartition(":")
        handler = getattr(
            importlib.import_module(f"splitvault.app.cli.{module or 'commands'}"), function
        )
    try:
        result = handler(args)
    except SplitvaultError as error:
        if args.json:
            print(json.dumps({"ok": False, "error": type(error).__name__, "message": str(error)}))
        print(f"splitvault {args.command}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"splitvault {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"ok": True, **result}, default=str))
    else:
        text = result.get("text")
        if text:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
