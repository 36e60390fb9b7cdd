"""``splitvault admin``: the operator's commands over the server's store.

Every command takes ``--data DIR`` (the embedded SQLite store) or ``--database-url URL``
(PostgreSQL), prints a short summary or, with ``--json``, one JSON object. Passwords are read from
stdin; destructive commands (remove, reset-binding, revoke, rm, gc) do nothing without ``--yes``.
No output — text or JSON — ever holds a password, a hash, a salt, a hardware fingerprint, an S3
secret or the token signing key: the values printed are built field by field below, never by
dumping a stored record.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from returns.io import IOResult
from returns.pipeline import is_successful
from returns.result import Failure
from returns.unsafe import unsafe_perform_io

from splitvault.app.client.errors import to_exception
from splitvault.domain.errors import ConfigInvalid, NotFound, Problem
from splitvault.domain.ports import ROLES, Device, Grant, Publisher, ResourceVersion, ServerStore

Report = dict[str, Any]
Command = Callable[[str, Callable[[argparse.Namespace], Report], str], argparse.ArgumentParser]
T = TypeVar("T")
log = logging.getLogger("splitvault.admin")


def _ok(result: IOResult[T, Problem]) -> T:
    if not is_successful(result):
        raise to_exception(unsafe_perform_io(result.failure()))
    return unsafe_perform_io(result.unwrap())


def _store(args: argparse.Namespace) -> ServerStore:
    from splitvault.app.server.stores import open_store

    return _ok(open_store(args.data, args.database_url))


def _with_store(
    work: Callable[[argparse.Namespace, ServerStore], Report],
) -> Callable[[argparse.Namespace], Report]:
    def handler(args: argparse.Namespace) -> Report:
        store = _store(args)
        try:
            return work(args, store)
        finally:
            store.close()

    handler.__name__ = work.__name__
    return handler


def _confirm(args: argparse.Namespace, what: str) -> None:
    if not args.yes:
        raise to_exception(ConfigInvalid("--yes", f"{what} cannot be undone; run again with --yes"))


def _password_from_stdin() -> str:
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise to_exception(ConfigInvalid("password", "read an empty password from stdin"))
    return password


def _email(text: str) -> str:
    from splitvault.app.server.accounts import canonical_email

    return canonical_email(text)


# --- users ----------------------------------------------------------------------------------------


def users_add(args: argparse.Namespace, store: ServerStore) -> Report:
    """Create an account or replace its password and role (ending its sessions)."""
    from splitvault.app.server.accounts import add_user

    password = _password_from_stdin()
    _ok(add_user(store, args.email, password, args.role))
    email = _email(args.email)
    return {"email": email, "role": args.role, "text": f"added {email} ({args.role})"}


def users_list(_args: argparse.Namespace, store: ServerStore) -> Report:
    """Every account: e-mail, role, whether a device is enrolled (active or pending), the
    session generation."""
    accounts = _ok(store.list_accounts())
    enrolled = {d.email for d in _ok(store.list_devices()) if d.status != "revoked"}
    users = [
        {
            "email": account.email,
            "role": account.role,
            "bound": account.email in enrolled,
            "generation": account.generation,
        }
        for account in accounts
    ]
    lines = [
        f"{u['email']:40} {u['role']:10} {'bound' if u['bound'] else 'unbound':8} "
        f"gen {u['generation']}"
        for u in users
    ]
    return {"users": users, "text": "\n".join(lines) or "no users"}


def users_remove(args: argparse.Namespace, store: ServerStore) -> Report:
    """Delete an account with its grants and devices."""
    email = _email(args.email)
    _confirm(args, f"removing {email}")
    if not _ok(store.remove_account(email)):
        raise to_exception(NotFound(f"the account {email}"))
    return {"email": email, "removed": True, "text": f"removed {email}"}


def users_passwd(args: argparse.Namespace, store: ServerStore) -> Report:
    """Set a new password (from stdin); the account's sessions end at their next request."""
    from splitvault.app.server.accounts import change_password

    email = _email(args.email)
    _ok(change_password(store, email, _password_from_stdin()))
    return {"email": email, "text": f"new password for {email}; its sessions have ended"}


