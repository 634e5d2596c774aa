"""``meshconnect dlq replay --config FILE [--topic T] [--limit N]``: publish dead letters again.

Once the cause of the dead letters is fixed (a column added, a bug deployed), replay reads the
dead-letter topic of the worker the config describes (``sink.dead_letter_topic`` or
``<name>-dlq``) in its own consumer group (``<name>-dlq-replay``), restores each event (its
original topic from ``dlqtopic``, the ``dlq*`` extensions removed) and publishes it; a dead
letter is acknowledged only after the mesh acknowledged the replayed event, so an interrupted
replay loses nothing. A dead letter whose data was cut to fit the mesh (``dlqdatasha256``) cannot be
replayed and is left in place, as is one without an original topic. It stops after ``--limit``
events or when the topic stays quiet for ``--idle`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from runtime.client import MeshClient
from runtime.config import WorkerConfig, load_config
from runtime.errors import ConfigError, MeshConnectError
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.worker.deadletter import replay_event

__all__ = ["register", "replay"]


def register(subparsers: Any) -> None:
    dlq = subparsers.add_parser("dlq", help="dead-letter topic tools")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    replay_parser = actions.add_parser("replay", help="publish dead-lettered events to their original topic again")
    replay_parser.add_argument("--config", required=True, help="the worker config whose dead letters to replay")
    replay_parser.add_argument("--topic", help="dead-letter topic (default: sink.dead_letter_topic or <name>-dlq)")
    replay_parser.add_argument("--limit", type=int, default=None, help="replay at most this many events")
    replay_parser.add_argument("--idle", type=float, default=3.0, help="stop after this many seconds without a dead letter")
    replay_parser.set_defaults(func=replay_command)


def replay_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    topic = args.topic or config.sink.dead_letter_topic or f"{config.name}-dlq"
    try:
        replayed, skipped = asyncio.run(replay(config, topic, limit=args.limit, idle=args.idle))
    except MeshConnectError as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"replayed {replayed} event(s) from {topic}"
        + (f"; {skipped} without an original topic or whole data left in place" if skipped else "")
    )
    return 0


async def replay(config: WorkerConfig, topic: str, *, limit: int | None = None, idle: float = 3.0) -> tuple[int, int]:
    """Replay dead letters of ``topic``; returns (replayed, skipped for lack of an original topic or of whole data)."""
    group = f"{config.name}-dlq-replay"
    replayed = skipped = 0
    async with (
        MeshClient.from_settings(config.mesh, group=group, purpose="pub") as publisher,
        MeshClient.from_settings(config.mesh.model_copy(update={"group": group}), group=group, purpose="sub") as reader,
    ):
        await reader.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await reader.listen()
        pushes = reader.pushed().__aiter__()
        while limit is None or replayed < limit:
            try:
                pushed = await asyncio.wait_for(pushes.__anext__(), idle)
            except (TimeoutError, StopAsyncIteration):
                break
            if not pushed.event.get_extension("dlqtopic") or pushed.event.get_extension("dlqdatasha256") is not None:
                skipped += 1  # left unacknowledged: it stays in the dead-letter topic
                continue
            await publisher.publish(replay_event(pushed.event))
            await pushed.ack()
            replayed += 1
    return replayed, skipped
