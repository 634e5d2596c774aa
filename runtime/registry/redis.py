"""A :class:`~runtime.registry.Registry` in Redis: the store for deployments.

Key layout
----------
Every key starts with the configurable prefix (``registry.prefix``, default ``meshconnect``): one
namespace per deployment, so several deployments can share a Redis without seeing each other.
The connector (instance) name is a Redis Cluster hash tag, so all keys of one connector live in
one slot and every Lua script below touches a single slot::

    <prefix>:connectors                       SET   every connector name with keys here (listing)
    <prefix>:{<connector>}:offsets            HASH  partition key -> offset (opaque JSON)
    <prefix>:{<connector>}:versions           HASH  partition key -> JSON [group, token, counter] of its last commit
    <prefix>:{<connector>}:tokens             HASH  group -> last fencing token issued (never decreases)
    <prefix>:{<connector>}:lease:<group>      HASH  holder, token; PEXPIRE = lease TTL
    <prefix>:{<connector>}:members            ZSET  replica -> expiry (Redis TIME, ms)
    <prefix>:{<connector>}:member-info        HASH  replica -> JSON info it reported

``meshconnect registry connectors`` lists ``<prefix>:connectors``; ``meshconnect registry delete
<connector>`` removes every ``<prefix>:{<connector>}:*`` key and the name from the set.

Fencing and ordering
--------------------
Every lease mutation and every offset commit is one Lua script, so Redis itself decides:

* acquire: if the lease key exists and belongs to someone else, refuse; if it is ours, extend it
  (same token); else ``HINCRBY tokens group 1`` gives the new token and ``PEXPIRE`` starts the TTL.
  Only Redis's clock counts for expiry; the holder keeps its own monotonic deadline (coordinator).
* commit: refused whole (:class:`~runtime.errors.FencedError`) unless the lease key holds this
  holder and token; then each partition is written only if the commit's version
  ``(group, token, per-lease counter)`` supersedes the stored one
  (:mod:`runtime.registry.fencing`), so offsets never move backwards.
* renew and release check holder and token the same way.

Replica acknowledgement and failover
------------------------------------
With ``min_replicas`` > 0, acquire, renew and commit are each followed by ``WAIT min_replicas
replica_timeout`` on the same connection; fewer acknowledgements raise
:class:`~runtime.errors.RegistryUnavailableError`: the lease is not held, the offset not committed,
and the caller retries. So every token a holder uses, and every offset it counts, was on
``min_replicas`` replicas first, and a replica Sentinel promotes (the most up to date one) has them.
No separate re-validation step is needed after a failover: the commit and renew scripts compare
holder and token with the lease stored on whichever primary they reach, so the first write after a
failover is checked against the new primary's lease.

In a Redis Cluster the same holds per slot. A connector's keys share one slot, served by one
primary, and WAIT goes to that primary (see Connecting), so it counts that primary's replicas. When
the primary fails, the cluster promotes one of its replicas, and every replica that acknowledged
has each token used and each offset counted; with ``min_replicas`` equal to the primary's replica
count, that is every replica it could promote. A write that reaches a node that no longer serves
the slot is refused there (``MOVED``, before the script runs) or, on a primary cut off in a
minority partition, gets no acknowledgement from replicas on the other side: it does not count.

Connecting
----------
``redis://[:password@]host:port/db`` or ``rediss://`` for TLS; TLS options go in the URL query
(``?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/ca.pem&ssl_certfile=...&ssl_keyfile=...``).
Through Sentinel: ``redis+sentinel://[:password@]host1:port1,host2:port2/service/db`` (or
``rediss+sentinel://`` with the same TLS options, used towards the Sentinels and the primary; a
Sentinel password goes in ``?sentinel_password=``). redis-py's Sentinel client asks the Sentinels
for the primary on every new connection, and drops a connection that finds a demoted primary, so
after a failover the next retry reaches the new primary.
A Redis Cluster: ``redis+cluster://[[user]:password@]host1:port1,host2:port2`` (or
``rediss+cluster://`` with the same TLS options), any reachable nodes of it; redis-py's
``RedisCluster`` learns the slot map from them and follows ``MOVED`` and failovers. Every script
touches the keys of one connector only, one slot. A replica-acknowledged write (``min_replicas``)
goes, with its ``WAIT``, to the primary that serves the connector's slot, on one connection of a
client of that node alone: WAIT counts that node's replicas. If that node no longer serves the slot
(``MOVED``, a replica refusing ``WAIT``, a dead node), the write does not count, the cluster client
looks the slot up again, and the caller retries.
The URL is a secret in the config (``{env: REDIS_URL}`` or ``{file: ...}``), so a password in it
is never logged; a password may also be passed apart from the URL. Commands time out after
``timeout`` seconds and are retried twice with exponential backoff and jitter; after that,
:class:`~runtime.errors.RegistryUnavailableError` reaches the caller, which pauses and retries.

Persistence: a production Redis must persist (``appendonly yes``, ``appendfsync everysec`` or
``always``). A Redis that restarts empty forgets every offset, and sources start again from their
beginning (duplicates, never loss); one that loses its last second of writes may hand a token out
twice, which the holder check in every script still tells apart. Replicas too: a replica that
restarts empty no longer has what it acknowledged, and if a failover promotes it before it has
synced again, every offset is gone.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript

from runtime.config import RegistrySettings
from runtime.errors import ConfigError, FencedError, RegistryUnavailableError
from runtime.registry import Lease, LeaseInfo, Offsets, Registry
from runtime.registry.fencing import CommitCounter, LeaseHeldError

__all__ = ["RedisRegistry"]

_ACQUIRE = """
local lease = redis.call('HMGET', KEYS[1], 'holder', 'token')
if lease[1] then
  if lease[1] ~= ARGV[1] then return false end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return tonumber(lease[2])
