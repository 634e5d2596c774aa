"""mcp-source against a real MCP client: the `mcp` SDK's ClientSession over its Streamable HTTP transport.

Requests no SDK client sends (malformed JSON, batches, a request resent with the same id) are
posted raw with aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import orjson
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from structlog.testing import capture_logs

from runtime.connector import SourceContext
from runtime.mesh import EmbeddedMesh
from runtime.publishing import PublishRules
from runtime.testing import SourceHarness, WorkerProcess, run_source_conformance
from services.mcp.source.connector import McpSource, McpSourceConfig
from tests.runtime.test_commands import meshconnect, write_config
from tests.servers import free_port
from tests.services.http_source import Pump
from tests.services.workers import gathered

TOKEN = "agent-s3cret-token"
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
    "required": ["sku", "qty"],
    "additionalProperties": False,
}
TOOLS = [
    {"name": "place_order", "description": "Place an order.", "input_schema": ORDER_SCHEMA, "topic": "orders",
     "event_type": "shop.order.placed"},
    {"name": "publish", "description": "Publish a note to a topic.", "topic_argument": True},
]  # fmt: skip
# As the worker configures it: events go to "agents"; "orders" and the "audit.*" topics are allowed too.
RULES = PublishRules(connector="test", topic="agents", allowed_topics=("orders", "audit.*"))


def _config(**overrides: Any) -> McpSourceConfig:
    return McpSourceConfig.model_validate({"host": "127.0.0.1", "port": 0, "token": TOKEN, "tools": TOOLS, **overrides})


async def _started(config: McpSourceConfig, rules: PublishRules = RULES) -> tuple[McpSource, Pump]:
    source = McpSource(config)
    await source.start(SourceContext(connector_name="test", committed_offsets={}, rules=rules))
    return source, Pump(source)  # type: ignore[arg-type]  # any intake source polls and commits alike


@pytest.fixture
async def running() -> AsyncIterator[tuple[McpSource, Pump]]:
    source, pump = await _started(_config())
    yield source, pump
    await pump.close()
    await source.stop()


@contextlib.asynccontextmanager
async def _agent(port: int, token: str = TOKEN) -> AsyncIterator[ClientSession]:
    """The SDK's client, initialized, with the bearer token."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def test_a_tool_call_becomes_one_event_and_is_answered_with_its_id(running: tuple[McpSource, Pump]) -> None:
    source, pump = running
    async with _agent(source.port) as agent:
        listed = {tool.name: tool for tool in (await agent.list_tools()).tools}
        result = await agent.call_tool("place_order", {"sku": "A-1", "qty": 2, "idempotency_key": "order-7"})
    assert set(listed) == {"place_order", "publish"}
    assert listed["place_order"].input_schema["required"] == ["sku", "qty"]
    assert "idempotency_key" in listed["place_order"].input_schema["properties"]
    assert listed["publish"].input_schema["required"] == ["topic"]
    assert not result.is_error and result.structured_content == {"id": "order-7", "topic": "orders"}
    [record] = pump.seen
    assert (record.id, record.subject, record.type) == ("order-7", "orders", "shop.order.placed")
    assert record.data == {"sku": "A-1", "qty": 2}
    assert record.extensions == {"mcptool": "place_order"}


async def test_the_call_is_answered_only_once_the_event_is_stored(running: tuple[McpSource, Pump]) -> None:
    source, pump = running
    pump.committing.clear()
    async with _agent(source.port) as agent:
        call = asyncio.create_task(agent.call_tool("publish", {"topic": "audit.login", "user": "ann"}))
        async with asyncio.timeout(10):
            while not pump.seen:  # noqa: ASYNC110 - the pump's list fills from another task
                await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):  # polled, not committed: no answer yet
            await asyncio.wait_for(asyncio.shield(call), 0.3)
        pump.committing.set()
        result = await asyncio.wait_for(call, 10)
    assert not result.is_error and result.structured_content["topic"] == "audit.login"  # type: ignore[index]
    assert [(record.subject, record.data) for record in pump.seen] == [("audit.login", {"user": "ann"})]


