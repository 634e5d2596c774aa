"""The NATS client both sides share: the connection settings, connecting, bounded calls with nats-py's
errors translated, streams.

nats-source and nats-sink reach JetStream only through these helpers, so a refused credential is
a :class:`ConfigError` naming ``config.token`` and anything else the server or network does is a
:class:`RetriableError`, the same way on both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import Field

from runtime import ConfigError, ConnectorConfig, RetriableError, Secret

__all__ = ["NatsConnection", "ensure_stream", "nats_call", "nats_connect"]

T = TypeVar("T")


class NatsConnection(ConnectorConfig):
    """How nats-source and nats-sink reach the server: both config models extend it (the keys stay top-level)."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], description="NATS server URLs.")
    token: Secret | None = Field(None, description="Authentication token, if the server wants one.")
    timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for connecting or any server answer (a sink: the acks of a batch)."
    )


async def nats_call(what: str, call: Awaitable[T], seconds: float) -> T:
    """Await a nats-py call under a timeout; the one seam where its errors become ours (source and sink)."""
    try:
        async with asyncio.timeout(seconds):  # no task per call, unlike wait_for: this runs per ack
            return await call
    except nats.errors.AuthorizationError as exc:
        raise ConfigError("config.token", f"NATS refused the credentials ({exc})", "give the right token") from exc
    except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
        raise RetriableError(f"NATS unavailable during {what}: {exc!r}") from exc


async def nats_connect(connection: NatsConnection) -> NatsClient:
    """A client that reconnects forever by itself (waits stay bounded: every call has its own timeout)."""
    seconds = connection.timeout
    options: dict[str, Any] = {
        "servers": connection.servers,
        "connect_timeout": seconds,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
    }
    if connection.token is not None:
        options["token"] = connection.token.get_secret_value()
    return await nats_call("connect", nats.connect(**options), seconds)


async def ensure_stream(js: JetStreamContext, stream: str, subjects: list[str], seconds: float) -> None:
    """Create ``stream`` with ``subjects`` unless it exists (nothing to do without subjects)."""
    if not subjects:
        return
    try:
        await nats_call("stream info", js.stream_info(stream), seconds)
    except RetriableError as exc:
        if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            raise
        await nats_call("add stream", js.add_stream(name=stream, subjects=subjects), seconds)
