"""The behaviour every Registry store must have (run over the file store and Redis)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.errors import FencedError
from runtime.registry import Lease, Registry
from runtime.registry.fencing import LeaseHeldError

TTL = 0.5


async def test_lone_start_has_no_offsets_and_a_first_token(registry: Registry, connector: str) -> None:
    assert await registry.load_offsets(connector) == {}
    lease = await registry.try_acquire(connector, "g0", "a", TTL)
    assert lease == Lease(connector, "g0", "a", 1)


async def test_commit_of_many_partitions_lands_together(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", TTL)
    assert lease is not None
    offsets = {f'{{"p":{i}}}': {"pos": i * 10, "file": f"f{i}"} for i in range(16)}
    await registry.commit_offsets(connector, offsets, lease)
    assert await registry.load_offsets(connector) == offsets


async def test_a_stale_token_is_refused_and_writes_nothing(registry: Registry, connector: str) -> None:
    old = await registry.try_acquire(connector, "g0", "a", 0.2)
    assert old is not None
    await registry.commit_offsets(connector, {"p0": {"n": 1}}, old)
    await asyncio.sleep(0.3)
    new = await registry.try_acquire(connector, "g0", "b", TTL)
    assert new is not None and new.token == old.token + 1
    with pytest.raises(FencedError):
        await registry.commit_offsets(connector, {"p0": {"n": 99}, "p1": {"n": 99}}, old)
    assert await registry.load_offsets(connector) == {"p0": {"n": 1}}
    await registry.commit_offsets(connector, {"p0": {"n": 2}}, new)
    assert await registry.load_offsets(connector) == {"p0": {"n": 2}}


async def test_a_commit_after_expiry_is_refused_even_without_a_successor(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", 0.2)
    assert lease is not None
    await asyncio.sleep(0.3)
    with pytest.raises(FencedError):
        await registry.commit_offsets(connector, {"p0": {"n": 1}}, lease)
    assert await registry.load_offsets(connector) == {}


async def test_a_late_commit_of_the_same_lease_never_moves_an_offset_back(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", 5)
    assert lease is not None
    # Commits issued in order 0..49 race to the store and may land in any order; the one issued
    # last wins for every partition it wrote, whatever landed after it.
    commits = [registry.commit_offsets(connector, {"p0": {"n": n}, f"p{n % 3 + 1}": {"n": n}}, lease) for n in range(50)]
    await asyncio.gather(*commits)
    assert await registry.load_offsets(connector) == {"p0": {"n": 49}, "p1": {"n": 48}, "p2": {"n": 49}, "p3": {"n": 47}}


async def test_the_holder_renews_and_others_wait(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", 1.0)
    assert lease is not None
    assert await registry.try_acquire(connector, "g0", "b", TTL) is None
    again = await registry.try_acquire(connector, "g0", "a", 1.0)
    assert again == lease
    for _ in range(3):  # 1.5 s in all: held past its first TTL only because it was renewed
        await asyncio.sleep(0.5)
        await registry.renew(lease, 1.0)
    assert await registry.try_acquire(connector, "g0", "b", TTL) is None
    [info] = await registry.leases(connector)
    assert info.holder == "a" and info.token == 1 and info.ttl_left is not None and 0 < info.ttl_left <= 1.0


async def test_renewing_a_lost_lease_raises(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", 0.2)
    assert lease is not None
    await asyncio.sleep(0.3)
    with pytest.raises(FencedError):
        await registry.renew(lease, TTL)
    taken = await registry.try_acquire(connector, "g0", "b", TTL)
    assert taken is not None
    with pytest.raises(FencedError):
        await registry.renew(lease, TTL)


async def test_release_frees_at_once_and_ignores_a_lost_lease(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", 30)
    assert lease is not None
    await registry.release(lease)
    successor = await registry.try_acquire(connector, "g0", "b", 30)
    assert successor is not None and successor.token == 2
    await registry.release(lease)  # not ours any more: a no-op
    [info] = await registry.leases(connector)
    assert info.holder == "b"


async def test_groups_have_their_own_tokens(registry: Registry, connector: str) -> None:
    a = await registry.try_acquire(connector, "g0", "a", TTL)
    b = await registry.try_acquire(connector, "g1", "b", TTL)
    assert a is not None and b is not None
    assert (a.token, b.token) == (1, 1)
    await registry.commit_offsets(connector, {"p0": {"n": 1}}, a)
    await registry.commit_offsets(connector, {"p1": {"n": 1}}, b)
    assert {info.group: info.holder for info in await registry.leases(connector)} == {"g0": "a", "g1": "b"}


async def test_members_expire_and_leave(registry: Registry, connector: str) -> None:
    await registry.heartbeat_member(connector, "a", 0.2, {"pid": 1})
    await registry.heartbeat_member(connector, "b", 30, {"pid": 2})
    assert await registry.members(connector) == {"a": {"pid": 1}, "b": {"pid": 2}}
    await asyncio.sleep(0.3)
    assert await registry.members(connector) == {"b": {"pid": 2}}
    await registry.heartbeat_member(connector, "b", 0, {})
    assert await registry.members(connector) == {}


async def test_operator_writes_refuse_while_leased(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", 30)
    assert lease is not None
    await registry.commit_offsets(connector, {"p0": {"n": 5}, "p1": {"n": 5}}, lease)
    with pytest.raises(LeaseHeldError):
        await registry.set_offsets(connector, {"p0": {"n": 0}}, replace=False, force=False)
    await registry.set_offsets(connector, {"p0": {"n": 0}}, replace=False, force=True)
    assert await registry.load_offsets(connector) == {"p0": {"n": 0}, "p1": {"n": 5}}
    await registry.release(lease)
    await registry.set_offsets(connector, {"p2": {"n": 7}}, replace=True, force=False)
    assert await registry.load_offsets(connector) == {"p2": {"n": 7}}


async def test_an_operator_reset_is_not_undone_by_the_version_rule(registry: Registry, connector: str) -> None:
    lease = await registry.try_acquire(connector, "g0", "a", 30)
    assert lease is not None
    await registry.commit_offsets(connector, {"p0": {"n": 50}}, lease)
    await registry.release(lease)
    await registry.set_offsets(connector, {"p0": {"n": 0}}, replace=True, force=False)
    successor = await registry.try_acquire(connector, "g0", "a", 30)
    assert successor is not None
    await registry.commit_offsets(connector, {"p0": {"n": 1}}, successor)
    assert await registry.load_offsets(connector) == {"p0": {"n": 1}}


async def test_connectors_are_listed_and_deleted(registry: Registry, connector: str) -> None:
    other = connector + "-other"
    lease = await registry.try_acquire(connector, "g0", "a", 30)
    assert lease is not None
    await registry.commit_offsets(connector, {"p0": {"n": 1}}, lease)
    await registry.heartbeat_member(other, "x", 30, {})
    listed = await registry.connectors()
    assert connector in listed and other in listed
    assert await registry.delete_connector(connector) > 0
    assert connector not in await registry.connectors()
    assert await registry.load_offsets(connector) == {}
    assert await registry.leases(connector) == []
    assert await registry.delete_connector(connector) == 0
    assert other in await registry.connectors()