end
local token = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return token
"""

_RENEW = """
local lease = redis.call('HMGET', KEYS[1], 'holder', 'token')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_RELEASE = """
local lease = redis.call('HMGET', KEYS[1], 'holder', 'token')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: lease, offsets, versions. ARGV: holder, token, group, counter, then key/offset pairs.
_COMMIT = """
local lease = redis.call('HMGET', KEYS[1], 'holder', 'token')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return -1 end
local token = tonumber(ARGV[2])
local counter = tonumber(ARGV[4])
local version = cjson.encode({ARGV[3], token, counter})
local written = 0
for i = 5, #ARGV, 2 do
  local wins = true
  local stored = redis.call('HGET', KEYS[3], ARGV[i])
  if stored then
    local v = cjson.decode(stored)
    if v[1] == ARGV[3] and (v[2] > token or (v[2] == token and v[3] >= counter)) then wins = false end
  end
  if wins then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[3], ARGV[i], version)
    written = written + 1
  end
end
return written
"""

# KEYS: offsets, versions, then the lease keys of every known group. ARGV: replace, force, key/offset pairs.
_SET_OFFSETS = """
if ARGV[2] ~= '1' then
  local held = {}
  for i = 3, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then table.insert(held, KEYS[i]) end
  end
  if #held > 0 then return held end
end
if ARGV[1] == '1' then redis.call('DEL', KEYS[1], KEYS[2]) end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return {}
"""

_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"

# KEYS: members, member-info. ARGV: holder, ttl ms (<= 0 leaves), info JSON.
_HEARTBEAT = (
    _NOW_MS
    + """
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do redis.call('HDEL', KEYS[2], gone) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"""
)

# KEYS: members, member-info. Returns holder, info, holder, info...
_MEMBERS = (
    _NOW_MS
    + """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {}
for _, holder in ipairs(live) do
  table.insert(out, holder)
  table.insert(out, redis.call('HGET', KEYS[2], holder) or '{}')
