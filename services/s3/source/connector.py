"""s3-source: read the objects under a bucket/prefix in key order, one event per line or per object.

Objects are listed in key order (S3 lists keys in UTF-8 binary order) and read one at a time. In
``lines`` mode each line (JSON lines; a line ends with ``\\n``, the last one may not) is one event;
in ``object`` mode each whole object is. The partition is the bucket + prefix; the offset is the
object's key, ETag and size and the byte position after the line, so the event id (derived from
partition and offset) names bucket, key, ETag and line, and a restart resumes at the committed
key and byte. The worker commits an offset only after the mesh acknowledged the event.

Reads are ranged GETs of ``read_bytes`` under ``If-Match: <etag>``: an object replaced while it is
being read (its ETag changed) is noticed at the next read, and at a restart; ``on_change`` says what
then: ``restart`` reads the new content from its first byte (its events carry new ids: a new ETag),
``skip`` leaves it and goes on with the next key. Lines already published from the old content
stay published. An object replaced after it was read to its end is not read again. Once every
listed object is read, the bucket is listed again every ``poll_interval`` seconds for keys after the
last one read: new objects must sort after the ones before them (keys that begin with their
creation time), or they are never read.

A line that is not what ``format`` promises (e.g. invalid JSON) becomes a record the worker
dead-letters with the parse error; a line longer than ``max_line_bytes`` is cut into pieces of that
size (with ``format: json`` the pieces are dead-lettered); blank lines are skipped. In ``object``
mode an object over ``max_object_bytes`` travels as its first ``max_object_bytes`` bytes, binary,
with the reason in the ``meshformaterror`` extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from pydantic import Field, model_validator

from runtime import (
    MAX_EVENT_BODY,
    ConnectorRecord,
    JsonValue,
    PayloadFormat,
    Source,
    SourceContext,
    record_from_payload,
)
from services.s3.client import S3Config, S3Missing, S3PreconditionFailed, ensure_bucket, s3_call, s3_client

__all__ = ["S3Source", "S3SourceConfig"]

log = structlog.get_logger()

_LIST_PAGE = 1000


class S3SourceConfig(S3Config):
    mode: Literal["lines", "object"] = Field("lines", description="lines: one event per line (JSON lines); object: per object.")
    format: PayloadFormat = Field(
        "json", description="How a line or object is read: json, cloudevents (structured), text or binary."
    )
    poll_interval: float = Field(5.0, gt=0, description="Seconds between listings for new objects once all are read.")
    on_change: Literal["restart", "skip"] = Field(
        "restart", description="An object replaced while read: read the new content from the start, or skip it."
    )
    batch_size: int = Field(500, ge=1, description="Lines per poll, at most.")
    read_bytes: int = Field(1024 * 1024, ge=1024, description="Bytes per ranged read (and per poll), at most.")
    max_line_bytes: int = Field(1024 * 1024, ge=1, description="Longer lines are cut into pieces of this size.")
    max_object_bytes: int = Field(
        MAX_EVENT_BODY, ge=1, description="object mode: larger objects travel cut to this size, with the reason."
    )

    @model_validator(mode="after")
    def _line_fits_a_read(self) -> S3SourceConfig:
        if self.max_line_bytes > self.read_bytes:
            raise ValueError(
                f"max_line_bytes ({self.max_line_bytes}) must not exceed read_bytes ({self.read_bytes}): a line is read in one go"
            )
        return self


@dataclass(slots=True)
class _Object:
    key: str
    etag: str
    size: int
    modified: datetime | None


class S3Source(Source[S3SourceConfig]):
    name = "s3-source"
    description = (
        "Reads objects under a bucket/prefix in key order, one event per JSON line or per object, resuming by key and byte."
    )
    config_model = S3SourceConfig

    def __init__(self, config: S3SourceConfig) -> None:
        super().__init__(config)
        self._partition: dict[str, JsonValue] = {"bucket": config.bucket, "prefix": config.prefix}
        self._resources = contextlib.AsyncExitStack()
        self._s3: Any = None
        self._context = SourceContext(self.name, {})
        self._listed: deque[_Object] = deque()
        self._after = ""
        """The last key read to its end (or given up): the next listing starts after it."""
        self._current: _Object | None = None
        self._position = 0
        self._next_listing = 0.0

    async def start(self, context: SourceContext) -> None:
        self._context = context
        self._s3 = await self._resources.enter_async_context(s3_client(self.config))
        try:
            await ensure_bucket(self._s3, self.config)
            await self._resume(context.offset(self._partition))
        except BaseException:
            await self.stop()
            raise

    async def _resume(self, committed: Mapping[str, JsonValue] | None) -> None:
        if committed is None:
            return
        key, etag = str(committed["key"]), str(committed["etag"])
        position, size = int(committed["position"]), int(committed["size"])
        self._after = key
        if position >= size:
            return  # read to its end: go on after it
        found = await self._head(key)
        if found is None:
            log.warning("object being read was deleted; going on with the next key", key=key)
        elif found.etag == etag:
            self._current, self._position = found, position
            log.info("resuming object", key=key, position=position)
        else:
            self._changed(found)

    async def poll(self) -> Sequence[ConnectorRecord]:
        if self._current is None and not await self._next_object():
            return []
        current = self._current
        assert current is not None
        self._context.report_lag(current.modified)
        try:
            if self.config.mode == "object":
                return await self._read_object(current)
            return await self._read_lines(current)
        except S3PreconditionFailed:
            found = await self._head(current.key)
            if found is None:
                self._finish(current, "object deleted while read; going on with the next key")
            else:
                self._changed(found)
            return []
        except S3Missing:
            self._finish(current, "object deleted while read; going on with the next key")
            return []

    async def _next_object(self) -> bool:
        """Make the next listed object current; False (after a bounded wait) when there is none yet."""
        if not self._listed:
            now = time.monotonic()
            if now < self._next_listing:
                await asyncio.sleep(min(1.0, self._next_listing - now))
                return False
            await self._list()
            if not self._listed:
                self._next_listing = time.monotonic() + self.config.poll_interval
                self._context.report_lag(None)
                return False
        self._current, self._position = self._listed.popleft(), 0
        return True

    async def _list(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": self.config.prefix, "MaxKeys": _LIST_PAGE}
        if self._after:
            arguments["StartAfter"] = self._after
        page = await s3_call("list objects", self._s3.list_objects_v2(**arguments), self.config)
        for entry in page.get("Contents", []):
            if not entry["Key"].endswith("/"):  # folder placeholders hold no data
                self._listed.append(_Object(entry["Key"], _etag(entry["ETag"]), int(entry["Size"]), entry.get("LastModified")))

    async def _head(self, key: str) -> _Object | None:
        try:
            head = await s3_call("head object", self._s3.head_object(Bucket=self.config.bucket, Key=key), self.config)
        except S3Missing:
            return None
        return _Object(key, _etag(head["ETag"]), int(head["ContentLength"]), head.get("LastModified"))

    def _changed(self, found: _Object) -> None:
        """``found`` replaced the content being read: restart it or skip it, as configured."""
        if self.config.on_change == "skip":
            self._finish(found, "object replaced while read: skipped (on_change: skip)")
            self._context.count_refused("s3_object_changed")
            return
        log.warning("object replaced while read: reading the new content from the start", key=found.key, etag=found.etag)
        self._current, self._position = found, 0

    def _finish(self, current: _Object, why: str | None = None) -> None:
        if why is not None:
            log.warning(why, key=current.key)
        self._after = current.key
        self._current = None

    async def _get(self, current: _Object, first: int, last: int) -> bytes:
        """Bytes ``first..last`` (inclusive) of ``current``, as long as its ETag is still the one listed."""
        arguments = {"Bucket": self.config.bucket, "Key": current.key, "Range": f"bytes={first}-{last}", "IfMatch": current.etag}

        async def read() -> bytes:
            answer = await self._s3.get_object(**arguments)
            async with answer["Body"] as body:
                data: bytes = await body.read()
            return data

        return await s3_call("get object", read(), self.config)

    async def _read_object(self, current: _Object) -> list[ConnectorRecord]:
        data = b"" if current.size == 0 else await self._get(current, 0, min(current.size, self.config.max_object_bytes) - 1)
        offset = self._offset(current, current.size)
        if current.size > self.config.max_object_bytes:
            reason = f"object is {current.size} bytes, over max_object_bytes ({self.config.max_object_bytes}): cut"
            extensions = {"s3key": current.key, "meshformaterror": reason}
            record = ConnectorRecord(
                data=data,
                datacontenttype="application/octet-stream",
                partition=self._partition,
                offset=offset,
                extensions=extensions,
            )
        else:
            record = record_from_payload(
                data, self.config.format, partition=self._partition, offset=offset, extensions={"s3key": current.key}
            )
        self._finish(current)
        return [record]

    async def _read_lines(self, current: _Object) -> list[ConnectorRecord]:
        if self._position >= current.size:
            self._finish(current)
            return []
        last = min(current.size, self._position + self.config.read_bytes) - 1
        data = await self._get(current, self._position, last)
        at_end = last == current.size - 1
        records: list[ConnectorRecord] = []
        start, limit = 0, self.config.max_line_bytes
        while len(records) < self.config.batch_size and start < len(data):
            newline = data.find(b"\n", start, start + limit + 1)
            if newline != -1:
                line, start = data[start:newline], newline + 1
            elif len(data) - start >= limit:
                line, start = data[start : start + limit], start + limit  # a line too long: cut
            elif at_end:
                line, start = data[start:], len(data)  # the last line, without its newline
            else:
                break  # the rest of this line is in the next range
            line = line.rstrip(b"\r")
            if line.strip():
                position = self._position + start
                records.append(
                    record_from_payload(
                        line,
                        self.config.format,
                        partition=self._partition,
                        offset=self._offset(current, position),
                        extensions={"s3key": current.key},
                    )
                )
        self._position += start
        if self._position >= current.size:
            self._finish(current)
        return records

    def _offset(self, current: _Object, position: int) -> dict[str, JsonValue]:
        return {"key": current.key, "etag": current.etag, "size": current.size, "position": position}

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self._resources.aclose(), self.config.timeout)
        except (TimeoutError, OSError) as exc:
            log.warning("s3 client did not close cleanly", error=repr(exc))


def _etag(value: str) -> str:
    return value.strip('"')
