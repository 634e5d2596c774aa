"""nats-source: read a JetStream stream through a durable pull consumer with explicit acks.

Messages are fetched in batches; each is acked in :meth:`commit`, once the mesh stored its event. A
message not acked within ``ack_wait`` (a crash, a lost connection) is redelivered by JetStream,
and at most ``max_ack_pending`` are unacknowledged at once (backpressure). The partition is the
stream + consumer and the offset the message's stream sequence, so a redelivered message keeps its
event id. With ``subjects`` given, the stream is created when it does not exist. The client
reconnects by itself; while the server is away, polls raise ``RetriableError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import Field

from runtime import (
    ConnectorRecord,
    PayloadFormat,
    RetriableError,
    Source,
    SourceContext,
    record_from_payload,
)
from services.nats.client import NatsConnection, ensure_stream, nats_call, nats_connect

__all__ = ["NatsSource", "NatsSourceConfig"]

log = structlog.get_logger()


class NatsSourceConfig(NatsConnection):
    stream: str = Field(min_length=1, description="JetStream stream to read.")
    subjects: list[str] = Field(default_factory=list, description="Create the stream with these subjects if it is missing.")
    durable: str | None = Field(None, description="Durable consumer name; default the instance name.")
    filter_subject: str | None = Field(None, description="Only messages of this subject (wildcards allowed).")
    deliver: Literal["all", "new"] = Field("all", description="Where a new consumer starts: the first message or only new ones.")
    ack_wait: float = Field(60.0, gt=0, description="Seconds JetStream waits for an ack before redelivering.")
    max_ack_pending: int = Field(1000, ge=1, description="Messages delivered but not acknowledged, at most.")
    format: PayloadFormat = Field(
        "cloudevents", description="Payload format: cloudevents (structured JSON), json, text or binary."
    )
    batch_size: int = Field(500, ge=1, description="Messages per fetch, at most.")


class NatsSource(Source[NatsSourceConfig]):
    name = "nats-source"
    description = "Reads a NATS JetStream stream with a durable pull consumer, acking after the mesh stored each message."
    config_model = NatsSourceConfig

    def __init__(self, config: NatsSourceConfig) -> None:
        super().__init__(config)
        self._client: NatsClient | None = None
        self._subscription: Any = None
        self._unacked: dict[int, Any] = {}
        self._partition: dict[str, str] = {}
        self._context = SourceContext(self.name, {})  # the worker's, once started

    async def start(self, context: SourceContext) -> None:
        self._context = context
        timeout = self.config.timeout
        durable = self.config.durable or context.connector_name
        self._client = await nats_connect(self.config)
        js = self._client.jetstream(timeout=timeout)
        await ensure_stream(js, self.config.stream, self.config.subjects, timeout)
        consumer = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if self.config.deliver == "all" else DeliverPolicy.NEW,
            ack_wait=self.config.ack_wait,
            max_ack_pending=self.config.max_ack_pending,
            filter_subject=self.config.filter_subject,
        )
        self._subscription = await nats_call(
            "pull subscribe",
            js.pull_subscribe(self.config.filter_subject or "", durable=durable, stream=self.config.stream, config=consumer),
            timeout,
        )
        self._partition = {"stream": self.config.stream, "consumer": durable}
        log.info("nats source consuming", stream=self.config.stream, durable=durable)

    async def poll(self) -> Sequence[ConnectorRecord]:
        try:
            messages = await nats_call(
                "fetch", self._subscription.fetch(self.config.batch_size, timeout=1.0), 1.0 + self.config.timeout
            )
        except RetriableError as exc:
            if (
                isinstance(exc.__cause__, nats.errors.TimeoutError | TimeoutError)
                and self._client is not None
                and self._client.is_connected
            ):
                self._context.report_lag(None)
                return []  # nothing to read within the second
            raise
        # The metadata carries the time JetStream stored the message.
        self._context.report_lag(messages[-1].metadata.timestamp if messages else None)
        records = []
        for message in messages:
            sequence = message.metadata.sequence.stream
            self._unacked[sequence] = message
            records.append(
                record_from_payload(message.data, self.config.format, partition=self._partition, offset={"seq": sequence})
            )
        return records

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        for record in records:
            message = self._unacked.pop(int(record.offset["seq"]), None)
            if message is None:
                continue
            try:
                await nats_call("ack", message.ack(), self.config.timeout)
            except RetriableError as exc:
                # Not acked: JetStream redelivers it after ack_wait; a duplicate, not a loss.
                log.warning("nats ack failed, message will be redelivered", error=str(exc))

    async def stop(self) -> None:
        self._unacked.clear()
        if self._client is not None:
            client, self._client = self._client, None
            # close, not drain: a fetched message nobody committed is redelivered after ack_wait anyway
            await asyncio.wait_for(client.close(), self.config.timeout)
