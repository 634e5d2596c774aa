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

from runtime import ConnectorRecord, HttpEndpoint, Rejection, Sink, SinkContext
from services.http.client import CloudEventPoster, PosterConfig

__all__ = ["HttpSink", "HttpSinkConfig"]


class HttpSinkConfig(PosterConfig):
    urls: list[HttpEndpoint] = Field(min_length=1, description="Endpoints to POST events to (http:// or https://).")
    delivery: Literal["broadcast", "round_robin"] = Field(
        "broadcast", description="broadcast: every event to every URL; round_robin: each event to one URL in turn."
    )
    mode: Literal["binary", "structured"] = Field(
        "binary", description="CloudEvents HTTP content mode: ce-* headers + data body, or the whole event as JSON."
    )
    client_cert: str | None = Field(None, description="PEM client certificate for mutual TLS.")
    client_key: str | None = Field(None, description="PEM private key of client_cert.")

    def client_certificate(self) -> tuple[str, str | None] | None:
        return None if self.client_cert is None else (self.client_cert, self.client_key)


class HttpSink(Sink[HttpSinkConfig]):
    name = "http-sink"
    description = "POSTs events as CloudEvents (binary or structured mode) to HTTP endpoints."
    config_model = HttpSinkConfig

    def __init__(self, config: HttpSinkConfig) -> None:
        super().__init__(config)
        self._poster = CloudEventPoster(config, config.mode)
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