def users_reset_binding(args: argparse.Namespace, store: ServerStore) -> Report:
    """Revoke every device an account has enrolled; its sessions end, and the next device to
    enrol is let in as its first."""
    from splitvault.app.server.accounts import reset_binding

    email = _email(args.email)
    _confirm(args, f"resetting the hardware binding of {email}")
    if _ok(store.get_account(email)) is None:
        raise to_exception(NotFound(f"the account {email}"))
    was_bound = _ok(reset_binding(store, email))
    text = f"binding of {email} reset" if was_bound else f"{email} was not bound to a machine"
    return {"email": email, "was_bound": was_bound, "text": text}


# --- grants ---------------------------------------------------------------------------------------


def _grant_view(grant: Grant) -> dict[str, Any]:
    return {"email": grant.email, "folder": grant.folder, "read": grant.read, "write": grant.write}


def _rights(grant: Grant) -> str:
    return "+".join(name for name, on in (("read", grant.read), ("write", grant.write)) if on)


def grants_add(args: argparse.Namespace, store: ServerStore) -> Report:
    """Give an account read and/or write on a folder (replacing its grant there)."""
    from splitvault.domain.ref import parse_folder

    email = _email(args.email)
    if not (args.read or args.write):
        raise to_exception(ConfigInvalid("--read/--write", "give --read, --write or both"))
    parsed = parse_folder(args.folder)
    folder = parsed.value_or(None)
    if folder is None:
        raise to_exception(parsed.failure())
    if _ok(store.get_account(email)) is None:
        raise to_exception(NotFound(f"the account {email}"))
    grant = Grant(email, folder, read=bool(args.read), write=bool(args.write))
    _ok(store.put_grant(grant))
    return {**_grant_view(grant), "text": f"{email} may {_rights(grant)} {folder}"}


def grants_remove(args: argparse.Namespace, store: ServerStore) -> Report:
    """Take an account's grant on a folder away."""
    email = _email(args.email)
    if not _ok(store.remove_grant(email, args.folder)):
        raise to_exception(NotFound(f"a grant of {email} on {args.folder}"))
    return {
        "email": email,
        "folder": args.folder,
        "text": f"{email} lost its grant on {args.folder}",
    }


def grants_list(args: argparse.Namespace, store: ServerStore) -> Report:
    """Grants of one account, or of all."""
    grants = _ok(store.list_grants(_email(args.email) if args.email else None))
    lines = [f"{g.email:40} {g.folder:24} {_rights(g)}" for g in grants]
    return {"grants": [_grant_view(g) for g in grants], "text": "\n".join(lines) or "no grants"}


# --- devices --------------------------------------------------------------------------------------


def _device_view(device: Device) -> dict[str, Any]:
    # The public key is public; the fingerprint's keyed hash is left out all the same.
    return {
        "id": device.device_id,
        "email": device.email,
        "status": device.status,
        "public_key": device.public_key.hex(),
        "enrolled_at": device.created_at,
    }


def devices_list(args: argparse.Namespace, store: ServerStore) -> Report:
    """Enrolled devices of one account, or of all."""
    devices = _ok(store.list_devices(_email(args.email) if args.email else None))
    lines = [f"{d.device_id:36} {d.email:40} {d.status}" for d in devices]
    return {
        "devices": [_device_view(d) for d in devices],
        "text": "\n".join(lines) or "no devices",
    }


def devices_approve(args: argparse.Namespace, store: ServerStore) -> Report:
    """Let a pending device in."""
    device = _ok(store.set_device_status(args.id, "active"))
    return {**_device_view(device), "text": f"device {device.device_id} of {device.email} active"}


def devices_revoke(args: argparse.Namespace, store: ServerStore) -> Report:
    """Shut a device out; the account's sessions end."""
    _confirm(args, f"revoking device {args.id}")
    device = _ok(store.set_device_status(args.id, "revoked"))
    return {
        **_device_view(device),
        "text": f"device {device.device_id} of {device.email} revoked; its sessions have ended",
    }


# --- publisher keys -------------------------------------------------------------------------------


def _publisher_view(publisher: Publisher) -> dict[str, Any]:
    from splitvault.domain.signature import key_id

    return {
        "email": publisher.email,
        "public_key": publisher.public_key.hex(),
        "key_id": key_id(publisher.public_key),
        "recorded_at": publisher.recorded_at,
    }


def publishers_list(args: argparse.Namespace, store: ServerStore) -> Report:
    """Recorded publisher keys (the Ed25519 public keys the server vouches for), of one or all."""
    chosen = _email(args.email) if args.email else None
    publishers = [p for p in _ok(store.list_publishers()) if chosen in (None, p.email)]
    views = [_publisher_view(p) for p in publishers]
    lines = [f"{v['email']:40} {v['key_id']}  {v['public_key']}" for v in views]
    return {"publishers": views, "text": "\n".join(lines) or "no publisher keys"}


