"""``meshconnect dlq show|replay --config FILE [--topic T] [--limit N]``: read dead letters, or publish them again.

Both read the dead-letter topic of the worker the config describes (``sink.dead_letter_topic`` or
``<name>-dlq``) the same way, in the consumer group ``<name>-dlq-replay``, and stop after
``--limit`` events or when the topic stays quiet for ``--idle`` seconds.

``show`` prints each dead letter with its reason (``dlqreason``, ``dlqconnector``, ``dlqtime``,
``dlqattempts``, ``dlqtopic``) and acknowledges none, so every one stays for ``replay``: the
embedded mesh delivers un-acknowledged events again once the reader left.

Once the cause of the dead letters is fixed (a column added, a bug deployed), ``replay`` restores
each event (its original topic from ``dlqtopic``, the ``dlq*`` extensions removed) and publishes
it; a dead letter is acknowledged only after the mesh acknowledged the replayed event, so an
interrupted replay loses nothing. A dead letter whose data was cut to fit the mesh
(``dlqdatasha256``) cannot be replayed and is left in place, as is one without an original topic.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from runtime.app import EXIT_FAILED
from runtime.client import MeshClient, PushedEvent
from runtime.commands.events import structured_json
from runtime.commands.options import add_config_argument, load_worker_config, positive_int, report_config_error
from runtime.config import WorkerConfig
from runtime.errors import ConfigError, MeshConnectError
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.worker.deadletter import replay_event

__all__ = ["dead_letters", "register", "replay"]


def register(subparsers: Any) -> None:
    dlq = subparsers.add_parser("dlq", help="dead-letter topic tools")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    show_parser = actions.add_parser("show", help="print dead letters with their reasons (nothing is acknowledged)")
    _reading_arguments(show_parser, "the worker config whose dead letters to show")
    show_parser.add_argument("--limit", type=positive_int, default=None, help="show at most this many events")
    show_parser.add_argument(
        "--output", choices=("text", "json"), default="text", help="one line per dead letter, or its CloudEvent as JSON"
    )
    show_parser.set_defaults(func=show_command)
    replay_parser = actions.add_parser("replay", help="publish dead-lettered events to their original topic again")
    _reading_arguments(replay_parser, "the worker config whose dead letters to replay")
    replay_parser.add_argument("--limit", type=positive_int, default=None, help="replay at most this many events")
    replay_parser.set_defaults(func=replay_command)


def _reading_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    add_config_argument(parser, config_help)
    parser.add_argument("--topic", help="dead-letter topic (default: sink.dead_letter_topic or <name>-dlq)")
    parser.add_argument("--idle", type=float, default=3.0, help="stop after this many seconds without a dead letter")


def _dead_letter_topic(config: WorkerConfig, args: argparse.Namespace) -> str:
    return str(args.topic or config.sink.dead_letter_topic or f"{config.name}-dlq")


async def dead_letters(config: WorkerConfig, topic: str, *, idle: float) -> AsyncGenerator[PushedEvent, None]:
    """The dead letters of ``topic`` as the group ``<name>-dlq-replay`` reads them, until none came for ``idle`` seconds.

    The caller acknowledges a dead letter to take it off the topic; one it leaves unacknowledged is
    delivered again after the reader left. Close the iterator (``contextlib.aclosing``) to leave.
    """
    group = f"{config.name}-dlq-replay"
    settings = config.mesh.model_copy(update={"group": group})
    async with MeshClient.from_settings(settings, group=group, purpose="sub") as reader:
        await reader.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await reader.listen()
        pushes = reader.pushed().__aiter__()
        while True:
            try:
                yield await asyncio.wait_for(pushes.__anext__(), idle)
            except (TimeoutError, StopAsyncIteration):
                return


def show_command(args: argparse.Namespace) -> int:
    try:
        config = load_worker_config(args.config)
    except ConfigError as exc:
        return report_config_error(exc)
    topic = _dead_letter_topic(config, args)
    try:
        shown = asyncio.run(show(config, topic, limit=args.limit, idle=args.idle, as_json=args.output == "json"))
    except MeshConnectError as exc:
        print(f"dlq show failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"shown {shown} dead letter(s) from {topic}; none acknowledged: they stay for replay", file=sys.stderr)
    return 0


async def show(config: WorkerConfig, topic: str, *, limit: int | None, idle: float, as_json: bool) -> int:
    """Print the dead letters of ``topic`` (at most ``limit``) without acknowledging any; returns how many."""
    shown = 0
    async with aclosing(dead_letters(config, topic, idle=idle)) as letters:
        async for pushed in letters:
            print(structured_json(pushed.body) if as_json else _describe(pushed.event), flush=True)
            shown += 1
            if shown == limit:
                break
    return shown


def _describe(event: CloudEvent) -> str:
    """One line: when, what, from where to where, after how many attempts, and why."""
    get = event.get_extension
    cut = "; data cut to fit the mesh" if get("dlqdatasha256") is not None else ""
    return (
        f"{get('dlqtime') or '-'} id={event.get_id()} source={event.get_source()} topic={get('dlqtopic') or '-'}"
        f" connector={get('dlqconnector') or '-'} attempts={get('dlqattempts') or '-'}{cut} reason={get('dlqreason') or '-'}"
    )


def replay_command(args: argparse.Namespace) -> int:
    try:
        config = load_worker_config(args.config)
    except ConfigError as exc:
        return report_config_error(exc)
    topic = _dead_letter_topic(config, args)
    try:
        replayed, skipped = asyncio.run(replay(config, topic, limit=args.limit, idle=args.idle))
    except MeshConnectError as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"replayed {replayed} event(s) from {topic}"
        + (f"; {skipped} without an original topic or whole data left in place" if skipped else "")
    )
    return 0


async def replay(config: WorkerConfig, topic: str, *, limit: int | None = None, idle: float = 3.0) -> tuple[int, int]:
    """Replay dead letters of ``topic``; returns (replayed, skipped for lack of an original topic or of whole data)."""
    replayed = skipped = 0
    group = f"{config.name}-dlq-replay"
    async with (
        MeshClient.from_settings(config.mesh, group=group, purpose="pub") as publisher,
        aclosing(dead_letters(config, topic, idle=idle)) as letters,
    ):
        async for pushed in letters:
            if not pushed.event.get_extension("dlqtopic") or pushed.event.get_extension("dlqdatasha256") is not None:
                skipped += 1  # left unacknowledged: it stays in the dead-letter topic
                continue
            await publisher.publish(replay_event(pushed.event))
            await pushed.ack()
            replayed += 1
            if replayed == limit:
                break
    return replayed, skipped
