"""The HTTP delivery http-sink and knative-sink share: POST each event as a CloudEvent, sort the answers.

A batch is sent concurrently (at most ``concurrency`` requests at a time) and :meth:`CloudEventPoster.put`
returns once every request was answered: 2xx is delivered; 408, 425, 429 and 5xx or a connection
failure make the whole batch retriable (the worker retries it with backoff, honouring the largest
``Retry-After``); any other 4xx rejects that event to the dead-letter topic with the status and the
start of the response body. Retried batches may deliver an event twice: receivers deduplicate on
``ce-source`` + ``ce-id``. Both sinks' config models extend :class:`PosterConfig` (how to send) and
each owns a poster built from its config (composition: neither sink is the other).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from typing import Literal
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import Field

from runtime import (
    CLOUDEVENTS_JSON,
    ConfigError,
    ConnectorConfig,
    ConnectorRecord,
    DataError,
    Rejection,
    RetriableError,
    Secret,
    data_bytes,
    record_to_json,
)
from services.deliveries import Outcome, retry_after_seconds, settled

__all__ = ["CloudEventPoster", "PosterConfig"]

log = structlog.get_logger()

# CloudEvents HTTP binding: header values are printable ASCII except space, '"' and '%', which are percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')
_RETRIABLE_STATUS = frozenset({408, 425, 429})


class PosterConfig(ConnectorConfig):
    """How http-sink and knative-sink send: both config models extend it (the keys stay top-level)."""

    timeout: float = Field(10.0, gt=0, description="Seconds for a whole request (connect, send, answer).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at most.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (no secrets: use token).")
    token: Secret | None = Field(None, description="Sent as 'Authorization: Bearer <token>' (e.g. an OIDC token).")
    tls_verify: bool = Field(True, description="Verify the server certificate (https).")
    ca_file: str | None = Field(None, description="PEM bundle of CAs to trust instead of the system ones.")

    def client_certificate(self) -> tuple[str, str | None] | None:
        """The PEM certificate and key files for mutual TLS; None where the sink offers none."""
        return None


class CloudEventPoster:
    """One aiohttp session that POSTs events as CloudEvents (binary or structured mode); open, put, close."""

    def __init__(self, settings: PosterConfig, mode: Literal["binary", "structured"]) -> None:
        self._settings = settings
        self._mode = mode
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Start the session; :class:`ConfigError` when the TLS files cannot be loaded."""
        settings = self._settings
        connector = aiohttp.TCPConnector(limit=settings.concurrency, ssl=self._ssl_context())
        timeout = aiohttp.ClientTimeout(total=settings.timeout, sock_connect=settings.connect_timeout)
        headers = dict(settings.headers)
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)

    def _ssl_context(self) -> ssl.SSLContext | bool:
        settings = self._settings
        if not settings.tls_verify:
            return False
        try:
            context = ssl.create_default_context(cafile=settings.ca_file)
            certificate = settings.client_certificate()
            if certificate is not None:
                context.load_cert_chain(*certificate)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("config.ca_file/client_cert", f"cannot load TLS files: {exc}", "give readable PEM files") from exc
        return context

    async def put(self, records: Sequence[ConnectorRecord], targets: Callable[[], Sequence[str]]) -> list[Rejection]:
        """POST every record to the URLs ``targets()`` names for it; the rejected ones, or :class:`RetriableError`."""
        rejections: list[Rejection] = []
        sends = []
        for record in records:
            try:
                headers, body = self._encode(record)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            for url in targets():
                sends.append(self._send(url, record, headers, body))
        return rejections + settled(await asyncio.gather(*sends), "requests")

    async def _send(self, url: str, record: ConnectorRecord, headers: Mapping[str, str], body: bytes) -> Outcome:
        """POST one event; the one seam where aiohttp's errors become ours."""
        assert self._session is not None, "open() first"
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                excerpt = (await response.content.read(200)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return RetriableError(f"POST {url} failed: {exc.__class__.__name__} {exc}")
        reason = f"POST {url} answered {response.status} {response.reason}: {excerpt}"
        if response.status in _RETRIABLE_STATUS or response.status >= 500:
            return RetriableError(reason, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        log.warning("http sink event rejected", url=url, status=response.status, id=record.id)
        return Rejection(record, reason)

    def _encode(self, record: ConnectorRecord) -> tuple[dict[str, str], bytes]:
        if self._mode == "structured":
            return {"Content-Type": CLOUDEVENTS_JSON}, record_to_json(record)
        return _binary_headers(record), data_bytes(record)

    async def close(self) -> None:
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
