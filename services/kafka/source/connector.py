"""kafka-source: read Kafka topics, one partition group per Kafka partition, offsets kept in the registry.

Every partition of ``topics`` is a partition group of the runtime (``<topic>/<partition>``), so the
registry's leases decide which replica reads which partition: a replica assigns itself exactly the
partitions whose leases it holds and seeks each to the offset after the last one checkpointed
under that lease. Kafka's own group offsets are never used (no ``group_id``, no auto-commit):
after a crash, a takeover or a hand-over the reader resumes exactly behind the last event the mesh
acknowledged and the registry stored, fenced like every other source. A partition with no
checkpoint starts at ``start_from``. Partitions added to a topic later are read after a restart.

Each message becomes a record at ``{"topic", "partition"}`` / ``{"offset"}``, so its event id is
derived from topic, partition and offset (a message that is itself a CloudEvent keeps its own id);
key, headers, topic, partition, offset and broker timestamp travel as extensions
(:mod:`services.kafka.binding`). A message whose key or headers cannot be carried is dead-lettered
with the reason. While no broker answers, polls raise ``RetriableError`` (the source shows not ready).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import Field

from runtime import ConnectorRecord, JsonValue, PayloadFormat, RetriableError, Source, SourceContext
from services.kafka.binding import Position, record_from_message
from services.kafka.client import KafkaConnectionConfig, client_options, kafka_call, stop_consumer

__all__ = ["KafkaSource", "KafkaSourceConfig"]

log = structlog.get_logger()


class KafkaSourceConfig(KafkaConnectionConfig):
    topics: list[str] = Field(min_length=1, description="Topics to read, every partition of each.")
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a partition without a checkpoint starts: its oldest message or only new ones."
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed", description="read_committed: skip messages of aborted transactions."
    )
    format: PayloadFormat = Field(
        "cloudevents",
        description="cloudevents: binary or structured CloudEvents as the Kafka binding defines them (other messages: "
        "structured JSON is tried); json, text or binary: the value is the data.",
    )
    batch_size: int = Field(500, ge=1, description="Messages per poll, at most.")
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1024, description="Bytes fetched per partition and request, at most.")
    fetch_max_bytes: int = Field(16_777_216, ge=1024, description="Bytes fetched per request over all partitions, at most.")


def _group_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


class KafkaSource(Source[KafkaSourceConfig]):
    name = "kafka-source"
    description = "Reads Kafka topics partition by partition, offsets checkpointed in the registry under leases."
    config_model = KafkaSourceConfig

    def __init__(self, config: KafkaSourceConfig) -> None:
        super().__init__(config)
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: list[TopicPartition] = []
        self._context = SourceContext(self.name, {})  # the worker's, once started

    def _consumer_for(self, client_id: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **client_options(self.config, client_id),
            group_id=None,  # the registry, not Kafka, keeps the offsets
            enable_auto_commit=False,
            # A checkpoint that retention already deleted resumes at the oldest message kept, whatever
            # start_from says: skipping to the newest would pass over messages that are still there.
            auto_offset_reset="earliest",
            isolation_level=self.config.isolation_level,
            max_partition_fetch_bytes=self.config.max_partition_fetch_bytes,
            fetch_max_bytes=self.config.fetch_max_bytes,
        )

    async def partition_groups(self) -> Sequence[str]:
        admin = AIOKafkaAdminClient(**client_options(self.config, self.config.client_id or "meshconnect-kafka-source"))
        try:
            await kafka_call("connect", admin.start(), self.config.timeout)
            described = await kafka_call("describe topics", admin.describe_topics(self.config.topics), self.config.timeout)
        finally:
            await asyncio.wait_for(admin.close(), self.config.timeout)
        partitions = {topic["topic"]: topic["partitions"] for topic in described if topic["error_code"] == 0}
        groups = []
        for topic in self.config.topics:
            if not partitions.get(topic):
                raise RetriableError(f"Kafka topic {topic!r} does not exist (yet): create it, or fix config.topics")
            groups += [_group_name(topic, index) for index in sorted(p["partition"] for p in partitions[topic])]
        return groups

    def group_of(self, partition: Mapping[str, JsonValue]) -> str:
        return _group_name(str(partition["topic"]), int(partition["partition"]))

    async def start(self, context: SourceContext) -> None:
        self._context = context
        wanted = set(self.config.topics)
        self._assigned = []
        for group in sorted(context.assigned_groups):
            topic, _, partition = group.rpartition("/")
            if topic in wanted:
                self._assigned.append(TopicPartition(topic, int(partition)))
        consumer = self._consumer_for(self.config.client_id or context.connector_name)
        try:
            await kafka_call("connect", consumer.start(), self.config.timeout)
        except BaseException:
            await stop_consumer(consumer, self.config.timeout)  # the worker retries start() with a new one
            raise
        self._consumer = consumer
        consumer.assign(self._assigned)
        resumed = {}
        fresh = []
        for assigned in self._assigned:
            offset = context.offset({"topic": assigned.topic, "partition": assigned.partition})
            if offset is not None:
                consumer.seek(assigned, int(offset["offset"]) + 1)
                resumed[_group_name(assigned.topic, assigned.partition)] = int(offset["offset"]) + 1
            else:
                fresh.append(assigned)
        if fresh and self.config.start_from == "latest":
            await kafka_call("seek to end", consumer.seek_to_end(*fresh), self.config.timeout)
        log.info("kafka source reading", partitions=[_group_name(p.topic, p.partition) for p in self._assigned], resumed=resumed)

    async def poll(self) -> Sequence[ConnectorRecord]:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        fetched = await kafka_call(
            "fetch", consumer.getmany(timeout_ms=1000, max_records=self.config.batch_size), 1.0 + self.config.timeout
        )
        if not fetched:
            # aiokafka retries a lost broker inside the fetch and returns nothing: ask the brokers
            # directly, so that an outage shows as not ready instead of as an idle source.
            if self._assigned:
                await kafka_call("end offsets", consumer.end_offsets(self._assigned), self.config.timeout)
            self._context.report_lag(None)
            return []
        records: list[ConnectorRecord] = []
        newest = 0
        for messages in fetched.values():
            for message in messages:
                position = Position(message.topic, message.partition, message.offset, message.timestamp)
                records.append(record_from_message(message.value, message.key, message.headers, position, self.config.format))
                newest = max(newest, message.timestamp)
        self._context.report_lag(datetime.fromtimestamp(newest / 1000, UTC))
        return records

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await stop_consumer(consumer, self.config.timeout)