async def test_a_call_over_queue_size_is_answered_is_error_and_publishes_nothing() -> None:
    source, pump = await _started(_config(queue_size=1))
    try:
        pump.committing.clear()
        async with _agent(source.port) as agent:
            first = asyncio.create_task(agent.call_tool("publish", {"topic": "agents", "n": 1}))
            async with asyncio.timeout(10):
                while not pump.seen:  # noqa: ASYNC110 - the pump's list fills from another task
                    await asyncio.sleep(0.02)
            busy = await agent.call_tool("publish", {"topic": "agents", "n": 2})
            pump.committing.set()
            stored = await asyncio.wait_for(first, 10)
    finally:
        await pump.close()
        await source.stop()
    assert busy.is_error and "too many calls" in busy.content[0].text  # type: ignore[union-attr]
    assert not stored.is_error and [record.data for record in pump.seen] == [{"n": 1}]


async def test_a_topic_not_allowed_is_refused_and_nothing_is_published(running: tuple[McpSource, Pump]) -> None:
    source, pump = running
    async with _agent(source.port) as agent:
        with pytest.raises(MCPError) as refused:
            await agent.call_tool("publish", {"topic": "payroll", "text": "raise"})
        accepted = await agent.call_tool("publish", {"topic": "agents", "text": "fine"})
    assert refused.value.code == -32602 and "payroll" in refused.value.message
    assert not accepted.is_error
    assert [record.subject for record in pump.seen] == ["agents"]


def test_a_tool_whose_topic_is_not_allowed_fails_check_and_the_start_naming_its_key(tmp_path: Path) -> None:
    config = {
        "name": "mcp-agents",
        "connector": McpSource.name,
        "source": {"topic": "agents", "allowed_topics": ["orders", "audit.*"]},
        "registry": {"kind": "file", "path": str(tmp_path / "registry")},
        "admin": {"host": "127.0.0.1", "port": 0},
        "config": {"host": "127.0.0.1", "port": 0, "tools": [*TOOLS, {"name": "leak", "topic": "payroll"}]},
    }
    path = write_config(tmp_path, config)
    for command in ("check", "run"):
        result = meshconnect(command, McpSource.name, "--config", str(path))
        assert result.returncode == 2, result.stderr
        assert f"config.tools[{len(TOOLS)}].topic" in result.stderr and "payroll" in result.stderr, result.stderr


async def test_calls_outside_the_schema_and_unknown_tools_are_json_rpc_errors(running: tuple[McpSource, Pump]) -> None:
    source, pump = running
    with capture_logs() as logs:
        async with _agent(source.port) as agent:
            errors = []
            for name, arguments in [
                ("place_order", {"sku": "A-1", "qty": 0}),
                ("place_order", {"sku": "A-1", "qty": 1, "price": 0}),
                ("place_order", {"sku": "A-1", "qty": 1, "idempotency_key": ""}),
                ("drop_tables", {}),
                ("place_order", {"sku": "A-1", "qty": "hunter2"}),
            ]:
                with pytest.raises(MCPError) as error:
                    await agent.call_tool(name, arguments)
                errors.append((error.value.code, error.value.message))
            after = await agent.call_tool("place_order", {"sku": "A-1", "qty": 1})
    assert [code for code, _ in errors] == [-32602] * 5
    assert "qty" in errors[0][1] and "price" in errors[1][1] and "unknown tool" in errors[3][1]
    assert "hunter2" in errors[4][1] and "hunter2" not in repr(logs)  # the caller hears its value, the log does not
    assert not after.is_error and len(pump.seen) == 1


async def _post(port: int, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, Any]:
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}", **(headers or {})}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.request(method, f"http://127.0.0.1:{port}/mcp", data=body, headers=sent) as response,
    ):
        text = await response.text()
        return response.status, (await response.json()) if text and response.content_type == "application/json" else text


async def _raw_session(port: int) -> str:
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}'
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/mcp",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        ) as response,
    ):
        assert (await response.json())["result"]["protocolVersion"] == "2025-06-18"
        return response.headers["Mcp-Session-Id"]


