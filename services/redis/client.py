"""The Redis client both sides share: one way to connect, one seam where redis-py's errors become ours.

redis-source and redis-sink reach Redis only through these helpers, so refused credentials are a
:class:`ConfigError` naming ``config.url`` and a lost or busy server is a :class:`RetriableError`
on both sides alike.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from runtime import ConfigError, RetriableError

__all__ = ["redis_call", "redis_connect"]

T = TypeVar("T")


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


def redis_connect(url: str, timeout: float) -> aioredis.Redis:
    """A client whose every socket wait (connect, read, write) is bounded by ``timeout``."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30, retry_on_timeout=False
    )
