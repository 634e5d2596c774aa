"""http-sink: POST each event to HTTP endpoints as a CloudEvent (binary or structured mode).

A batch is sent concurrently (``concurrency`` requests at a time) and ``put`` returns once every
request was answered: 2xx is delivered; 408, 429 and 5xx or a connection failure make the whole
batch retriable (the worker retries it with backoff, honouring the largest ``Retry-After``); any
other 4xx rejects that event to the dead-letter topic with the status and the start of the
response body. Retried batches may deliver an event twice: receivers deduplicate on
``ce-source`` + ``ce-id``. The delivery is :class:`services.http.client.CloudEventPoster`, shared
with knative-sink; this connector adds several URLs, broadcast or round robin.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import count
from typing import Literal

from pydantic import Field

from runtime import ConnectorConfig, ConnectorRecord, HttpEndpoint, Rejection, Secret, Sink, SinkContext
from services.http.client import CloudEventPoster, PosterSettings

__all__ = ["HttpSink", "HttpSinkConfig"]


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
        self._poster = CloudEventPoster(
            PosterSettings(
                mode=config.mode,
                timeout=config.timeout,
                connect_timeout=config.connect_timeout,
                concurrency=config.concurrency,
                headers=config.headers,
                token=config.token,
                tls_verify=config.tls_verify,
                ca_file=config.ca_file,
                client_cert=config.client_cert,
                client_key=config.client_key,
            )
        )
        self._turn = count()

    async def start(self, context: SinkContext) -> None:
        await self._poster.open()

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        return await self._poster.put(records, self._targets)

    def _targets(self) -> Sequence[str]:
        if self.config.delivery == "broadcast":
            return self.config.urls
        return [self.config.urls[next(self._turn) % len(self.config.urls)]]

    async def stop(self) -> None:
        await self._poster.close()