def publishers_set(args: argparse.Namespace, store: ServerStore) -> Report:
    """Re-key a publisher: only the new key is accepted from now on (a leaked or rotated key)."""
    from splitvault.domain.signature import key_id, public_key_from_hex

    email = _email(args.email)
    public = public_key_from_hex(args.key)
    if public is None:
        raise to_exception(
            ConfigInvalid("--key", "a publisher public key is 64 hex digits (32 bytes)")
        )
    if _ok(store.get_account(email)) is None:
        raise to_exception(NotFound(f"the account {email}"))
    replaced = _ok(store.set_publisher_key(email, public, time.time()))
    return {
        "email": email,
        "public_key": public.hex(),
        "key_id": key_id(public),
        "replaced": replaced,
        "text": f"{email} now publishes with key {key_id(public)}"
        + ("; the previous key is refused from now on" if replaced else ""),
    }


def publishers_clear(args: argparse.Namespace, store: ServerStore) -> Report:
    """Forget a publisher's key: the account's next signed upload or registration records one."""
    email = _email(args.email)
    _confirm(args, f"clearing the publisher key of {email} (its next signed upload is trusted)")
    if not _ok(store.set_publisher_key(email, None, time.time())):
        raise to_exception(NotFound(f"a publisher key of {email}"))
    return {"email": email, "cleared": True, "text": f"cleared the publisher key of {email}"}


# --- the CDN config -------------------------------------------------------------------------------


def cdn_set(args: argparse.Namespace, store: ServerStore) -> Report:
    """Store the CDN config from a YAML file, in our fields or the original cdn.yaml fields."""
    import yaml

    from splitvault.app.server.accounts import set_cdn_config

    path: Path = args.file
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise to_exception(ConfigInvalid(str(path), f"cannot be read: {exc}")) from None
    except yaml.YAMLError:
        # The parser's message quotes the offending line, which may be a secret.
        raise to_exception(ConfigInvalid(str(path), "is not valid YAML")) from None
    if not isinstance(loaded, dict):
        raise to_exception(ConfigInvalid(str(path), "expected a mapping of fields"))
    _ok(set_cdn_config(store, loaded))
    shown = _cdn_view(store)
    return {"cdn": shown, "text": f"CDN config set: {shown['endpoint']} bucket {shown['bucket']}"}


def _cdn_view(store: ServerStore) -> dict[str, Any]:
    from splitvault.app.server.accounts import cdn_config

    config = _ok(cdn_config(store))
    if config is None:
        raise to_exception(NotFound("a CDN config on this server (set one: admin cdn set FILE)"))
    view: dict[str, Any] = {k: config.get(k) for k in ("endpoint", "bucket", "region")}
    for section in ("read", "write"):
        keys = config.get(section)
        # Access key ids identify the keys; the secrets never leave the store.
        view[section] = (
            {"access_key_id": keys.get("access_key_id"), "secret_access_key": "(set)"}
            if isinstance(keys, dict)
            else None
        )
    return view


def cdn_show(_args: argparse.Namespace, store: ServerStore) -> Report:
    """The stored CDN config, secrets masked."""
    view = _cdn_view(store)
    lines = [f"endpoint  {view['endpoint']}", f"bucket    {view['bucket']}"]
    lines.append(f"region    {view['region']}")
    for section in ("read", "write"):
        keys = view[section]
        lines.append(f"{section:9} {keys['access_key_id'] + ' (secret set)' if keys else '(none)'}")
    return {"cdn": view, "text": "\n".join(lines)}


# --- fragments and resources --------------------------------------------------------------------


def fragments_list(_args: argparse.Namespace, store: ServerStore) -> Report:
    """Versions that have an image key fragment, who registered each and the key the server
    vouches for with it (the fragments themselves are never shown)."""
    from splitvault.domain.signature import key_id

    versions = _ok(store.fragment_versions())
    views: list[dict[str, Any]] = []
    for version in versions:
        record = _ok(store.fragment_record(version))
        if record is None:  # removed between the two reads
            continue
        views.append(
            {
                "version": version,
                "publisher": record.publisher or None,
                "key_id": None if record.publisher_key is None else key_id(record.publisher_key),
            }
        )
    lines = [
        f"{v['version']:32} {v['publisher'] or '(admin)':40} {v['key_id'] or 'unsigned'}"
        for v in views
    ]
    return {
        "versions": [v["version"] for v in views],
        "fragments": views,
        "text": "\n".join(lines) or "no fragments",
    }


