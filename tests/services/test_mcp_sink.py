"""mcp-sink against a real MCP server: the `mcp` SDK's MCPServer over Streamable HTTP (tests/services/mcp_peer.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from runtime.connector import SinkContext, SourceContext
from runtime.errors import ConfigError, RetriableError
from runtime.mesh import EmbeddedMesh
from runtime.publishing import PublishRules
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, run_sink_conformance
from runtime.validation import validate_model
from services.mcp.sink.connector import McpSink, McpSinkConfig
from services.mcp.sink.session import SseDecoder
from services.mcp.source.connector import McpSource, McpSourceConfig
from tests.servers import free_port
from tests.services.http_source import Pump
from tests.services.mcp_peer import POISON, McpGate, McpPeer
from tests.services.workers import dead_letters, publish, readiness, sink_worker, until

TOKEN = "mcp-s3cret-token-value"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpPeer]:
    """One server for the module (each test uses event ids of its own); tests that stop it start it again."""
    peer = McpPeer(free_port(), tmp_path_factory.mktemp("mcp") / "stored.jsonl")
    peer.start_now()
    yield peer
    peer.kill_now()


def _config(peer: McpPeer, **overrides: Any) -> dict[str, Any]:
    return {"url": peer.url, "tool": "store", "id_argument": "event_id", "timeout": 5, **overrides}


async def _started(peer: McpPeer, **overrides: Any) -> McpSink:
    sink = McpSink(McpSinkConfig.model_validate(_config(peer, **overrides)))
    await sink.start(SinkContext("test"))
    return sink


def _record(test: str, n: int, text: str = "hello") -> ConnectorRecord:
    return ConnectorRecord(data={"n": n, "text": text}, id=f"{test}-{n}")


async def test_each_event_calls_the_tool_with_its_data_and_its_id(peer: McpPeer) -> None:
    sink = await _started(peer)
    try:
        assert await sink.put([_record("calls", 1), _record("calls", 2, "world")]) == []
    finally:
        await sink.stop()
    assert sorted(peer.calls("calls-"), key=lambda call: call["n"]) == [
        {"event_id": "calls-1", "n": 1, "text": "hello"},
        {"event_id": "calls-2", "n": 2, "text": "world"},
    ]


async def test_a_tool_error_or_arguments_the_server_refuses_are_dead_lettered_with_the_reason(peer: McpPeer) -> None:
    sink = await _started(peer)
    try:
        bad_type = ConnectorRecord(data={"n": "not a number", "text": "x"}, id="refused-3")
        not_an_object = ConnectorRecord(data=["n", 4], id="refused-4")
        rejections = await sink.put([_record("refused", 1), _record("refused", 2, POISON), bad_type, not_an_object])
    finally:
        await sink.stop()
    reasons = {rejection.record.id: rejection.reason for rejection in rejections}
    assert set(reasons) == {"refused-2", "refused-3", "refused-4"}
    assert "poison is not stored" in reasons["refused-2"]
    assert "store" in reasons["refused-3"] and "n" in reasons["refused-3"]
    assert "not a JSON object" in reasons["refused-4"]
    assert [call["event_id"] for call in peer.calls("refused-")] == ["refused-1"]


async def test_an_answer_over_max_response_bytes_is_dead_lettered_and_the_next_call_goes_on(peer: McpPeer) -> None:
    sink = await _started(peer, max_response_bytes=1024)
    long_id = ConnectorRecord(data={"n": 1, "text": "x"}, id="large-" + "i" * 2000)  # its answer names it
    try:
        rejections = await sink.put([long_id, _record("large", 2)])
    finally:
        await sink.stop()
    assert [(rejection.record.id, rejection.reason) for rejection in rejections] == [
        (long_id.id, "the answer of store is larger than max_response_bytes (1024)")
    ]
    assert "large-2" in [call["event_id"] for call in peer.calls("large-")]


async def test_a_server_that_forgot_the_session_gets_a_new_one_and_the_call_again(peer: McpPeer) -> None:
    sink = await _started(peer)
    try:
        assert await sink.put([_record("session", 1)]) == []
        await peer.kill()
        await peer.start()  # a new process: the session the sink holds is unknown there (404)
        assert await sink.put([_record("session", 2)]) == []
    finally:
        await sink.stop()
    assert [call["event_id"] for call in peer.calls("session-")] == ["session-1", "session-2"]


async def test_a_server_down_is_retriable_and_the_token_is_in_no_log_or_error(peer: McpPeer) -> None:
    sink = await _started(peer, token=TOKEN)
    try:
        await peer.kill()
        with capture_logs() as logs, pytest.raises(RetriableError) as failure:
            await sink.put([_record("down", 1)])
        await peer.start()
        assert await sink.put([_record("down", 1)]) == []
    finally:
        await sink.stop()
    assert "did not answer tools/call" in str(failure.value)
    for text in (repr(logs), str(failure.value), repr(sink.config)):
        assert TOKEN not in text
    assert [call["event_id"] for call in peer.calls("down-")] == ["down-1"]


async def test_a_server_without_the_tool_is_not_used_and_says_which_tools_it_has(peer: McpPeer) -> None:
    sink = McpSink(McpSinkConfig.model_validate(_config(peer, tool="stroe")))
    try:
        with pytest.raises(RetriableError, match=r"no tool 'stroe' \(it offers store\)"):
            await sink.start(SinkContext("test"))
    finally:
        await sink.stop()


def test_the_event_stream_decoder_takes_events_split_anywhere() -> None:
    stream = b': comment\r\nevent: message\r\nid: 1\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata:{"b": 2}\n\n'
    for split in range(len(stream)):
        decoder = SseDecoder()
        events = [*decoder.feed(stream[:split]), *decoder.feed(stream[split:])]
        assert events == [b'{"a":\n1}', b'{"b": 2}'], split


def test_the_event_stream_decoder_looks_at_each_byte_once() -> None:
    """A long line in small chunks (as a slow server sends it, up to max_response_bytes): decoding costs its
    length. Re-splitting all that was buffered on every chunk took seconds of CPU here; this takes milliseconds."""
    data = b"x" * 1024 * 1024
    stream = b"data: " + data + b"\n\n"
    decoder = SseDecoder()
    began = time.process_time()
    events = [event for start in range(0, len(stream), 64) for event in decoder.feed(stream[start : start + 64])]
    assert events == [data]
    assert time.process_time() - began < 1.0


async def test_refused_credentials_are_retriable_and_logged_once_until_the_server_takes_them_again(peer: McpPeer) -> None:
    async with McpGate(peer.url) as gate:
        sink = await _started(peer, url=gate.url)
        try:
            with capture_logs() as logs:
                gate.lasting = (403, {})
                for _ in range(3):
                    with pytest.raises(RetriableError, match="answered tools/call with HTTP 403: check token and headers"):
                        await sink.put([_record("credentials", 1)])
                gate.lasting = None
                assert await sink.put([_record("credentials", 1)]) == []
                gate.lasting = (401, {})
                with pytest.raises(RetriableError, match="HTTP 401"):
                    await sink.put([_record("credentials", 2)])
        finally:
            await sink.stop()
    refusals = [entry for entry in logs if entry["event"].startswith("mcp server refuses the sink's credentials")]
    assert [entry["status"] for entry in refusals] == [403, 401]  # once per outage, not once per call
    assert [status for _, status in gate.calls] == [403, 403, 403, 200, 401]
    assert [call["event_id"] for call in peer.calls("credentials-")] == ["credentials-1"]


async def test_a_server_answering_plain_json_is_called_alike() -> None:
    """mcp-source answers application/json where the SDK's server streams: the sink reads both."""
    tools = [{"name": "store", "input_schema": {"type": "object", "required": ["event_id", "n", "text"]}}]
    config = McpSourceConfig.model_validate({"host": "127.0.0.1", "port": 0, "tools": tools})
    source = McpSource(config)
    await source.start(SourceContext(connector_name="test", committed_offsets={}, rules=PublishRules(topic="notes")))
    pump = Pump(source)  # type: ignore[arg-type]  # any intake source polls and commits alike
    url = f"http://127.0.0.1:{source.port}/mcp"
    sink = McpSink(McpSinkConfig.model_validate({"url": url, "tool": "store", "id_argument": "event_id"}))
    try:
        await sink.start(SinkContext("test"))
        rejections = await sink.put([_record("json", 1), ConnectorRecord(data={"n": 2}, id="json-2")])
    finally:
        await sink.stop()
        await pump.close()
        await source.stop()
    assert [(rejection.record.id, "text" in rejection.reason) for rejection in rejections] == [("json-2", True)]
    assert [record.data for record in pump.seen] == [{"n": 1, "text": "hello", "event_id": "json-1"}]


