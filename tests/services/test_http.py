"""http-source and http-sink against real HTTP servers and clients (aiohttp), driven directly."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from runtime.connector import SinkContext
from runtime.errors import LocalProtocolError, RetriableError
from runtime.protocol.events import MAX_EVENT_BODY, EncodedEvent, publish_frame
from runtime.protocol.frames import Command
from runtime.record import ConnectorRecord
from runtime.testing import (
    SinkHarness,
    SourceHarness,
    poll_until,
    run_sink_conformance,
    run_source_conformance,
)
from services.http.sink.connector import HttpSink, HttpSinkConfig
from services.http.source.connector import HttpSource, HttpSourceConfig
from tests.servers import free_port, require_binary
from tests.services.http_source import RULES, Pump, events_url, post_event, refused_count, source_config, started_source


@pytest.fixture
async def source() -> AsyncIterator[HttpSource]:
    source = await started_source(source_config())
    yield source
    await source.stop()


@pytest.fixture
async def pump(source: HttpSource) -> AsyncIterator[Pump]:
    pump = Pump(source)
    yield pump
    await pump.close()


BINARY_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "/tests",
    "ce-type": "com.example.created",
    "ce-subject": "orders",
    "ce-traceparent": "00-abc",
    "content-type": "application/json",
}


async def test_binary_mode_event_becomes_a_record_and_200_only_after_commit(source: HttpSource, pump: Pump) -> None:
    status, body, _ = await post_event(source, b'{"n": 1}', BINARY_HEADERS)
    assert (status, body) == (200, {"accepted": 1})
    [record] = pump.seen
    assert (record.id, record.source, record.type, record.subject) == ("evt-1", "/tests", "com.example.created", "orders")
    assert record.data == {"n": 1}
    assert record.extensions == {"traceparent": "00-abc"}
    assert record.partition == {"path": "/events"}


async def test_response_is_held_until_commit(source: HttpSource, pump: Pump) -> None:
    pump.committing.clear()
    request = asyncio.create_task(post_event(source, b'{"n": 1}', BINARY_HEADERS))
    await asyncio.sleep(0.5)
    assert pump.seen and not request.done()
    pump.committing.set()
    status, _, _ = await asyncio.wait_for(request, 10)
    assert status == 200


async def test_structured_and_text_and_binary_data(source: HttpSource, pump: Pump) -> None:
    event = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/s",
        "type": "t",
        "subject": "orders",
        "time": "2026-01-02T03:04:05Z",
        "datacontenttype": "text/plain",
        "data": "hello",
    }
    status, _, _ = await post_event(source, orjson.dumps(event), {"content-type": "application/cloudevents+json"})
    assert status == 200
    binary = {**event, "id": "s-2", "datacontenttype": "application/octet-stream", "data_base64": "AAEC"}
    del binary["data"]
    status, _, _ = await post_event(source, orjson.dumps(binary), {"content-type": "application/cloudevents+json"})
    assert status == 200
    text, raw = pump.seen
    assert text.data == "hello" and text.timestamp.year == 2026
    assert raw.data == b"\x00\x01\x02"


async def test_batch_mode_answers_once_every_event_is_committed(source: HttpSource, pump: Pump) -> None:
    events = [{"specversion": "1.0", "id": f"b-{i}", "source": "/b", "type": "t", "data": {"i": i}} for i in range(5)]
    status, body, _ = await post_event(source, orjson.dumps(events), {"content-type": "application/cloudevents-batch+json"})
    assert (status, body) == (200, {"accepted": 5})
    assert [record.id for record in pump.seen] == [f"b-{i}" for i in range(5)]
    assert len({orjson.dumps(record.offset) for record in pump.seen}) == 5


async def test_plain_json_webhook_with_github_headers(source: HttpSource, pump: Pump) -> None:
    headers = {"content-type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": "d-42"}
    status, _, _ = await post_event(source, b'{"ref": "main"}', headers)
    assert status == 200
    [record] = pump.seen
    assert (record.id, record.type, record.data) == ("d-42", "com.github.push", {"ref": "main"})


@pytest.mark.parametrize(
    ("settings", "headers", "body", "expected"),
    [
        ({}, {"Idempotency-Key": "k-1", "X-Request-Id": "r-1"}, b'{"a": 1}', "k-1"),
        ({}, {"X-Shopify-Webhook-Id": "s-1"}, b'{"a": 1}', "s-1"),
        ({"id_field": "id"}, {"X-Request-Id": "r-1"}, b'{"id": "evt_1", "object": "event"}', "evt_1"),
        ({"id_field": "data.object.id"}, {}, b'{"data": {"object": {"id": 42}}}', "42"),
        ({"id_field": "id"}, {"X-Request-Id": "r-1"}, b'{"no_id": true}', "r-1"),
        ({"id_headers": ["X-Delivery"]}, {"X-Delivery": "d-7", "Idempotency-Key": "k-1"}, b"{}", "d-7"),
    ],
)
async def test_a_webhook_takes_the_senders_id_so_a_retried_delivery_is_the_same_event(
    settings: dict[str, Any], headers: dict[str, str], body: bytes, expected: str
) -> None:
    source = await started_source(source_config(**settings))
    pump = Pump(source)
    try:
        for _ in range(2):  # the sender retries the same delivery
            status, _, _ = await post_event(source, body, {"content-type": "application/json", **headers})
            assert status == 200
    finally:
        await pump.close()
        await source.stop()
    assert [record.id for record in pump.seen] == [expected, expected]


async def test_a_webhook_without_an_id_of_its_sender_gets_a_new_one_per_request(source: HttpSource, pump: Pump) -> None:
    for _ in range(2):
        assert (await post_event(source, b'{"a": 1}', {"content-type": "application/json"}))[0] == 200
    first, second = [record.id for record in pump.seen]
    assert first and second and first != second


@pytest.mark.parametrize(
    "case",
    [
        (b"hello", {"content-type": "text/plain"}, 415, "unsupported content type"),
        (b"{not json", {"content-type": "application/json"}, 400, "invalid JSON"),
        (b"{not json", {**BINARY_HEADERS}, 400, "invalid JSON"),
        (b'{"id": "x", "source": "/s"}', {"content-type": "application/cloudevents+json"}, 400, "type"),
        (b"[1]", {"content-type": "application/cloudevents+json"}, 400, "JSON object"),
        (b"{}", {"content-type": "application/cloudevents-batch+json"}, 400, "JSON array"),
        (b"{}", {k: v for k, v in BINARY_HEADERS.items() if k != "ce-source"}, 400, "ce-source"),
        (b"{}", {**BINARY_HEADERS, "ce-Bad_Name": "x"}, 400, "bad_name"),
        (b"x" * 2_000_000, {"content-type": "application/json"}, 413, "larger than"),
    ],
)
async def test_malformed_requests_get_a_4xx_with_the_reason(
    source: HttpSource, pump: Pump, case: tuple[bytes, dict[str, str], int, str]
) -> None:
    body, headers, status, reason = case
    got_status, got_body, _ = await post_event(source, body, headers)
    assert got_status == status
    assert reason in got_body["error"]
    assert pump.seen == []


async def test_full_queue_answers_503_with_retry_after() -> None:
    source = await started_source(source_config(queue_size=2, retry_after=7))
    try:  # nobody polls: the first request's two events fill the queue
        batch = [{"specversion": "1.0", "id": f"q-{i}", "source": "/q", "type": "t"} for i in range(2)]
        held = asyncio.create_task(
            post_event(source, orjson.dumps(batch), {"content-type": "application/cloudevents-batch+json"})
        )
        await asyncio.sleep(0.3)
        status, body, headers = await post_event(source, b"{}", {"content-type": "application/json"})
        assert status == 503 and headers["Retry-After"] == "7" and "retry" in body["error"]
        records = await source.poll()
        await source.commit(records)
        assert (await held)[0] == 200
    finally:
        await source.stop()


async def test_uncommitted_request_times_out_with_503() -> None:
    source = await started_source(source_config(response_timeout=0.3))
    try:
        status, _, headers = await post_event(source, b"{}", {"content-type": "application/json"})
        assert status == 503 and "Retry-After" in headers
    finally:
        await source.stop()


async def test_hmac_signature_and_token_are_checked() -> None:
    source = await started_source(source_config(hmac_secret="s3cret", token="tok"))
    pump = Pump(source)
    try:
        body = b'{"a": 1}'
        signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        good = {"content-type": "application/json", "Authorization": "Bearer tok", "X-Hub-Signature-256": signature}
        assert (await post_event(source, body, good))[0] == 200
        assert (await post_event(source, body, {**good, "X-Hub-Signature-256": "sha256=00"}))[0] == 401
        assert (await post_event(source, body, {**good, "Authorization": "Bearer nope"}))[0] == 401
        assert (await post_event(source, b'{"a": 2}', good))[0] == 401  # signature of another body
        assert len(pump.seen) == 1
    finally:
        await pump.close()
        await source.stop()


async def test_stop_answers_waiting_requests_with_503() -> None:
    source = await started_source(source_config())
    request = asyncio.create_task(post_event(source, b"{}", {"content-type": "application/json"}))
    await asyncio.sleep(0.3)
    await source.stop()
    status, _, _ = await asyncio.wait_for(request, 10)
    assert status == 503


async def test_poll_returns_empty_within_about_a_second(source: HttpSource) -> None:
    records: Sequence[ConnectorRecord] = await asyncio.wait_for(source.poll(), 3)
    assert records == []


# -- topics: the config names them, a sender chooses only among source.allowed_topics ------------


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{}", {**BINARY_HEADERS, "ce-subject": "cdc.shop.orders"}),
        (
            orjson.dumps({"specversion": "1.0", "id": "s", "source": "/s", "type": "t", "subject": "cdc.shop.orders"}),
            {"content-type": "application/cloudevents+json"},
        ),
        (
            orjson.dumps(
                [
                    {"specversion": "1.0", "id": "b-0", "source": "/b", "type": "t", "subject": "orders"},
                    {"specversion": "1.0", "id": "b-1", "source": "/b", "type": "t", "subject": "cdc.shop.orders"},
                ]
            ),
            {"content-type": "application/cloudevents-batch+json"},
        ),
    ],
    ids=["binary", "structured", "batch"],
)
async def test_a_subject_outside_the_allowed_topics_is_refused_with_403_and_counted(
    source: HttpSource, pump: Pump, body: bytes, headers: dict[str, str]
) -> None:
    before = refused_count("topic")
    status, answer, _ = await post_event(source, body, headers)
    assert status == 403
    assert "'cdc.shop.orders'" in answer["error"] and "source.allowed_topics" in answer["error"]
    assert refused_count("topic") == before + 1
    assert await poll_until(source, 1, within=1.5) == [] and pump.seen == []


async def test_a_sender_chooses_only_among_the_configured_and_the_allowed_topics(source: HttpSource, pump: Pump) -> None:
    for n, (subject, status) in enumerate(
        [("webhooks", 200), ("orders", 200), ("audit.eu.created", 200), (None, 200), ("orders.v2", 403), ("audit", 403)]
    ):
        headers = {**BINARY_HEADERS, "ce-id": f"t-{n}"}
        if subject is None:
            del headers["ce-subject"]
        else:
            headers["ce-subject"] = subject
        assert (await post_event(source, b"{}", headers))[0] == status, subject
    # No subject: the record names none and the worker gives it source.topic.
    assert [record.subject for record in pump.seen] == ["webhooks", "orders", "audit.eu.created", None]


# -- signatures ----------------------------------------------------------------------------------


def _documented_canonical(target: str, headers: dict[str, str], body: bytes) -> bytes:
    """The canonical form exactly as services/http/source/README.md tells senders to build it."""
    lowered = {name.lower(): value for name, value in headers.items()}
    signed = sorted(name for name in lowered if name.startswith("ce-"))
    lines = "".join(f"{name}:{lowered[name].strip()}\n" for name in signed)
    return f"POST\n{target}\n{lowered.get('content-type', '')}\n{lines}\n".encode() + body


def _cloudevent_signed(headers: dict[str, str], body: bytes, secret: bytes = b"s3cret") -> dict[str, str]:
    digest = hmac.new(secret, _documented_canonical("/events", headers, body), hashlib.sha256).hexdigest()
    return {**headers, "X-Meshconnect-Signature": f"sha256={digest}"}


async def test_cloudevent_signature_covers_the_ce_headers_so_a_changed_subject_fails() -> None:
    """The 'cloudevent' mode, against the 'body' mode (GitHub, Stripe-style), where the same change passes."""
    source = await started_source(source_config(hmac_secret="s3cret", signature="cloudevent"))
    pump = Pump(source)
    try:
        body = b'{"n": 1}'
        signed = _cloudevent_signed(BINARY_HEADERS, body)
        assert (await post_event(source, body, signed))[0] == 200
        before = refused_count("auth")
        for tampered in (
            {**signed, "ce-subject": "audit.eu"},  # another topic the sender could name: the signature still fails
            {**signed, "ce-type": "com.example.deleted"},
            {**signed, "content-type": "text/plain"},
            {**signed, "ce-extra": "added"},
        ):
            status, answer, _ = await post_event(source, body, tampered)
            assert (status, answer["error"]) == (401, "missing or wrong X-Meshconnect-Signature")
        assert (await post_event(source, b'{"n": 2}', signed))[0] == 401
        assert refused_count("auth") == before + 5
        assert [record.subject for record in pump.seen] == ["orders"]
    finally:
        await pump.close()
        await source.stop()
    source = await started_source(source_config(hmac_secret="s3cret", signature="body"))
    pump = Pump(source)
    try:
        body_signed = {**BINARY_HEADERS, "X-Hub-Signature-256": "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()}
        assert (await post_event(source, body, {**body_signed, "ce-subject": "audit.eu"}))[0] == 200
        assert (await post_event(source, b'{"n": 2}', body_signed))[0] == 401
        assert [record.subject for record in pump.seen] == ["audit.eu"]
    finally:
        await pump.close()
        await source.stop()


async def test_a_header_that_makes_the_event_may_not_come_twice(source: HttpSource, pump: Pump) -> None:
    headers = [*BINARY_HEADERS.items(), ("ce-subject", "audit.eu")]
    async with aiohttp.ClientSession() as session, session.post(events_url(source), data=b"{}", headers=headers) as response:
        assert response.status == 400
        assert "ce-subject appears more than once" in (await response.json())["error"]
    assert pump.seen == []


# -- sizes ---------------------------------------------------------------------------------------


def test_max_event_bytes_defaults_to_the_largest_event_a_frame_carries() -> None:
    assert HttpSourceConfig().max_event_bytes == MAX_EVENT_BODY
    for command in (Command.ASYNC_MESSAGE_TO_SERVER, Command.BROADCAST_MESSAGE_TO_SERVER, Command.BROADCAST_MESSAGE_TO_CLIENT):
        publish_frame(EncodedEvent(b"x" * MAX_EVENT_BODY), command, seq="9" * 20)
    with pytest.raises(LocalProtocolError):  # the longest header an event travels with leaves no byte more
        publish_frame(EncodedEvent(b"x" * (MAX_EVENT_BODY + 1)), Command.BROADCAST_MESSAGE_TO_CLIENT, seq="9" * 20)
    with pytest.raises(ValueError, match="max_event_bytes"):
        HttpSourceConfig(max_event_bytes=MAX_EVENT_BODY + 1)


async def test_an_event_larger_than_max_event_bytes_is_refused_with_413_naming_the_limit() -> None:
    def event(size: int) -> ConnectorRecord:
        return ConnectorRecord(data=b"x" * size, id="big", source="/s", type="t", datacontenttype="application/octet-stream")

    limit = len(RULES.encode(event(3000)).body)  # the wire form: the data in base64 and the attributes
    source = await started_source(source_config(max_event_bytes=limit))
    pump = Pump(source)
    headers = {**BINARY_HEADERS, "ce-id": "big", "ce-source": "/s", "ce-type": "t", "content-type": "application/octet-stream"}
    del headers["ce-subject"], headers["ce-traceparent"]
    try:
        before = refused_count("size")
        status, answer, _ = await post_event(source, b"x" * 3003, headers)  # three bytes more: four more in base64
        assert status == 413 and f"larger than max_event_bytes ({limit})" in answer["error"]
        assert refused_count("size") == before + 1
        assert (await post_event(source, b"x" * 3000, headers))[0] == 200
        assert [len(record.data) for record in pump.seen] == [3000]
    finally:
        await pump.close()
        await source.stop()


# -- http-sink ------------------------------------------------------------------------------


class _Endpoint:
    """A real HTTP server that records what it is sent and answers with scripted statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> _Endpoint:
        app = web.Application()
        app.router.add_post("/in", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        status, headers = self.script.pop(0) if self.script else (204, {})
        return web.Response(status=status, headers=headers, text="nope" if status >= 400 else "")


async def _http_sink(**config: Any) -> HttpSink:
    sink = HttpSink(HttpSinkConfig.model_validate(config))
    await sink.start(SinkContext(connector_name="test"))
    return sink


def _sink_record(n: int, **overrides: Any) -> ConnectorRecord:
    fields: dict[str, Any] = {
        "data": {"n": n, "text": "ünïcode"},
        "id": f"e-{n}",
        "source": "/tests/sink",
        "type": "com.example.t",
        "subject": "orders",
        "extensions": {"traceparent": "00-1 2", "hops": 3, "urgent": True},
        **overrides,
    }
    return ConnectorRecord(**fields)


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_sink_posts_cloudevents_that_the_http_source_reads_back(source: HttpSource, pump: Pump, mode: str) -> None:
    sink = await _http_sink(urls=[events_url(source)], mode=mode)
    records = [_sink_record(1), _sink_record(2, data="plain", datacontenttype="text/plain"), _sink_record(3, data=b"\x00\x01")]
    try:
        assert await sink.put(records) == []
    finally:
        await sink.stop()
    received = {record.id: record for record in pump.seen}
    for sent in records:
        got = received[sent.id]
        assert (got.data, got.source, got.type, got.subject) == (sent.data, sent.source, sent.type, sent.subject)
        assert (
            got.extensions == {"traceparent": "00-1 2", "hops": 3, "urgent": True}
            if mode == "structured"
            else {
                "traceparent": "00-1 2",
                "hops": "3",
                "urgent": "true",
            }
        )
        assert got.timestamp == sent.timestamp


async def test_sink_retries_on_5xx_and_429_honouring_retry_after_then_delivers() -> None:
    async with _Endpoint() as endpoint:
        sink = await _http_sink(urls=[endpoint.url])
        try:
            endpoint.script = [(503, {"Retry-After": "7"})]
            with pytest.raises(RetriableError) as info:
                await sink.put([_sink_record(1)])
            assert info.value.retry_after == 7
            endpoint.script = [(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
            with pytest.raises(RetriableError) as info:
                await sink.put([_sink_record(1)])
            assert info.value.retry_after == 0
            assert await sink.put([_sink_record(1)]) == []
        finally:
            await sink.stop()
        assert [headers["ce-id"] for headers, _ in endpoint.requests] == ["e-1", "e-1", "e-1"]


async def test_sink_rejects_on_other_4xx_and_delivers_the_rest() -> None:
    async with _Endpoint() as endpoint:
        sink = await _http_sink(urls=[endpoint.url], concurrency=1)
        try:
            endpoint.script = [(204, {}), (400, {}), (204, {})]
            rejections = await sink.put([_sink_record(1), _sink_record(2), _sink_record(3)])
        finally:
            await sink.stop()
        assert [(r.record.id, "400" in r.reason and "nope" in r.reason) for r in rejections] == [("e-2", True)]


async def test_sink_connection_refused_is_retriable_and_broadcast_reaches_every_url() -> None:
    async with _Endpoint() as first, _Endpoint() as second:
        dead = f"http://127.0.0.1:{free_port()}/in"
        sink = await _http_sink(urls=[first.url, dead], timeout=2)
        try:
            with pytest.raises(RetriableError, match="failed"):
                await sink.put([_sink_record(1)])
        finally:
            await sink.stop()
        sink = await _http_sink(urls=[first.url, second.url], token="t0ken")
        try:
            await sink.put([_sink_record(2)])
        finally:
            await sink.stop()
        assert second.requests[0][0]["authorization"] == "Bearer t0ken"
        assert [h["ce-id"] for h, _ in first.requests] == ["e-1", "e-2"]


async def test_sink_round_robin_spreads_events() -> None:
    async with _Endpoint() as first, _Endpoint() as second:
        sink = await _http_sink(urls=[first.url, second.url], delivery="round_robin")
        try:
            await sink.put([_sink_record(n) for n in range(4)])
        finally:
            await sink.stop()
        assert len(first.requests) == len(second.requests) == 2


def test_sink_config_refuses_a_non_http_url() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpSinkConfig.model_validate({"urls": ["ftp://x"]})


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_http_source_conformance(tmp_path: Path) -> None:
    port = free_port()

    async def produce(start: int, count: int) -> None:
        events = [
            {"specversion": "1.0", "id": f"item-{n}", "source": "/conformance", "type": "t", "data": {"n": n}}
            for n in range(start, start + count)
        ]
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the worker may still be starting: retry as a webhook sender would
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}/events",
                        data=orjson.dumps(events),
                        headers={"content-type": "application/cloudevents-batch+json"},
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("the http source never accepted the batch")

    await run_source_conformance(
        SourceHarness(
            connector=HttpSource,
            config=lambda: {"host": "127.0.0.1", "port": port, "path": "/events"},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
        ),
        workdir=tmp_path,
        checks=("open_close", "batches", "redelivery", "mesh_drop"),  # a killed endpoint cannot take requests
    )


async def test_http_sink_conformance(tmp_path: Path) -> None:
    async with _Endpoint() as endpoint:

        async def read() -> list[str]:
            return [headers["ce-id"] for headers, _ in endpoint.requests]

        await run_sink_conformance(
            SinkHarness(connector=HttpSink, config=lambda: {"urls": [endpoint.url]}, read=read, idempotent=False),
            workdir=tmp_path,
        )


async def test_sink_posts_over_tls_trusting_the_given_ca(tmp_path: Path) -> None:
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    received: list[str] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(request.headers["ce-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/in", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/in"
    try:
        sink = await _http_sink(urls=[url], ca_file=str(cert))
        try:
            assert await sink.put([_sink_record(1)]) == []
        finally:
            await sink.stop()
        untrusting = await _http_sink(urls=[url], timeout=3)
        try:
            with pytest.raises(RetriableError, match=r"(?i)certificate"):
                await untrusting.put([_sink_record(2)])
        finally:
            await untrusting.stop()
    finally:
        await runner.cleanup()
    assert received == ["e-1"]
