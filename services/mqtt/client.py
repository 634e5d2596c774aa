"""The MQTT client both sides share: the connection settings, bounded broker calls with aiomqtt's errors
translated, and leaving.

mqtt-source and mqtt-sink reach the broker only through these helpers, so a lost broker is a
:class:`RetriableError` and a goodbye that does not finish in time never holds up a stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiomqtt
import structlog
from pydantic import Field

from runtime import ConnectorConfig, RetriableError, Secret

__all__ = ["MqttConnection", "mqtt_call", "mqtt_client", "mqtt_disconnect"]

log = structlog.get_logger()
T = TypeVar("T")


class MqttConnection(ConnectorConfig):
    """How mqtt-source and mqtt-sink reach the broker: both config models extend it (the keys stay top-level)."""

    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(None, description="User name, if the broker wants one.")
    password: Secret | None = Field(None, description="Password of username.")
    timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for connecting or any broker answer (a sink: the acks of a batch)."
    )


def mqtt_client(connection: MqttConnection, identifier: str, **options: Any) -> aiomqtt.Client:
    """An unconnected client for ``connection`` (enter it through ``mqtt_call``); ``options`` go to aiomqtt."""
    password = connection.password.get_secret_value() if connection.password else None
    return aiomqtt.Client(
        connection.host,
        connection.port,
        username=connection.username,
        password=password,
        identifier=identifier,
        timeout=connection.timeout,
        **options,
    )


async def mqtt_call(what: str, call: Awaitable[T], seconds: float) -> T:
    """Await an aiomqtt call under a timeout; the one seam where its errors become ours (source and sink)."""
    try:
        async with asyncio.timeout(seconds):  # no task per call, unlike wait_for: this runs per ack
            return await call
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise RetriableError(f"MQTT broker unavailable during {what}: {exc}") from exc


async def mqtt_disconnect(client: aiomqtt.Client, seconds: float) -> None:
    """Leave the broker within ``seconds``; an unclean goodbye is only logged (source and sink)."""
    try:
        await asyncio.wait_for(client.__aexit__(None, None, None), seconds)
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        log.info("mqtt disconnect was not clean", error=str(exc))