def fragments_remove(args: argparse.Namespace, store: ServerStore) -> Report:
    """Delete a version's fragment: its archives can no longer be unlocked."""
    _confirm(args, f"removing the key fragment of {args.version} (its archives become unopenable)")
    if not _ok(store.remove_fragment(args.version)):
        raise to_exception(NotFound(f"the key fragment of version {args.version}"))
    return {"version": args.version, "text": f"removed the key fragment of {args.version}"}


def _version_view(version: ResourceVersion, current: bool) -> dict[str, Any]:
    return {
        "folder": version.folder,
        "name": version.name,
        "version": version.version,
        "bytes": len(version.small_part),
        "publisher": version.publisher,
        "created_at": version.created_at,
        "current": current,
    }


def resources_ls(args: argparse.Namespace, store: ServerStore) -> Report:
    """Resources of a folder (with ``--versions``: every kept version, newest first)."""
    names = _ok(store.names(args.folder))
    entries: list[dict[str, Any]] = []
    lines: list[str] = []
    for name in names:
        current = _ok(store.current(args.folder, name))
        kept = _ok(store.versions(args.folder, name)) if args.versions else ()
        if current is not None:
            entries.append(_version_view(current, True))
            lines.append(f"{name:40} {current.version}  {current.publisher}  {_when(current)}")
        for older in kept:
            if current is not None and older.version == current.version:
                continue
            entries.append(_version_view(older, False))
            lines.append(f"{'':40} {older.version}  {older.publisher}  {_when(older)}  (kept)")
    return {"resources": entries, "text": "\n".join(lines) or f"no resources in {args.folder}"}


def _when(version: ResourceVersion) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(version.created_at))


def resources_rm(args: argparse.Namespace, store: ServerStore) -> Report:
    """Delete a resource and every kept version of it (big parts stay on the CDN)."""
    _confirm(args, f"removing {args.folder}/{args.name}")
    removed = _ok(store.remove_resource(args.folder, args.name))
    if removed == 0:
        raise to_exception(NotFound(f"{args.folder}/{args.name}"))
    return {
        "folder": args.folder,
        "name": args.name,
        "versions_removed": removed,
        "text": f"removed {args.folder}/{args.name} ({removed} versions)",
    }


def resources_gc(args: argparse.Namespace, store: ServerStore) -> Report:
    """Delete versions no resource keeps, their big parts, and old unfinished uploads."""
    _confirm(args, "collecting unreferenced versions and big parts")
    removed = _ok(store.collect_garbage())
    swept = _sweep_cdn(store, min_age=float(args.min_age))
    return {
        "versions_removed": removed,
        **swept,
        "text": f"collected {removed} unreferenced versions, {swept['big_parts_removed']} big "
        f"parts no kept version references and {swept['uploads_aborted']} unfinished uploads",
    }


def _sweep_cdn(store: ServerStore, *, min_age: float) -> dict[str, int]:
    """Delete big parts that no kept version references, older than ``min_age`` seconds.

    Never one a kept version references (the current one and the last N before it, which is
    what rollback and downloads in flight need). ``min_age`` spares a publish in progress: its
    big part is on the CDN before its small part reaches the API (the commit point). Only the
    shared bucket's versioned keys are considered; the original's layout is left alone.
    """
    from datetime import UTC, datetime

    from splitvault.adapters.s3_cdn import S3Cdn
    from splitvault.app.server.accounts import cdn_config
    from splitvault.domain.config import cdn_config_from_mapping

    stored_config = _ok(cdn_config(store))
    if stored_config is None:
        return {"big_parts_removed": 0, "uploads_aborted": 0}
    parsed = cdn_config_from_mapping(stored_config)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    built = S3Cdn.from_config(parsed.unwrap(), write=True)
    if isinstance(built, Failure):
        # No write keys in the CDN config: the bucket is someone else's to sweep.
        log.warning("not sweeping the CDN: %s", built.failure().describe())
        return {"big_parts_removed": 0, "uploads_aborted": 0}
    cdn = built.unwrap()
    try:
        now = time.time()
        objects = _ok(cdn.versioned_objects())
        kept: dict[tuple[str, str], set[str]] = {}
        removed = 0
        for ref, modified in objects:
            place = (ref.folder, ref.name)
            if place not in kept:
                versions = _ok(store.versions(ref.folder, ref.name))
                kept[place] = {version.version for version in versions}
            if ref.version in kept[place] or now - modified < min_age:
                continue
            _ok(cdn.delete(ref))
            removed += 1
        cutoff = datetime.fromtimestamp(now - min_age, tz=UTC)
        aborted = _ok(cdn.abort_unfinished(before=cutoff))
    finally:
        cdn.close()
    return {"big_parts_removed": removed, "uploads_aborted": aborted}


