"""http-source: an HTTP endpoint that turns CloudEvents and JSON webhooks into mesh events.

Accepted requests (``POST <path>``):

* CloudEvents, binary mode (``ce-*`` headers, the body is the data);
* CloudEvents, structured mode (``Content-Type: application/cloudevents+json``);
* CloudEvents batches (``application/cloudevents-batch+json``, a JSON array of structured events);
* plain JSON webhooks (``application/json``): the body becomes the data of one event whose id is
  the sender's own (``id_field`` in the body, else the first of ``id_headers`` present:
  ``Idempotency-Key``, ``X-GitHub-Delivery``, ...), so a retried delivery is the same event; its
  type is ``com.github.<X-GitHub-Event>`` for GitHub deliveries.

The topic is ``source.topic``; a request may name another one (``ce-subject``, a structured
event's ``subject``) only when ``source.allowed_topics`` admits it, else it is answered 403 and
nothing of it is published (:mod:`runtime.publishing`).

The response is held until the events are durably in the mesh (the worker calls :meth:`commit`
after the mesh acknowledged them): 200 then means "stored", so a sender that retries on anything
else loses nothing. A request waits at most ``response_timeout`` seconds (then 503); when more than
``queue_size`` events are waiting the answer is 503 with ``Retry-After``; malformed input gets a
4xx with the reason (415 content type, 400 JSON or attributes, 401 signature/token, 403 topic,
408 body too slow, 413 body or event size), counted in ``meshconnect_refused_total{reason}``.
Connections are bounded in number and in the time their request head and body may take
(:mod:`services.connections`); signatures are described in :mod:`services.http.source.signing`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import Callable
from typing import Any, Literal, cast

import orjson
import structlog
from aiohttp import web
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import Field

from runtime import (
    MAX_EVENT_BODY,
    ConnectorRecord,
    DataError,
    Secret,
    SourceContext,
    cloudevent_to_record,
    is_json_content_type,
)
from services.http.source import signing
from services.intake import IntakeConfig, IntakeSource, Refused, error_response, secret_matches

__all__ = ["HttpSource", "HttpSourceConfig"]

log = structlog.get_logger()

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_FORMAT = JSONFormat()


# Where common webhook senders put the id of a delivery, which they keep when they retry it.
_DELIVERY_ID_HEADERS = ("Idempotency-Key", "X-GitHub-Delivery", "X-Shopify-Webhook-Id", "X-Gitlab-Event-UUID", "X-Request-Id")


class HttpSourceConfig(IntakeConfig):
    path: str = Field("/", pattern=r"^/", description="URL path that accepts POSTed events.")
    max_body_bytes: int = Field(1024 * 1024, ge=1, description="Largest request body accepted (413 above).")
    queue_size: int = Field(1000, ge=1, description="Events received but not yet in the mesh, at most (503 above).")
    response_timeout: float = Field(30.0, gt=0, description="Seconds a request waits for its events to be stored (503 after).")
    retry_after: int = Field(1, ge=0, description="Seconds sent in Retry-After with a 503.")
    webhooks: bool = Field(True, description="Accept plain JSON bodies (webhooks) besides CloudEvents.")
    id_field: str | None = Field(
        None,
        pattern=r"^[^.]+(\.[^.]+)*$",
        description="Webhooks: data field path (dots for nesting) holding the sender's event id, e.g. 'id' for Stripe;"
        " tried before id_headers.",
    )
    id_headers: list[str] = Field(
        default_factory=lambda: list(_DELIVERY_ID_HEADERS),
        description="Webhooks: headers holding the sender's delivery id, first present wins; without any, a new id"
        " per request (a retried POST is then a new event).",
    )
    hmac_secret: Secret | None = Field(
        None, description="Require a request signature (HMAC-SHA256) made with this secret; see signature."
    )
    signature: Literal["body", "cloudevent"] = Field(
        "body",
        description="With hmac_secret: 'body' = X-Hub-Signature-256 over the body only (GitHub, Stripe-style webhooks);"
        " 'cloudevent' = X-Meshconnect-Signature over method, target, content type, ce-* headers and body.",
    )
    max_event_bytes: int = Field(
        MAX_EVENT_BODY,
        ge=1,
        le=MAX_EVENT_BODY,
        description="Largest event accepted, in bytes of its wire form (the CloudEvent JSON the mesh receives; binary"
        " data in base64); 413 above. The default is the most a 4 MiB EventMesh frame carries.",
    )


class HttpSource(IntakeSource[HttpSourceConfig]):
    name = "http-source"
    description = "HTTP endpoint receiving CloudEvents (binary, structured, batch) and JSON webhooks."
    config_model = HttpSourceConfig

    def __init__(self, config: HttpSourceConfig) -> None:
        super().__init__(config)
        self._id_path = tuple(config.id_field.split(".")) if config.id_field else ()
        self._id_headers = [header.lower() for header in config.id_headers]
        # Headers besides ce-* an event's attributes are read from: signed in 'cloudevent' mode, never accepted twice.
        self._attribute_headers = frozenset({"x-github-event", *self._id_headers})

    async def start(self, context: SourceContext) -> None:
        await super().start(context)
        log.info("http source listening", host=self.config.host, port=self.port, path=self.config.path)

    # -- request handling -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            self._check_token(request)
            body = await self._read_body(request)
            headers = self._single_headers(request)
            self._check_signature(request, headers, body)
            parsed = self._parse(headers, body)
            records = [self._checked(record, f"batch item {i}: " if len(parsed) > 1 else "") for i, record in enumerate(parsed)]
            if self._held.pending + len(records) > self.config.queue_size:
                raise Refused(503, "too many events waiting; retry later", retry_after=self.config.retry_after)
        except Refused as rejected:
            return self._refuse(request, rejected)
        if not records:
            return web.json_response({"accepted": 0})
        stored = self._held.hold(records)
        try:
            if not await asyncio.wait_for(asyncio.shield(stored), timeout=self.config.response_timeout):
                return error_response(503, "server stopping; retry later", retry_after=self.config.retry_after)
        except TimeoutError:
            return error_response(503, "events not yet stored in the mesh; retry later", retry_after=self.config.retry_after)
        return web.json_response({"accepted": len(records)})

    def _single_headers(self, request: web.Request) -> dict[str, str]:
        """The request's headers by lower-case name. One that makes the event may not come twice (which would
        win?), and must be UTF-8 (aiohttp keeps other bytes as lone surrogates, which no event can carry)."""
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            if key.startswith("ce-") or key == "content-type" or key in self._attribute_headers:
                if key in headers:
                    raise Refused(400, f"header {name[:100]} appears more than once")
                if not value.isascii():
                    try:
                        value.encode()
                    except UnicodeEncodeError as exc:
                        raise Refused(400, f"header {name[:100]} is not valid UTF-8") from exc
            headers[key] = value
        return headers

    def _check_signature(self, request: web.Request, headers: dict[str, str], body: bytes) -> None:
        if self.config.hmac_secret is None:
            return
        secret = self.config.hmac_secret.get_secret_value().encode()
        if self.config.signature == "body":
            header, expected = signing.BODY_HEADER, signing.body_signature(secret, body)
        else:
            canonical = signing.canonical_request(
                request.method, request.raw_path, headers, body, signed_headers=self._attribute_headers
            )
            header, expected = signing.CLOUDEVENT_HEADER, signing.cloudevent_signature(secret, canonical)
        if not secret_matches(headers.get(header.lower(), ""), expected):
            raise Refused(401, f"missing or wrong {header}")

    def _checked(self, record: ConnectorRecord, where: str) -> ConnectorRecord:
        """``record`` once it may be published: its topic allowed, its extensions ours to take, its size within bounds."""
        subject = record.subject
        rules = self._context.rules
        if subject is not None and not rules.permits(subject):
            raise Refused(
                403,
                f"{where}subject {subject[:200]!r} names a topic this endpoint may not publish to; leave the subject out"
                " (events then go to the configured topic) or ask the operator to add it to source.allowed_topics",
            )
        reserved = sorted(name for name in record.extensions if name.startswith("dlq"))
        if reserved:
            raise Refused(
                400, f"{where}extension(s) {', '.join(reserved)}: names starting with dlq are reserved for dead letters"
            )
        try:
            size = len(rules.encode(record).body)
        except DataError as exc:
            raise Refused(400, f"{where}invalid event: {exc.reason}") from exc
        if size > self.config.max_event_bytes:
            raise Refused(
                413, f"{where}event of {size} bytes (wire form) is larger than max_event_bytes ({self.config.max_event_bytes})"
            )
        return record

    def _parse(self, headers: dict[str, str], body: bytes) -> list[ConnectorRecord]:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        message = ce_http.HTTPMessage(headers=headers, body=body)
        if any(key.startswith("ce-") for key in headers):
            if is_json_content_type(content_type) and body:
                _parse_json(body)  # the SDK silently turns invalid JSON into text: refuse it instead
            _require_attributes({key[3:] for key in headers if key.startswith("ce-")}, "ce-")
            record = _to_record(ce_http.from_binary, message)
            if body and content_type and not content_type.startswith("text/") and not is_json_content_type(content_type):
                record = record.replace(data=body)  # the SDK decodes any UTF-8 body to text: keep binary binary
            return [record]
        if content_type == STRUCTURED:
            event = _parse_json(body)
            if not isinstance(event, dict):
                raise Refused(400, "a structured CloudEvent must be a JSON object")
            _require_structured(event)
            return [_to_record(ce_http.from_structured, message)]
        if content_type == BATCH:
            return self._parse_batch(body)
        if self.config.webhooks and is_json_content_type(content_type):
            return [self._webhook_record(headers, _parse_json(body))]
        accepted = f"{STRUCTURED}, {BATCH}, binary mode (ce-* headers)" + (", application/json" if self.config.webhooks else "")
        raise Refused(415, f"unsupported content type {content_type or '(none)'}; send {accepted}")

    def _parse_batch(self, body: bytes) -> list[ConnectorRecord]:
        events = _parse_json(body)
        if not isinstance(events, list):
            raise Refused(400, "a CloudEvents batch must be a JSON array")
        if len(events) > self.config.queue_size:
            raise Refused(413, f"batch of {len(events)} events is larger than queue_size {self.config.queue_size}")
        records = []
        for index, item in enumerate(events):
            if not isinstance(item, dict):
                raise Refused(400, f"batch item {index} is not a JSON object")
            item_message = ce_http.HTTPMessage(headers={"content-type": STRUCTURED}, body=orjson.dumps(item))
            try:
                _require_structured(item)
                records.append(_to_record(ce_http.from_structured, item_message))
            except Refused as rejected:
                raise Refused(400, f"batch item {index}: {rejected.reason}") from rejected
        return records

    def _webhook_record(self, headers: dict[str, str], data: Any) -> ConnectorRecord:
        github_event = headers.get("x-github-event")
        return ConnectorRecord(
            data=data,
            id=self._webhook_id(headers, data),
            type=f"com.github.{github_event}" if github_event else None,
            datacontenttype="application/json",
        )

    def _webhook_id(self, headers: dict[str, str], data: Any) -> str:
        """The sender's id for a webhook, so that its retries carry one event id (sinks keep one copy)."""
        if self._id_path:
            found: Any = data
            for part in self._id_path:
                found = found.get(part) if isinstance(found, dict) else None
            if isinstance(found, str | int) and not isinstance(found, bool) and str(found):
                return str(found)
        for header in self._id_headers:
            if headers.get(header):
                return headers[header]
        return str(uuid.uuid4())


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"invalid JSON: {exc}") from exc


