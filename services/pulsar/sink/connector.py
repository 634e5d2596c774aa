"""pulsar-sink: publish events to Pulsar topics and return once the broker persisted every one.

The topic is ``topic`` with ``{topic}`` replaced by the event's subject; the result must be a full
topic name (``persistent://tenant/namespace/name``), so a subject cannot reach another namespace:
an event whose subject does not make one is dead-lettered with the reason, and so is an event for a
topic the broker does not have (auto-creation off) or one larger than the broker takes. A batch is
sent at once through one producer per topic (the ``max_producers`` most recently used stay open; a
batch for more topics goes out in parts, in order) and awaited as a whole; a lost broker or a
timeout makes it retriable. Every message carries the event's ``ce_id``, ``ce_source`` and
``ce_type`` as properties and its time as the event time, so consumers drop a redelivered event
(Pulsar's own deduplication needs sequence ids the mesh does not give). The payload is the
structured CloudEvent JSON, or the event data alone with ``payload: data``.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeAlias

import pulsar
import pulsar.asyncio
import structlog
from pydantic import Field, field_validator

from runtime import (
    ConnectorConfig,
    ConnectorRecord,
    DataError,
    Rejection,
    RetriableError,
    Secret,
    Sink,
    SinkContext,
    SinkPayload,
    record_to_payload,
)
from services.pulsar.client import TOPIC_NAME, client_options, pulsar_call, pulsar_error, pulsar_result

__all__ = ["PulsarSink", "PulsarSinkConfig"]

log = structlog.get_logger()

_TOPIC = re.compile(TOPIC_NAME)
# Messages awaited at once: the producer's pending queue (max_pending_messages) is never overrun.
_MAX_PENDING = 1000
# Outcomes that concern the event, not the broker's health: dead-letter instead of retrying forever.
_REJECTED = {
    pulsar.Result.MessageTooBig: "larger than the broker accepts",
    pulsar.Result.TopicNotFound: "its topic does not exist and the broker does not create topics",
    pulsar.Result.TopicTerminated: "its topic is terminated",
}


_Send: TypeAlias = tuple[ConnectorRecord, str, bytes, dict[str, str]]
"""One message to send: the record, its topic, the payload and the properties."""


class PulsarSinkConfig(ConnectorConfig):
    service_url: str = Field("pulsar://127.0.0.1:6650", description="Broker URL: pulsar:// or pulsar+ssl://.")
    token: Secret | None = Field(None, description="JWT for token authentication, if the broker wants one.")
    ca_file: str | None = Field(None, description="PEM bundle of CAs to trust for pulsar+ssl:// instead of the system ones.")
    topic: str = Field(
        "persistent://public/default/{topic}", description="Full topic name to publish to; {topic} = the event's subject."
    )
    payload: SinkPayload = Field("cloudevent", description="cloudevent: structured JSON; data: the data only.")
    max_producers: int = Field(64, ge=1, description="Producers (one per topic) kept open, at most.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for a producer or for the acks of a batch.")

    @field_validator("topic")
    @classmethod
    def _full_topic_name(cls, value: str) -> str:
        if not _TOPIC.fullmatch(value.replace("{topic}", "x")):
            raise ValueError(
                f"{value!r} is not a full topic name: write persistent://tenant/namespace/name"
                " ({topic} standing for the subject)"
            )
        return value


class PulsarSink(Sink[PulsarSinkConfig]):
    name = "pulsar-sink"
    description = "Publishes events to Pulsar topics, returning once the broker persisted each one."
    config_model = PulsarSinkConfig

    def __init__(self, config: PulsarSinkConfig) -> None:
        super().__init__(config)
        self._client: pulsar.asyncio.Client | None = None
        self._producers: OrderedDict[str, pulsar.asyncio.Producer] = OrderedDict()

    async def start(self, context: SinkContext) -> None:
        self._client = pulsar.asyncio.Client(
            self.config.service_url, **client_options(self.config.token, self.config.timeout, self.config.ca_file)
        )
        if "{topic}" not in self.config.topic:  # one fixed topic: reach it now, so a wrong one fails at start
            try:
                await self._producer(self.config.topic)
            except BaseException:
                # The worker retries a failed start with a new client: this one must end now, as a client
                # destroyed at interpreter exit with its C++ threads running aborts the process.
                client, self._client = self._client, None
                client.shutdown()
                raise

    def _topic_for(self, record: ConnectorRecord) -> str:
        topic = self.config.topic.replace("{topic}", record.subject or "")
        if not _TOPIC.fullmatch(topic):
            raise DataError(
                f"subject {record.subject!r} makes {topic!r}, not a topic name"
                " (one name of letters, digits, -_.=: and not dots alone)"
            )
        return topic

    async def _producer(self, topic: str) -> pulsar.asyncio.Producer:
        producer = self._producers.get(topic)
        if producer is not None:
            self._producers.move_to_end(topic)
            return producer
        assert self._client is not None, "start() first"
        producer = await pulsar_call(
            f"create producer for {topic}",
            self._client.create_producer(
                topic, send_timeout_millis=round(self.config.timeout * 1000), max_pending_messages=_MAX_PENDING
            ),
            self.config.timeout,
        )
        self._producers[topic] = producer
        while len(self._producers) > self.config.max_producers:
            _, oldest = self._producers.popitem(last=False)
            await self._close(oldest)
        return producer

    async def _close(self, producer: pulsar.asyncio.Producer) -> None:
        try:
            await pulsar_call("close producer", producer.close(), self.config.timeout)
        except RetriableError as exc:
            log.warning("pulsar producer did not close cleanly", error=str(exc))

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        rejections: list[Rejection] = []
        sends: list[_Send] = []
        for record in records:
            try:
                topic = self._topic_for(record)
                payload, content_type = record_to_payload(record, self.config.payload)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            properties = {"content-type": content_type or "application/octet-stream"}
            for name, value in (("ce_id", record.id), ("ce_source", record.source), ("ce_type", record.type)):
                if value:
                    properties[name] = value
            sends.append((record, topic, payload, properties))
        for part in self._slices(sends):
            rejections += await self._send(part)
        return rejections

    def _slices(self, sends: list[_Send]) -> list[list[_Send]]:
        """Consecutive slices of at most _MAX_PENDING messages to at most max_producers topics: the
        producers of a slice all stay open while it is sent (one more topic would close one of them)."""
        slices: list[list[_Send]] = [[]]
        topics: set[str] = set()
        for send in sends:
            topic = send[1]
            if len(slices[-1]) == _MAX_PENDING or (topic not in topics and len(topics) == self.config.max_producers):
                slices.append([])
                topics = set()
            slices[-1].append(send)
            topics.add(topic)
        return slices

    async def _send(self, sends: list[_Send]) -> list[Rejection]:
        """Send one slice concurrently; the records the broker refused for their own sake come back."""
        rejections: list[Rejection] = []
        producers: dict[str, pulsar.asyncio.Producer | str] = {}  # a producer, or why its topic takes nothing
        for topic in dict.fromkeys(topic for _, topic, _, _ in sends):
            try:
                producers[topic] = await self._producer(topic)
            except RetriableError as exc:
                reason = _REJECTED.get(pulsar_result(exc.__cause__)) if exc.__cause__ is not None else None
                if reason is None:
                    raise
                producers[topic] = reason
        pending = []
        for record, topic, payload, properties in sends:
            producer = producers[topic]
            if isinstance(producer, str):
                rejections.append(Rejection(record, f"not published to {topic}: {producer}"))
                continue
            event_time = round(record.timestamp.timestamp() * 1000)
            pending.append((record, topic, producer.send(payload, properties, event_timestamp=event_time)))
        if not pending:
            return rejections
        outcomes = await pulsar_call(
            "send", asyncio.gather(*(send for _, _, send in pending), return_exceptions=True), self.config.timeout
        )
        failure: BaseException | None = None
        for (record, topic, _), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                reason = _REJECTED.get(pulsar_result(outcome))
                if reason is None:
                    failure = failure or outcome
                else:
                    rejections.append(Rejection(record, f"not published to {topic}: {reason}"))
        if isinstance(failure, Exception):
            # The whole slice is retried with it: the duplicates carry the same ce_id.
            raise pulsar_error("send", failure) from failure
        if failure is not None:
            raise failure
        return rejections

    async def stop(self) -> None:
        producers, self._producers = list(self._producers.values()), OrderedDict()
        for producer in producers:
            await self._close(producer)
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await pulsar_call("close", client.close(), self.config.timeout)
            except RetriableError as exc:
                log.warning("pulsar client did not close cleanly", error=str(exc))