# --- the parser -----------------------------------------------------------------------------------


def register(command: Command, help_text: str) -> None:
    """Add ``admin`` and its subcommands to the ``splitvault`` parser (``command`` makes one)."""
    admin = command("admin", no_group, help_text)
    groups = admin.add_subparsers(dest="admin_group", required=True, metavar="GROUP")

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        work: Callable[[argparse.Namespace, ServerStore], Report],
        *,
        destructive: bool = False,
    ) -> argparse.ArgumentParser:
        help_text = (work.__doc__ or "").strip().splitlines()[0]
        p = group.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=_with_store(work))
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--data", type=Path, help="server data directory (SQLite store)")
        where.add_argument("--database-url", help="postgresql://user:password@host/db")
        if destructive:
            p.add_argument("--yes", action="store_true", help="really do it")
        return p

    def group(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        p = groups.add_parser(name, help=help_text, description=help_text)
        return p.add_subparsers(dest="admin_action", required=True, metavar="ACTION")

    users = group("users", "accounts: add, list, remove, passwd, reset-binding")
    p = leaf(users, "add", users_add)
    p.add_argument("email")
    p.add_argument("--role", choices=ROLES, required=True)
    leaf(users, "list", users_list)
    leaf(users, "remove", users_remove, destructive=True).add_argument("email")
    leaf(users, "passwd", users_passwd).add_argument("email")
    leaf(users, "reset-binding", users_reset_binding, destructive=True).add_argument("email")

    grants = group("grants", "folder grants: add, remove, list")
    p = leaf(grants, "add", grants_add)
    p.add_argument("email")
    p.add_argument("folder")
    p.add_argument("--read", action="store_true")
    p.add_argument("--write", action="store_true")
    p = leaf(grants, "remove", grants_remove)
    p.add_argument("email")
    p.add_argument("folder")
    leaf(grants, "list", grants_list).add_argument("email", nargs="?")

    devices = group("devices", "enrolled devices: list, approve, revoke")
    leaf(devices, "list", devices_list).add_argument("email", nargs="?")
    leaf(devices, "approve", devices_approve).add_argument("id")
    leaf(devices, "revoke", devices_revoke, destructive=True).add_argument("id")

    cdn = group("cdn", "the CDN config served as config/cdn.yaml: set, show")
    leaf(cdn, "set", cdn_set).add_argument("file", type=Path)
    leaf(cdn, "show", cdn_show)

    publishers = group(
        "publishers", "publisher signing keys the server vouches for: list, set, clear"
    )
    leaf(publishers, "list", publishers_list).add_argument("email", nargs="?")
    p = leaf(publishers, "set", publishers_set)
    p.add_argument("email")
    p.add_argument("--key", required=True, help="the Ed25519 public key, 64 hex digits")
    leaf(publishers, "clear", publishers_clear, destructive=True).add_argument("email")

    fragments = group("fragments", "image key fragments: list, remove")
    leaf(fragments, "list", fragments_list)
    leaf(fragments, "remove", fragments_remove, destructive=True).add_argument("version")

    resources = group("resources", "small parts and their versions: ls, rm, gc")
    p = leaf(resources, "ls", resources_ls)
    p.add_argument("folder")
    p.add_argument("--versions", action="store_true", help="every kept version")
    p = leaf(resources, "rm", resources_rm, destructive=True)
    p.add_argument("folder")
    p.add_argument("name")
    p = leaf(resources, "gc", resources_gc, destructive=True)
    p.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="seconds an unreferenced big part or unfinished upload must be old (default 3600)",
    )


def no_group(_args: argparse.Namespace) -> Report:
    """``splitvault admin`` without a group: say which there are."""
    raise to_exception(
        ConfigInvalid(
            "admin",
            "choose a group: users, grants, devices, publishers, cdn, fragments, resources",
        )
    )
