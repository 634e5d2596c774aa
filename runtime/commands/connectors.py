"""``meshconnect list``, ``run <name> --config FILE``, ``check <name> --config FILE`` and ``docs <name> [--sample]``.

``--config`` may be left out when ``MESHCONNECT_CONFIG`` names the file, as in a container.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import structlog

from runtime.app import DEFAULT_SHUTDOWN_TIMEOUT, EXIT_CONFIG, EXIT_FAILED, exit_process, open_registry, run_connector
from runtime.commands.completion import CONNECTOR_METAVAR
from runtime.commands.events import structured_json
from runtime.commands.options import add_config_argument, load_worker_config, report_config_error
from runtime.config import LogSettings, SinkSettings, WorkerConfig, connector_config
from runtime.configdoc import config_table
from runtime.connector import Sink, SinkContext, Source, SourceContext
from runtime.errors import ConfigError, DataError, MeshConnectError
from runtime.observability import configure_logging
from runtime.plugins import ConnectorClass, ConnectorInfo, catalogue, load_connector
from runtime.publishing import PublishRules, check_source_topics
from runtime.record import ConnectorRecord
from runtime.worker.session import build_client
from runtime.worker.transforming import transforms_for

__all__ = ["register"]

_PREVIEW_RECORDS = 5
_PREVIEW_SECONDS = 5.0


def register(subparsers: Any) -> None:
    listing = subparsers.add_parser("list", help="list the installed connectors")
    listing.add_argument("--output", choices=("text", "json"), default="text", help="text table or a JSON array")
    listing.set_defaults(func=list_connectors)

    run = subparsers.add_parser("run", help="run a connector until SIGTERM/SIGINT")
    run.add_argument("name", help="connector type, e.g. mysql-sink (see meshconnect list)", metavar=CONNECTOR_METAVAR)
    add_config_argument(run, "worker config file (YAML; the Java layout is accepted too)")
    run.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT, help="seconds to drain on SIGTERM")
    run.set_defaults(func=run_command)

    check = subparsers.add_parser("check", help="validate a connector config (and with --connect, try it)")
    check.add_argument("name", help="connector type, e.g. mysql-sink", metavar=CONNECTOR_METAVAR)
    add_config_argument(check, "worker config file")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the mesh, the registry and the connector's system; a source shows its first records",
    )
    check.set_defaults(func=check_command)

    docs = subparsers.add_parser("docs", help="print a connector's config reference (markdown)")
    docs.add_argument("name", help="connector type, e.g. mysql-sink", metavar=CONNECTOR_METAVAR)
    docs.add_argument("--sample", action="store_true", help="print the connector's whole sample config file instead")
    docs.set_defaults(func=docs_command)


def list_connectors(args: argparse.Namespace) -> int:
    entries = catalogue()
    if args.output == "json":
        print(orjson.dumps([_listing(entry) for entry in entries], option=orjson.OPT_INDENT_2).decode())
        return 0
    width = max((len(entry.name) for entry in entries), default=4)
    for entry in entries:
        text = entry.description if entry.problem is None else f"(not usable here: {entry.problem})"
        print(f"{entry.name:<{width}}  {entry.side:<6}  {text}")
    if not entries:
        print("no connectors installed", file=sys.stderr)
    return 0


def _listing(entry: ConnectorInfo) -> dict[str, Any]:
    return {
        "name": entry.name,
        "side": entry.side,
        "description": entry.description,
        "usable": entry.problem is None,
        "problem": entry.problem,
    }


def docs_command(args: argparse.Namespace) -> int:
    try:
        cls = load_connector(args.name)
    except ConfigError as exc:
        print(f"meshconnect: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.sample:
        return _print_sample(cls)
    print(f"## {cls.name}\n\n{cls.description}\n\n### Configuration (`config:` block)\n")
    print(config_table(cls.config_model), end="")
    return 0


def _print_sample(cls: ConnectorClass) -> int:
    """The connector's ``config.example.yaml``, which lives beside its code (``services/<pkg>/``)."""
    sample = Path(inspect.getfile(cls)).with_name("config.example.yaml")
    try:
        print(sample.read_text(), end="")
    except OSError as exc:
        print(f"meshconnect: {cls.name} ships no sample config ({sample}: {exc.strerror})", file=sys.stderr)
        return EXIT_FAILED
    return 0


