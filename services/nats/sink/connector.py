"""nats-sink: publish events to JetStream and return once the server acknowledged every one.

Each message carries ``Nats-Msg-Id: <source> <id>``, so JetStream drops an event redelivered within
the stream's duplicate window (2 minutes by default): a retried batch does not store anything twice.
The subject is ``subject`` with ``{topic}`` replaced by the event's subject; the payload is the
structured CloudEvent JSON, or the event data alone with ``payload: data``. A batch is published
concurrently and awaited as a whole; a missing stream for the subject (no responders), a lost
connection or a timeout makes it retriable. With ``stream`` and ``subjects`` given, the stream is
created when it does not exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import Field

from runtime import (
    ConnectorRecord,
    DataError,
    Rejection,
    Sink,
    SinkContext,
    SinkPayload,
    record_to_payload,
)
from services.nats.client import NatsConnection, ensure_stream, nats_call, nats_connect

__all__ = ["NatsSink", "NatsSinkConfig"]

log = structlog.get_logger()


class NatsSinkConfig(NatsConnection):
    subject: str = Field("{topic}", description="Subject to publish to; {topic} = the event's subject.")
    stream: str | None = Field(
        None, description="Expected stream (checked by the server) and, with subjects, created if missing."
    )
    subjects: list[str] = Field(default_factory=list, description="Subjects of the stream when it is created.")
    payload: SinkPayload = Field("cloudevent", description="cloudevent: structured JSON; data: the data only.")


class NatsSink(Sink[NatsSinkConfig]):
    name = "nats-sink"
    description = "Publishes events to NATS JetStream with acks and Nats-Msg-Id deduplication."
    config_model = NatsSinkConfig

    def __init__(self, config: NatsSinkConfig) -> None:
        super().__init__(config)
        self._client: NatsClient | None = None
        self._js: JetStreamContext | None = None

    async def start(self, context: SinkContext) -> None:
        self._client = await nats_connect(self.config)
        self._js = self._client.jetstream(timeout=self.config.timeout)
        if self.config.stream:
            await ensure_stream(self._js, self.config.stream, self.config.subjects, self.config.timeout)

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        assert self._js is not None, "start() first"
        rejections: list[Rejection] = []
        publishes = []
        for record in records:
            try:
                payload, content_type = record_to_payload(record, self.config.payload)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            headers = {"Content-Type": content_type or "application/octet-stream"}
            if record.id:
                headers["Nats-Msg-Id"] = f"{record.source} {record.id}"
            subject = self.config.subject.replace("{topic}", record.subject or "")
            publishes.append(self._js.publish(subject, payload, stream=self.config.stream, headers=headers))
        if publishes:
            await nats_call("publish", asyncio.gather(*publishes), self.config.timeout)
        return rejections

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.wait_for(client.close(), self.config.timeout)
