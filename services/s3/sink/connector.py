"""s3-sink: write each batch of events as JSON-lines objects, whole or not at all, replays to the same key.

A batch is split by the object key its events render: ``prefix`` + ``key_template`` over a fixed
set of placeholders, ``{topic}`` (the event's subject, which must be 1-128 letters, digits, ``.``,
``_`` or ``-``: any other subject dead-letters the event), ``{connector}`` (the instance name),
``{year}`` ``{month}`` ``{day}`` ``{hour}`` ``{minute}`` (the event's time, UTC: its ``time``
attribute, or its arrival when it has none) and ``{batch}``, which the template must hold. Each line
is the event as structured CloudEvent JSON (``payload: cloudevent``) or its data alone (``payload:
data``); an event that cannot be written so is dead-lettered with the reason.

Replays. With CloudEvent lines, ``{batch}`` is a hash of the ``source`` + ``id`` of the object's
first event, and the sink reads the key before writing: when an earlier delivery of the same first
event left an object there (a retry, or a redelivery after a crash before the ack, batched the same
or not), only the events it lacks are added, so nothing written before is lost or written twice.
Data lines carry no id: ``{batch}`` then hashes every event's ``source`` + ``id``, and only a batch
delivered again as it was goes to the same key. The ids of the last ``remember`` events written are
also kept, so a redelivered event is not written again by the same process. A redelivery whose
first event was in the middle of an earlier object can still leave events in two objects (at least
once; each CloudEvent line carries its ``id``).

An object is uploaded in one PUT up to ``part_bytes``, beyond that as a multipart upload that is
completed, or aborted when any part fails: S3 shows the whole object or none of it, never a part.
``put`` returns once S3 answered the last upload, so the events are acknowledged only when durable.
Objects are cut at ``max_object_bytes``. Two writers of one key at once (two replicas handed the
same events) could lose one's addition: the read-then-write is not conditional, so that it works on
every S3-compatible store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import string
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

import orjson
import structlog
from pydantic import Field, field_validator

from runtime import (
    ConfigError,
    ConnectorRecord,
    DataError,
    MeshConnectError,
    Rejection,
    Sink,
    SinkContext,
    SinkPayload,
    record_to_payload,
)
from services.s3.client import S3Config, S3Missing, ensure_bucket, s3_call, s3_client

__all__ = ["S3Sink", "S3SinkConfig"]

log = structlog.get_logger()

_MIB = 1024 * 1024
_PLACEHOLDERS = frozenset({"topic", "connector", "year", "month", "day", "hour", "minute", "batch"})
_SAFE_LITERAL = re.compile(r"[A-Za-z0-9/!_.*'()=-]*")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._-]{1,128}")


class S3SinkConfig(S3Config):
    key_template: str = Field(
        "{topic}/{year}/{month}/{day}/{hour}/{batch}.jsonl",
        description="Object key after prefix; placeholders {topic} {connector} {year} {month} {day} {hour} {minute} {batch}.",
    )
    payload: SinkPayload = Field("cloudevent", description="Each line: cloudevent (structured JSON) or data (the data only).")
    part_bytes: int = Field(
        8 * _MIB, ge=5 * _MIB, description="Objects up to this size go in one PUT; larger ones in parts of this size."
    )
    max_object_bytes: int = Field(64 * _MIB, ge=1024, description="A batch's lines are cut into objects of this size at most.")
    remember: int = Field(100_000, ge=0, description="Ids of the last events written, kept so a redelivery is not written again.")

    @field_validator("key_template")
    @classmethod
    def _valid_key_template(cls, template: str) -> str:
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"not a valid key template ({exc})") from exc
        names = set()
        for literal, name, spec, conversion in parts:
            if not _SAFE_LITERAL.fullmatch(literal):
                raise ValueError(f"literal text {literal!r} may only hold letters, digits and / ! _ . * ' ( ) = -")
            if name is None:
                continue
            if name not in _PLACEHOLDERS or spec or conversion:
                raise ValueError(f"{{{name}}} is not a placeholder; use only {{{'}, {'.join(sorted(_PLACEHOLDERS))}}}")
            names.add(name)
        if "batch" not in names:
            raise ValueError("the template must hold {batch}: without it, batches would overwrite each other")
        sample = template.format(**dict.fromkeys(_PLACEHOLDERS, "x"))
        if sample.startswith("/") or any(segment in ("", ".", "..") for segment in sample.split("/")):
            raise ValueError("the key must not start with '/' or hold empty, '.' or '..' segments")
        return template


class S3Sink(Sink[S3SinkConfig]):
    name = "s3-sink"
    description = "Writes batches of events as JSON-lines objects (keys by time and topic), whole or absent, replay-idempotent."
    config_model = S3SinkConfig

    def __init__(self, config: S3SinkConfig) -> None:
        super().__init__(config)
        self._resources = contextlib.AsyncExitStack()
        self._s3: Any = None
        self._connector = ""
        self._written: OrderedDict[tuple[str | None, str | None], None] = OrderedDict()

    async def start(self, context: SinkContext) -> None:
        if not _SAFE_VALUE.fullmatch(context.connector_name):
            raise ConfigError(
                "name",
                f"{context.connector_name!r} cannot be part of an object key",
                "use 1-128 letters, digits, '.', '_' or '-'",
            )
        self._connector = context.connector_name
        self._s3 = await self._resources.enter_async_context(s3_client(self.config))
        try:
            await ensure_bucket(self._s3, self.config)
        except BaseException:
            await self.stop()
            raise

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        rejections: list[Rejection] = []
        groups: dict[tuple[tuple[str, str], ...], list[tuple[ConnectorRecord, bytes]]] = {}
        for record in records:
            if (record.source, record.id) in self._written:
                continue
            try:
                fields = self._fields(record)
                line, _ = record_to_payload(record, self.config.payload)
                if b"\n" in line:
                    raise DataError("the event data holds a line break, so it cannot be one line; use payload: cloudevent")
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            groups.setdefault(tuple(sorted(fields.items())), []).append((record, line))
        for fields, lines in groups.items():
            for chunk in self._chunks(lines):
                await self._store(dict(fields), chunk)
                self._remember(record for record, _ in chunk)
        return rejections

    def _key(self, fields: dict[str, str], batch: str) -> str:
        return self.config.prefix + self.config.key_template.format(**fields, batch=batch)

    async def _store(self, fields: dict[str, str], chunk: list[tuple[ConnectorRecord, bytes]]) -> None:
        """Write ``chunk`` as one object. CloudEvent lines go under their first event's key, adding to an
        object an earlier delivery left there only the events it lacks; data lines, which carry no id,
        under the key of all their events."""
        body = b"".join(line + b"\n" for _, line in chunk)
        if self.config.payload == "data":
            await self._upload(self._key(fields, _batch_id(chunk)), body)
            return
        key = self._key(fields, _batch_id(chunk[:1]))
        found, existing = await self._existing(key)
        if not found:
            await self._upload(key, body)
            return
        if existing is None:  # too large to add to: the key of all the events, as for data lines
            await self._upload(self._key(fields, _batch_id(chunk)), body)
            return
        stored = _event_ids(existing)
        missing = [(record, line) for record, line in chunk if (record.source, record.id) not in stored]
        if missing:
            await self._upload(key, existing + b"".join(line + b"\n" for _, line in missing))

    async def _existing(self, key: str) -> tuple[bool, bytes | None]:
        """Whether an object is at ``key``, and its content (None when over twice ``max_object_bytes``)."""
        try:
            answer = await s3_call("get object", self._s3.get_object(Bucket=self.config.bucket, Key=key), self.config)
        except S3Missing:
            return False, None
        async with answer["Body"] as body:
            if int(answer["ContentLength"]) > self.config.max_object_bytes * 2:
                return True, None
            data: bytes = await s3_call("read object", body.read(), self.config)
        return True, data

    def _fields(self, record: ConnectorRecord) -> dict[str, str]:
        """The placeholder values of ``record``'s key but {batch}; DataError when its subject cannot be in a key."""
        topic = record.subject or ""
        if not _SAFE_VALUE.fullmatch(topic) or topic in (".", ".."):
            raise DataError(f"subject {topic!r} cannot be part of an object key: 1-128 letters, digits, '.', '_' or '-'")
        when = record.timestamp.astimezone(UTC)
        return {
            "topic": topic,
            "connector": self._connector,
            "year": f"{when.year:04d}",
            "month": f"{when.month:02d}",
            "day": f"{when.day:02d}",
            "hour": f"{when.hour:02d}",
            "minute": f"{when.minute:02d}",
        }

    def _chunks(self, lines: list[tuple[ConnectorRecord, bytes]]) -> list[list[tuple[ConnectorRecord, bytes]]]:
        """``lines`` cut into objects of at most ``max_object_bytes`` (a longer line alone in its object)."""
        chunks: list[list[tuple[ConnectorRecord, bytes]]] = [[]]
        size = 0
        for entry in lines:
            if chunks[-1] and size + len(entry[1]) + 1 > self.config.max_object_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += len(entry[1]) + 1
        return chunks

    async def _upload(self, key: str, body: bytes) -> None:
        """Store ``body`` under ``key`` in one PUT, or in parts completed as one (aborted on any failure)."""
        bucket = self.config.bucket
        if len(body) <= self.config.part_bytes:
            call = self._s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")
            await s3_call("put object", call, self.config)
            return
        created = await s3_call(
            "create multipart upload",
            self._s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/x-ndjson"),
            self.config,
        )
        upload_id = created["UploadId"]
        try:
            parts = []
            for number, first in enumerate(range(0, len(body), self.config.part_bytes), start=1):
                part = body[first : first + self.config.part_bytes]
                call = self._s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part)
                answer = await s3_call("upload part", call, self.config)
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            call = self._s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            await s3_call("complete multipart upload", call, self.config)
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        """Abort an unfinished upload, so no part of it lingers (S3 keeps parts until aborted)."""
        call = self._s3.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=upload_id)
        try:
            await s3_call("abort multipart upload", call, self.config)
        except MeshConnectError as exc:  # the upload's own error is what the caller must see
            log.warning("could not abort a multipart upload; a lifecycle rule removes its parts", key=key, error=repr(exc))

    def _remember(self, records: Iterable[ConnectorRecord]) -> None:
        if self.config.remember == 0:
            return
        for record in records:
            if record.id is not None:
                self._written[(record.source, record.id)] = None
        while len(self._written) > self.config.remember:
            self._written.popitem(last=False)

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self._resources.aclose(), self.config.timeout)
        except (TimeoutError, OSError) as exc:
            log.warning("s3 client did not close cleanly", error=repr(exc))


def _event_ids(body: bytes) -> set[tuple[str | None, str | None]]:
    """The source + id of every CloudEvent line of ``body`` (a line that is not one is kept, not counted)."""
    ids: set[tuple[str | None, str | None]] = set()
    for line in body.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(line)
            if isinstance(event, dict):
                ids.add((event.get("source"), event.get("id")))
    return ids


def _batch_id(chunk: list[tuple[ConnectorRecord, bytes]]) -> str:
    """A name for the object of ``chunk``: the same events in the same order, the same name."""
    digest = hashlib.sha256()
    for record, line in chunk:
        identity = f"{record.source}\x00{record.id}" if record.id is not None else hashlib.sha256(line).hexdigest()
        digest.update(identity.encode() + b"\n")
    return digest.hexdigest()[:32]