def _require_structured(event: dict[str, Any]) -> None:
    _require_attributes(set(event), "")
    encoded = event.get("data_base64")
    if encoded is not None:  # the SDK decodes leniently, dropping what is not base64: refuse instead of losing data
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise Refused(400, f"invalid CloudEvent: data_base64 is not valid base64 ({exc})") from exc


def _require_attributes(present: set[str], prefix: str) -> None:
    # The SDK fills in a missing id and specversion; a sender that forgot them made a mistake we report.
    missing = [prefix + name for name in ("specversion", "id", "source", "type") if name not in present]
    if missing:
        raise Refused(400, f"invalid CloudEvent: missing required attribute(s) {', '.join(missing)}")


def _to_record(parse: Callable[..., BaseCloudEvent], message: ce_http.HTTPMessage) -> ConnectorRecord:
    """Run an SDK parser and map its errors (and ours) to a 400 with the reason, at one seam."""
    try:
        return cloudevent_to_record(cast(CloudEvent, parse(message, _FORMAT, CloudEvent)))
    except BaseCloudEventException as exc:
        raise Refused(400, f"invalid CloudEvent: {exc}") from exc
    except DataError as exc:
        raise Refused(400, f"invalid CloudEvent: {exc.reason}") from exc
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # malformed attribute values (e.g. time)
        raise Refused(400, f"invalid CloudEvent: {exc}") from exc
