"""rabbitmq-sink: publish events to a RabbitMQ exchange with publisher confirms.

Every message of a batch is published at once on a confirm channel and ``put`` returns when the
broker confirmed them all (persistent messages on durable queues are then on disk). A nack, a
message no queue would take (``mandatory``) or a lost connection makes the batch retriable. The
AMQP ``message_id`` is the event id and ``app_id`` its source, so consumers can drop redeliveries.
The body is the structured CloudEvent JSON (``content_type: application/cloudevents+json``) or,
with ``payload: data``, the event data with its own content type. ``routing_key`` may contain
``{topic}``, replaced by the event's subject; the default exchange ``""`` routes to the queue so named.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
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
from services.rabbitmq.client import ExchangeType, RabbitmqConnection, amqp_call, amqp_connect

__all__ = ["RabbitmqSink", "RabbitmqSinkConfig"]

log = structlog.get_logger()


class RabbitmqSinkConfig(RabbitmqConnection):
    exchange: str = Field("", description='Exchange to publish to; "" is the default exchange (routing key = queue name).')
    exchange_type: ExchangeType = Field("topic", description="Type of the exchange when declared.")
    declare: bool = Field(True, description="Declare the exchange (durable) if it does not exist.")
    routing_key: str = Field("{topic}", description="Routing key; {topic} = the event's subject.")
    mandatory: bool = Field(True, description="Treat a message no queue takes as a failure (retried) instead of dropping it.")
    persistent: bool = Field(True, description="Persistent messages (delivery mode 2): on disk in durable queues.")
    payload: SinkPayload = Field("cloudevent", description="cloudevent: structured JSON; data: the data only.")


class RabbitmqSink(Sink[RabbitmqSinkConfig]):
    name = "rabbitmq-sink"
    description = "Publishes events to a RabbitMQ exchange with publisher confirms and message ids."
    config_model = RabbitmqSinkConfig

    def __init__(self, config: RabbitmqSinkConfig) -> None:
        super().__init__(config)
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self, context: SinkContext) -> None:
        timeout = self.config.timeout
        self._connection = await amqp_connect(self.config)
        channel = await amqp_call("channel", self._connection.channel(publisher_confirms=True, on_return_raises=True), timeout)
        if self.config.exchange and self.config.declare:
            exchange_type = aio_pika.ExchangeType(self.config.exchange_type)
            self._exchange = await amqp_call(
                "exchange.declare", channel.declare_exchange(self.config.exchange, exchange_type, durable=True), timeout
            )
        elif self.config.exchange:
            self._exchange = await amqp_call("exchange.declare", channel.get_exchange(self.config.exchange), timeout)
        else:
            self._exchange = channel.default_exchange

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        assert self._exchange is not None, "start() first"
        rejections: list[Rejection] = []
        publishes = []
        for record in records:
            try:
                message = self._message(record)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            routing_key = self.config.routing_key.replace("{topic}", record.subject or "")
            publishes.append(self._exchange.publish(message, routing_key, mandatory=self.config.mandatory))
        if publishes:
            # Publish all, then wait for every confirm: one broker round trip per batch, not per message.
            outcomes = await amqp_call("publish", asyncio.gather(*publishes, return_exceptions=True), self.config.timeout)
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if failures:
                raise RetriableError(f"{len(failures)} of {len(publishes)} messages not confirmed, first: {failures[0]!r}")
        return rejections

    def _message(self, record: ConnectorRecord) -> aio_pika.Message:
        body, content_type = record_to_payload(record, self.config.payload)
        return aio_pika.Message(
            body,
            content_type=content_type,
            message_id=record.id,
            app_id=record.source,
            type=record.type,
            timestamp=record.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if self.config.persistent else aio_pika.DeliveryMode.NOT_PERSISTENT,
        )

    async def stop(self) -> None:
        if self._connection is not None:
            await asyncio.wait_for(self._connection.close(), self.config.timeout)
            self._connection = None
