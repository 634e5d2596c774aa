"""mqtt-sink: publish events to an MQTT broker at QoS 1; ``put`` returns once the broker PUBACKed them all.

A batch is published concurrently (up to ``max_inflight`` unacknowledged at a time) and awaited as
a whole; a dropped connection or a missing PUBACK makes the batch retriable, and the next ``put``
reconnects. The MQTT topic is ``topic`` with ``{topic}`` replaced by the event's subject; the
payload is the structured CloudEvent JSON, or the event data alone with ``payload: data``. MQTT has
no message ids: a retried batch can deliver an event twice, and consumers dedupe on source + id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import aiomqtt
import structlog
from pydantic import Field

from runtime import (
    ConnectorRecord,
    DataError,
    Rejection,
    RetriableError,
    Sink,
    SinkContext,
    SinkPayload,
    record_to_payload,
)
from services.mqtt.client import MqttConnection, mqtt_call, mqtt_client, mqtt_disconnect

__all__ = ["MqttSink", "MqttSinkConfig"]

log = structlog.get_logger()


class MqttSinkConfig(MqttConnection):
    client_id: str | None = Field(None, description="Client identifier; default the instance name.")
    topic: str = Field("{topic}", description="MQTT topic to publish to; {topic} = the event's subject.")
    qos: Literal[1] = Field(1, description="Publish QoS; 1 = the broker acknowledges every message.")
    retain: bool = Field(False, description="Publish retained messages.")
    payload: SinkPayload = Field("cloudevent", description="cloudevent: structured JSON; data: the data only.")
    max_inflight: int = Field(1000, ge=1, description="Messages published but not yet acknowledged, at most.")


class MqttSink(Sink[MqttSinkConfig]):
    name = "mqtt-sink"
    description = "Publishes events to MQTT topics at QoS 1, returning once the broker acknowledged them."
    config_model = MqttSinkConfig

    def __init__(self, config: MqttSinkConfig) -> None:
        super().__init__(config)
        self._client: aiomqtt.Client | None = None
        self._client_id = config.client_id or "meshconnect-sink"

    async def start(self, context: SinkContext) -> None:
        self._client_id = self.config.client_id or context.connector_name
        await self._connect()

    async def _connect(self) -> aiomqtt.Client:
        client = mqtt_client(self.config, self._client_id, max_inflight_messages=self.config.max_inflight)
        client.pending_calls_threshold = self.config.max_inflight + 1  # a full batch in flight is normal, not a warning
        await mqtt_call("connect", client.__aenter__(), self.config.timeout)
        self._client = client
        return client

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        client = self._client or await self._connect()
        rejections: list[Rejection] = []
        publishes = []
        for record in records:
            try:
                payload, _ = record_to_payload(record, self.config.payload)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            topic = self.config.topic.replace("{topic}", record.subject or "")
            publishes.append(client.publish(topic, payload, qos=self.config.qos, retain=self.config.retain))
        if publishes:
            try:
                await mqtt_call("publish", asyncio.gather(*publishes), self.config.timeout)
            except RetriableError:
                await self._disconnect()  # the retry starts on a fresh connection
                raise
        return rejections

    async def _disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await mqtt_disconnect(client, self.config.timeout)

    async def stop(self) -> None:
        await self._disconnect()
