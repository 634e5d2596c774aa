"""The MQTT client both sides share: bounded broker calls with aiomqtt's errors translated, and leaving.

mqtt-source and mqtt-sink reach the broker only through these helpers, so a lost broker is a
:class:`RetriableError` and a goodbye that does not finish in time never holds up a stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import aiomqtt
import structlog

from runtime import RetriableError

__all__ = ["mqtt_call", "mqtt_disconnect"]

log = structlog.get_logger()
T = TypeVar("T")


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
