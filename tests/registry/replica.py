"""A stand-in source replica for the multi-process fault tests, run as ``python -m tests.registry.replica``.

It does what the source worker does around the registry, and nothing else: a Coordinator keeps
its groups; for every group assigned to it, it loads the committed offset ``{"n": N}``,
"publishes" the next ``--batch`` integers N+1.. by appending ``<group> <n>`` lines to ``--out``
(the mesh), and only after ``--ack-delay`` (every group's batch in flight at once) commits
``{"n": N + batch}`` under the lease it read *before* publishing, as a worker whose ack arrived
would. Between two steps (nothing in flight) it hands over the groups it is giving away.
``--min-replicas`` makes every lease and commit count only once that many Redis replicas have it.
Every step is reported on stdout as one JSON line with ``time.monotonic()`` (one clock for every
process on the machine):

    {"event": "member"|"acquired"|"resume"|"dropped"|"commit"|"fenced"|"unavailable",
     "group": ..., "n": ..., "token": ..., "t": ...}

"dropped" is any end of ownership (handover or loss); ``losses`` in it counts the losses so far.
``--exit-on-loss`` makes it exit with status 3 as soon as it loses a group (fenced or expired),
which is how the paused-replica test sees it stop by itself. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any, TextIO

import orjson
import structlog

from runtime.errors import FencedError, RegistryUnavailableError
from runtime.record import partition_key
from runtime.registry import Lease
from runtime.registry.coordinator import Coordinator
from runtime.registry.redis import RedisRegistry

LOST_EXIT = 3


def report(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, "t": time.monotonic(), **fields}).decode() + "\n")
    sys.stdout.flush()


def offset_key(group: str) -> str:
    return partition_key({"group": group})


async def run(args: argparse.Namespace, out: TextIO) -> int:
    registry = RedisRegistry(
        args.redis_url, prefix=args.prefix, timeout=0.5, min_replicas=args.min_replicas, replica_timeout=args.replica_timeout
    )
    positions: dict[str, int] = {}
    """Last committed n of each group this replica is working on; dropped when the group is lost."""
    held: set[str] = set()
    fenced = 0

    def on_change(owned: frozenset[str]) -> None:
        for group in sorted(owned - held):
            lease = coordinator.lease(group)
            report("acquired", group=group, token=lease.token if lease else None)
        for group in sorted(held - owned):
            report("dropped", group=group, losses=coordinator.losses)
            positions.pop(group, None)
        held.clear()
        held.update(owned)

    coordinator = Coordinator(registry, args.connector, args.holder, args.groups.split(","), args.ttl, on_change=on_change)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await coordinator.start()
    report("member", holder=args.holder)
    while not stopping.is_set() and not (args.exit_on_loss and (fenced or coordinator.losses)):
        try:
            await coordinator.hand_over()  # between steps nothing is in flight: every batch was committed
            if await step(args, coordinator, registry, positions, out):
                fenced += 1
        except RegistryUnavailableError as exc:
            report("unavailable", error=str(exc))
            await asyncio.sleep(0.2)
        await asyncio.sleep(args.interval)
    await coordinator.stop()
    await registry.close()
    return LOST_EXIT if args.exit_on_loss and (fenced or coordinator.losses) else 0


async def step(
    args: argparse.Namespace, coordinator: Coordinator, registry: RedisRegistry, positions: dict[str, int], out: TextIO
) -> bool:
    """One batch of every owned group, all in flight at once; True if a commit was fenced under a lease still trusted."""
    batches: dict[str, tuple[Lease, int]] = {}
    for group in sorted(coordinator.assigned):
        lease = coordinator.lease(group)
        if lease is None:  # its deadline passed since .assigned was read
            continue
        if group not in positions:
            committed = (await registry.load_offsets(args.connector)).get(offset_key(group), {"n": 0})
            positions[group] = int(committed["n"])
            report("resume", group=group, n=positions[group], token=lease.token)
        start = positions[group]
        for n in range(start + 1, start + args.batch + 1):
            out.write(f"{group} {n}\n")
        batches[group] = lease, start
    await asyncio.sleep(args.ack_delay)  # the mesh acks the batches
    fenced = False
    for group, (lease, start) in batches.items():
        try:
            await registry.commit_offsets(args.connector, {offset_key(group): {"n": start + args.batch}}, lease)
        except FencedError:
            report("fenced", group=group, token=lease.token)
            positions.pop(group, None)
            # Refused while the coordinator still trusts the lease: a real loss. Otherwise the
            # coordinator already dropped the group (handover, deadline) and counts it itself.
            fenced = fenced or coordinator.lease(group) is not None
            continue
        positions[group] = start + args.batch
        report("commit", group=group, n=start + args.batch, token=lease.token)
    return fenced


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="replicas")
    parser.add_argument("--connector", default="counter-source")
    parser.add_argument("--holder", required=True)
    parser.add_argument("--groups", default="g0")
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--ack-delay", type=float, default=0.01)
    parser.add_argument("--out", required=True)
    parser.add_argument("--exit-on-loss", action="store_true")
    parser.add_argument("--min-replicas", type=int, default=0, help="registry.min_replicas")
    parser.add_argument("--replica-timeout", type=float, default=0.5, help="registry.replica_timeout")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with open(args.out, "a", buffering=1) as out:
        sys.exit(asyncio.run(run(args, out)))


if __name__ == "__main__":
    main()
