"""The Redis registry on a Redis Cluster: one slot per connector, WAIT on the slot's primary, and a failover.

Real servers on loopback (tests/servers/): three primaries with a replica each, made with
``redis-cli --cluster create``. The store contract and the coordinator tests run on the shared
cluster too (the ``redis-cluster`` store of tests/registry/conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from runtime.errors import ConfigError, RegistryUnavailableError
from runtime.record import partition_key
from runtime.registry.redis import RedisRegistry
from tests.registry.test_replicas import BATCH, Replica, assert_no_gap, commits_in_time_order, published, wait_for
from tests.servers import RedisClusterNode, RedisClusterSetup


def test_a_cluster_url_is_checked_at_start() -> None:
    for url, problem in [
        ("redis+cluster://127.0.0.1", "is not host:port"),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1/0", "is not host:port"),
        ("redis+cluster://127.0.0.1:7000/1", "names a db other than 0"),
        ("redis+cluster://127.0.0.1:7000?ssl_ca_certs=/ca.pem", "has TLS options but no TLS"),
        ("rediss+cluster://127.0.0.1:7000?sentinel_password=x", "unknown query option(s) sentinel_password"),
    ]:
        with pytest.raises(ConfigError) as refused:
            RedisRegistry(url)
        assert refused.value.key == "registry.url"
        assert problem in refused.value.problem, url


def _slot_key(prefix: str, connector: str) -> str:
    return f"{prefix}:{{{connector}}}:offsets"


def _connectors_on_distinct_primaries(cluster: RedisClusterSetup, prefix: str, count: int) -> list[str]:
    chosen: dict[int, str] = {}
    for index in range(1000):
        name = f"orders-{index}"
        chosen.setdefault(cluster.primary_of(_slot_key(prefix, name)).port, name)
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError(f"no {count} connectors on distinct primaries")


async def _eventually(attempt: Any, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return await attempt()
        except RegistryUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_one_connectors_keys_share_one_slot_and_its_scripts_run_there(redis_cluster: RedisClusterSetup) -> None:
    prefix = f"slots-{uuid.uuid4().hex[:6]}"
    registry = RedisRegistry(redis_cluster.url, prefix=prefix, min_replicas=1, replica_timeout=2)
    try:
        assert repr(registry).startswith("RedisRegistry('redis+cluster://127.0.0.1:")
        names = _connectors_on_distinct_primaries(redis_cluster, prefix, 3)
        for name in names:
            lease = await registry.try_acquire(name, "g0", "a", 30)
            assert lease is not None
            await registry.commit_offsets(name, {"p": {"n": 1}}, lease)
            await registry.renew(lease, 30)
            await registry.heartbeat_member(name, "a", 30, {"host": "h"})
            assert await registry.members(name) == {"a": {"host": "h"}}
            assert [(info.holder, info.token) for info in await registry.leases(name)] == [("a", lease.token)]
            await registry.set_offsets(name, {"q": {"n": 5}}, replace=False, force=True)
            assert await registry.load_offsets(name) == {"p": {"n": 1}, "q": {"n": 5}}
        assert await registry.connectors() == sorted(names)

        keys = [key for node in redis_cluster.nodes for key in redis_cluster.read(node, "KEYS", f"{prefix}:{{*")]
        slots: dict[str, set[int]] = {}
        for key in keys:
            connector = key.split("{", 1)[1].split("}", 1)[0]
            slots.setdefault(connector, set()).add(int(redis_cluster.read(redis_cluster.nodes[0], "CLUSTER", "KEYSLOT", key)))
        assert sorted(slots) == sorted(names)
        assert all(len(found) == 1 for found in slots.values()), slots
        assert len({slot for found in slots.values() for slot in found}) == 3

        assert await registry.delete_connector(names[0]) > 0
        assert await registry.load_offsets(names[0]) == {}
        assert await registry.connectors() == sorted(names[1:])
    finally:
        await registry.close()


async def test_a_commit_waits_for_the_replica_of_the_primary_serving_its_slot(redis_cluster: RedisClusterSetup) -> None:
    prefix = f"wait-{uuid.uuid4().hex[:6]}"
    registry = RedisRegistry(redis_cluster.url, prefix=prefix, min_replicas=1, replica_timeout=1)
    waiting, other = _connectors_on_distinct_primaries(redis_cluster, prefix, 2)
    primary = redis_cluster.primary_of(_slot_key(prefix, waiting))
    [replica] = redis_cluster.replicas_of(primary)
    try:
        leases = {}
        for name in (waiting, other):
            lease = await registry.try_acquire(name, "g0", "a", 60)
            assert lease is not None
            leases[name] = lease
        for n in range(1, 11):
            await registry.commit_offsets(waiting, {"p": {"n": n}}, leases[waiting])
            # WAIT returned on the slot's primary: its replica has this very commit.
            assert redis_cluster.read(replica, "HGETALL", _slot_key(prefix, waiting)) == {"p": f'{{"n":{n}}}'}

        replica.kill()
        with pytest.raises(RegistryUnavailableError) as not_counted:
            await registry.commit_offsets(waiting, {"p": {"n": 11}}, leases[waiting])
        assert "0 of 1 replica(s)" in str(not_counted.value)
        # Another slot, another primary, whose replica is up: WAIT there is answered.
        await registry.commit_offsets(other, {"p": {"n": 1}}, leases[other])

        replica.start()
        await asyncio.to_thread(redis_cluster.wait_until_healthy)
        await _eventually(lambda: registry.commit_offsets(waiting, {"p": {"n": 12}}, leases[waiting]))
        assert redis_cluster.read(replica, "HGETALL", _slot_key(prefix, waiting)) == {"p": '{"n":12}'}
    finally:
        await registry.close()


async def test_tls_and_a_password_on_every_node_and_none_in_errors() -> None:
    cluster = RedisClusterSetup(password="n0de-pw", tls=True)
    try:
        assert cluster.url.startswith("rediss+cluster://")
        registry = RedisRegistry(cluster.url, prefix="tls", min_replicas=1, replica_timeout=3)
        try:
            assert "n0de-pw" not in repr(registry)
            assert repr(registry).startswith("RedisRegistry('rediss+cluster://127.0.0.1:")
            lease = await registry.try_acquire("orders", "g0", "a", 30)
            assert lease is not None
            await registry.commit_offsets("orders", {"p": {"n": 1}}, lease)
            assert await registry.load_offsets("orders") == {"p": {"n": 1}}
        finally:
            await registry.close()
        wrong = RedisRegistry(cluster.url.replace("n0de-pw", "wrong-s3cret"), prefix="tls", retries=0)
        try:
            with pytest.raises(RegistryUnavailableError) as refused:
                await wrong.load_offsets("orders")
            assert "s3cret" not in str(refused.value) and "n0de" not in str(refused.value)
        finally:
            await wrong.close()
    finally:
        cluster.stop()


# -- a failover under two source replicas ------------------------------------------------------

CONNECTOR = "counter-source"
"""The connector name tests/registry/replica.py uses."""


@pytest.fixture
def failover_cluster() -> Iterator[RedisClusterSetup]:
    cluster = RedisClusterSetup()
    yield cluster
    cluster.stop()


def _stored_offset(cluster: RedisClusterSetup, prefix: str, group: str) -> int | None:
    raw = cluster.read(cluster.primary_of(_slot_key(prefix, CONNECTOR)), "HGET", _slot_key(prefix, CONNECTOR), _offset_key(group))
    return None if raw is None else int(orjson.loads(raw)["n"])


def _offset_key(group: str) -> str:
    return partition_key({"group": group})


def _serves(cluster: RedisClusterSetup, prefix: str, node: RedisClusterNode) -> bool:
    try:
        return cluster.primary_of(_slot_key(prefix, CONNECTOR)) is node
    except RuntimeError:  # no node serves the slot during the failover
        return False


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_failover_of_the_slots_primary_loses_nothing_and_no_token_goes_backwards(
    tmp_path: Path, failover_cluster: RedisClusterSetup
) -> None:
    """kill -9 of the primary serving the connector's slot while two replicas take leases and commit.

    With ``min_replicas: 1`` every token used and every offset counted was on the slot's replica
    before, so the replica the cluster promotes has them all.
    """
    cluster = failover_cluster
    prefix = f"failover-{uuid.uuid4().hex[:6]}"
    groups = ["g0", "g1"]
    options = ("--groups", ",".join(groups), "--ttl", "2", "--min-replicas", "1", "--replica-timeout", "0.5")
    replicas = [Replica(tmp_path, cluster.url, prefix, holder, *options) for holder in ("a", "b")]
    try:
        wait_for(lambda: all(len(replica.events("commit")) >= 5 for replica in replicas), 30, "both replicas commit")
        old_primary = cluster.primary_of(_slot_key(prefix, CONNECTOR))
        [promoted] = cluster.replicas_of(old_primary)
        old_primary.kill()
        killed_at = time.monotonic()
        wait_for(lambda: _serves(cluster, prefix, promoted), 30, "the replica of the killed primary takes its slots over")
        # What the promoted replica holds: no token below one used, no offset below one counted before the kill.
        stored_tokens = cluster.read(promoted, "HGETALL", f"{prefix}:{{{CONNECTOR}}}:tokens")
        stored_offsets = cluster.read(promoted, "HGETALL", _slot_key(prefix, CONNECTOR))
        for group in groups:
            before = [event for r in replicas for event in r.events() if event["t"] < killed_at and event.get("group") == group]
            used = max(event["token"] or 0 for event in before if event["event"] in ("acquired", "commit"))
            counted = max(event["n"] for event in before if event["event"] == "commit")
            assert int(stored_tokens[group]) >= used, (
                f"{group}: token {stored_tokens[group]} after the failover, {used} used before"
            )
            assert orjson.loads(stored_offsets[_offset_key(group)])["n"] >= counted, f"{group}: an offset went backwards"
        # Back on its port and with its nodes.conf, the old primary rejoins as the new one's replica:
        # the replica min_replicas waits for from now on.
        old_primary.start()
        wait_for(lambda: cluster.replicas_of(promoted), 30, "the old primary replicates the new one")
        recovered_at = time.monotonic()
        for group in groups:
            wait_for(
                lambda group=group: [
                    event
                    for replica in replicas
                    for event in replica.events("commit")
                    if event["t"] > recovered_at and event["group"] == group
                ],
                30,
                f"{group} commits again after the failover",
            )
        for replica in replicas:
            assert replica.stop() == 0
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.proc.kill()
                replica.proc.wait(10)

    events = sorted((event for replica in replicas for event in replica.events()), key=lambda event: event["t"])
    assert [event for event in events if event["event"] == "unavailable" and event["t"] > killed_at], "the outage was seen"
    for group in groups:
        # A token never goes backwards: every new lease of the group, whoever took it, before
        # and after the failover, has a greater token than any before it.
        acquired = sorted(
            (event["t"], event["token"], replica.holder)
            for replica in replicas
            for event in replica.events("acquired")
            if event["group"] == group
        )
        for (_, before, holder), (_, after, successor) in itertools.pairwise(acquired):
            assert after > before or (after == before and holder == successor), f"{group}: token {before} then {after}"
        # No offset is written under a stale token: the commits that succeeded, in the order
        # they did, never go back in token or in offset.
        commits = sorted(
            (event["t"], event["token"], event["n"])
            for replica in replicas
            for event in replica.events("commit")
            if event["group"] == group
        )
        assert [token for _, token, _ in commits] == sorted(token for _, token, _ in commits), f"{group}: a stale token wrote"
        assert commits_in_time_order(replicas, group) == sorted(set(commits_in_time_order(replicas, group)))
        assert _stored_offset(cluster, prefix, group) == commits[-1][2]
    # No event lost; an event published twice follows a checkpoint a replica resumed from.
    assert_no_gap(replicas, groups)
    duplicates = Counter(
        group for group in groups for n, times in Counter(n for r in replicas for n in published(r, group)).items() if times > 1
    )
    resumes = sum(len(replica.events("resume")) for replica in replicas)
    tokens = {
        group: sorted({event["token"] for r in replicas for event in r.events("commit") if event["group"] == group})
        for group in groups
    }
    fenced = sum(len(replica.events("fenced")) for replica in replicas)
    print(
        f"failover: tokens that committed {tokens}, {fenced} commits fenced, {resumes} resumes;"
        f" duplicates per group {dict(duplicates)} (each within {BATCH} after a checkpoint a replica resumed from)"
    )