end
return out
"""
)

_NAME_FORBIDDEN = re.compile(r"[{}\s]")

_SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_SENTINEL_FORM = "redis+sentinel://[:password@]host1:26379,host2:26379/service/0 (rediss+sentinel:// for TLS)"
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_CLUSTER_FORM = "redis+cluster://[:password@]host1:6379,host2:6379 (rediss+cluster:// for TLS)"
_TLS_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"})


@dataclass(frozen=True, slots=True)
class _HostList:
    """What every URL naming several servers carries: the servers, the credentials, the TLS options."""

    scheme: str
    hosts: list[tuple[str, int]]
    path: list[str]
    username: str | None
    password: str | None
    query: dict[str, str]
    """Query options other than the TLS ones."""
    tls: dict[str, Any]

    @property
    def where(self) -> str:
        """For messages: no credentials."""
        return f"{self.scheme}://{','.join(f'{host}:{port}' for host, port in self.hosts)}"

    @classmethod
    def parse(cls, url: str, form: str, extra_options: frozenset[str] = frozenset()) -> _HostList:
        # urlsplit cannot read a host list as one host:port, so the netloc is split here.
        parts = urlsplit(url)
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
        hosts = []
        for entry in hostlist.split(","):
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError("registry.url", f"address {entry!r} is not host:port", f"write {form}")
            hosts.append((host.strip("[]"), int(port)))
        query = dict(parse_qsl(parts.query))
        unknown = sorted(set(query) - _TLS_OPTIONS - extra_options)
        if unknown:
            raise ConfigError(
                "registry.url",
                f"has unknown query option(s) {', '.join(unknown)}",
                f"use only {', '.join(sorted(extra_options | _TLS_OPTIONS))}",
            )
        tls: dict[str, Any] = {key: value for key, value in query.items() if key in _TLS_OPTIONS}
        if parts.scheme.startswith("rediss+"):
            tls["ssl"] = True
            if "ssl_check_hostname" in tls:
                tls["ssl_check_hostname"] = tls["ssl_check_hostname"].lower() in ("1", "true", "yes")
        elif tls:
            raise ConfigError(
                "registry.url", "has TLS options but no TLS", f"use {parts.scheme.replace('redis', 'rediss', 1)}://"
            )
        return cls(
            scheme=parts.scheme,
            hosts=hosts,
            path=[segment for segment in parts.path.split("/") if segment],
            username=unquote(username) or None,
            password=unquote(password) or None,
            query={key: value for key, value in query.items() if key not in _TLS_OPTIONS},
            tls=tls,
        )

    def credentials(self) -> dict[str, str]:
        found = {"username": self.username, "password": self.password}
        return {key: value for key, value in found.items() if value is not None}


def _sentinel_target(url: str) -> tuple[_HostList, str, int]:
    """The Sentinels a ``redis+sentinel://`` URL names, the service (primary) to ask them for, and the db."""
    target = _HostList.parse(url, _SENTINEL_FORM, frozenset({"sentinel_password"}))
    path = target.path
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError("registry.url", "names no Sentinel service (or a db that is not a number)", f"write {_SENTINEL_FORM}")
    return target, unquote(path[0]), int(path[1]) if len(path) == 2 else 0


def _cluster_target(url: str) -> _HostList:
    """The nodes a ``redis+cluster://`` URL names (a cluster has only db 0)."""
    target = _HostList.parse(url, _CLUSTER_FORM)
    if target.path not in ([], ["0"]):
        raise ConfigError(
            "registry.url", "names a db other than 0, which a Redis Cluster does not have", f"write {_CLUSTER_FORM}"
        )
    return target


