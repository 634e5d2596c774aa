"""mqtt-source: subscribe to MQTT topics at QoS 1 and PUBACK each message only after the mesh stored it.

The client speaks MQTT 5 with a persistent session (clean start off, ``session_expiry``, a stable
``client_id``) and a Receive Maximum of ``max_inflight`` (the broker's window): while it
is away the broker queues QoS 1 messages, and a message received but never acknowledged (a crash, a
dropped connection) is sent again when the client comes back. Acknowledgements are manual and go
out in the order the messages arrived, as MQTT requires, when :meth:`commit` is called. On a
dropped connection the next poll reconnects (``RetriableError`` while the broker is away); acks of
messages from the lost connection are skipped, since the broker redelivers those messages anyway.
The MQTT topic of each message travels in the ``mqtttopic`` extension.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Literal

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field

from runtime import (
    ConnectorRecord,
    PayloadFormat,
    RetriableError,
    Source,
    SourceContext,
    record_from_payload,
)
from services.mqtt.client import MqttConnection, mqtt_call, mqtt_client, mqtt_disconnect

__all__ = ["MqttSource", "MqttSourceConfig"]

log = structlog.get_logger()


class MqttSourceConfig(MqttConnection):
    client_id: str | None = Field(None, description="Client identifier of the persistent session; default the instance name.")
    topics: list[str] = Field(min_length=1, description="Topic filters to subscribe to (wildcards + and # allowed).")
    qos: Literal[1] = Field(1, description="Subscription QoS; 1 = at-least-once (the only sound choice here).")
    format: PayloadFormat = Field(
        "cloudevents", description="Payload format: cloudevents (structured JSON), json, text or binary."
    )
    batch_size: int = Field(500, ge=1, description="Messages per poll, at most.")
    max_inflight: int = Field(1000, ge=1, le=65535, description="Messages received but not yet acknowledged, at most.")
    session_expiry: int = Field(
        7 * 24 * 3600, ge=1, description="Seconds the broker keeps the session (and queues messages) while the source is away."
    )


class MqttSource(Source[MqttSourceConfig]):
    name = "mqtt-source"
    description = "Subscribes to MQTT topics (QoS 1, persistent session) and acks after the mesh stored each message."
    config_model = MqttSourceConfig

    def __init__(self, config: MqttSourceConfig) -> None:
        super().__init__(config)
        self._client_id = config.client_id or "meshconnect"
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._buffer: asyncio.Queue[tuple[str, aiomqtt.Message]] = asyncio.Queue(maxsize=config.max_inflight)
        self._connection = ""  # changes with every connection: mids are only valid on theirs
        self._received = 0

    async def start(self, context: SourceContext) -> None:
        self._client_id = self.config.client_id or context.connector_name
        await self._connect()

    async def _connect(self) -> None:
        await self._disconnect()
        client = mqtt_client(
            self.config,
            self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=self._connect_properties(),
        )
        # aiomqtt has no manual-ack switch of its own; its paho client does (PUBACK only on .ack()).
        client._client.manual_ack_set(True)
        await mqtt_call("connect", client.__aenter__(), self.config.timeout)
        self._client = client
        self._connection = uuid.uuid4().hex
        try:
            await mqtt_call(
                "subscribe",
                client.subscribe([(topic, int(self.config.qos)) for topic in self.config.topics]),
                self.config.timeout,
            )
        except RetriableError:
            await self._disconnect()
            raise
        self._reader = asyncio.create_task(self._read(client, self._connection))
        log.info("mqtt source subscribed", client_id=self._client_id, topics=self.config.topics)

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # MQTT 5 lets the client say how many unacked messages it takes; a 3.1.1 broker picks (mosquitto: 20).
        properties.ReceiveMaximum = self.config.max_inflight
        properties.SessionExpiryInterval = self.config.session_expiry
        return properties

    async def _read(self, client: aiomqtt.Client, connection: str) -> None:
        """Move messages into the bounded buffer until the connection ends."""
        try:
            async for message in client.messages:
                await self._buffer.put((connection, message))
        except aiomqtt.MqttError as exc:
            log.warning("mqtt connection lost", error=str(exc))

    async def poll(self) -> Sequence[ConnectorRecord]:
        if self._reader is None or self._reader.done():
            await self._connect()
        try:
            messages = [await asyncio.wait_for(self._buffer.get(), timeout=1.0)]
        except TimeoutError:
            return []
        while len(messages) < self.config.batch_size and not self._buffer.empty():
            messages.append(self._buffer.get_nowait())
        return [self._record(connection, message) for connection, message in messages]

    def _record(self, connection: str, message: aiomqtt.Message) -> ConnectorRecord:
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        self._received += 1
        # One partition per client: acks must leave in arrival order, which is commit order within a partition.
        return record_from_payload(
            payload,
            self.config.format,
            partition={"client": self._client_id},
            offset={"connection": connection, "n": self._received, "mid": message.mid},
            extensions={"mqtttopic": message.topic.value},
        )

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        if self._client is None:
            return
        for record in records:
            if record.offset.get("connection") == self._connection:
                self._client._client.ack(int(record.offset["mid"]), self.config.qos)

    async def _disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        while not self._buffer.empty():  # unacked: the broker sends them again on the next connection
            self._buffer.get_nowait()
        if self._client is not None:
            client, self._client = self._client, None
            await mqtt_disconnect(client, self.config.timeout)

    async def stop(self) -> None:
        await self._disconnect()
