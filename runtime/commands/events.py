"""``meshconnect publish`` and ``meshconnect tail``: put events on a topic and watch one, as kcat or ``nats pub/sub`` do.

* ``publish --mesh HOST:PORT --topic T`` reads structured CloudEvents, one JSON object a line, from
  stdin (or builds one event from ``--data``, ``--type``, ``--source``, ``--id``), sends each to ``T``
  through the runtime's client and prints one line per event once the mesh acknowledged it. An
  attribute a line leaves out comes from the flags (``id``: a new UUID). A line that is no event,
  or an event the mesh refuses, is reported on stderr and the exit code is 1; the others still go.
* ``tail --mesh HOST:PORT --topic T`` subscribes ``T`` in BROADCASTING mode under a group of its
  own (``meshconnect-tail``), so the connectors' CLUSTERING groups lose nothing to it, and prints
  each event as one line of structured CloudEvents JSON until ``--count`` events were shown or
  Ctrl-C. It acknowledges what it printed, in its own group only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from cloudevents.core.formats.json import JSONFormat

from runtime.app import EXIT_CONFIG, EXIT_FAILED
from runtime.client import MeshClient
from runtime.cloudevents import is_json_content_type
from runtime.commands.options import positive_int
from runtime.config import LogSettings, MeshSettings
from runtime.errors import ConfigError, DataError, MeshConnectError, MeshRejectedError
from runtime.observability import configure_logging
from runtime.protocol.events import body_to_event
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.validation import validate_model

__all__ = ["register", "structured_json"]

CLI_SOURCE = "/meshconnect/cli"
CLI_TYPE = "meshconnect.cli"
TAIL_GROUP = "meshconnect-tail"


def register(subparsers: Any) -> None:
    publish = subparsers.add_parser(
        "publish", help="publish CloudEvents (JSON lines on stdin, or one from flags) and print each ack"
    )
    _mesh_arguments(publish, group="meshconnect-cli")
    publish.add_argument("--topic", required=True, help="topic to publish to (the events' subject)")
    publish.add_argument("--data", help="publish one event with this data instead of reading stdin")
    publish.add_argument(
        "--content-type", help="datacontenttype of --data (default: application/json when it is JSON, else text/plain)"
    )
    publish.add_argument("--type", default=CLI_TYPE, help=f"CloudEvent type where an event has none (default {CLI_TYPE})")
    publish.add_argument("--source", default=CLI_SOURCE, help=f"CloudEvent source where an event has none (default {CLI_SOURCE})")
    publish.add_argument("--id", help="CloudEvent id of the --data event (default: a new UUID)")
    publish.set_defaults(func=publish_command)

    tail = subparsers.add_parser("tail", help="print a topic's events as CloudEvents JSON lines (BROADCASTING, own group)")
    _mesh_arguments(tail, group=TAIL_GROUP)
    tail.add_argument("--topic", required=True, help="topic to watch")
    tail.add_argument("--count", type=positive_int, default=None, help="stop after this many events (default: until Ctrl-C)")
    tail.set_defaults(func=tail_command)


def _mesh_arguments(parser: argparse.ArgumentParser, *, group: str) -> None:
    parser.add_argument("--mesh", default=MeshSettings.model_fields["address"].default, help="EventMesh TCP address, host:port")
    parser.add_argument("--group", default=group, help=f"group to connect as (default {group})")
    parser.add_argument("--username", help="mesh user (ACL)")
    parser.add_argument("--password-env", metavar="NAME", help="environment variable holding the mesh password")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")


def _mesh_settings(args: argparse.Namespace) -> MeshSettings:
    """The mesh the flags name; the client's log lines go to stderr, warnings and worse only, so stdout is the events'."""
    configure_logging(LogSettings(level="warning"), stream=sys.stderr)
    settings: dict[str, Any] = {"address": args.mesh, "group": args.group, "username": args.username, "tls": args.tls}
    if args.password_env:
        settings["password"] = {"env": args.password_env}
    return validate_model(MeshSettings, settings, prefix="mesh")


def structured_json(body: bytes) -> str:
    """A mesh message body as one line of structured CloudEvents JSON (what ``tail`` prints), in the SDK's format."""
    return str(JSONFormat().write(body_to_event(body)).decode())


