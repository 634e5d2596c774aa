"""The RabbitMQ client both sides share: the robust connection, bounded calls, exchange types.

rabbitmq-source and rabbitmq-sink reach the broker only through these helpers, so refused
credentials are a :class:`ConfigError` naming ``config.url`` and a lost broker or channel is a
:class:`RetriableError` on both sides alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from pydantic import Field, SecretStr

from runtime import ConfigError, ConnectorConfig, RetriableError, Secret

__all__ = ["ExchangeType", "RabbitmqConnection", "amqp_call", "amqp_connect"]

T = TypeVar("T")

ExchangeType = Literal["direct", "fanout", "topic", "headers"]
"""The exchange types a connector may declare."""


async def amqp_call(what: str, call: Awaitable[T], seconds: float) -> T:
    """Await an aio-pika call under a timeout; the one seam where its errors become ours (source and sink)."""
    try:
        async with asyncio.timeout(seconds):  # no task per call, unlike wait_for: this runs per ack
            return await call
    except aio_pika.exceptions.ProbableAuthenticationError as exc:
        raise ConfigError(
            "config.url", f"RabbitMQ refused the credentials ({exc})", "fix user, password or vhost in the URL"
        ) from exc
    except (
        aio_pika.exceptions.AMQPError,
        aiormq.exceptions.AMQPError,
        aiormq.exceptions.ChannelInvalidStateError,
        ConnectionError,
        OSError,
        TimeoutError,
    ) as exc:
        raise RetriableError(f"RabbitMQ unavailable during {what}: {exc!r}") from exc


class RabbitmqConnection(ConnectorConfig):
    """How rabbitmq-source and rabbitmq-sink reach the broker: both config models extend it (the keys stay top-level)."""

    url: Secret = Field(SecretStr("amqp://guest:guest@127.0.0.1:5672/"), description="amqp:// or amqps:// URL with credentials.")
    timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for connecting or any broker answer (a sink: the confirms of a batch)."
    )


async def amqp_connect(connection: RabbitmqConnection) -> AbstractRobustConnection:
    """A self-healing connection: aio-pika reconnects and restores channels and consumers after a drop."""
    seconds = connection.timeout
    # Reconnect after 1 s instead of aio-pika's 5 s: the broker requeued our unacked messages already.
    connect = aio_pika.connect_robust(connection.url.get_secret_value(), reconnect_interval=1.0, timeout=seconds)
    return await amqp_call("connect", connect, seconds)
