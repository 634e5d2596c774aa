"""Operator commands on the offset and lease store.

::

    meshconnect offsets show|export [CONNECTOR]                 committed offsets, as JSON
    meshconnect offsets set CONNECTOR PARTITION OFFSET [--create]  one partition (both JSON)
    meshconnect offsets reset [CONNECTOR] [--partition P ...]   forget all offsets, or some
    meshconnect offsets import CONNECTOR FILE [--replace] [--create]  offsets from an export
    meshconnect leases show [CONNECTOR]                         leases and live replicas
    meshconnect registry connectors                             every connector with keys
    meshconnect registry delete CONNECTOR                       remove a connector's keys

The store is named by ``--config FILE`` (the ``registry:`` block of a worker config, whose
``name`` is then the default CONNECTOR), ``--redis-url URL [--prefix P]`` or ``--state-dir DIR``
(the file store). ``set``, ``reset``, ``import`` and ``registry delete`` refuse while a replica
holds a lease of the connector (stop it first) unless ``--force``: a running source would
overwrite the new offsets with its next checkpoint anyway.

Every command but ``registry connectors|delete`` refuses a CONNECTOR the store does not know
(exit status 2), listing the ones it does: a connector type (``mysql-source``) where the instance
name (the config's ``name``) belongs would otherwise read as empty and write offsets nobody reads.
``set`` and ``import`` take ``--create`` to write the first offsets of a connector that has not run.

A PARTITION is the partition map as JSON (``'{"table": "orders"}'``, stored under its canonical
key) or a stored key as ``offsets show`` prints it; an OFFSET is a JSON object. Exit status: 0
done, 1 refused or the store failed, 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from runtime.app import open_registry
from runtime.config import RegistrySettings, load_config
from runtime.errors import ConfigError, MeshConnectError
from runtime.record import partition_key
from runtime.registry import Registry
from runtime.registry.fencing import LeaseHeldError

__all__ = ["register"]

EXIT_REFUSED = 1
EXIT_USAGE = 2
_KNOWN_SHOWN = 20
"""Connector names listed at most in the error for an unknown one."""


class UsageError(Exception):
    """A bad argument: reported with exit status 2."""


def register(subparsers: Any) -> None:
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_argument_group("store (one of)")
    where.add_argument("--config", metavar="FILE", help="worker config: its registry block, and its name as CONNECTOR")
    where.add_argument("--redis-url", metavar="URL", help="redis:// or rediss:// URL (may hold a password)")
    where.add_argument("--prefix", default="meshconnect", help="key prefix of the deployment (with --redis-url)")
    where.add_argument("--state-dir", metavar="DIR", help="directory of the file store")
    named = argparse.ArgumentParser(add_help=False, parents=[store])
    named.add_argument("connector", nargs="?", help="connector instance name (default: the config's name)")
    force = argparse.ArgumentParser(add_help=False)
    force.add_argument("--force", action="store_true", help="write even while a replica holds a lease")
    create = argparse.ArgumentParser(add_help=False)
    create.add_argument("--create", action="store_true", help="the connector has not run yet: start its offsets")

    offsets = subparsers.add_parser("offsets", help="show, change, export or import committed offsets")
    actions = offsets.add_subparsers(dest="offsets_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", parents=[named], help="print the committed offsets as JSON")
    show.set_defaults(func=_command(_show_offsets))
    export = actions.add_parser("export", parents=[named], help="write the offsets as a JSON document")
    export.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    export.set_defaults(func=_command(_export_offsets))
    set_one = actions.add_parser("set", parents=[store, force, create], help="set the offset of one partition")
    set_one.add_argument("connector", help="connector instance name")
    set_one.add_argument("partition", help="partition map as JSON, or a stored partition key")
    set_one.add_argument("offset", help="offset as a JSON object")
    set_one.set_defaults(func=_command(_set_offset))
    reset = actions.add_parser("reset", parents=[named, force], help="forget offsets: the source starts from its beginning")
    reset.add_argument("--partition", action="append", default=[], help="forget only this partition (repeatable)")
    reset.set_defaults(func=_command(_reset_offsets))
    load = actions.add_parser("import", parents=[store, force, create], help="write offsets from an export")
    load.add_argument("connector", help="connector instance name")
    load.add_argument("file", help="JSON from `offsets export` (or a plain partition -> offset map); - for stdin")
    load.add_argument("--replace", action="store_true", help="forget the partitions the file does not name")
    load.set_defaults(func=_command(_import_offsets))

    leases = subparsers.add_parser("leases", help="show leases and live replicas")
    lease_actions = leases.add_subparsers(dest="leases_command", required=True, metavar="ACTION")
    lease_show = lease_actions.add_parser("show", parents=[named], help="who holds which partition group, and who is alive")
    lease_show.set_defaults(func=_command(_show_leases))

    registry = subparsers.add_parser("registry", help="list or delete connectors in the store")
    registry_actions = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    listing = registry_actions.add_parser("connectors", parents=[store], help="every connector with keys in the store")
    listing.set_defaults(func=_command(_list_connectors, known_only=False))
    delete = registry_actions.add_parser("delete", parents=[store, force], help="remove every key of a connector")
    delete.add_argument("connector", help="connector instance name")
    delete.set_defaults(func=_command(_delete_connector, known_only=False))


Action = Callable[[Registry, str | None, argparse.Namespace], Awaitable[None]]


def _command(action: Action, *, known_only: bool = True) -> Callable[[argparse.Namespace], int]:
    """Wrap ``action``: open the store the options name, check the connector is one it knows
    (``known_only``), run, map errors to exit statuses."""

    def run(args: argparse.Namespace) -> int:
        try:
            registry, default_connector = _open_store(args)
            connector = getattr(args, "connector", None) or default_connector
            if connector is None and "connector" in vars(args):
                raise UsageError("name the connector, or pass --config of one of its workers")
        except (ConfigError, UsageError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            asyncio.run(_run_and_close(action, registry, connector, args, known_only=known_only))
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except MeshConnectError as exc:
            print(f"refused: {exc}" if isinstance(exc, LeaseHeldError) else f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        return 0

    return run


async def _run_and_close(
    action: Action, registry: Registry, connector: str | None, args: argparse.Namespace, *, known_only: bool
) -> None:
    try:
        if known_only and connector is not None and not getattr(args, "create", False):
            await _require_known(registry, connector, creatable="create" in vars(args))
        await action(registry, connector, args)
    finally:
        await registry.close()


async def _require_known(registry: Registry, connector: str, *, creatable: bool) -> None:
    known = await registry.connectors()
    if connector in known:
        return
    shown = ", ".join(known[:_KNOWN_SHOWN]) + (f" and {len(known) - _KNOWN_SHOWN} more" if len(known) > _KNOWN_SHOWN else "")
    hint = "; or pass --create to write the first offsets of a connector that has not run yet" if creatable else ""
    raise UsageError(
        f"{registry!r} knows no connector {connector!r}; it knows: {shown or '(none)'}. Name the connector instance"
        f" (the `name:` of its worker config), not its connector type{hint}"
    )


def _open_store(args: argparse.Namespace) -> tuple[Registry, str | None]:
    chosen = [option for option in ("config", "redis_url", "state_dir") if getattr(args, option)]
    if len(chosen) != 1:
        raise UsageError("name the store with exactly one of --config, --redis-url or --state-dir")
    if args.config:
        config = load_config(args.config)
        return open_registry(config.registry), config.name
    if args.redis_url:
        settings = RegistrySettings(kind="redis", url=args.redis_url, prefix=args.prefix)
    else:
        settings = RegistrySettings(kind="file", path=args.state_dir)
    return open_registry(settings), None


# -- the actions ------------------------------------------------------------------------------


async def _show_offsets(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    assert connector is not None
    _print_json(await registry.load_offsets(connector))


async def _export_offsets(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    assert connector is not None
    document = {"connector": connector, "offsets": await registry.load_offsets(connector)}
    if args.out:
        await asyncio.to_thread(Path(args.out).write_bytes, _json(document))
        print(f"exported {len(document['offsets'])} partition offset(s) of {connector} to {args.out}")
    else:
        _print_json(document)


async def _set_offset(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    assert connector is not None
    offset = _json_object(args.offset, "OFFSET")
    key = _partition(args.partition)
    await registry.set_offsets(connector, {key: offset}, replace=False, force=args.force)
    print(f"set {connector} {key} = {orjson.dumps(offset).decode()}")


async def _reset_offsets(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    assert connector is not None
    current = await registry.load_offsets(connector)
    forget = {_partition(partition) for partition in args.partition} if args.partition else set(current)
    kept = {key: offset for key, offset in current.items() if key not in forget}
    await registry.set_offsets(connector, kept, replace=True, force=args.force)
    print(f"reset {len(forget & current.keys())} partition offset(s) of {connector}; {len(kept)} kept")


async def _import_offsets(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    assert connector is not None
    try:
        raw = await asyncio.to_thread(sys.stdin.buffer.read if args.file == "-" else Path(args.file).read_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from exc
    document = _json_object(raw, args.file)
    offsets = document.get("offsets", document)
    if not isinstance(offsets, dict) or not all(isinstance(offset, dict) for offset in offsets.values()):
        raise UsageError(f"{args.file} is not an offsets export: expected {{partition key: offset object}}")
    await registry.set_offsets(connector, offsets, replace=args.replace, force=args.force)
    print(f"imported {len(offsets)} partition offset(s) into {connector}" + (" (others forgotten)" if args.replace else ""))


async def _show_leases(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    assert connector is not None
    leases = await registry.leases(connector)
    members = await registry.members(connector)
    print(f"{'GROUP':<24} {'HOLDER':<40} {'TOKEN':>6} {'TTL LEFT':>9}")
    for lease in leases:
        ttl = "-" if lease.ttl_left is None else f"{lease.ttl_left:.1f}s"
        print(f"{lease.group:<24} {lease.holder or '(free)':<40} {lease.token:>6} {ttl:>9}")
    print(f"\n{len(members)} live replica(s)")
    for holder, info in sorted(members.items()):
        print(f"  {holder}  {orjson.dumps(info, option=orjson.OPT_SORT_KEYS).decode()}")


async def _list_connectors(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    for name in await registry.connectors():
        print(name)


async def _delete_connector(registry: Registry, connector: str | None, args: argparse.Namespace) -> None:
    assert connector is not None
    held = sorted(lease.group for lease in await registry.leases(connector) if lease.holder is not None)
    if held and not args.force:
        raise LeaseHeldError(connector, held)
    removed = await registry.delete_connector(connector)
    print(f"deleted {connector}: {removed} key(s) removed")


# -- helpers -----------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _print_json(value: Any) -> None:
    sys.stdout.write(_json(value).decode())


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, e.g. '{{\"pos\": 42}}'")
    return value


def _partition(text: str) -> str:
    """A partition given as a JSON map becomes its canonical key; anything else is taken as a key."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return partition_key(value) if isinstance(value, dict) else text
