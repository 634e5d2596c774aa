"""knative-sink: deliver events to a Knative Service, Broker or Channel as binary-mode CloudEvents.

Knative Eventing addresses are plain HTTP endpoints that take CloudEvents in the HTTP binding: a
Service's URL (``http://<service>.<namespace>.svc.cluster.local``), a Broker's ingress
(``http://broker-ingress.knative-eventing.svc.cluster.local/<namespace>/<broker>``) or a Channel. Each
event is POSTed in binary content mode, as Knative's own senders do: the attributes as ``ce-*``
headers (``ce-specversion``, ``ce-id``, ``ce-source``, ``ce-type``, ``ce-subject``, ``ce-time`` and
every extension), the data as the body under its ``Content-Type``.

Answers: 2xx (a Broker says 202 Accepted) is delivered; 408, 425, 429 and 5xx (a Service scaling
from zero, a Broker not ready) or a failed connection make the batch retriable, honouring
``Retry-After``; any other 4xx (400: not a valid CloudEvent, 404: no such Broker path) rejects that
event to the dead-letter topic with the status and the start of the body. A reply event in the
response body (a Knative Service may answer with one) is not forwarded. Receivers deduplicate on
``ce-source`` + ``ce-id`` (a retried batch is sent again). The HTTP delivery is the one http-sink uses
too (:class:`services.http.client.CloudEventPoster`), run with one URL in binary mode; this connector
gives it Knative's address and defaults.
The Java connector's ``serviceAddr`` (host and path without a scheme) is accepted as ``url``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, field_validator

from runtime import ConnectorRecord, Rejection, Sink, SinkContext
from services.http.client import CloudEventPoster, PosterConfig

__all__ = ["KnativeSink", "KnativeSinkConfig"]


class KnativeSinkConfig(PosterConfig):
    url: str = Field(
        description="Knative address: Service URL, Broker ingress or Channel (http(s)://...; without a scheme, http://)."
    )
    timeout: float = Field(30.0, gt=0, description="Seconds for a whole request (a Service may scale from zero first).")

    @field_validator("url")
    @classmethod
    def _with_scheme(cls, url: str) -> str:
        url = url.strip()
        if not url:
            raise ValueError("the Knative address is empty; give the Service, Broker or Channel URL")
        return url if url.startswith(("http://", "https://")) else f"http://{url}"


class KnativeSink(Sink[KnativeSinkConfig]):
    name = "knative-sink"
    description = "POSTs events as binary-mode CloudEvents (ce-* headers) to a Knative Service, Broker or Channel."
    config_model = KnativeSinkConfig

    def __init__(self, config: KnativeSinkConfig) -> None:
        super().__init__(config)
        self._poster = CloudEventPoster(config, "binary")

    async def start(self, context: SinkContext) -> None:
        await self._poster.open()

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        return await self._poster.put(records, self._target)

    def _target(self) -> Sequence[str]:
        return (self.config.url,)

    async def stop(self) -> None:
        await self._poster.close()
