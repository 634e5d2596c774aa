"""What the http-source tests share: a started source on a free port, a stand-in worker, a POST; and what the
chatgpt-source tests share with them: reading a connection until the server closes it."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import orjson
from prometheus_client import REGISTRY

from runtime.config import ConnectorConfig
from runtime.connector import SourceContext
from runtime.observability import ConnectorMetrics
from runtime.publishing import PublishRules
from runtime.record import ConnectorRecord
from services.http.source.connector import HttpSource, HttpSourceConfig
from services.intake import IntakeSource


def source_config(**overrides: Any) -> HttpSourceConfig:
    return HttpSourceConfig.model_validate({"host": "127.0.0.1", "port": 0, "path": "/events", **overrides})


# As the worker configures it: events go to "webhooks", a sender may choose "orders" or an "audit.*" topic.
RULES = PublishRules(connector="test", topic="webhooks", allowed_topics=("orders", "audit.*"))


async def started_source(config: ConnectorConfig, rules: PublishRules = RULES) -> HttpSource:
    source = HttpSource(config)  # type: ignore[arg-type]
    refused = ConnectorMetrics("http-source", "test").refused
    await source.start(SourceContext(connector_name="test", committed_offsets={}, rules=rules, count_refused=refused))
    return source


class Pump:
    """Stands in for the worker: polls an HTTP intake source (``polled`` is set once it polled records), and
    commits what it polled (unless paused: ``committing`` cleared)."""

    def __init__(self, source: IntakeSource[Any]) -> None:
        self.source = source
        self.seen: list[ConnectorRecord] = []
        self.polled = asyncio.Event()
        self.committing = asyncio.Event()
        self.committing.set()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            records = await self.source.poll()
            self.seen.extend(records)
            if records:
                self.polled.set()
            await self.committing.wait()
            if records:
                await self.source.commit(records)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def events_url(source: HttpSource) -> str:
    return f"http://127.0.0.1:{source.port}/events"


async def post_event(source: HttpSource, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            events_url(source), data=io.BytesIO(body), headers=headers, timeout=aiohttp.ClientTimeout(total=20)
        ) as response,
    ):
        return response.status, orjson.loads(await response.read()), dict(response.headers)


def refused_count(reason: str) -> float:
    """meshconnect_refused_total of the test sources (instance "test") for ``reason``."""
    labels = {"connector": "http-source", "name": "test", "reason": reason}
    return REGISTRY.get_sample_value("meshconnect_refused_total", labels) or 0.0


async def until_closed(reader: asyncio.StreamReader, within: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    received = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            received += chunk
    return received
