"""The Redis client both sides share: the connection settings, one way to connect, one seam where
redis-py's errors become ours.

redis-source and redis-sink reach Redis only through these helpers, so refused credentials are a
:class:`ConfigError` naming ``config.url`` and a lost or busy server is a :class:`RetriableError`
on both sides alike.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from pydantic import Field, SecretStr
from redis import exceptions as redis_errors

from runtime import ConfigError, ConnectorConfig, RetriableError, Secret

__all__ = ["RedisConnection", "redis_call", "redis_connect"]

T = TypeVar("T")


class RedisConnection(ConnectorConfig):
    """How redis-source and redis-sink reach Redis: both config models extend it (the keys stay top-level)."""

    url: Secret = Field(SecretStr("redis://127.0.0.1:6379/0"), description="redis:// or rediss:// URL; may hold the password.")
    timeout: float = Field(5.0, gt=0, description="Seconds to wait for any Redis answer.")


async def redis_call(what: str, call: Awaitable[T]) -> T:
    """Await a redis-py call; the one seam where its errors become ours (shared by redis-source and redis-sink)."""
    try:
        return await call
    except redis_errors.AuthenticationError as exc:
        raise ConfigError("config.url", f"Redis refused the credentials ({exc})", "put the right password in the URL") from exc
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError, OSError) as exc:
        raise RetriableError(f"Redis unavailable during {what}: {exc}") from exc
    except redis_errors.ResponseError as exc:  # LOADING, NOGROUP after a restart, OOM...: the server may heal
        raise RetriableError(f"Redis answered {what} with an error: {exc}") from exc


def redis_connect(connection: RedisConnection) -> aioredis.Redis:
    """A client whose every socket wait (connect, read, write) is bounded by ``connection.timeout``."""
    timeout = connection.timeout
    return aioredis.Redis.from_url(
        connection.url.get_secret_value(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )
