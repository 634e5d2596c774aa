"""rabbitmq-source: consume a RabbitMQ queue, acknowledging each message only after the mesh stored it.

Messages are delivered with manual acks and at most ``prefetch`` unacknowledged at a time (the
broker stops sending beyond that: backpressure); :meth:`commit` acks them. If the connection drops,
the broker requeues every unacked message and redelivers it after the reconnect, so nothing is lost
(an event may be published twice: downstream sinks are idempotent on source + id). The payload of a
message is read by ``format``; a message with ``content_type: application/cloudevents+json`` is
always read as a structured CloudEvent. With ``exchange`` set, the queue is bound to it with
``routing_key`` (declared durable when ``declare`` is true).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from pydantic import Field

from runtime import (
    CLOUDEVENTS_JSON,
    ConnectorRecord,
    PayloadFormat,
    RetriableError,
    Source,
    SourceContext,
    record_from_payload,
)
from services.rabbitmq.client import ExchangeType, RabbitmqConnection, amqp_call, amqp_connect

__all__ = ["RabbitmqSource", "RabbitmqSourceConfig"]

log = structlog.get_logger()


class RabbitmqSourceConfig(RabbitmqConnection):
    queue: str = Field(min_length=1, description="Queue to consume.")
    declare: bool = Field(True, description="Declare the queue (durable) and the exchange if they do not exist.")
    exchange: str | None = Field(None, description="Bind the queue to this exchange (optional).")
    exchange_type: ExchangeType = Field("topic", description="Type of the exchange when declared.")
    routing_key: str = Field("#", description="Binding key of the queue on the exchange.")
    prefetch: int = Field(1000, ge=1, description="Unacknowledged messages at most (backpressure).")
    format: PayloadFormat = Field(
        "cloudevents", description="Payload format: cloudevents (structured JSON), json, text or binary."
    )
    batch_size: int = Field(500, ge=1, description="Messages per poll, at most.")


class RabbitmqSource(Source[RabbitmqSourceConfig]):
    name = "rabbitmq-source"
    description = "Consumes a RabbitMQ queue with manual acks, sent only after the mesh stored each event."
    config_model = RabbitmqSourceConfig

    def __init__(self, config: RabbitmqSourceConfig) -> None:
        super().__init__(config)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue(maxsize=config.prefetch)
        self._unacked: dict[int, AbstractIncomingMessage] = {}
        self._session = uuid.uuid4().hex
        self._received = 0
        self._partition = {"queue": config.queue}

    async def start(self, context: SourceContext) -> None:
        timeout = self.config.timeout
        self._connection = await amqp_connect(self.config)
        self._channel = await amqp_call("channel", self._connection.channel(), timeout)
        assert self._channel is not None
        await amqp_call("basic.qos", self._channel.set_qos(prefetch_count=self.config.prefetch), timeout)
        if self.config.declare:
            queue = await amqp_call("queue.declare", self._channel.declare_queue(self.config.queue, durable=True), timeout)
        else:
            queue = await amqp_call("queue.declare", self._channel.declare_queue(self.config.queue, passive=True), timeout)
        if self.config.exchange:
            exchange_type = aio_pika.ExchangeType(self.config.exchange_type)
            exchange = await amqp_call(
                "exchange.declare",
                self._channel.declare_exchange(
                    self.config.exchange, exchange_type, durable=True, passive=not self.config.declare
                ),
                timeout,
            )
            await amqp_call("queue.bind", queue.bind(exchange, self.config.routing_key), timeout)
        await amqp_call("basic.consume", queue.consume(self._buffer.put, no_ack=False), timeout)
        log.info("rabbitmq source consuming", queue=self.config.queue, prefetch=self.config.prefetch)

    async def poll(self) -> Sequence[ConnectorRecord]:
        try:
            messages = [await asyncio.wait_for(self._buffer.get(), timeout=1.0)]
        except TimeoutError:
            return []
        while len(messages) < self.config.batch_size and not self._buffer.empty():
            messages.append(self._buffer.get_nowait())
        return [self._record(message) for message in messages]

    def _record(self, message: AbstractIncomingMessage) -> ConnectorRecord:
        payload_format: PayloadFormat = "cloudevents" if message.content_type == CLOUDEVENTS_JSON else self.config.format
        self._received += 1
        self._unacked[self._received] = message
        # Delivery tags restart with every channel: a per-run counter keeps offsets distinct.
        offset = {"session": self._session, "n": self._received}
        record = record_from_payload(message.body, payload_format, partition=self._partition, offset=offset)
        if record.id is None and message.message_id:
            record = record.replace(id=message.message_id)
        return record

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        for record in records:
            message = self._unacked.pop(int(record.offset["n"]), None)
            if message is None:
                continue
            try:
                await amqp_call("basic.ack", _ack(message), self.config.timeout)
            except RetriableError as exc:
                # The channel that delivered it is gone; the broker redelivers the message: a duplicate, not a loss.
                log.warning("rabbitmq ack failed, message will be redelivered", error=str(exc))

    async def stop(self) -> None:
        self._unacked.clear()
        while not self._buffer.empty():  # unacked: the broker requeues them when the connection closes
            self._buffer.get_nowait()
        if self._connection is not None:
            await asyncio.wait_for(self._connection.close(), self.config.timeout)
            self._connection = None


async def _ack(message: AbstractIncomingMessage) -> None:
    await message.ack()  # inside a coroutine: aio-pika checks the channel before it returns an awaitable
