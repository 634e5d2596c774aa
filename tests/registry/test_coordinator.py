"""Coordinator: ownership, handover, loss and rebalancing (replicas in one process, real stores)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from runtime.registry import Registry
from runtime.registry.coordinator import Coordinator, desired_owner
from runtime.registry.redis import RedisRegistry
from tests.servers import RedisServer

TTL = 1.0
GROUPS = [f"g{i}" for i in range(6)]


async def wait_until(condition: Callable[[], bool], within: float) -> float:
    """Seconds it took for ``condition`` to hold; fails after ``within`` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def replicas(registry: Registry, connector: str) -> AsyncIterator[Callable[..., Coordinator]]:
    made: list[Coordinator] = []

    def make(holder: str, groups: list[str] = GROUPS, **options: object) -> Coordinator:
        coordinator = Coordinator(registry, connector, holder, groups, TTL, **options)  # type: ignore[arg-type]
        made.append(coordinator)
        return coordinator

    yield make
    for coordinator in made:
        await coordinator.stop()


def test_rendezvous_is_stable_and_moves_only_what_it_must() -> None:
    three = {group: desired_owner(group, ["a", "b", "c"]) for group in map(str, range(300))}
    two = {group: desired_owner(group, ["a", "b"]) for group in three}
    assert set(three.values()) == {"a", "b", "c"}
    assert all(two[group] == owner for group, owner in three.items() if owner != "c")
    assert desired_owner("g", []) is None


async def test_a_lone_replica_owns_every_group_on_start(replicas: Callable[..., Coordinator]) -> None:
    changes: list[frozenset[str]] = []
    alone = replicas("a", on_change=changes.append)
    await alone.start()
    assert alone.owned == frozenset(GROUPS)
    assert changes[-1] == frozenset(GROUPS)
    lease = alone.lease("g0")
    assert lease is not None and lease.holder == "a" and lease.token == 1
    assert alone.lease("unknown") is None


async def test_a_graceful_stop_hands_over_within_one_round(replicas: Callable[..., Coordinator]) -> None:
    a, b = replicas("a"), replicas("b")
    await a.start()
    await b.start()
    await wait_until(lambda: a.owned | b.owned == set(GROUPS) and not a.owned & b.owned and a.owned and b.owned, 3 * TTL)
    changed = b.changed
    await a.stop()
    took = await wait_until(lambda: b.owned == set(GROUPS), 3 * TTL)
    assert took < TTL - 0.1, "taken over before the released lease would have expired"
    assert changed.is_set()
    assert b.takeovers >= 1


async def test_a_crashed_replica_is_replaced_within_ttl(replicas: Callable[..., Coordinator], registry: Registry) -> None:
    a, b = replicas("a", groups=["only"]), replicas("b", groups=["only"])
    await a.start()
    await b.start()
    assert a.owned == {"only"} and not b.owned
    # A crash: the loop stops, nothing is released, membership and lease expire by TTL.
    assert a._task is not None
    a._task.cancel()
    crashed = time.monotonic()
    await wait_until(lambda: b.owned == {"only"}, TTL + 1)
    assert time.monotonic() - crashed <= TTL + 1
    lease = b.lease("only")
    assert lease is not None and lease.token == 2


async def test_a_paused_replica_distrusts_its_lease_before_doing_anything(replicas: Callable[..., Coordinator]) -> None:
    a = replicas("a", groups=["g"])
    await a.start()
    lost = a.lost
    assert a.lease("g") is not None
    time.sleep(TTL + 0.05)  # noqa: ASYNC251 - the whole process frozen past its TTL, as under SIGSTOP
    assert a.owned == frozenset()
    assert a.lease("g") is None
    await wait_until(lost.is_set, TTL)
    # It comes back on its next rounds: the lease expired in the store and nobody else wanted it.
    await wait_until(lambda: a.owned == {"g"}, 2 * TTL)


async def test_a_refused_renewal_drops_the_group_at_once(replicas: Callable[..., Coordinator], registry: Registry) -> None:
    a = replicas("a", groups=["g"])
    await a.start()
    lost = a.lost
    await registry.delete_connector(a.connector)  # the lease vanishes under the holder's feet
    await registry.try_acquire(a.connector, "g", "intruder", 30)
    await wait_until(lost.is_set, TTL)
    assert a.owned == frozenset()


async def test_a_sink_only_heartbeats_membership(replicas: Callable[..., Coordinator], registry: Registry) -> None:
    sink = replicas("sink-1", groups=[], info={"pid": 42})
    await sink.start()
    assert await registry.members(sink.connector) == {"sink-1": {"pid": 42}}
    assert await registry.leases(sink.connector) == []
    await sink.stop()
    assert await registry.members(sink.connector) == {}


async def test_rebalance_three_two_three_keeps_one_owner_per_group(redis_server: RedisServer, connector: str) -> None:
    stores: list[RedisRegistry] = []

    def replica(holder: str) -> Coordinator:
        store = RedisRegistry(redis_server.url, prefix="rebalance")
        stores.append(store)
        return Coordinator(store, connector, holder, GROUPS, TTL)

    live = {name: replica(name) for name in ("a", "b", "c")}
    for coordinator in live.values():
        await coordinator.start()
    idle_since: dict[str, float | None] = dict.fromkeys(GROUPS)
    longest_idle = 0.0
    double_owned: list[str] = []

    async def sample(seconds: float) -> None:
        nonlocal longest_idle
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = time.monotonic()
            for group in GROUPS:
                owners = [name for name, coordinator in live.items() if group in coordinator.owned]
                if len(owners) > 1:
                    double_owned.append(f"{group}: {owners}")
                if owners:
                    idle_since[group] = None
                else:
                    started = idle_since[group] = idle_since[group] or now
                    longest_idle = max(longest_idle, now - started)
            await asyncio.sleep(0.01)

    try:
        await sample(2 * TTL)
        spread = {name: coordinator.owned for name, coordinator in live.items()}
        assert all(spread.values()), spread
        assert spread == {name: {g for g in GROUPS if desired_owner(g, live) == name} for name in live}

        await live.pop("c").stop()  # leaves: b and a take its groups
        await sample(2 * TTL)
        assert set().union(*(coordinator.owned for coordinator in live.values())) == set(GROUPS)

        gone = live.pop("b")  # crashes: no release, its leases expire
        assert gone._task is not None
        gone._task.cancel()
        await sample(TTL + 1.5)
        assert live["a"].owned == set(GROUPS)

        for name in ("b", "c"):  # two join again
            live[name] = replica(name)
            await live[name].start()
        await sample(2 * TTL)
        assert {name: coordinator.owned for name, coordinator in live.items()} == spread
        assert not double_owned, double_owned
        assert longest_idle <= TTL + 1, longest_idle
    finally:
        for coordinator in live.values():
            await coordinator.stop()
        for store in stores:
            await store.close()
