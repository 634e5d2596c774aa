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

Connecting
----------
``redis://[:password@]host:port/db`` or ``rediss://`` for TLS; TLS options go in the URL query
(``?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/ca.pem&ssl_certfile=...&ssl_keyfile=...``).
The URL is a secret in the config (``{env: REDIS_URL}`` or ``{file: ...}``), so a password in it
is never logged; a password may also be passed apart from the URL. Commands time out after
``timeout`` seconds and are retried twice with exponential backoff and jitter; after that,
:class:`~runtime.errors.RegistryUnavailableError` reaches the caller, which pauses and retries.

Persistence: a production Redis must persist (``appendonly yes``, ``appendfsync everysec`` or
``always``). A Redis that restarts empty forgets every offset, and sources start again from their
beginning (duplicates, never loss); one that loses its last second of writes may hand a token out
twice, which the holder check in every script still tells apart.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

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
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("registry.url", "is not a Redis URL", "write redis://host:6379/0 or rediss://host:6380/0 for TLS")
        _check_name("registry.prefix", prefix)
        self.prefix = prefix
        parts = urlsplit(url)
        self._where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}{parts.path}"
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries)
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": retry,
            "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError],
        }
        if password is not None:
            options["password"] = password
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, **options)
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
        return cls(settings.url.get_secret_value(), prefix=settings.prefix)

    def __repr__(self) -> str:
        return f"RedisRegistry({self._where!r}, prefix={self.prefix!r})"

    async def close(self) -> None:
        await self._redis.aclose()

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
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailableError(f"Redis at {self._where} failed while {what}: {exc}") from exc

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
            written = await self._commit(keys=keys, args=args)
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
            token = await self._acquire(keys=keys, args=[holder, group, _ms(ttl)])
        return None if token is None else Lease(connector, group, holder, int(token))

    async def renew(self, lease: Lease, ttl: float) -> None:
        keys = [self._lease_key(lease.connector, lease.group)]
        async with self._reaching(f"renewing {lease.connector}/{lease.group}"):
            renewed = await self._renew(keys=keys, args=[lease.holder, str(lease.token), _ms(ttl)])
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
        async with self._reaching(f"heartbeating {connector}/{holder}"), self._redis.pipeline(transaction=False) as pipe:
            await self._heartbeat(keys=keys, args=args, client=pipe)
            if ttl > 0:
                # Every round, in the same round trip: a live connector reappears in the listing
                # even after an operator deleted it under its feet.
                pipe.sadd(f"{self.prefix}:connectors", connector)
            await pipe.execute()

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
