"""The faults of a chaos run (see :mod:`tests.chaos.harness`): who is killed, stopped or cut, and when, and how
long a stopped source's partitions took to move to another replica."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from tests.chaos.supervisor import Managed
from tests.servers import MariaDBServer, RedisServer

if TYPE_CHECKING:
    from tests.chaos.harness import ChaosSettings, Topology

__all__ = ["Faults", "sleep_or_stop"]

log = structlog.get_logger("chaos")


class Faults:
    """Injects the faults the harness docstring lists and measures source takeovers."""

    def __init__(self, topology: Topology, settings: ChaosSettings) -> None:
        self.topology = topology
        self.supervisor = topology.supervisor
        self.settings = settings
        self.random = random.Random(settings.seed + 100)
        self.counts: Counter[str] = Counter()
        self.takeovers: list[float] = []
        self.timeline: list[str] = []
        self._measures: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self._started:6.1f}s {what}")
        log.info("fault", what=what)

    async def close(self) -> None:
        if self._measures:
            await asyncio.wait(set(self._measures), timeout=35)
        await self._http.close()

    def connectors(self) -> list[Managed]:
        return [m for m in self.supervisor.processes.values() if m.kind != "mesh"]

    async def active_source(self) -> Managed | None:
        for managed in self.supervisor.of_kind("mysql-source"):
            status = await self.topology.status(self._http, managed)
            if status and (status.get("lease") or {}).get("held"):
                return managed
        return None

    async def _offsets(self) -> dict[tuple[str, int], Any]:
        """(replica, pid) -> last committed offsets it reports; None for a paused one (it cannot answer)."""
        seen: dict[tuple[str, int], Any] = {}
        for managed in self.supervisor.of_kind("mysql-source"):
            pid = managed.pid
            if pid is not None:
                status = await self.topology.status(self._http, managed)
                seen[(managed.name, pid)] = None if status is None else status.get("last_offsets")
        return seen

    async def _measure_takeover(self, victim: tuple[str, int], baseline: dict[tuple[str, int], Any], started: float) -> None:
        """Seconds from losing the active replica to the first offset commit by another process.

        A commit is a change of the offsets a lease holder reports: against ``baseline`` for a
        process that answered then, against its first answer for one that could not (paused), and
        any offsets at all for a process started since.
        """
        while time.monotonic() - started < 30:
            for managed in self.supervisor.of_kind("mysql-source"):
                pid = managed.pid
                key = (managed.name, pid or 0)
                if pid is None or key == victim:
                    continue
                status = await self.topology.status(self._http, managed)
                if status is None:
                    continue
                offsets = status.get("last_offsets")
                if baseline.get(key, {}) is None:
                    baseline[key] = offsets
                    continue
                if (status.get("lease") or {}).get("held") and offsets and offsets != baseline.get(key):
                    seconds = time.monotonic() - started
                    self.takeovers.append(seconds)
                    self.note(f"takeover by {managed.name} (pid {pid}) after {seconds:.2f}s")
                    return
            await asyncio.sleep(0.05)
        self.note(f"no takeover within 30s after losing {victim[0]}")

    async def _lose_active(self, action: Callable[[str], int | None], managed: Managed) -> None:
        baseline = await self._offsets()
        pid = action(managed.name)
        if pid is None:
            return
        task = asyncio.create_task(self._measure_takeover((managed.name, pid), baseline, time.monotonic()))
        self._measures.add(task)
        task.add_done_callback(self._measures.discard)

    async def kill_loop(self, stop: asyncio.Event) -> None:
        """Every few seconds kill -9 one replica of the next deployment (a shuffled round, so each is hit)."""
        deployments: list[str] = []
        while not await sleep_or_stop(stop, self.random.uniform(*self.settings.kill_every)):
            if not deployments:
                deployments = sorted({m.kind for m in self.connectors()})
                self.random.shuffle(deployments)
            candidates = [m for m in self.supervisor.of_kind(deployments.pop()) if m.pid is not None and not m.paused]
            if not candidates:
                continue
            victim = self.random.choice(candidates)
            active = await self.active_source() if victim.kind == "mysql-source" else None
            if active is victim:
                await self._lose_active(self.supervisor.kill, victim)
            elif self.supervisor.kill(victim.name) is None:
                continue
            self.counts["connector_kill"] += 1
            self.note(f"kill -9 {victim.name}{' (active source)' if active is victim else ''}")

    async def major_loop(self, stop: asyncio.Event) -> None:
        """Zombie source, Redis, sink database, mesh, in turn, on a fixed beat (each lasts less than the beat)."""
        kinds = {
            "zombie_source": self.zombie,
            "redis_restart": self.redis_restart,
            "redis_failover": self.redis_failover,
            "sink_db_restart": self.sink_db_restart,
            "mesh_restart": self.mesh_restart,
        }
        faults = [fault for kind, fault in kinds.items() if kind in self.settings.faults]
        if not faults:
            return
        spacing = min(self.settings.major_fault_every, self.settings.duration / (len(faults) + 1))
        started = time.monotonic()
        for beat in itertools.count(1):
            if await sleep_or_stop(stop, max(0.0, started + beat * spacing - time.monotonic())):
                return
            await faults[(beat - 1) % len(faults)]()

    async def zombie(self) -> None:
        active = None
        for _ in range(100):  # the active replica may have just been killed: wait for the next one
            active = await self.active_source()
            if active is not None:
                break
            await asyncio.sleep(0.1)
        if active is None:
            self.note("zombie skipped: no active source replica")
            return
        await self._lose_active(self.supervisor.pause, active)
        self.counts["zombie_source"] += 1
        hold = self.settings.lease_ttl * 2 + 1
        self.note(f"SIGSTOP {active.name} for {hold:.1f}s (lease TTL {self.settings.lease_ttl}s)")
        await asyncio.sleep(hold)
        self.supervisor.resume(active.name)
        self.note(f"SIGCONT {active.name}")

    async def redis_restart(self) -> None:
        assert self.topology.redis is not None
        await self._restart(self.topology.redis, "Redis", 2.0, "redis_restart")

    async def redis_failover(self) -> None:
        """kill -9 or SIGSTOP (in turn) of the primary until the Sentinels promote the replica; then start or resume it."""
        setup = self.topology.sentinel
        assert setup is not None and self.settings.sentinel, "redis_failover needs the Sentinel setup (sentinel=True)"
        primary = await asyncio.to_thread(setup.current_primary)
        assert primary.proc is not None
        pausing = self.counts["redis_failover"] % 2 == 1
        if pausing:
            os.killpg(primary.proc.pid, signal.SIGSTOP)
        else:
            await asyncio.to_thread(primary.kill)
        self.note(f"Redis primary :{primary.port} {'paused (SIGSTOP)' if pausing else 'killed (-9)'}")
        started = time.monotonic()
        try:
            while await asyncio.to_thread(setup.primary_port) == primary.port:
                if time.monotonic() - started > 30:
                    self.note("the Sentinels did not fail over within 30 s")
                    return
                await asyncio.sleep(0.2)
            self.counts["redis_failover"] += 1
            self.note(f"Sentinels promoted :{setup.primary_port()} after {time.monotonic() - started:.1f}s")
        finally:
            if pausing:
                os.killpg(primary.proc.pid, signal.SIGCONT)
            else:
                await asyncio.to_thread(primary.start)
            self.note(f"old primary :{primary.port} {'resumed' if pausing else 'restarted'}, to become a replica")

    async def sink_db_restart(self) -> None:
        assert self.topology.sink_db is not None
        await self._restart(self.topology.sink_db, "sink MariaDB", 3.0, "sink_db_restart")

    async def _restart(self, server: RedisServer | MariaDBServer, label: str, down_for: float, fault: str) -> None:
        await asyncio.to_thread(server.kill)
        self.note(f"{label} killed")
        await asyncio.sleep(down_for)
        await asyncio.to_thread(server.start)
        self.counts[fault] += 1
        self.note(f"{label} restarted")

    async def mesh_restart(self) -> None:
        if self.supervisor.kill("mesh", hold=2.0) is None:
            return
        self.counts["mesh_restart"] += 1
        self.note("mesh killed (restarted after 2s)")


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; whether it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
