"""redis-source: read Redis Streams through a consumer group (at-least-once) or Pub/Sub channels.

Streams: ``XREADGROUP`` delivers entries to this consumer; an entry is ``XACK`` ed only in
:meth:`commit`, i.e. after the mesh stored its event. On start the consumer first re-reads its own
pending entries (delivered before a crash, never acknowledged), then new ones; entries left pending
by other consumers for ``claim_idle_ms`` are taken over with ``XAUTOCLAIM``. The payload is the
entry's ``field`` (default ``event``); an entry without that field is read as a JSON object of all
its fields. Partition = the stream key, offset = the entry id, so event ids are stable.

Pub/Sub: ``SUBSCRIBE``/``PSUBSCRIBE``; Redis keeps no copy, so a message published while the source
is down or disconnected is lost (at-most-once by nature); prefer Streams when that matters.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
import structlog
from pydantic import Field, model_validator
from redis import exceptions as redis_errors

from runtime import (
    ConfigError,
    ConnectorRecord,
    PayloadFormat,
    RetriableError,
    Source,
    SourceContext,
    record_from_payload,
)
from services.redis.client import RedisConnection, redis_call, redis_connect

__all__ = ["RedisSource", "RedisSourceConfig"]

log = structlog.get_logger()


class RedisSourceConfig(RedisConnection):
    mode: Literal["stream", "pubsub"] = Field("stream", description="stream: consumer group (at-least-once); pubsub: channels.")
    streams: list[str] = Field(default_factory=list, description="Stream keys to read (mode stream).")
    group: str = Field("meshconnect", description="Consumer group (mode stream); created if missing.")
    consumer: str | None = Field(None, description="Consumer name in the group; default the instance name.")
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a newly created group starts: the stream's first entry or only new ones."
    )
    field: str = Field("event", description="Entry field holding the payload (mode stream).")
    claim_idle_ms: int = Field(60_000, ge=0, description="Take over entries other consumers left pending this long (0 = never).")
    channels: list[str] = Field(default_factory=list, description="Channels to SUBSCRIBE (mode pubsub).")
    patterns: list[str] = Field(default_factory=list, description="Channel patterns to PSUBSCRIBE (mode pubsub).")
    format: PayloadFormat = Field(
        "cloudevents", description="Payload format: cloudevents (structured JSON), json, text or binary."
    )
    batch_size: int = Field(500, ge=1, description="Entries or messages per poll, at most.")

    @model_validator(mode="after")
    def _something_to_read(self) -> RedisSourceConfig:
        if self.mode == "stream" and not self.streams:
            raise ValueError("mode stream needs at least one key in 'streams'")
        if self.mode == "pubsub" and not (self.channels or self.patterns):
            raise ValueError("mode pubsub needs 'channels' or 'patterns'")
        return self


class RedisSource(Source[RedisSourceConfig]):
    name = "redis-source"
    description = "Reads Redis Streams with a consumer group (XACK after the mesh ack) or Pub/Sub channels."
    config_model = RedisSourceConfig

    def __init__(self, config: RedisSourceConfig) -> None:
        super().__init__(config)
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._consumer = config.consumer or "meshconnect"
        self._backlog_cursor = dict.fromkeys(config.streams, "0")
        self._session = uuid.uuid4().hex
        self._received = 0
        self._context = SourceContext(self.name, {})  # the worker's, once started

    async def start(self, context: SourceContext) -> None:
        self._context = context
        self._consumer = self.config.consumer or context.connector_name
        self._redis = redis_connect(self.config)
        await redis_call("PING", self._redis.ping())
        if self.config.mode == "stream":
            await self._ensure_groups()
        else:
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            if self.config.channels:
                await redis_call("SUBSCRIBE", self._pubsub.subscribe(*self.config.channels))
            if self.config.patterns:
                await redis_call("PSUBSCRIBE", self._pubsub.psubscribe(*self.config.patterns))
        log.info("redis source started", mode=self.config.mode, consumer=self._consumer)

    async def _ensure_groups(self) -> None:
        for stream in self.config.streams:
            await redis_call("XGROUP CREATE", self._create_group(stream))

    async def _create_group(self, stream: str) -> None:
        assert self._redis is not None
        start = "0" if self.config.start_from == "earliest" else "$"
        try:
            await self._redis.xgroup_create(stream, self.config.group, id=start, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # BUSYGROUP: it exists already, as it should
                raise ConfigError("config.streams", f"cannot create group on {stream}: {exc}", "name a stream key") from exc

    async def poll(self) -> Sequence[ConnectorRecord]:
        if self.config.mode == "stream":
            return await self._poll_streams()
        return await self._poll_pubsub()

    async def _poll_streams(self) -> list[ConnectorRecord]:
        try:
            # Our own pending entries first (delivered before a restart, never acked), then new ones.
            for stream in self.config.streams:
                if stream in self._backlog_cursor:
                    records = await self._read({stream: self._backlog_cursor[stream]}, block=None)
                    if records:
                        self._backlog_cursor[stream] = str(records[-1].offset["id"])
                        return records
                    del self._backlog_cursor[stream]
                    claimed = await self._claim(stream)
                    if claimed:
                        return claimed
            records = await self._read(dict.fromkeys(self.config.streams, ">"), block=1000)
        except RetriableError as exc:
            if "NOGROUP" in str(exc):  # the server lost the group (restarted without persistence): make it again
                await self._ensure_groups()
            raise
        # An entry id starts with the server's clock (ms) at XADD: how far behind the newest entry read is.
        self._context.report_lag(_appended_at(str(records[-1].offset["id"])) if records else None)
        return records

    async def _read(self, streams: dict[Any, Any], block: int | None) -> list[ConnectorRecord]:
        assert self._redis is not None
        reply = await redis_call(
            "XREADGROUP",
            self._redis.xreadgroup(self.config.group, self._consumer, streams, count=self.config.batch_size, block=block),
        )
        return self._entries(reply)

    async def _claim(self, stream: str) -> list[ConnectorRecord]:
        if not self.config.claim_idle_ms:
            return []
        assert self._redis is not None
        reply = await redis_call(
            "XAUTOCLAIM",
            self._redis.xautoclaim(
                stream, self.config.group, self._consumer, self.config.claim_idle_ms, count=self.config.batch_size
            ),
        )
        return self._entries([[stream, reply[1]]])

    def _entries(self, reply: Any) -> list[ConnectorRecord]:
        records = []
        for stream, entries in reply or []:
            key = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                if fields is None:  # deleted from the stream while pending: nothing left to publish
                    continue
                position = {"partition": {"stream": key}, "offset": {"id": entry_id.decode()}}
                payload = fields.get(self.config.field.encode())
                if payload is None:
                    payload = orjson.dumps({k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()})
                    records.append(record_from_payload(payload, "json", **position))
                else:
                    records.append(record_from_payload(payload, self.config.format, **position))
        return records

    async def _poll_pubsub(self) -> list[ConnectorRecord]:
        records: list[ConnectorRecord] = []
        timeout = 1.0
        while len(records) < self.config.batch_size:
            message = await redis_call("pubsub", self._pubsub.get_message(timeout=timeout))
            if message is None:
                break
            timeout = 0.0  # after the first message, take only what is already here
            channel = message["channel"].decode()
            self._received += 1
            # Pub/Sub has no positions: a per-run counter keeps offsets (and derived ids) distinct.
            offset = {"session": self._session, "n": self._received}
            records.append(
                record_from_payload(message["data"], self.config.format, partition={"channel": channel}, offset=offset)
            )
        return records

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        if self.config.mode != "stream" or self._redis is None:
            return
        by_stream: dict[str, list[str]] = {}
        for record in records:
            by_stream.setdefault(str(record.partition["stream"]), []).append(str(record.offset["id"]))
        for stream, ids in by_stream.items():
            await redis_call("XACK", self._redis.xack(stream, self.config.group, *ids))

    async def stop(self) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def _appended_at(entry_id: str) -> datetime:
    """When the stream entry ``entry_id`` (``<ms>-<seq>``) was appended, by the Redis server's clock."""
    return datetime.fromtimestamp(int(entry_id.partition("-")[0]) / 1000, UTC)
