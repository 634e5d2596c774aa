"""Coordinator: ownership, handover, loss and rebalancing (replicas in one process, real stores)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from runtime.registry import Registry
from runtime.registry.coordinator import Coordinator, plan_owners
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

    def make(holder: str, groups: list[str] = GROUPS, ttl: float = TTL, **options: object) -> Coordinator:
        options.setdefault("handover_timeout", 0.0)  # no worker here: nothing in flight to finish before a release
        coordinator = Coordinator(registry, connector, holder, groups, ttl, **options)  # type: ignore[arg-type]
        made.append(coordinator)
        return coordinator

    yield make
    for coordinator in made:
        await coordinator.stop()


def test_a_plan_keeps_every_held_group_where_it_is_unless_the_load_is_uneven() -> None:
    assert plan_owners(GROUPS, [], {}) == {}
    # A free start spreads evenly.
    fresh = plan_owners(GROUPS, ["a", "b", "c"], {})
    assert sorted(Counter(fresh.values()).values()) == [2, 2, 2]
    # Held groups stay with their holder, even one the hash would give another member (g0 hashes to b).
    held = {"g0": "a"}
    assert plan_owners(["g0"], ["a", "b"], held) == held == plan_owners(["g0"], ["b", "a"], held)
    assert plan_owners(GROUPS, ["a", "b", "c"], fresh) == fresh
    # A holder that is no longer a member holds nothing: its groups go to the least loaded.
    assert plan_owners(["g0", "g1"], ["a", "b"], {"g0": "gone", "g1": "a"}) == {"g0": "b", "g1": "a"}
    # A replica joining gets its share from the most loaded, and only that moves.
    all_on_a = dict.fromkeys(GROUPS, "a")
    joined = plan_owners(GROUPS, ["a", "b"], all_on_a)
    assert Counter(joined.values()) == {"a": 3, "b": 3}
    uneven = {"g0": "a", "g1": "a", "g2": "a", "g3": "b", "g4": "b", "g5": "c"}
    moved = {group for group, owner in plan_owners(GROUPS, ["a", "b", "c"], uneven).items() if owner != uneven[group]}
    assert len(moved) == 1 and moved <= {"g0", "g1", "g2"}


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
    # Leases far longer than the wait below: b can only have the groups because a released them
    # (rounds are at most a second apart whatever the TTL), never because they expired.
    long_ttl = 60.0
    a, b = replicas("a", ttl=long_ttl), replicas("b", ttl=long_ttl)
    await a.start()
    await b.start()
    await wait_until(lambda: a.owned | b.owned == set(GROUPS) and not a.owned & b.owned and a.owned and b.owned, 15)
    changed = b.changed
    await a.stop()
    await wait_until(lambda: b.owned == set(GROUPS), long_ttl / 4)
    assert changed.is_set()
    assert b.takeovers >= 1


async def test_a_group_given_away_stays_held_until_its_work_is_handed_over(
    replicas: Callable[..., Coordinator], registry: Registry
) -> None:
    a = replicas("a", groups=["g0", "g1"], handover_timeout=60.0)
    await a.start()
    assert a.assigned == {"g0", "g1"}
    changed = a.changed
    b = replicas("b", groups=["g0", "g1"], handover_timeout=60.0)
    await b.start()
    await wait_until(lambda: bool(a.handing_over), 3 * TTL)
    assert changed.is_set()
    [leaving] = a.handing_over
    assert a.assigned == {"g0", "g1"} - {leaving} and a.owned == {"g0", "g1"}
    lease = a.lease(leaving)
    assert lease is not None, "the lease stays usable for the last commit"

    # b is a live member that wants it, yet a keeps it (renewed past several TTLs) until its work is committed.
    watched_until = time.monotonic() + 3 * TTL
    while time.monotonic() < watched_until:
        [info] = [info for info in await registry.leases(a.connector) if info.group == leaving]
        assert (info.holder, info.token) == ("a", lease.token) and not b.owned
        await asyncio.sleep(0.05)
    await registry.commit_offsets(a.connector, {"p": {"n": 1}}, lease)

    await a.hand_over()
    assert a.owned == a.assigned == {"g0", "g1"} - {leaving} and not a.handing_over
    await wait_until(lambda: b.owned == {leaving}, 3 * TTL)
    taken = b.lease(leaving)
    assert taken is not None and taken.token == lease.token + 1
    assert a.losses == 0 and b.losses == 0


async def test_a_hand_over_never_confirmed_is_released_after_its_timeout(replicas: Callable[..., Coordinator]) -> None:
    a = replicas("a", groups=["g0", "g1"], handover_timeout=TTL)
    await a.start()
    b = replicas("b", groups=["g0", "g1"])
    await b.start()
    await wait_until(lambda: bool(a.handing_over), 3 * TTL)
    [leaving] = a.handing_over
    await wait_until(lambda: b.owned == {leaving}, TTL + 3)
    assert a.owned == {"g0", "g1"} - {leaving} and a.losses == 0


async def test_a_crashed_replica_is_replaced_within_ttl(replicas: Callable[..., Coordinator], registry: Registry) -> None:
    a, b = replicas("a", groups=["only"]), replicas("b", groups=["only"])
    await a.start()
    await b.start()
    assert a.owned == {"only"} and not b.owned
    # A crash: the loop stops, nothing is released, membership and lease expire by TTL.
    assert a._task is not None
    a._task.cancel()
    await wait_until(lambda: b.owned == {"only"}, TTL + 4)  # the TTL, a round, and room for a busy machine
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
    await wait_until(lost.is_set, 5 * TTL)
    # It comes back on its next rounds: the lease expired in the store and nobody else wanted it.
    await wait_until(lambda: a.owned == {"g"}, 5 * TTL)


async def test_a_refused_renewal_drops_the_group_at_once(replicas: Callable[..., Coordinator], registry: Registry) -> None:
    a = replicas("a", groups=["g"])
    await a.start()
    lost = a.lost
    await registry.delete_connector(a.connector)  # the lease vanishes under the holder's feet
    await registry.try_acquire(a.connector, "g", "intruder", 30)
    await wait_until(lost.is_set, 5 * TTL)
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
        return Coordinator(store, connector, holder, GROUPS, TTL, handover_timeout=0.0)

    live = {name: replica(name) for name in ("a", "b", "c")}
    for coordinator in live.values():
        await coordinator.start()
    idle_since: dict[str, float | None] = dict.fromkeys(GROUPS)
    longest_idle = 0.0
    double_owned: list[str] = []

    async def sample_until(condition: Callable[[], bool], within: float) -> None:
        """Watch ownership (no group owned twice, none idle for long) until ``condition`` holds."""
        nonlocal longest_idle
        end = time.monotonic() + within
        while not condition():
            if time.monotonic() > end:
                pytest.fail(f"condition not met within {within}s: {[coordinator.owned for coordinator in live.values()]}")
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

        def balanced() -> bool:
            return [len(coordinator.owned) for coordinator in live.values()] == [2, 2, 2]

        await sample_until(balanced, 10 * TTL)

        await live.pop("c").stop()  # leaves: b and a take its groups
        await sample_until(lambda: set().union(*(coordinator.owned for coordinator in live.values())) == set(GROUPS), 10 * TTL)

        gone = live.pop("b")  # crashes: no release, its leases expire
        assert gone._task is not None
        gone._task.cancel()
        await sample_until(lambda: live["a"].owned == set(GROUPS), TTL + 5)
        moves_before_the_joins = live["a"].takeovers

        for name in ("b", "c"):  # two join again
            live[name] = replica(name)
            await live[name].start()
        # Balanced again, with a giving b and c two groups each and nothing else moving.
        await sample_until(balanced, 10 * TTL)
        assert live["b"].takeovers + live["c"].takeovers == 4 and live["a"].takeovers == moves_before_the_joins
        assert not double_owned, double_owned
        # A crashed holder's groups are idle for its TTL and a round or so (room left for a busy machine).
        assert longest_idle <= TTL + 3, longest_idle
    finally:
        for coordinator in live.values():
            await coordinator.stop()
        for store in stores:
            await store.close()
