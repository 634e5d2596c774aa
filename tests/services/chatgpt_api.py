"""What the chatgpt-source tests share: a fake of OpenAI's Chat Completions API, a stand-in worker, a started
source and a POST to it, and a run through the real worker and the embedded mesh.

The fake (``POST /v1/chat/completions``) insists on ``Authorization: Bearer <key>`` (else 401 with an
OpenAI error object), a JSON body with ``model``, ``messages`` (``role`` + ``content`` each) and
``max_tokens`` and nothing undocumented, and answers a ``chat.completion`` object whose content
echoes the user message, or is the next of its scripted ``replies`` (what a model wrote). Faults
(429 + ``Retry-After``, 5xx, dropped connections, malformed bodies) are scripted per request.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from cloudevents.core.v1.event import CloudEvent

from runtime.connector import SourceContext
from runtime.mesh import EmbeddedMesh
from runtime.publishing import PublishRules
from runtime.testing import WorkerProcess
from services.http.chatgpt.connector import ChatGptSource, ChatGptSourceConfig
from tests.servers import free_port
from tests.services.fake_http import FakeHttpServer
from tests.services.http_source import Pump
from tests.services.workers import gathered

API_KEY = "sk-test-s3cret-key-value"
_DOCUMENTED_KEYS = {"model", "messages", "max_tokens", "temperature"}


class FakeOpenAI:
    """Chat Completions as documented; ``requests`` holds (method, path, headers, body) of each accepted call."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], dict[str, Any]]] = []
        self.replies: list[str] = []
        self.call_times: list[float] = []
        self.server = FakeHttpServer([("POST", "/v1/chat/completions", self._handle)])

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"

    async def _handle(self, request: web.Request) -> web.Response:
        self.call_times.append(time.monotonic())
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            error = {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=401)
        assert request.content_type == "application/json", request.content_type
        body = await request.json()
        assert set(body) <= _DOCUMENTED_KEYS and {"model", "messages"} <= set(body), body
        assert isinstance(body["max_tokens"], int)
        for message in body["messages"]:
            assert set(message) == {"role", "content"} and message["role"] in {"system", "user"}, message
        self.requests.append((request.method, request.path, dict(request.headers), body))
        user = body["messages"][-1]["content"]
        content = self.replies.pop(0) if self.replies else f"echo: {user}"
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            }
        )


def config_for(fake: FakeOpenAI, **overrides: Any) -> ChatGptSourceConfig:
    return ChatGptSourceConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": 0,
            "api_key": API_KEY,
            "base_url": fake.base_url,
            "model": "gpt-test",
            "max_tokens": 64,
            "backoff_base": 0.01,
            "backoff_max": 5,
            "max_attempts": 3,
            **overrides,
        }
    )


async def started(config: ChatGptSourceConfig, allowed_topics: tuple[str, ...] = ()) -> tuple[ChatGptSource, Pump]:
    source = ChatGptSource(config)
    rules = PublishRules(connector="test", topic="answers", allowed_topics=allowed_topics)
    await source.start(SourceContext(connector_name="test", committed_offsets={}, rules=rules))
    return source, Pump(source)


async def post(
    source: ChatGptSource, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{source.port}/chatgpt",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


async def through_the_worker(
    fake: FakeOpenAI,
    tmp_path: Path,
    prompts: int,
    *,
    settings: dict[str, Any],
    source: dict[str, Any],
    topics: tuple[str, ...] = ("answers", "chatgpt-answers-dlq"),
) -> dict[str, list[CloudEvent]]:
    """The events on ``topics`` once ``prompts`` prompts (ids p-1, p-2, ...) were answered by a chatgpt-source
    worker with ``settings`` (its config block) and ``source`` (its source block)."""
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    port = free_port()
    config = {
        "name": "chatgpt-answers",
        "connector": ChatGptSource.name,
        "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
        "source": {"topic": "answers", **source},
        "registry": {"kind": "file", "path": str(tmp_path / "registry")},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": {"host": "127.0.0.1", "port": port, "api_key": API_KEY, "base_url": fake.base_url, **settings},
    }
    worker = WorkerProcess(ChatGptSource, config, tmp_path)
    try:
        async with gathered(mesh, *topics) as received:
            await worker.start(30)
            async with aiohttp.ClientSession() as session:
                for n in range(1, prompts + 1):
                    async with session.post(
                        f"http://127.0.0.1:{port}/chatgpt", json={"text": f"prompt {n}", "id": f"p-{n}"}
                    ) as response:
                        assert response.status == 200, await response.text()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if sum(len(events) for events in received.values()) >= prompts:
                    break
                await asyncio.sleep(0.1)
            assert await worker.terminate(30) == 0, worker.log_tail()
    finally:
        await worker.kill()
        await mesh.stop()
    assert API_KEY not in worker.log_path.read_text()
    return received