def test_a_secret_header_is_refused_at_start() -> None:
    config = McpSinkConfig.model_validate({"url": "http://127.0.0.1:1/mcp", "tool": "store", "headers": {"Authorization": "x"}})
    with pytest.raises(ConfigError, match=r"config\.headers"):
        McpSink(config)
    with pytest.raises(ConfigError, match="tool"):
        validate_model(McpSinkConfig, {"url": "http://127.0.0.1:1/mcp", "tool": "no spaces"}, prefix="config")


# -- through the worker and the embedded mesh -----------------------------------------------------


async def test_through_the_worker_tool_errors_are_dead_lettered_and_a_server_down_is_retried_not_ready(
    peer: McpPeer,
) -> None:
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    admin_port = free_port()
    try:
        async with (
            sink_worker(McpSink, mesh, admin_port, **_config(peer)),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
        ):
            ready = readiness(http, admin_port)
            await until(lambda: ready(200), "the sink is ready")
            await publish(mesh, ("order-1", {"n": 1, "text": "one"}), ("order-2", {"n": 2, "text": POISON}))
            [letter] = (await dead_letters(mesh, 1)).values()
            assert letter.get_id() == "order-2" and "poison is not stored" in str(letter.get_attributes()["dlqreason"])
            await until(lambda: _stored(peer, "order-1"), "order-1 reaches the tool")

            await peer.kill()
            await publish(mesh, ("order-3", {"n": 3, "text": "three"}))
            await until(lambda: ready(503, "did not answer tools/call"), "the sink says not ready while the server is down")
            await peer.start()
            await until(lambda: _stored(peer, "order-3"), "order-3 reaches the tool once the server is back")
            await until(lambda: ready(200), "the sink is ready again")
    finally:
        await mesh.stop()
    assert [call["event_id"] for call in peer.calls("order-")] == ["order-1", "order-3"]  # nothing else dead-lettered