# -- publish -------------------------------------------------------------------------------------


def publish_command(args: argparse.Namespace) -> int:
    lines = [args.data] if args.data is not None else sys.stdin
    return _against_mesh(args, "publish", lambda settings: _publish(settings, args, lines), interrupted=EXIT_FAILED)


def tail_command(args: argparse.Namespace) -> int:
    return _against_mesh(args, "tail", lambda settings: _tail(settings, args.topic, args.count), interrupted=0)


def _against_mesh(
    args: argparse.Namespace, what: str, work: Callable[[MeshSettings], Coroutine[Any, Any, int]], *, interrupted: int
) -> int:
    """Run ``work`` against the mesh the flags name; the exit code (``interrupted`` after Ctrl-C)."""
    try:
        return asyncio.run(work(_mesh_settings(args)))
    except KeyboardInterrupt:
        return interrupted
    except BrokenPipeError:  # the reader of stdout left (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConfigError as exc:  # a bad flag, or an address that is not host:port
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MeshConnectError as exc:
        print(f"{what} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _publish(settings: MeshSettings, args: argparse.Namespace, lines: Any) -> int:
    """Publish each line (or the ``--data`` event); exit code 1 if any could not be published."""
    failed = 0
    async with MeshClient.from_settings(settings, group=args.group, purpose="pub") as client:
        for number, line in enumerate(lines, 1):
            if args.data is None and not line.strip():
                continue
            try:
                document = _flag_event(args) if args.data is not None else _line_event(line)
                # A structured CloudEvent is what a message body is too: the body reader parses and checks it.
                event = body_to_event(orjson.dumps(_with_defaults(document, args)))
                await client.publish(event)
            except (DataError, MeshRejectedError) as exc:
                failed += 1
                where = "--data" if args.data is not None else f"line {number}"
                print(f"{where}: not published: {exc}", file=sys.stderr)
                continue
            print(f"acked id={event.get_id()} topic={args.topic}", flush=True)
    return EXIT_FAILED if failed else 0


def _line_event(line: str) -> dict[str, Any]:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DataError(f"not a JSON object: {exc}") from exc
    if not isinstance(document, dict):
        raise DataError(f"a structured CloudEvent is a JSON object, not a {type(document).__name__}")
    return document


def _flag_event(args: argparse.Namespace) -> dict[str, Any]:
    text: str = args.data
    content_type = args.content_type
    if content_type is None:
        try:
            return {"data": orjson.loads(text), "datacontenttype": "application/json", "id": args.id}
        except orjson.JSONDecodeError:
            content_type = "text/plain"
    if is_json_content_type(content_type):
        try:
            return {"data": orjson.loads(text), "datacontenttype": content_type, "id": args.id}
        except orjson.JSONDecodeError as exc:
            raise DataError(f"--data is not JSON, as --content-type {content_type} says: {exc}") from exc
    return {"data": text, "datacontenttype": content_type, "id": args.id}


def _with_defaults(document: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The event with the topic as its subject and the attributes it leaves out taken from the flags."""
    event = {key: value for key, value in document.items() if value is not None}
    event.setdefault("specversion", "1.0")
    event.setdefault("id", str(uuid.uuid4()))
    event.setdefault("source", args.source)
    event.setdefault("type", args.type)
    event["subject"] = args.topic
    return event


# -- tail ----------------------------------------------------------------------------------------


async def _tail(settings: MeshSettings, topic: str, count: int | None) -> int:
    shown = 0
    async with MeshClient.from_settings(settings, group=TAIL_GROUP, purpose="sub") as client:
        await client.subscribe(topic, SubscriptionMode.BROADCASTING, SubscriptionType.ASYNC)
        await client.listen()
        print(f"tailing {topic} on {settings.address} as group {settings.group} (BROADCASTING); Ctrl-C stops", file=sys.stderr)
        async for pushed in client.pushed():
            try:
                print(structured_json(pushed.body), flush=True)
            except DataError as exc:
                print(f"undecodable event (seq {pushed.seq}): {exc}", file=sys.stderr)
            await pushed.ack()
            shown += 1
            if shown == count:
                break
    return 0
