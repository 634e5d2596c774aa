"""http-source under hostile clients: slow heads and bodies, connection floods, every kind of malformed request
against the real worker process."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from runtime.mesh import EmbeddedMesh
from runtime.testing import (
    WorkerProcess,
)
from services.http.source.connector import HttpSource
from tests.servers import free_port
from tests.services.http_source import Pump, post_event, refused_count, source_config, started_source, until_closed

# -- connections: head and body deadlines, a limit on their number -------------------------------


async def _trickle(writer: asyncio.StreamWriter, head: bytes) -> None:
    """A slow-loris: the head of a request, then a header line now and then, never the end of the head."""
    writer.write(head)
    with contextlib.suppress(ConnectionError):
        for n in range(1000):
            await asyncio.sleep(0.2)
            writer.write(b"X-Slow-%d: y\r\n" % n)
            await writer.drain()


async def test_a_slow_request_head_is_cut_off_after_header_timeout() -> None:
    source = await started_source(source_config(header_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
    trickling = asyncio.create_task(_trickle(writer, b"POST /events HTTP/1.1\r\nHost: x\r\n"))
    try:
        before = refused_count("header_timeout")
        assert await until_closed(reader) == b""
        assert refused_count("header_timeout") == before + 1
    finally:
        trickling.cancel()
        writer.close()
        await source.stop()


async def test_a_slow_body_is_answered_408_after_body_timeout() -> None:
    source = await started_source(source_config(body_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
    writer.write(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    try:
        answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"body_timeout" in answer
    finally:
        writer.close()
        await source.stop()


async def test_a_wrong_token_is_answered_401_naming_the_scheme_before_the_body_is_read() -> None:
    source = await started_source(source_config(token="tok", max_body_bytes=1024))
    oversized = b"x" * 4096  # read first, it would be answered 413
    try:
        status, answer, headers = await post_event(
            source, oversized, {"content-type": "application/json", "Authorization": "Bearer nope"}
        )
    finally:
        await source.stop()
    assert (status, headers["WWW-Authenticate"], answer["error"]) == (401, "Bearer", "missing or wrong bearer token")


async def test_a_kept_alive_connection_may_idle_longer_than_the_head_deadline_until_keepalive_timeout() -> None:
    source = await started_source(source_config(header_timeout=1.0, keepalive_timeout=3.0))
    pump = Pump(source)
    request = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
    try:
        for _ in range(2):
            writer.write(request)
            async with asyncio.timeout(10):
                assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
                await reader.readuntil(b'{"accepted": 1}')
            await asyncio.sleep(1.5)  # idle for longer than header_timeout: a client's pooled connection
        assert await until_closed(reader) == b""  # ... but not beyond keepalive_timeout
    finally:
        writer.close()
        await pump.close()
        await source.stop()


async def test_the_connection_limit_holds_under_a_flood_and_requests_succeed_after_it() -> None:
    source = await started_source(source_config(max_connections=20, header_timeout=2.0))
    pump = Pump(source)
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    trickling: list[asyncio.Task[None]] = []
    try:
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
            trickling.append(asyncio.create_task(_trickle(writer, b"POST /events HTTP/1.1\r\n")))
            slow.append((reader, writer))
        before = refused_count("busy")
        flood = [await asyncio.open_connection("127.0.0.1", source.port) for _ in range(200)]
        answers = await asyncio.gather(*(until_closed(reader) for reader, _ in flood), return_exceptions=True)
        refused = [a for a in answers if isinstance(a, bytes) and a.startswith(b"HTTP/1.1 503 ") and b"max_connections 20" in a]
        # Every connection over the limit is answered 503 at once (a reset may beat the answer to a few clients).
        assert len(refused) >= 150 and all(isinstance(a, bytes | ConnectionError) for a in answers)
        assert refused_count("busy") == before + 200
        assert all(not reader.at_eof() for reader, _ in slow[:5])  # the 20 within the limit are still open
        for reader, _ in slow:  # ... until their head deadline closes them
            assert await until_closed(reader) == b""
        status, _, _ = await post_event(source, b'{"after": "flood"}', {"content-type": "application/json"})
        assert status == 200 and pump.seen[-1].data == {"after": "flood"}
    finally:
        for task in trickling:
            task.cancel()
        for _, writer in [*slow, *flood]:
            writer.close()
        await pump.close()
        await source.stop()


def _structured_json(**fields: Any) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": "m-1", "source": "/m", "type": "t", **fields})


_CE = {"ce-specversion": "1.0", "ce-id": "m-1", "ce-source": "/m", "ce-type": "t", "content-type": "application/json"}
_STRUCTURED = {"content-type": "application/cloudevents+json"}
_BATCH = {"content-type": "application/cloudevents-batch+json"}

# (what, body, headers, expected status) sent to a running worker; None: any answer below 500.
MALFORMED: list[tuple[str, bytes, Any, int | None]] = [
    ("webhook without a subject", b'{"no": "subject"}', {"content-type": "application/json"}, 200),
    ("bad JSON", b"{not json", {"content-type": "application/json"}, 400),
    ("bad JSON in binary mode", b"{not json", _CE, 400),
    ("non-object structured event", b"[1, 2]", _STRUCTURED, 400),
    ("null structured event", b"null", _STRUCTURED, 400),
    ("bad base64", _structured_json(data_base64="%%%not base64"), _STRUCTURED, 400),
    ("data and data_base64", _structured_json(data=1, data_base64="AA=="), _STRUCTURED, 400),
    ("missing ce-id and ce-source", b"{}", {"ce-specversion": "1.0", "ce-type": "t"}, 400),
    ("missing attributes, structured", b'{"specversion": "1.0"}', _STRUCTURED, 400),
    ("wrong ce-specversion", b"{}", {**_CE, "ce-specversion": "0.1"}, 400),
    ("empty ce-id", b"{}", {**_CE, "ce-id": ""}, 400),
    ("invalid ce-time", b"{}", {**_CE, "ce-time": "yesterday"}, 400),
    ("invalid time, structured", _structured_json(time="soon"), _STRUCTURED, 400),
    ("non-string subject", _structured_json(subject=42), _STRUCTURED, 400),
    ("invalid extension name", b"{}", {**_CE, "ce-Bad_Name": "x"}, 400),
    ("extension name too long", b"{}", {**_CE, "ce-" + "a" * 100: "x"}, 400),
    ("extension the mesh mapping owns", b"{}", {**_CE, "ce-meshdataenc": "base64"}, 400),
    ("dead-letter extension", b"{}", {**_CE, "ce-dlqreason": "forged"}, 400),
    ("extension beyond 32 bits", _structured_json(big=2**40), _STRUCTURED, 400),
    ("repeated ce-subject", b"{}", [*_CE.items(), ("ce-subject", "orders"), ("ce-subject", "cdc.shop.orders")], 400),
    ("topic not allowed", b"{}", {**_CE, "ce-subject": "cdc.shop.orders"}, 403),
    ("topic not allowed, structured", _structured_json(subject="cdc.shop.orders"), _STRUCTURED, 403),
    ("huge header", b"{}", {**_CE, "ce-big": "x" * 20_000}, 400),
    ("too many headers", b"{}", {**_CE, **{f"x-h{n}": "v" for n in range(300)}}, 400),
    ("text/plain", b"hello", {"content-type": "text/plain"}, 415),
    ("no content type", b"hello", {}, 415),
    ("form post", b"a=1", {"content-type": "application/x-www-form-urlencoded"}, 415),
    ("batch that is an object", b"{}", _BATCH, 400),
    ("batch with garbage", b'[1, "x", null]', _BATCH, 400),
    ("batch with an invalid event", b'[{"specversion": "1.0", "id": "b", "source": "/b", "type": "t"}, {"id": 2}]', _BATCH, 400),
    ("batch naming a topic not allowed", b"[" + _structured_json(subject="cdc.shop.orders") + b"]", _BATCH, 403),
    ("invalid UTF-8 in JSON", b'{"a": "\xff\xfe"}', {"content-type": "application/json"}, 400),
    ("invalid UTF-8 in a structured event", b'{"specversion": "1.0", "id": "\xff"}', _STRUCTURED, 400),
    ("invalid UTF-8 text in binary mode", b"\xff\xfe", {**_CE, "content-type": "text/plain", "ce-id": "utf"}, None),
    ("non-object JSON webhook", b'"just a string"', {"content-type": "application/json"}, 200),
    ("body over max_body_bytes", b"x" * (9 * 1024 * 1024), {"content-type": "application/json"}, 413),
    # Binary data of 3.5 MB is 4.7 MB in base64: the mesh could never take it (the old code died on it).
    ("event over the frame limit", b"\x00" * 3_500_000, {**_CE, "content-type": "application/octet-stream"}, 413),
]

RAW_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /events HTTP/1.1\r\nHost: x\r\nce-source: \xff\xfe\r\nce-id: r\r\nce-specversion: 1.0\r\nce-type: t\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS hello on the plain port
]


async def test_no_malformed_request_ends_the_http_source_worker(tmp_path: Path) -> None:
    """Each kind of malformed input against the real worker process and the embedded mesh: every one
    gets its 4xx and reason, none reaches a topic, and the process goes on serving."""
    port = free_port()
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    config = {
        "name": "hooks",
        "connector": "http-source",
        "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
        "source": {"topic": "webhooks", "allowed_topics": ["orders"]},
        "registry": {"kind": "file", "path": str(tmp_path / "registry")},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": {
            "host": "127.0.0.1",
            "port": port,
            "path": "/events",
            "max_body_bytes": 8 * 1024 * 1024,
            "header_timeout": 2,
            "keepalive_timeout": 2,
        },
    }
    worker = WorkerProcess(HttpSource, config, tmp_path)
    url = f"http://127.0.0.1:{port}/events"
    try:
        await worker.start(30)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for what, body, headers, expected in MALFORMED:
                try:
                    async with session.post(url, data=io.BytesIO(body), headers=headers) as response:
                        status, text = response.status, await response.text()
                except aiohttp.ClientError as exc:  # a refused oversized body may be cut off while it is sent
                    status, text = 413, repr(exc)
                assert worker.process is not None and worker.process.returncode is None, f"{what}: {worker.log_tail()}"
                if expected is None:
                    assert status < 500, (what, status, text)
                else:
                    assert status == expected, (what, status, text)
            for raw in RAW_REQUESTS:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                answer = await until_closed(reader)
                writer.close()
                assert not answer or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), (raw, answer[:100])
            async with session.post(url, data=b'{"still": "serving"}', headers={"content-type": "application/json"}) as response:
                assert response.status == 200, await response.text()
            async with session.get(f"http://127.0.0.1:{config['admin']['port']}/metrics") as metrics:
                text = await metrics.text()
        assert 'meshconnect_refused_total{connector="http-source",name="hooks",reason="topic"} 3.0' in text
        assert mesh.topic_depth("cdc.shop.orders") == 0
        # Only what was fine arrived: the two webhooks, the undecodable text kept as bytes, and the last one.
        assert mesh.topic_depth("webhooks") == 4
        assert await worker.terminate(30) == 0
    finally:
        await worker.kill()
        await mesh.stop()


async def test_a_request_refused_before_its_body_is_read_closes_the_connection_instead_of_draining_it() -> None:
    source = await started_source(source_config(token="tok"))
    reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
    # A body announced at a megabyte, of which ten bytes come: nothing more of it is read, and nothing waits for it.
    writer.write(
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer nope\r\n"
        b"Content-Length: 1000000\r\n\r\n0123456789"
    )
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    finally:
        writer.close()
        await source.stop()
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close" in head
