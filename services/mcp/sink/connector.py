"""mcp-sink: call a tool of a remote MCP server (Streamable HTTP) once per event.

The event's data, a JSON object, is the tool's arguments (a ``map:`` transform shapes it first
when the tool wants other arguments); with ``id_argument`` the event id is added under that
name, so the tool can recognise a redelivered event. ``put`` returns once every call of the batch
was answered (``concurrency`` at a time), and the worker acknowledges the events then:

* a successful tool result: delivered;
* a tool result with ``isError: true``, a JSON-RPC invalid-params error (-32602), data that is no
  JSON object, or an answer over ``max_response_bytes``: the event goes to the dead-letter topic
  with the reason;
* anything else (the server unreachable, a timeout, HTTP 429 or 5xx, 401/403, another JSON-RPC
  error, the tool missing from ``tools/list``): :class:`~runtime.RetriableError`: the worker
  retries the batch with backoff and jitter and ``/readyz`` says not ready meanwhile. A retried
  batch calls its tools again (at-least-once): ``id_argument`` lets the tool deduplicate.

The session (``initialize``, ``Mcp-Session-Id``) is in :mod:`services.mcp.sink.session`; a server
that forgot it (404) gets a new one and the call again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from runtime import (
    ConfigError,
    ConnectorConfig,
    ConnectorRecord,
    HttpEndpoint,
    Rejection,
    RetriableError,
    Secret,
    Sink,
    SinkContext,
)
from services.deliveries import Outcome, settled
from services.mcp.client import LATEST_VERSION, TOOL_NAME_PATTERN
from services.mcp.sink.session import McpClientSession, ToolRefused

__all__ = ["McpSink", "McpSinkConfig"]


class McpSinkConfig(ConnectorConfig):
    url: HttpEndpoint = Field(description="The server's MCP endpoint (Streamable HTTP), e.g. https://tools.example/mcp.")
    tool: str = Field(pattern=TOOL_NAME_PATTERN, description="Name of the tool called for each event.")
    id_argument: str | None = Field(
        None, min_length=1, description="Argument that carries the event id (for the tool to deduplicate); unset: not sent."
    )
    token: Secret | None = Field(None, description="Sent as 'Authorization: Bearer <token>'.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (no secrets: use token).")
    protocol_version: Literal["2025-06-18", "2025-11-25"] = Field(
        LATEST_VERSION, description="MCP revision offered in initialize (the server may answer the other one)."
    )
    timeout: float = Field(30.0, gt=0, description="Seconds for one request, the tool's work included.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    concurrency: int = Field(8, ge=1, description="Tool calls in flight at most.")
    max_response_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest answer read, in bytes; a larger tool result is dead-lettered."
    )


class McpSink(Sink[McpSinkConfig]):
    name = "mcp-sink"
    description = "Calls a tool of a remote MCP server (Streamable HTTP) with each event's data as arguments."
    config_model = McpSinkConfig

    def __init__(self, config: McpSinkConfig) -> None:
        super().__init__(config)
        headers = dict(config.headers)
        if "authorization" in {name.lower() for name in headers}:
            raise ConfigError("config.headers", "an Authorization header is a secret", "give it as config.token")
        if config.token is not None:
            headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
        self._session = McpClientSession(
            config.url,
            tool=config.tool,
            version=config.protocol_version,
            headers=headers,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            concurrency=config.concurrency,
            max_response_bytes=config.max_response_bytes,
        )
        self._calls = asyncio.Semaphore(config.concurrency)

    async def start(self, context: SinkContext) -> None:
        await self._session.open()

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        return settled(await asyncio.gather(*(self._deliver(record) for record in records)), "tool calls")

    async def _deliver(self, record: ConnectorRecord) -> Outcome:
        if not isinstance(record.data, dict):
            kind = type(record.data).__name__
            return Rejection(record, f"event data is a {kind}, not a JSON object: tool arguments are one (shape it with map:)")
        arguments = dict(record.data)
        if self.config.id_argument is not None:
            arguments[self.config.id_argument] = record.id
        async with self._calls:
            try:
                outcome = await self._session.call(arguments)
            except RetriableError as exc:
                return exc
        return Rejection(record, outcome.reason) if isinstance(outcome, ToolRefused) else None

    async def stop(self) -> None:
        await self._session.close()
