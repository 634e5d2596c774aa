"""http-sink: POST each event to HTTP endpoints as a CloudEvent (binary or structured mode).

A batch is sent concurrently (``concurrency`` requests at a time) and ``put`` returns once every
request was answered: 2xx is delivered; 408, 429 and 5xx or a connection failure make the whole
batch retriable (the worker retries it with backoff, honouring the largest ``Retry-After``); any
other 4xx rejects that event to the dead-letter topic with the status and the start of the
response body. Retried batches may deliver an event twice: receivers deduplicate on
``ce-source`` + ``ce-id``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from itertools import count
from typing import Literal
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import Field

from runtime.config import ConnectorConfig, HttpEndpoint, Secret
from runtime.connector import Rejection, Sink, SinkContext
from runtime.errors import ConfigError, DataError, RetriableError
from runtime.record import ConnectorRecord
from services.cloudevents_json import CONTENT_TYPE, data_bytes, record_to_json

__all__ = ["HttpSink", "HttpSinkConfig"]

log = structlog.get_logger()

# CloudEvents HTTP binding: header values are printable ASCII except space, '"' and '%', which are percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')
_RETRIABLE_STATUS = frozenset({408, 425, 429})


class HttpSinkConfig(ConnectorConfig):
    urls: list[HttpEndpoint] = Field(min_length=1, description="Endpoints to POST events to (http:// or https://).")
    delivery: Literal["broadcast", "round_robin"] = Field(
        "broadcast", description="broadcast: every event to every URL; round_robin: each event to one URL in turn."
    )
    mode: Literal["binary", "structured"] = Field(
        "binary", description="CloudEvents HTTP content mode: ce-* headers + data body, or the whole event as JSON."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds for a whole request (connect, send, answer).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at most.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (no secrets: use token).")
    token: Secret | None = Field(None, description="Sent as 'Authorization: Bearer <token>'.")
    tls_verify: bool = Field(True, description="Verify the server certificate (https).")
    ca_file: str | None = Field(None, description="PEM bundle of CAs to trust instead of the system ones.")
    client_cert: str | None = Field(None, description="PEM client certificate for mutual TLS.")
    client_key: str | None = Field(None, description="PEM private key of client_cert.")


class HttpSink(Sink[HttpSinkConfig]):
    name = "http-sink"
    description = "POSTs events as CloudEvents (binary or structured mode) to HTTP endpoints."
    config_model = HttpSinkConfig

    def __init__(self, config: HttpSinkConfig) -> None:
        super().__init__(config)
        self._session: aiohttp.ClientSession | None = None
        self._turn = count()

    async def start(self, context: SinkContext) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.concurrency, ssl=self._ssl_context())
        timeout = aiohttp.ClientTimeout(total=self.config.timeout, sock_connect=self.config.connect_timeout)
        headers = dict(self.config.headers)
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self.config.tls_verify:
            return False
        try:
            context = ssl.create_default_context(cafile=self.config.ca_file)
            if self.config.client_cert:
                context.load_cert_chain(self.config.client_cert, self.config.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("config.ca_file/client_cert", f"cannot load TLS files: {exc}", "give readable PEM files") from exc
        return context

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        rejections: list[Rejection] = []
        sends = []
        for record in records:
            try:
                headers, body = self._encode(record)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            for url in self._targets():
                sends.append(self._send(url, record, headers, body))
        outcomes = await asyncio.gather(*sends)
        failures = [outcome for outcome in outcomes if isinstance(outcome, RetriableError)]
        if failures:
            hints = [failure.retry_after for failure in failures if failure.retry_after is not None]
            raise RetriableError(
                f"{len(failures)} of {len(outcomes)} requests failed, first: {failures[0]}",
                retry_after=max(hints) if hints else None,
            )
        rejections.extend(outcome for outcome in outcomes if isinstance(outcome, Rejection))
        return rejections

    def _targets(self) -> Sequence[str]:
        if self.config.delivery == "broadcast":
            return self.config.urls
        return [self.config.urls[next(self._turn) % len(self.config.urls)]]

    async def _send(
        self, url: str, record: ConnectorRecord, headers: Mapping[str, str], body: bytes
    ) -> Rejection | RetriableError | None:
        """POST one event; the one seam where aiohttp's errors become ours."""
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                excerpt = (await response.content.read(200)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return RetriableError(f"POST {url} failed: {exc.__class__.__name__} {exc}")
        reason = f"POST {url} answered {response.status} {response.reason}: {excerpt}"
        if response.status in _RETRIABLE_STATUS or response.status >= 500:
            return RetriableError(reason, retry_after=_retry_after(response.headers.get("Retry-After")))
        log.warning("http sink event rejected", url=url, status=response.status, id=record.id)
        return Rejection(record, reason)

    def _encode(self, record: ConnectorRecord) -> tuple[dict[str, str], bytes]:
        if self.config.mode == "structured":
            return {"Content-Type": CONTENT_TYPE}, record_to_json(record)
        return _binary_headers(record), data_bytes(record)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _binary_headers(record: ConnectorRecord) -> dict[str, str]:
    if not (record.id and record.source and record.type):
        raise DataError("event has no id, source or type: a CloudEvent needs all three")
    attributes: dict[str, str | int | bool] = {
        "specversion": "1.0",
        "id": record.id,
        "source": record.source,
        "type": record.type,
        "time": record.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    if record.subject:
        attributes["subject"] = record.subject
    if record.dataschema:
        attributes["dataschema"] = record.dataschema
    attributes.update(record.extensions)
    headers = {f"ce-{name}": quote(_header_text(value), safe=_HEADER_SAFE) for name, value in attributes.items()}
    content_type = record.effective_content_type
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def _header_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or garbled."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
