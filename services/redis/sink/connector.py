"""redis-sink: XADD events to Redis Streams (optionally capped) or PUBLISH them to channels.

A batch goes out as one pipeline (one round trip); ``put`` returns once Redis answered every
command. With ``dedup_seconds`` > 0 (streams) each event is added by a small script that skips it
when the marker ``<dedup_prefix><source>\\x00<id>`` exists and sets that marker, with that TTL, after
a successful XADD: an event redelivered within the window is not added twice. The payload (field
``field`` of the entry, or the message) is the structured CloudEvent JSON, or just the event data
with ``payload: data``. ``key``/``channel`` may contain ``{topic}``, replaced by the event's
subject. PUBLISH is fire-and-forget by Redis' design: a subscriber that is not connected misses the
message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import redis.asyncio as aioredis
import structlog
from pydantic import Field, model_validator
from redis import exceptions as redis_errors

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
from services.redis.client import RedisConnection, redis_call, redis_connect

__all__ = ["RedisSink", "RedisSinkConfig"]

log = structlog.get_logger()

# KEYS[1] dedup key, KEYS[2] stream; ARGV: ttl, maxlen (0 = none), field, payload.
# The marker is set only after XADD succeeded: a failed add leaves no marker that would skip the retry.
_XADD_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local id
if ARGV[2] ~= '0' then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[4])
else
  id = redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[4])
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return id
"""


class RedisSinkConfig(RedisConnection):
    mode: Literal["stream", "pubsub"] = Field("stream", description="stream: XADD; pubsub: PUBLISH.")
    key: str = Field("{topic}", description="Stream key (mode stream); {topic} = the event's subject.")
    channel: str = Field("{topic}", description="Channel (mode pubsub); {topic} = the event's subject.")
    field: str = Field("event", description="Entry field the payload is stored under (mode stream).")
    maxlen: int | None = Field(None, ge=1, description="Cap each stream at about this many entries (XADD MAXLEN ~).")
    dedup_seconds: int = Field(600, ge=0, description="Skip an event already added within this many seconds (0 = off).")
    dedup_prefix: str = Field("meshconnect:dedup:", description="Key prefix of the dedup markers.")
    payload: SinkPayload = Field("cloudevent", description="cloudevent: structured JSON; data: the data only.")

    @model_validator(mode="after")
    def _known_placeholders(self) -> RedisSinkConfig:
        for name in ("key", "channel"):
            if getattr(self, name).replace("{topic}", "").count("{"):
                raise ValueError(f"'{name}' may only use the placeholder {{topic}}")
        return self


class RedisSink(Sink[RedisSinkConfig]):
    name = "redis-sink"
    description = "Writes events to Redis Streams (XADD, MAXLEN, dedup) or Pub/Sub channels (PUBLISH)."
    config_model = RedisSinkConfig

    def __init__(self, config: RedisSinkConfig) -> None:
        super().__init__(config)
        self._redis: aioredis.Redis | None = None
        self._script_sha = ""

    async def start(self, context: SinkContext) -> None:
        self._redis = redis_connect(self.config)
        await redis_call("PING", self._redis.ping())
        await self._load_script()

    async def _load_script(self) -> None:
        assert self._redis is not None
        self._script_sha = await redis_call("SCRIPT LOAD", self._redis.script_load(_XADD_ONCE))

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        assert self._redis is not None, "start() first"
        rejections: list[Rejection] = []
        sent: list[ConnectorRecord] = []
        pipe = self._redis.pipeline(transaction=False)
        for record in records:
            try:
                payload, _ = record_to_payload(record, self.config.payload)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            topic = record.subject or ""
            if self.config.mode == "pubsub":
                pipe.publish(self.config.channel.replace("{topic}", topic), payload)
            elif self.config.dedup_seconds:
                dedup_key = f"{self.config.dedup_prefix}{record.source}\x00{record.id}"
                stream = self.config.key.replace("{topic}", topic)
                args: list[str | int | bytes] = [self.config.dedup_seconds, self.config.maxlen or 0, self.config.field, payload]
                pipe.evalsha(self._script_sha, 2, dedup_key, stream, *args)
            else:
                pipe.xadd(
                    self.config.key.replace("{topic}", topic),
                    {self.config.field: payload},
                    maxlen=self.config.maxlen,
                    approximate=True,
                )
            sent.append(record)
        if not sent:
            return rejections
        results = await redis_call("pipeline", pipe.execute(raise_on_error=False))
        for record, result in zip(sent, results, strict=True):
            if isinstance(result, redis_errors.NoScriptError):  # Redis restarted and forgot the script
                await self._load_script()
                raise RetriableError("Redis lost the dedup script (restart?); loaded it again") from result
            if isinstance(result, redis_errors.ResponseError):
                # e.g. WRONGTYPE: the key of this topic holds something else; other topics are fine
                rejections.append(Rejection(record, f"Redis refused the write: {result}"))
            elif isinstance(result, Exception):
                raise RetriableError(f"Redis write failed: {result}") from result
        return rejections

    async def stop(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