async def test_malformed_requests_are_answered_and_the_server_keeps_serving(running: tuple[McpSource, Pump]) -> None:
    source, pump = running
    port = source.port
    session = {"Mcp-Session-Id": await _raw_session(port)}
    answers = [
        await _post(port, b"{not json", session),
        await _post(port, b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', session),
        await _post(port, b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', session),
        await _post(port, b'{"jsonrpc": "2.0", "id": 2, "method": "resources/list"}', session),
        await _post(port, b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": "x"}', session),
        await _post(port, b'{"jsonrpc": "2.0", "id": 4, "method": "ping"}'),
        await _post(port, b'{"jsonrpc": "2.0", "id": 5, "method": "ping"}', {"Mcp-Session-Id": "forged"}),
        await _post(port, b'{"jsonrpc": "2.0", "id": 6, "method": "ping"}', {**session, "Content-Type": "text/plain"}),
        await _post(port, b'{"jsonrpc": "2.0", "id": 7, "method": "ping"}', {**session, "MCP-Protocol-Version": "1999-01-01"}),
        await _post(port, b'{"jsonrpc": "2.0", "id": 8, "method": "ping"}', {**session, "Origin": "https://evil.example"}),
        await _post(port, b'{"jsonrpc": "2.0", "id": 9, "method": "ping"}', {**session, "Authorization": "Bearer nope"}),
        await _post(port, b'{"jsonrpc": "2.0", "id": 10, "method": "ping", "x": "' + b"a" * 300_000 + b'"}', session),
        await _post(port, b"", session, method="GET"),
        await _post(port, b'{"jsonrpc": "2.0", "id": "' + b"i" * 201 + b'", "method": "ping"}', session),
    ]
    statuses = [status for status, _ in answers]
    assert statuses == [400, 400, 400, 200, 200, 400, 404, 415, 400, 403, 401, 413, 405, 400]
    assert "id longer than 200" in answers[-1][1]["error"]["message"]
    assert [answer["error"]["code"] for _, answer in answers[:5]] == [-32700, -32600, -32600, -32601, -32602]
    assert "batches are not part" in answers[1][1]["error"]["message"]
    assert await _post(port, b'{"jsonrpc": "2.0", "id": 11, "method": "ping"}', session) == (
        200,
        {"jsonrpc": "2.0", "id": 11, "result": {}},
    )
    assert pump.seen == []
    assert await _post(port, b"", session, method="DELETE") == (204, "")
    assert (await _post(port, b'{"jsonrpc": "2.0", "id": 12, "method": "ping"}', session))[0] == 404


async def test_sessions_are_bounded_and_the_least_recently_used_is_dropped() -> None:
    source, pump = await _started(_config(max_sessions=2))
    ping = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    try:
        first, second = await _raw_session(source.port), await _raw_session(source.port)
        assert (await _post(source.port, ping, {"Mcp-Session-Id": first}))[0] == 200  # first is now the most recent
        third = await _raw_session(source.port)
        statuses = [(await _post(source.port, ping, {"Mcp-Session-Id": session}))[0] for session in (first, second, third)]
    finally:
        await pump.close()
        await source.stop()
    assert statuses == [200, 404, 200]


async def test_a_session_idle_past_session_idle_timeout_is_forgotten_and_one_in_use_kept() -> None:
    idle_timeout = 1.0
    source, pump = await _started(_config(session_idle_timeout=idle_timeout))
    ping = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    try:
        idle = await _raw_session(source.port)
        idle_since = time.monotonic()
        in_use = await _raw_session(source.port)
        while time.monotonic() - idle_since <= idle_timeout * 1.5:  # the idle one's time passes; the other is used
            assert (await _post(source.port, ping, {"Mcp-Session-Id": in_use}))[0] == 200
            await asyncio.sleep(0.1)
        forgotten = await _post(source.port, ping, {"Mcp-Session-Id": idle})
        kept = await _post(source.port, ping, {"Mcp-Session-Id": in_use})
    finally:
        await pump.close()
        await source.stop()
    assert forgotten[0] == 404 and "initialize a new one" in forgotten[1]["error"]
    assert kept[0] == 200


@pytest.mark.parametrize(("key", "accepted"), [("k" * 200, True), ("k" * 201, False), ("", False), (7, False)])
async def test_an_idempotency_key_must_be_a_text_of_1_to_200_characters(
    running: tuple[McpSource, Pump], key: Any, accepted: bool
) -> None:
    source, pump = running
    session = await _raw_session(source.port)
    params = {"name": "publish", "arguments": {"topic": "agents", "idempotency_key": key}}
    call = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    status, answer = await _post(source.port, call, {"Mcp-Session-Id": session})
    assert status == 200
    if accepted:
        assert answer["result"]["structuredContent"]["id"] == key and [record.id for record in pump.seen] == [key]
    else:
        assert answer["error"] == {"code": -32602, "message": "idempotency_key must be a text of 1 to 200 characters"}
        assert pump.seen == []


async def test_a_call_resent_with_its_session_and_request_id_is_the_same_event(running: tuple[McpSource, Pump]) -> None:
    source, pump = running
    session = await _raw_session(source.port)
    call = (
        b'{"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {"name": "publish", "arguments": {"topic": "agents"}}}'
    )
    first = await _post(source.port, call, {"Mcp-Session-Id": session})
    again = await _post(source.port, call, {"Mcp-Session-Id": session})
    other = await _post(source.port, call.replace(b'"id": 41', b'"id": 42'), {"Mcp-Session-Id": session})
    ids = [answer["result"]["structuredContent"]["id"] for _, answer in (first, again, other)]
    assert ids[0] == ids[1] == f"{session}-41" and ids[2] == f"{session}-42"
    assert [record.id for record in pump.seen] == ids


async def test_the_token_is_required_and_in_no_log_line(running: tuple[McpSource, Pump]) -> None:
    source, _ = running
    with capture_logs() as logs:
        status, answer = await _post(source.port, b'{"jsonrpc": "2.0", "id": 1, "method": "initialize"}', {"Authorization": ""})
        async with _agent(source.port) as agent:
            await agent.call_tool("publish", {"topic": "agents"})
    assert status == 401 and "bearer token" in answer["error"]
    assert TOKEN not in repr(logs) and TOKEN not in repr(source.config)


# -- through the worker and the embedded mesh -----------------------------------------------------


async def test_through_the_worker_calls_are_events_in_the_mesh_with_the_tools_attributes(tmp_path: Path) -> None:
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    port = free_port()
    config = {
        "name": "mcp-agents",
        "connector": McpSource.name,
        "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
        "source": {"topic": "agents", "allowed_topics": ["orders", "audit.*"], "event_source": "/mcp"},
        "registry": {"kind": "file", "path": str(tmp_path / "registry")},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": {"host": "127.0.0.1", "port": port, "token": TOKEN, "tools": TOOLS},
    }
    worker = WorkerProcess(McpSource, config, tmp_path)
    try:
        async with gathered(mesh, "orders", "audit.login") as received:
            await worker.start(30)
            async with _agent(port) as agent:
                ordered = await agent.call_tool("place_order", {"sku": "B-2", "qty": 1, "idempotency_key": "order-9"})
                noted = await agent.call_tool("publish", {"topic": "audit.login", "user": "bo"})
            async with asyncio.timeout(30):
                while not all(received.values()):  # noqa: ASYNC110 - the readers fill the lists
                    await asyncio.sleep(0.05)
            assert await worker.terminate(30) == 0, worker.log_tail()
    finally:
        await worker.kill()
        await mesh.stop()
    assert not ordered.is_error and not noted.is_error
    [order], [login] = received["orders"], received["audit.login"]
    assert (order.get_id(), order.get_type(), order.get_source(), order.get_data()) == (
        "order-9",
        "shop.order.placed",
        "/mcp",
        {"sku": "B-2", "qty": 1},
    )
    assert order.get_attributes()["mcptool"] == "place_order"
    assert login.get_id() == noted.structured_content["id"] and login.get_data() == {"user": "bo"}  # type: ignore[index]
    assert TOKEN not in worker.log_path.read_text()


async def test_conformance(tmp_path: Path) -> None:
    port = free_port()

    async def produce(start: int, count: int) -> None:
        for _ in range(100):  # the worker may still be starting: retry as an agent would
            try:
                async with _agent(port) as agent:
                    for n in range(start, start + count):
                        arguments = {"topic": "conformance", "n": n, "idempotency_key": f"item-{n}"}
                        result = await agent.call_tool("publish", arguments)
                        assert not result.is_error, result
                return
            except (OSError, httpx2.HTTPError, ExceptionGroup):
                await asyncio.sleep(0.2)
        raise AssertionError("the mcp source never took the calls")

    await run_source_conformance(
        SourceHarness(
            connector=McpSource,
            config=lambda: {"host": "127.0.0.1", "port": port, "tools": TOOLS},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
            events=40,
            source_settings={"allowed_topics": ["orders"]},
        ),
        workdir=tmp_path,
        checks=("open_close", "batches", "redelivery", "mesh_drop"),  # a killed endpoint cannot take calls
    )