_Ready = Callable[..., Awaitable[bool]]


@contextlib.asynccontextmanager
async def _gated_worker(peer: McpPeer, **overrides: Any) -> AsyncIterator[tuple[EmbeddedMesh, McpGate, _Ready]]:
    """A mesh, a gate in front of the peer, and a sink worker calling the peer through it, once it is ready."""
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    admin_port = free_port()
    try:
        async with (
            McpGate(peer.url) as gate,
            sink_worker(McpSink, mesh, admin_port, **_config(peer, url=gate.url, **overrides)),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
        ):
            ready = readiness(http, admin_port)
            await until(lambda: ready(200), "the sink is ready")
            yield mesh, gate, ready
    finally:
        await mesh.stop()


async def test_through_the_worker_a_retry_after_on_429_or_503_is_waited_out_before_the_next_call(peer: McpPeer) -> None:
    async with _gated_worker(peer) as (mesh, gate, _):  # retry_max: 0.5 s
        gate.refusals = [(429, {"Retry-After": "2"}), (503, {"Retry-After": "2"})]
        await publish(mesh, ("later-1", {"n": 1, "text": "later"}))
        await until(lambda: _stored(peer, "later-1"), "later-1 reaches the tool once the server takes calls")
    [(refused_429, status_429), (refused_503, status_503), (delivered, status)] = gate.calls
    assert (status_429, status_503, status) == (429, 503, 200)
    # Each call again comes no sooner than the server asked (the worker's own backoff is at most 0.5 s here).
    assert refused_503 - refused_429 >= 1.8 and delivered - refused_503 >= 1.8


async def test_through_the_worker_refused_credentials_make_the_sink_not_ready_and_are_retried(peer: McpPeer) -> None:
    async with _gated_worker(peer, token=TOKEN) as (mesh, gate, ready):
        gate.lasting = (401, {})
        await publish(mesh, ("refused-creds-1", {"n": 1, "text": "later"}))
        await until(lambda: ready(503, "check token and headers"), "the sink says not ready while refused")

        async def retried() -> bool:
            return len(gate.calls) >= 3

        await until(retried, "the refused call is made again")
        gate.lasting = None
        await until(lambda: _stored(peer, "refused-creds-1"), "the event reaches the tool once the server takes it")
        await until(lambda: ready(200), "the sink is ready again")
    assert {status for _, status in gate.calls[:-1]} == {401} and gate.calls[-1][1] == 200


async def _stored(peer: McpPeer, event_id: str) -> bool:
    return event_id in [call["event_id"] for call in peer.calls()]


async def test_conformance(peer: McpPeer, tmp_path: Path) -> None:
    async def read() -> list[str]:
        return [call["event_id"] for call in peer.calls("conformance-")]

    await run_sink_conformance(
        SinkHarness(
            connector=McpSink,
            config=lambda: _config(peer),
            read=read,
            kill_system=peer.kill,
            restart_system=peer.start,
            events=60,
        ),
        workdir=tmp_path / "conformance",
    )
