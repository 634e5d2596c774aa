"""Raw aiokafka helpers for the Kafka tests and bench: make topics, produce messages, read a topic whole."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from services.kafka.client import stop_consumer

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
"""(value, key, headers) of one message to produce."""


def new_topic_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topic(bootstrap: str, topic: str, partitions: int = 1, within: float = 30.0) -> None:
    """Create ``topic`` (retried while the broker is still starting)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            return
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


async def produce(bootstrap: str, topic: str, messages: Sequence[Message], partition: int | None = None) -> None:
    """Send ``messages`` to ``topic`` with acks=all and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=5000)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers, partition=partition) for value, key, headers in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def partitions_of(bootstrap: str, topic: str, within: float = 10.0) -> list[int]:
    """The partitions of ``topic``, waiting (bounded) until it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        async with asyncio.timeout(within):
            while True:
                (described,) = await admin.describe_topics([topic])
                if described["error_code"] == 0 and described["partitions"]:
                    return sorted(partition["partition"] for partition in described["partitions"])
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str, within: float = 10.0) -> list[ConsumerRecord[Any, Any]]:
    """Every message of ``topic`` now, in partition then offset order."""
    assigned = [TopicPartition(topic, partition) for partition in await partitions_of(bootstrap, topic, within)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, request_timeout_ms=5000)
    await consumer.start()
    try:
        async with asyncio.timeout(within):
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            messages: list[ConsumerRecord[Any, Any]] = []
            for tp in assigned:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    messages += batch.get(tp, [])
            return sorted(messages, key=lambda message: (message.partition, message.offset))
    finally:
        await stop_consumer(consumer, 10)
