"""The Redis registry behind Sentinel: replica-acknowledged writes, and a failover that loses nothing.

Real servers on loopback: a primary, a replica and three Sentinels (tests/servers/).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from runtime.config import RegistrySettings
from runtime.errors import ConfigError, FencedError, RegistryUnavailableError
from runtime.registry import Lease
from runtime.registry.redis import RedisRegistry
from runtime.validation import validate_model
from tests.servers import RedisSentinelSetup

T = TypeVar("T")


@pytest.fixture
def sentinel_setup() -> Iterator[RedisSentinelSetup]:
    setup = RedisSentinelSetup()
    yield setup
    setup.stop()


async def _eventually(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` until it does not raise the registry's retriable error, for up to 90 s."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return await attempt()
        except RegistryUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _stored(port: int, key: str) -> dict[str, str]:
    client = aioredis.Redis(port=port, decode_responses=True)
    try:
        return await client.hgetall(key)
    finally:
        await client.aclose()


def test_a_sentinel_url_is_checked_at_start() -> None:
    for url, problem in [
        ("redis+sentinel://127.0.0.1:26379", "names no Sentinel service"),
        ("redis+sentinel://127.0.0.1/registry/0", "is not host:port"),
        ("redis+sentinel://127.0.0.1:26379/registry/zero", "names no Sentinel service"),
        ("redis+sentinel://127.0.0.1:26379/registry/0?ssl_ca_certs=/ca.pem", "has TLS options but no TLS"),
        ("rediss+sentinel://127.0.0.1:26379/registry/0?tls=1", "unknown query option(s) tls"),
    ]:
        with pytest.raises(ConfigError) as refused:
            RedisRegistry(url)
        assert refused.value.key == "registry.url"
        assert problem in refused.value.problem, url
    registry = {"kind": "redis", "url": "redis+sentinel://127.0.0.1:26379/registry/0", "lease_ttl": 10}
    with pytest.raises(ConfigError) as too_slow:
        validate_model(RegistrySettings, {**registry, "min_replicas": 1, "replica_timeout": 5}, prefix="registry")
    assert too_slow.value.key == "registry.replica_timeout"
    assert "lease_ttl" in too_slow.value.problem
    validate_model(RegistrySettings, {**registry, "replica_timeout": 5}, prefix="registry")  # no wait, no bound


async def test_through_sentinel_a_commit_is_on_the_replica_once_it_returns(sentinel_setup: RedisSentinelSetup) -> None:
    settings = RegistrySettings(kind="redis", url=sentinel_setup.url, prefix="s1", min_replicas=1, replica_timeout=3)
    registry = RedisRegistry.from_settings(settings)
    try:
        assert "127.0.0.1" in repr(registry) and "registry" in repr(registry)
        lease = await registry.try_acquire("orders", "g0", "a", 30)
        assert lease is not None
        for n in range(1, 21):
            await registry.commit_offsets("orders", {"p": {"n": n}}, lease)
            # WAIT returned: the replica has this very commit, not an older one.
            assert await _stored(sentinel_setup.replica.port, "s1:{orders}:offsets") == {"p": f'{{"n":{n}}}'}
        assert await _stored(sentinel_setup.replica.port, "s1:{orders}:tokens") == {"g0": str(lease.token)}
    finally:
        await registry.close()


async def test_without_a_replica_acknowledging_nothing_counts_within_the_bound(sentinel_setup: RedisSentinelSetup) -> None:
    acknowledged = RedisRegistry(sentinel_setup.url, prefix="s2", min_replicas=1, replica_timeout=2)
    unacknowledged = RedisRegistry(sentinel_setup.url, prefix="s2")
    try:
        lease = await acknowledged.try_acquire("orders", "g0", "a", 60)
        assert lease is not None
        await acknowledged.commit_offsets("orders", {"p": {"n": 1}}, lease)
        sentinel_setup.replica.kill()

        started = time.monotonic()
        with pytest.raises(RegistryUnavailableError) as not_counted:
            await acknowledged.commit_offsets("orders", {"p": {"n": 2}}, lease)
        assert time.monotonic() - started < 30  # replica_timeout 2 s, generous for a loaded machine
        assert "0 of 1 replica(s)" in str(not_counted.value)
        with pytest.raises(RegistryUnavailableError):
            await acknowledged.try_acquire("orders", "g1", "a", 60)  # the lease is not held either
        # min_replicas 0 is today's behaviour: the primary alone is enough.
        await unacknowledged.commit_offsets("orders", {"p": {"n": 3}}, lease)

        sentinel_setup.replica.start()
        await _eventually(lambda: acknowledged.commit_offsets("orders", {"p": {"n": 4}}, lease))
        assert await _stored(sentinel_setup.replica.port, "s2:{orders}:offsets") == {"p": '{"n":4}'}
    finally:
        await acknowledged.close()
        await unacknowledged.close()


async def test_after_a_failover_no_token_or_offset_goes_backwards(sentinel_setup: RedisSentinelSetup) -> None:
    prefix = f"s3-{uuid.uuid4().hex[:6]}"
    a = RedisRegistry(sentinel_setup.url, prefix=prefix, min_replicas=1, replica_timeout=5)
    b = RedisRegistry(sentinel_setup.url, prefix=prefix, min_replicas=1, replica_timeout=5)
    try:
        lease_a = await a.try_acquire("orders", "g0", "a", 120)
        assert lease_a is not None
        for n in range(1, 51):
            await a.commit_offsets("orders", {"p": {"n": n}}, lease_a)
        old_primary = sentinel_setup.primary
        old_port = old_primary.port

        old_primary.kill()
        deadline = time.monotonic() + 90
        while sentinel_setup.primary_port() == old_port:
            assert time.monotonic() < deadline, "the Sentinels did not fail over within 90 s"
            await asyncio.sleep(0.2)
        new_port = sentinel_setup.primary_port()
        # Back on its port, the old primary is turned into the new one's replica by the Sentinels:
        # the replica that min_replicas=1 waits for from now on.
        old_primary.start()

        # The holder's next write is checked against the lease on the new primary, and passes:
        # the lease and its token were acknowledged by the replica that was promoted.
        await _eventually(lambda: a.commit_offsets("orders", {"p": {"n": 51}}, lease_a))
        assert await a.load_offsets("orders") == {"p": {"n": 51}}
        assert await _stored(new_port, f"{prefix}:{{orders}}:tokens") == {"g0": str(lease_a.token)}

        # A new lease gets a newer token, and the old one can write nothing any more.
        await a.release(lease_a)
        lease_b: Lease | None = await _eventually(lambda: b.try_acquire("orders", "g0", "b", 120))
        assert lease_b is not None and lease_b.token > lease_a.token
        await b.commit_offsets("orders", {"p": {"n": 52}}, lease_b)
        with pytest.raises(FencedError):
            await a.commit_offsets("orders", {"p": {"n": 1000}}, lease_a)
        assert await b.load_offsets("orders") == {"p": {"n": 52}}
    finally:
        await a.close()
        await b.close()


async def test_passwords_for_the_primary_and_the_sentinels_and_none_in_errors() -> None:
    setup = RedisSentinelSetup(password="pr1mary-pw", sentinel_password="sent1nel-pw")
    try:
        registry = RedisRegistry(setup.url, prefix="auth", min_replicas=1, replica_timeout=3)
        try:
            assert "pr1mary" not in repr(registry) and "sent1nel" not in repr(registry)
            lease = await registry.try_acquire("orders", "g0", "a", 30)
            assert lease is not None
            await registry.commit_offsets("orders", {"p": {"n": 1}}, lease)
            assert await registry.load_offsets("orders") == {"p": {"n": 1}}
        finally:
            await registry.close()
        for wrong_url in (setup.url.replace("sent1nel-pw", "wrong-s3cret"), setup.url.replace("pr1mary-pw", "wrong-s3cret")):
            wrong = RedisRegistry(wrong_url, prefix="auth", retries=0)
            try:
                with pytest.raises(RegistryUnavailableError) as refused:
                    await wrong.load_offsets("orders")
                message = str(refused.value)
                assert "s3cret" not in message and "pr1mary" not in message and "sent1nel" not in message
            finally:
                await wrong.close()
    finally:
        setup.stop()


async def test_tls_towards_the_sentinels_and_the_primary() -> None:
    setup = RedisSentinelSetup(password="pr1mary-pw", tls=True)
    try:
        assert setup.url.startswith("rediss+sentinel://")
        registry = RedisRegistry(setup.url, prefix="tls", min_replicas=1, replica_timeout=3)
        try:
            assert repr(registry).startswith("RedisRegistry('rediss+sentinel://127.0.0.1:")
            lease = await registry.try_acquire("orders", "g0", "a", 30)
            assert lease is not None
            await registry.commit_offsets("orders", {"p": {"n": 1}}, lease)
            assert await registry.load_offsets("orders") == {"p": {"n": 1}}
        finally:
            await registry.close()
    finally:
        setup.stop()