def run_command(args: argparse.Namespace) -> int:
    try:
        cls = load_connector(args.name)
    except ConfigError as exc:
        print(f"meshconnect: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(LogSettings(), stream=sys.stderr)  # what the config load warns about, until the config says how
    exit_process(run_connector(args.config, connector_class=cls, shutdown_timeout=args.shutdown_timeout))


def check_command(args: argparse.Namespace) -> int:
    try:
        cls = load_connector(args.name)
        config = load_worker_config(args.config, connector=args.name)
        typed = connector_config(cls.config_model, config)
        if issubclass(cls, Source):
            check_source_topics(cls, config, typed)
        else:
            check_spool_path(config.sink)
        transforms_for(config, cls)
    except ConfigError as exc:
        return report_config_error(exc)
    print(f"ok: {args.config} is a valid {cls.name} config for instance {config.name!r}")
    if cls.side == "sink" and (problem := config.sink.flow_problem()) is not None:
        print(f"warning: {problem}", file=sys.stderr)
    if not args.connect:
        return 0
    configure_logging(config.log, stream=sys.stderr)
    exit_process(_connection_check(cls, config, typed))  # it started the connector: ended as a run is


def _connection_check(cls: ConnectorClass, config: WorkerConfig, typed: Any) -> int:
    try:
        asyncio.run(_try_connections(cls, config, typed))
    except MeshConnectError as exc:
        print(f"connection check failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError:
        print("connection check failed: timed out", file=sys.stderr)
        return EXIT_FAILED
    print("ok: every system the config names answered")
    return 0


def check_spool_path(settings: SinkSettings) -> None:
    """Whether the sink could make and write its spool directory; creates and locks nothing (a running worker
    may hold the spool). :class:`ConfigError` naming ``sink.spool.path`` when it cannot."""
    if settings.spool is None:
        return
    path = Path(settings.spool.path)
    existing = path
    while not existing.exists() and existing != existing.parent:  # the part of the path already there
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{str(existing)!r} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{str(existing)!r} is not writable by this user"
    else:
        return
    raise ConfigError("sink.spool.path", f"cannot use {str(path)!r} as the spool: {problem}", "name a writable directory")


async def _try_connections(cls: ConnectorClass, config: WorkerConfig, typed: Any) -> None:
    mesh = config.mesh
    async with asyncio.timeout(mesh.connect_timeout + mesh.request_timeout):
        async with build_client(config, "pub" if cls.side == "source" else "sub"):
            print(f"ok: mesh {mesh.address} accepted the handshake")
    instance = cls(typed)
    if isinstance(instance, Sink):
        await instance.start(SinkContext(config.name, log=structlog.get_logger(), connector_type=cls.name))
        await instance.stop()
        print(f"ok: {cls.name} connected")
        return
    assert isinstance(instance, Source)
    registry = open_registry(config.registry)
    try:
        offsets = await registry.load_offsets(config.name)
        print(f"ok: registry ({config.registry.kind}) answered: {len(offsets)} committed partition offset(s)")
        groups = frozenset(await instance.partition_groups())
        context = SourceContext(
            config.name, offsets, assigned_groups=groups, rules=PublishRules.from_config(config), connector_type=cls.name
        )
        await instance.start(context)
        try:
            await _preview(instance, config)
        finally:
            await instance.stop()
    finally:
        await registry.close()


async def _preview(source: Source[Any], config: WorkerConfig) -> None:
    """Print the first few events the source would publish (nothing is published or committed), each
    before and after the ``transforms:`` steps when there are some."""
    shown = 0
    rules = PublishRules.from_config(config)
    transforms = transforms_for(config, type(source))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PREVIEW_SECONDS
    while shown < _PREVIEW_RECORDS and loop.time() < deadline:
        for polled in await source.poll():
            if shown >= _PREVIEW_RECORDS:
                break
            shown += 1
            record = polled
            if transforms is not None:
                print(f"record {shown} as polled: {_preview_line(polled, rules, check_topic=False)}")
                try:
                    transformed = transforms.apply(polled)
                except DataError as exc:
                    print(f"record {shown}: would be dead-lettered: {exc.reason}")
                    continue
                if transformed is None:
                    print(f"record {shown}: dropped by a filter (its offset would commit)")
                    continue
                record = transformed
            line = _preview_line(record, rules, check_topic=not source.names_own_topics)
            print(f"record {shown}{' after the transforms' if transforms is not None else ''}: {line}")
    print(f"ok: {config.connector} connected; {shown} record(s) shown, nothing published or committed")


def _preview_line(record: ConnectorRecord, rules: PublishRules, *, check_topic: bool) -> str:
    """The event of ``record`` as structured JSON, or what would become of it instead."""
    refusal = rules.refusal(record.subject) if check_topic else None
    if refusal is not None:
        return f"would be dead-lettered: {refusal}"
    try:
        return structured_json(rules.encode(record).body)
    except DataError as exc:
        return f"would be dead-lettered: {exc.reason}"
