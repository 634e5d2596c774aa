"""pulsar-source: read Pulsar topics through a durable subscription, acking after the mesh stored each message.

The subscription is Pulsar's cursor: a message is acknowledged (cumulatively, per topic partition)
in :meth:`commit`, once the mesh stored its event, so after a crash or restart the broker delivers
again everything after the last acknowledgement. The partition is the topic (a partitioned topic's
``-partition-N`` included) and the offset the message id (ledger, entry, batch index), so a
redelivered message keeps its event id. Batches are bounded in count and bytes by a batch receive
policy; at most ``receiver_queue_size`` messages wait in the client. While the broker is away the
client reconnects by itself and polls raise ``RetriableError`` (the worker shows not ready).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import pulsar
import structlog
from pydantic import Field

from runtime import (
    ConnectorConfig,
    ConnectorRecord,
    PayloadFormat,
    RetriableError,
    Secret,
    Source,
    SourceContext,
    record_from_payload,
)
from services.pulsar.client import client_options, in_thread, pulsar_blocking

__all__ = ["PulsarSource", "PulsarSourceConfig"]

log = structlog.get_logger()

# How long one poll waits for a batch to fill: the latency of a lone message, and the idle poll's length.
_BATCH_WAIT_MS = 200


class PulsarSourceConfig(ConnectorConfig):
    service_url: str = Field("pulsar://127.0.0.1:6650", description="Broker URL: pulsar:// or pulsar+ssl://.")
    token: Secret | None = Field(None, description="JWT for token authentication, if the broker wants one.")
    ca_file: str | None = Field(None, description="PEM bundle of CAs to trust for pulsar+ssl:// instead of the system ones.")
    topics: list[str] = Field(min_length=1, description="Topics to read (tenant/namespace/topic or full persistent:// names).")
    subscription: str | None = Field(None, description="Durable subscription name; default the instance name.")
    subscription_type: Literal["failover", "exclusive"] = Field(
        "failover", description="failover: a standby consumer takes over; exclusive: one consumer only."
    )
    initial_position: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new subscription starts: the oldest retained message or only new ones."
    )
    format: PayloadFormat = Field(
        "cloudevents", description="Payload format: cloudevents (structured JSON), json, text or binary."
    )
    batch_size: int = Field(500, ge=1, description="Messages per poll, at most.")
    batch_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Payload bytes per poll, about at most (a batch ends past it)."
    )
    receiver_queue_size: int = Field(1000, ge=1, description="Messages the client prefetches, at most.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for subscribing or any broker answer.")


class PulsarSource(Source[PulsarSourceConfig]):
    name = "pulsar-source"
    description = "Reads Pulsar topics with a durable subscription, acknowledging after the mesh stored each message."
    config_model = PulsarSourceConfig

    def __init__(self, config: PulsarSourceConfig) -> None:
        super().__init__(config)
        self._client: pulsar.Client | None = None
        self._consumer: pulsar.Consumer | None = None
        self._unacked: dict[tuple[str, int, int, int], pulsar.MessageId] = {}
        self._receiving: asyncio.Future[list[pulsar.Message]] | None = None
        self._context = SourceContext(self.name, {})  # the worker's, once started

    async def start(self, context: SourceContext) -> None:
        self._context = context
        subscription = self.config.subscription or context.connector_name
        self._client = pulsar.Client(
            self.config.service_url, **client_options(self.config.token, self.config.timeout, self.config.ca_file)
        )
        policy = pulsar.ConsumerBatchReceivePolicy(self.config.batch_size, self.config.batch_bytes, _BATCH_WAIT_MS)
        client = self._client
        try:
            self._consumer = await self._subscribe(client, subscription, policy, context)
        except BaseException:
            # The worker retries a failed start with a new client: this one must end now, as a client
            # destroyed at interpreter exit with its C++ threads running aborts the process.
            self._client = None
            client.shutdown()
            raise
        log.info("pulsar source consuming", topics=self.config.topics, subscription=subscription)

    async def _subscribe(
        self, client: pulsar.Client, subscription: str, policy: pulsar.ConsumerBatchReceivePolicy, context: SourceContext
    ) -> pulsar.Consumer:
        return await pulsar_blocking(
            "subscribe",
            lambda: client.subscribe(
                self.config.topics,
                subscription,
                consumer_type=pulsar.ConsumerType.Failover
                if self.config.subscription_type == "failover"
                else pulsar.ConsumerType.Exclusive,
                initial_position=pulsar.InitialPosition.Earliest
                if self.config.initial_position == "earliest"
                else pulsar.InitialPosition.Latest,
                receiver_queue_size=self.config.receiver_queue_size,
                batch_receive_policy=policy,
                consumer_name=context.connector_name,
            ),
            self.config.timeout,
        )

    async def poll(self) -> Sequence[ConnectorRecord]:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        # The receive runs on in its thread if this poll is cancelled: stop() waits for it before closing.
        receiving = self._receiving = in_thread(consumer.batch_receive)
        messages = await pulsar_blocking("receive", receiving, self.config.timeout + _BATCH_WAIT_MS / 1000)
        if not messages:
            if not consumer.is_connected():
                raise RetriableError(f"Pulsar broker at {self.config.service_url} unreachable; the client reconnects")
            self._context.report_lag(None)
            return []
        self._context.report_lag(datetime.fromtimestamp(messages[-1].publish_timestamp() / 1000, UTC))
        records = []
        for message in messages:
            message_id = message.message_id()
            topic = message.topic_name()
            position = (topic, message_id.ledger_id(), message_id.entry_id(), message_id.batch_index())
            self._unacked[position] = message_id
            records.append(
                record_from_payload(
                    message.data(),
                    self.config.format,
                    partition={"topic": topic},
                    offset={"ledger": position[1], "entry": position[2], "batch": position[3]},
                )
            )
        return records

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        # The worker commits each partition's records in order: the last one of a topic acks all before it.
        newest: dict[str, pulsar.MessageId] = {}
        for record in records:
            topic = str(record.partition["topic"])
            offset = record.offset
            message_id = self._unacked.pop((topic, int(offset["ledger"]), int(offset["entry"]), int(offset["batch"])), None)
            if message_id is not None:
                newest[topic] = message_id
        consumer = self._consumer
        if consumer is None:
            return
        for topic, message_id in newest.items():
            try:
                await pulsar_blocking(
                    "acknowledge", functools.partial(consumer.acknowledge_cumulative, message_id), self.config.timeout
                )
            except RetriableError as exc:
                # Not acknowledged: the broker delivers it again after a reconnect; a duplicate, not a loss.
                log.warning("pulsar acknowledgement failed, messages will be redelivered", topic=topic, error=str(exc))

    async def stop(self) -> None:
        self._unacked.clear()
        if self._client is not None:
            client, self._client, self._consumer = self._client, None, None
            # close, not unsubscribe: the subscription keeps the cursor for the next start
            receiving, self._receiving = self._receiving, None
            if receiving is not None and not receiving.done():
                # Closing the client under a receive still running in its thread aborts the process at exit.
                await asyncio.wait({receiving}, timeout=self.config.timeout + _BATCH_WAIT_MS / 1000)
            try:
                await pulsar_blocking("close", client.close, self.config.timeout)
            except RetriableError as exc:
                log.warning("pulsar client did not close cleanly", error=str(exc))