class RedisRegistry(Registry):
    """Offsets and leases in Redis under ``prefix`` (see the module docstring for the key layout)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "meshconnect",
        password: str | None = None,
        timeout: float = 2.0,
        retries: int = 2,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://", *_SENTINEL_SCHEMES, *_CLUSTER_SCHEMES)):
            raise ConfigError(
                "registry.url",
                "is not a Redis URL",
                "write redis://host:6379/0 (rediss:// for TLS), redis+sentinel://host1:26379,host2:26379/service/0"
                " or redis+cluster://host1:6379,host2:6379",
            )
        if min_replicas < 0:
            raise ConfigError("registry.min_replicas", f"{min_replicas} is negative", "use 0 (no wait) or a replica count")
        _check_name("registry.prefix", prefix)
        self.prefix = prefix
        self._min_replicas = min_replicas
        self._replica_timeout_ms = _ms(replica_timeout)
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries)
        options: dict[str, Any] = {
            # WAIT blocks for up to replica_timeout: a reply that slow is not a dead socket.
            "socket_timeout": timeout + (replica_timeout if min_replicas else 0),
            "socket_connect_timeout": timeout,
            "retry": retry,
            "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError],
        }
        if password is not None:
            options["password"] = password
        self._sentinel: Sentinel | None = None
        self._cluster: RedisCluster | None = None
        self._node_options: dict[str, Any] = {}
        """Connection options of a client of one cluster node (replica-acknowledged writes)."""
        self._nodes: dict[str, aioredis.Redis] = {}
        self._redis: aioredis.Redis | RedisCluster
        if url.startswith(_SENTINEL_SCHEMES):
            target, service, db = _sentinel_target(url)
            self._where = f"{target.where}/{service}/{db}"
            sentinel_options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, **target.tls}
            if "sentinel_password" in target.query:
                sentinel_options["password"] = target.query["sentinel_password"]
            self._sentinel = Sentinel(target.hosts, sentinel_kwargs=sentinel_options)
            master_options = {**target.credentials(), **options, **target.tls, "db": db}
            self._redis = self._sentinel.master_for(service, **master_options)
        elif url.startswith(_CLUSTER_SCHEMES):
            target = _cluster_target(url)
            self._where = target.where
            self._node_options = {**target.credentials(), **options, **target.tls}
            startup_nodes = [ClusterNode(host, port) for host, port in target.hosts]
            self._cluster = RedisCluster(startup_nodes=startup_nodes, **self._node_options)
            self._redis = self._cluster
        else:
            parts = urlsplit(url)
            self._where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}{parts.path}"
            self._redis = aioredis.Redis.from_url(url, **options)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._commit = self._redis.register_script(_COMMIT)
        self._set_offsets = self._redis.register_script(_SET_OFFSETS)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._members = self._redis.register_script(_MEMBERS)
        self._counter = CommitCounter()
        self._announced: set[str] = set()

    @classmethod
    def from_settings(cls, settings: RegistrySettings) -> RedisRegistry:
        if settings.url is None:
            raise ConfigError("registry.url", "is missing for kind: redis", "set registry.url: redis://host:6379/0")
        return cls(
            settings.url.get_secret_value(),
            prefix=settings.prefix,
            min_replicas=settings.min_replicas,
            replica_timeout=settings.replica_timeout,
        )

    def __repr__(self) -> str:
        return f"RedisRegistry({self._where!r}, prefix={self.prefix!r})"

    async def close(self) -> None:
        await self._redis.aclose()
        for node in self._nodes.values():
            await node.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    # -- keys and the one seam to redis-py ------------------------------------------------------

    def _key(self, connector: str, *parts: str) -> str:
        _check_name("connector name", connector)
        return ":".join((self.prefix, f"{{{connector}}}", *parts))

    def _lease_key(self, connector: str, group: str) -> str:
        return self._key(connector, "lease", group)

    @asynccontextmanager
    async def _reaching(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError, OSError) as exc:
            raise RegistryUnavailableError(f"Redis at {self._where} unreachable while {what}: {exc}") from exc
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            # RedisClusterException (no node reachable, a slot no node serves) is not a RedisError.
            raise RegistryUnavailableError(f"Redis at {self._where} failed while {what}: {exc}") from exc

    async def _replicated(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | bytes], what: str) -> Any:
        """Run a write that matters, then ``WAIT`` for ``min_replicas`` on the same connection.

        WAIT counts the replicas that have every write this connection made, so script and WAIT go
        in one pipeline (one connection). Too few acknowledgements: the write may vanish in a
        failover, so it does not count and the caller retries (a retry of any of these scripts is
        harmless: acquire and renew extend the same lease, a commit gets a newer version).
        """
        if not self._min_replicas:
            return await script(keys=keys, args=args)
        try:
            primary = await self._primary_for(keys[0])
            async with primary.pipeline(transaction=False) as pipe:
                await script(keys=keys, args=args, client=pipe)
                pipe.wait(self._min_replicas, self._replica_timeout_ms)
                result, acknowledged = await pipe.execute()
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
            if self._cluster is not None:
                # That node may no longer serve the slot (a failover, a resharding): a keyed read
                # through the cluster client follows MOVED or the failover and updates its slot
                # map, so the caller's retry reaches the slot's primary.
                with contextlib.suppress(redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
                    await self._cluster.exists(keys[0])
            raise
        if acknowledged < self._min_replicas:
            raise RegistryUnavailableError(
                f"Redis at {self._where}: {what} reached {acknowledged} of {self._min_replicas} replica(s) within"
                f" {self._replica_timeout_ms} ms, so it does not count (a failover could lose it); retrying."
                " Check the replicas' links to the primary, or lower registry.min_replicas"
            )
        return result

    async def _primary_for(self, key: str) -> aioredis.Redis:
        """A client of the primary serving ``key``; in a cluster, of the node serving its slot (as the cluster client knows)."""
        if self._cluster is None:
            assert isinstance(self._redis, aioredis.Redis)
            return self._redis
        await self._cluster.initialize()
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise RegistryUnavailableError(f"Redis Cluster at {self._where}: no node serves the slot of {key}; retrying")
        client = self._nodes.get(node.name)
        if client is None:
            client = self._nodes[node.name] = aioredis.Redis(host=node.host, port=int(node.port), **self._node_options)
        return client

    async def _announce(self, connector: str) -> None:
        if connector not in self._announced:
            await self._redis.sadd(f"{self.prefix}:connectors", connector)
            self._announced.add(connector)

    # -- offsets -------------------------------------------------------------------------------

    async def load_offsets(self, connector: str) -> dict[str, dict[str, Any]]:
        key = self._key(connector, "offsets")
        async with self._reaching(f"loading offsets of {connector}"):
            raw = await self._redis.hgetall(key)
        return {_text(field): orjson.loads(value) for field, value in raw.items()}

    async def commit_offsets(self, connector: str, offsets: Offsets, lease: Lease) -> None:
        # The version is taken before the first await: commits are ordered as they were issued.
        version = self._counter.next_version(lease)
        pairs: list[str | bytes] = []
        for key, offset in offsets.items():
            pairs += [key, orjson.dumps(offset)]
        keys = [self._lease_key(connector, lease.group), self._key(connector, "offsets"), self._key(connector, "versions")]
        args = [lease.holder, str(lease.token), lease.group, str(version.counter), *pairs]
        async with self._reaching(f"committing offsets of {connector}/{lease.group}"):
            written = await self._replicated(self._commit, keys, args, f"commit of {connector}/{lease.group}")
        if written == -1:
            raise FencedError(f"commit of {connector}/{lease.group} refused: token {lease.token} is no longer the current lease")

    async def set_offsets(self, connector: str, offsets: Offsets, *, replace: bool, force: bool) -> None:
        pairs: list[str | bytes] = []
        for key, offset in offsets.items():
            pairs += [key, orjson.dumps(dict(offset))]
        async with self._reaching(f"setting offsets of {connector}"):
            await self._announce(connector)
            groups = [_text(group) for group in await self._redis.hkeys(self._key(connector, "tokens"))]
            keys = [
                self._key(connector, "offsets"),
                self._key(connector, "versions"),
                *(self._lease_key(connector, group) for group in groups),
            ]
            held = await self._set_offsets(keys=keys, args=["1" if replace else "0", "1" if force else "0", *pairs])
        if held:
            lease_prefix = self._lease_key(connector, "")
            raise LeaseHeldError(connector, sorted(key.decode().removeprefix(lease_prefix) for key in held))

    # -- leases --------------------------------------------------------------------------------

    async def try_acquire(self, connector: str, group: str, holder: str, ttl: float) -> Lease | None:
        keys = [self._lease_key(connector, group), self._key(connector, "tokens")]
        async with self._reaching(f"acquiring {connector}/{group}"):
            await self._announce(connector)
            token = await self._replicated(self._acquire, keys, [holder, group, _ms(ttl)], f"lease of {connector}/{group}")
        return None if token is None else Lease(connector, group, holder, int(token))

    async def renew(self, lease: Lease, ttl: float) -> None:
        keys = [self._lease_key(lease.connector, lease.group)]
        async with self._reaching(f"renewing {lease.connector}/{lease.group}"):
            args: list[str | int | bytes] = [lease.holder, str(lease.token), _ms(ttl)]
            renewed = await self._replicated(self._renew, keys, args, f"renewal of {lease.connector}/{lease.group}")
        if not renewed:
            raise FencedError(f"lease {lease.connector}/{lease.group} token {lease.token} was lost")

    async def release(self, lease: Lease) -> None:
        keys = [self._lease_key(lease.connector, lease.group)]
        async with self._reaching(f"releasing {lease.connector}/{lease.group}"):
            await self._release(keys=keys, args=[lease.holder, str(lease.token)])

    async def leases(self, connector: str) -> list[LeaseInfo]:
        async with self._reaching(f"reading leases of {connector}"):
            tokens = await self._redis.hgetall(self._key(connector, "tokens"))
            groups = sorted(_text(group) for group in tokens)
            async with self._redis.pipeline(transaction=True) as pipe:
                for group in groups:
                    pipe.hmget(self._lease_key(connector, group), "holder", "token")
                    pipe.pttl(self._lease_key(connector, group))
                replies = await pipe.execute()
        infos = []
        for index, group in enumerate(groups):
            (holder, token), pttl = replies[2 * index], replies[2 * index + 1]
            if holder is None:
                infos.append(LeaseInfo(connector, group, None, int(tokens[group.encode()]), None))
            else:
                infos.append(LeaseInfo(connector, group, holder.decode(), int(token), max(0, pttl) / 1000))
        return infos

    # -- members -------------------------------------------------------------------------------

    async def heartbeat_member(self, connector: str, holder: str, ttl: float, info: Mapping[str, Any]) -> None:
        """As the interface says; a ``ttl`` of 0 or less removes ``holder`` at once (a graceful leave)."""
        keys = [self._key(connector, "members"), self._key(connector, "member-info")]
        args: list[str | int | bytes] = [holder, _ms(ttl) if ttl > 0 else 0, orjson.dumps(dict(info))]
        async with self._reaching(f"heartbeating {connector}/{holder}"):
            await self._heartbeat(keys=keys, args=args)
            if ttl > 0:
                # Every round: a live connector reappears in the listing even after an operator
                # deleted it under its feet. (Not in one pipeline with the script: the listing is
                # in another Cluster slot, and a pipeline would not load a script a node lacks.)
                await self._redis.sadd(f"{self.prefix}:connectors", connector)

    async def members(self, connector: str) -> dict[str, dict[str, Any]]:
        keys = [self._key(connector, "members"), self._key(connector, "member-info")]
        async with self._reaching(f"reading members of {connector}"):
            flat = await self._members(keys=keys)
        return {flat[i].decode(): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    # -- namespace -----------------------------------------------------------------------------

    async def connectors(self) -> list[str]:
        async with self._reaching("listing connectors"):
            names = await self._redis.smembers(f"{self.prefix}:connectors")
        return sorted(_text(name) for name in names)

    async def delete_connector(self, connector: str) -> int:
        pattern = _glob_escape(self._key(connector)) + ":*"
        removed = 0
        async with self._reaching(f"deleting {connector}"):
            async for key in self._redis.scan_iter(match=pattern, count=500):
                removed += await self._redis.delete(key)
            await self._redis.srem(f"{self.prefix}:connectors", connector)
        self._announced.discard(connector)
        return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _check_name(what: str, name: str) -> None:
    if not name or _NAME_FORBIDDEN.search(name):
        raise ConfigError(what, f"{name!r} is empty or has braces or blanks", "use letters, digits, '-', '_' or '.'")


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
