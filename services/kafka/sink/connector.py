"""kafka-sink: produce events to Kafka with an idempotent producer (acks=all); return once every record is acknowledged.

Each event becomes one message in the CloudEvents Kafka binding (:mod:`services.kafka.binding`):
``binary`` (the data as the value, attributes as ``ce_`` headers) or ``structured`` (the whole
event as ``application/cloudevents+json``). The key is the ``key_attribute`` (default
``partitionkey``, what kafka-source sets from the key it read) or, with ``key_path``, a member of
the JSON data; events without one get no key. The topic is ``topic`` with ``{topic}`` replaced by the
event's subject. A batch is sent concurrently and ``put`` returns only when the brokers acknowledged
every message (all in-sync replicas); within one producer session the broker drops a resent
message, and a batch the worker retries after a failure may write some events twice, under the same
``ce_id``, for a reader to deduplicate. A lost broker, a timeout or a missing leader is retriable
(the batch is retried with backoff and the sink shows not ready); an event that cannot become a
message (no valid topic name, no key at ``key_path``, too large) is dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any, Literal

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from pydantic import Field, field_validator, model_validator

from runtime import ConnectorRecord, DataError, Rejection, RetriableError, Sink, SinkContext
from services.kafka.binding import KafkaMessage, record_to_message
from services.kafka.client import KafkaConnectionConfig, client_options, kafka_call, kafka_error

__all__ = ["KafkaSink", "KafkaSinkConfig"]

log = structlog.get_logger()

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's legal topic names (fullmatch)


def _is_topic_name(name: str) -> bool:
    return _TOPIC_NAME.fullmatch(name) is not None and name not in {".", ".."}


_ATTRIBUTES = ("id", "source", "type", "subject", "datacontenttype", "dataschema")


class KafkaSinkConfig(KafkaConnectionConfig):
    topic: str = Field("{topic}", min_length=1, description="Topic to produce to; {topic} = the event's subject.")
    mode: Literal["binary", "structured"] = Field(
        "binary", description="CloudEvents Kafka binding: binary (data as value, ce_ headers) or structured (JSON event)."
    )
    key_attribute: str | None = Field(
        "partitionkey", description="Attribute or extension whose value is the message key (none: no key)."
    )
    key_path: str | None = Field(
        None, description="Dotted path into JSON data whose value is the key (instead of key_attribute); missing: dead letter."
    )
    compression_type: Literal["none", "gzip"] = Field("none", description="Compression of produced batches.")
    linger_ms: int = Field(0, ge=0, description="Milliseconds the producer waits to fill a batch per partition.")
    max_request_size: int = Field(1_048_576, ge=1024, description="Bytes of one produce request (and message), at most.")

    @model_validator(mode="after")
    def _one_key_source(self) -> KafkaSinkConfig:
        if self.key_path is not None and "key_attribute" in self.model_fields_set and self.key_attribute is not None:
            raise ValueError("give key_attribute or key_path, not both")
        if self.key_path is not None and not all(self.key_path.split(".")):
            raise ValueError(f"key_path {self.key_path!r} must be names separated by single dots, like order.id")
        return self

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, topic: str) -> str:
        sample = topic.replace("{topic}", "t")
        if not _is_topic_name(sample):
            raise ValueError("not a Kafka topic name: letters, digits, '.', '_' and '-' (and {topic}), at most 249")
        return topic


class KafkaSink(Sink[KafkaSinkConfig]):
    name = "kafka-sink"
    description = "Produces events to Kafka (idempotent, acks=all) in the CloudEvents binary or structured binding."
    config_model = KafkaSinkConfig

    def __init__(self, config: KafkaSinkConfig) -> None:
        super().__init__(config)
        self._producer: AIOKafkaProducer | None = None
        self._key_path = tuple(config.key_path.split(".")) if config.key_path else ()

    async def start(self, context: SinkContext) -> None:
        producer = AIOKafkaProducer(
            **client_options(self.config, self.config.client_id or context.connector_name),
            acks="all",
            enable_idempotence=True,
            compression_type=None if self.config.compression_type == "none" else self.config.compression_type,
            linger_ms=self.config.linger_ms,
            max_request_size=self.config.max_request_size,
        )
        try:
            await kafka_call("connect", producer.start(), self.config.timeout)
        except BaseException:
            with contextlib.suppress(TimeoutError):  # the start's own error is the one to report
                await asyncio.wait_for(producer.stop(), self.config.timeout)
            raise
        self._producer = producer

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        producer = self._producer
        assert producer is not None, "start() first"
        rejections: list[Rejection] = []
        sent: list[tuple[ConnectorRecord, asyncio.Future[Any]]] = []
        for record in records:
            try:
                topic = self._topic_for(record)
                message = record_to_message(record, mode=self.config.mode, key=self._key_for(record))
                sent.append((record, await self._send(producer, topic, message)))
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
        if sent:
            # While no broker answers, the producer keeps a message waiting for one: the bound turns
            # that into a retriable failure (the message may still go out later: a copy, same ce_id).
            results = await kafka_call(
                "produce", asyncio.gather(*(future for _, future in sent), return_exceptions=True), 2 * self.config.timeout + 5
            )
            for (record, _), result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    error = kafka_error("produce", result)
                    if not isinstance(error, DataError):
                        raise error from result
                    rejections.append(Rejection(record, error.reason))
        return rejections

    async def _send(self, producer: AIOKafkaProducer, topic: str, message: KafkaMessage) -> asyncio.Future[Any]:
        """Hand ``message`` to the producer (waits while its buffer is full); the future of its acknowledgement."""
        future: asyncio.Future[Any] = await kafka_call(
            "send", producer.send(topic, message.value, key=message.key, headers=message.headers), self.config.timeout
        )
        return future

    def _topic_for(self, record: ConnectorRecord) -> str:
        topic = self.config.topic.replace("{topic}", record.subject or "")
        if not _is_topic_name(topic):
            raise DataError(f"{topic[:300]!r} is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)")
        return topic

    def _key_for(self, record: ConnectorRecord) -> bytes | None:
        if self._key_path:
            value: Any = record.data
            for step in self._key_path:
                if not isinstance(value, dict) or step not in value:
                    raise DataError(f"the event data has no {self.config.key_path!r} for the message key (config key_path)")
                value = value[step]
            return value.encode() if isinstance(value, str) else orjson.dumps(value)
        name = self.config.key_attribute
        if name is None:
            return None
        value = getattr(record, name) if name in _ATTRIBUTES else record.extensions.get(name)
        if value is None:
            return None
        if isinstance(value, bool):
            return b"true" if value else b"false"
        return str(value).encode()

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await asyncio.wait_for(producer.stop(), self.config.timeout)
            except (TimeoutError, RetriableError) as exc:
                log.warning("kafka producer did not stop cleanly", error=repr(exc))
