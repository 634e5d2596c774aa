"""slack-, dingtalk-, wecom- and lark-sink against fakes of their APIs that check the documented payloads.

Each fake answers as its vendor documents: Slack ``chat.postMessage`` (Bearer token, JSON ``channel`` +
``text``, ``{"ok": false, "error": ...}``, 429 + ``Retry-After``); the DingTalk custom robot
(``access_token``, ``timestamp`` + HmacSHA256 ``sign`` in the query, ``errcode`` 130101 when too fast);
the WeCom group robot (``key`` in the query, ``errcode`` 45009 when too fast); the Lark custom bot
(hook id in the path, ``timestamp`` + ``sign`` in the body, ``code`` 9499 when too fast). Each refuses
a message containing ``forbidden`` with one of its per-message error codes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cloudevents.core.v1.event import CloudEvent
from structlog.testing import capture_logs

from runtime.client import MeshClient, user_agent_for
from runtime.connector import SinkContext
from runtime.errors import ConfigError, RetriableError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, WorkerProcess, run_sink_conformance
from runtime.validation import validate_model
from services.chat.client import ChatbotSink
from services.chat.dingtalk.connector import DingtalkSink, DingtalkSinkConfig
from services.chat.lark.connector import LarkSink, LarkSinkConfig
from services.chat.slack.connector import SlackSink, SlackSinkConfig
from services.chat.wecom.connector import WecomSink, WecomSinkConfig
from tests.servers import free_port
from tests.services.fake_http import DROP, PASS, Canned, FakeHttpServer

TOKEN = "s3cret-token-value"
SIGNING_SECRET = "SECsigning-secret-value"
REFUSED_WORD = "forbidden"


class _Fake:
    """A vendor API fake: ``messages`` holds the text of every message it accepted, in order."""

    rate_limit: Canned
    expected_retry_after: float

    def __init__(self, path: str, *, secret: str | None = None) -> None:
        self.secret = secret
        self.messages: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.server = FakeHttpServer([("POST", path, self._handle)])

    async def _handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json", request.content_type
        return web.json_response(self.answer(request, await request.json()))

    def answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def accept(self, body: dict[str, Any], text: str) -> None:
        self.bodies.append(body)
        self.messages.append(text)


class SlackFake(_Fake):
    rate_limit = Canned(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"})
    expected_retry_after = 7

    def __init__(self) -> None:
        super().__init__("/api/chat.postMessage")

    def answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return {"ok": False, "error": "invalid_auth"}
        if body.get("channel") != "C0MESH":
            return {"ok": False, "error": "channel_not_found"}
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return {"ok": False, "error": "no_text"}
        if REFUSED_WORD in text:
            return {"ok": False, "error": "msg_too_long"}
        self.accept(body, text)
        return {"ok": True, "channel": "C0MESH", "ts": f"{time.time():.6f}", "message": {"text": text}}

    def config(self) -> dict[str, Any]:
        return {"token": TOKEN, "channel": "C0MESH", "api_url": f"{self.server.url}/api"}


class DingtalkFake(_Fake):
    rate_limit = Canned(200, {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"})
    expected_retry_after = 60  # rate_limit_backoff: DingTalk gives no Retry-After

    def __init__(self, *, secret: str | None = None) -> None:
        super().__init__("/robot/send", secret=secret)

    def answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        if request.query.get("access_token") != TOKEN:
            return {"errcode": 300001, "errmsg": "token is not exist"}
        if self.secret is not None:
            timestamp = request.query.get("timestamp", "0")
            digest = hmac.new(self.secret.encode(), f"{timestamp}\n{self.secret}".encode(), hashlib.sha256).digest()
            fresh = abs(int(timestamp) - time.time() * 1000) < 3_600_000
            if not fresh or request.query.get("sign") != base64.b64encode(digest).decode():
                return {
                    "errcode": 310000,
                    "errmsg": "sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]",
                }
        if body.get("msgtype") == "text":
            text = body["text"]["content"]
        elif body.get("msgtype") == "markdown" and body["markdown"].get("title"):
            text = body["markdown"]["text"]
        else:
            return {"errcode": 40035, "errmsg": "缺少参数 json"}
        assert isinstance(body.get("at", {}).get("isAtAll", False), bool)
        if REFUSED_WORD in text:
            return {"errcode": 310000, "errmsg": "keywords not in content"}
        self.accept(body, text)
        return {"errcode": 0, "errmsg": "ok"}

    def config(self) -> dict[str, Any]:
        config = {"access_token": TOKEN, "webhook_url": f"{self.server.url}/robot/send"}
        return config if self.secret is None else {**config, "secret": self.secret}


class WecomFake(_Fake):
    rate_limit = Canned(200, {"errcode": 45009, "errmsg": "api freq out of limit"})
    expected_retry_after = 60

    def __init__(self) -> None:
        super().__init__("/cgi-bin/webhook/send")

    def answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        if request.query.get("key") != TOKEN:
            return {"errcode": 93000, "errmsg": "invalid webhook url, hint: [1700000000_1_abc]"}
        kind = body.get("msgtype")
        if kind not in ("text", "markdown"):
            return {"errcode": 40008, "errmsg": "invalid message type"}
        text = body[kind]["content"]
        if len(text.encode()) > (2048 if kind == "text" else 4096):
            return {"errcode": 40058, "errmsg": "content exceed max length"}
        if REFUSED_WORD in text:
            return {"errcode": 40058, "errmsg": "invalid parameter"}
        self.accept(body, text)
        return {"errcode": 0, "errmsg": "ok"}

    def config(self) -> dict[str, Any]:
        return {"key": TOKEN, "webhook_url": f"{self.server.url}/cgi-bin/webhook/send"}


class LarkFake(_Fake):
    rate_limit = Canned(200, {"code": 9499, "msg": "too many request", "data": {}})
    expected_retry_after = 60

    def __init__(self, *, secret: str | None = None) -> None:
        super().__init__("/open-apis/bot/v2/hook/{hook}", secret=secret)

    def answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        if request.match_info["hook"] != TOKEN:
            return {"code": 19001, "msg": "param invalid: incoming webhook access token invalid", "data": {}}
        if self.secret is not None:
            timestamp = str(body.get("timestamp", "0"))
            digest = hmac.new(f"{timestamp}\n{self.secret}".encode(), b"", hashlib.sha256).digest()
            fresh = abs(int(timestamp) - time.time()) < 3600
            if not fresh or body.get("sign") != base64.b64encode(digest).decode():
                return {"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time", "data": {}}
        if body.get("msg_type") != "text" or not isinstance(body.get("content", {}).get("text"), str):
            return {"code": 9499, "msg": "Bad Request", "data": {}}
        text = body["content"]["text"]
        if REFUSED_WORD in text:
            return {"code": 19024, "msg": "Key Words Not Found", "data": {}}
        self.accept(body, text)
        return {"code": 0, "msg": "success", "data": {}}

    def config(self) -> dict[str, Any]:
        config = {"hook": TOKEN, "webhook_url": f"{self.server.url}/open-apis/bot/v2/hook"}
        return config if self.secret is None else {**config, "secret": self.secret}


@dataclass(frozen=True)
class Vendor:
    sink: type[ChatbotSink[Any]]
    fake: Callable[[], Any]

    def __str__(self) -> str:
        return self.sink.name


VENDORS = [
    Vendor(SlackSink, SlackFake),
    Vendor(DingtalkSink, DingtalkFake),
    Vendor(WecomSink, WecomFake),
    Vendor(LarkSink, LarkFake),
]


@pytest.fixture(params=VENDORS, ids=str)
async def vendor(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Vendor, Any]]:
    vendor: Vendor = request.param
    fake = vendor.fake()
    async with fake.server:
        yield vendor, fake


async def _sink(sink_class: type[ChatbotSink[Any]], config: dict[str, Any]) -> ChatbotSink[Any]:
    sink = sink_class(validate_model(sink_class.config_model, {"min_interval": 0, "timeout": 5, **config}))
    await sink.start(SinkContext(connector_name="test"))
    return sink


def _record(n: int, text: str = "hello", **fields: Any) -> ConnectorRecord:
    return ConnectorRecord(
        data={"n": n, "text": text},
        id=f"e-{n}",
        source="/tests",
        type="t",
        subject="orders",
        datacontenttype="application/json",
        **fields,
    )


TEMPLATE = "{subject} #{data[n]}: {data[text]}"


async def test_messages_are_rendered_and_delivered_in_order(vendor: tuple[Vendor, Any]) -> None:
    kind, fake = vendor
    sink = await _sink(kind.sink, {**fake.config(), "template": TEMPLATE + " [{data[absent]!r}{traceparent}]", "missing": "-"})
    try:
        records = [_record(1, "first"), _record(2, "ünïcode 你好", extensions={"traceparent": "00-ab"}), _record(3, "third")]
        assert await sink.put(records) == []
    finally:
        await sink.stop()
    assert fake.messages == ["orders #1: first [--]", "orders #2: ünïcode 你好 [-00-ab]", "orders #3: third [--]"]


async def test_rate_limit_is_retriable_with_its_delay_and_the_retry_repeats_nothing(vendor: tuple[Vendor, Any]) -> None:
    kind, fake = vendor
    sink = await _sink(kind.sink, {**fake.config(), "template": TEMPLATE})
    records = [_record(1), _record(2, REFUSED_WORD), _record(3), _record(4)]
    try:
        fake.server.faults = [PASS, PASS, fake.rate_limit]
        with pytest.raises(RetriableError) as info:
            await sink.put(records)
        assert info.value.retry_after == fake.expected_retry_after
        assert fake.messages == ["orders #1: hello"]
        rejections = await sink.put(records)  # the worker's retry of the same batch
    finally:
        await sink.stop()
    assert [rejection.record.id for rejection in rejections] == ["e-2"]
    assert fake.messages == ["orders #1: hello", "orders #3: hello", "orders #4: hello"]
    assert fake.server.calls == 5, "the retry posted #1 or #2 again"


async def test_dropped_connection_and_5xx_are_retriable_then_delivered(vendor: tuple[Vendor, Any]) -> None:
    kind, fake = vendor
    sink = await _sink(kind.sink, {**fake.config(), "template": TEMPLATE})
    try:
        fake.server.faults = [DROP]
        with pytest.raises(RetriableError, match="failed"):
            await sink.put([_record(1)])
        fake.server.faults = [Canned(503, headers={"Retry-After": "2"})]
        with pytest.raises(RetriableError, match="503") as info:
            await sink.put([_record(1)])
        assert info.value.retry_after == 2
        assert await sink.put([_record(1)]) == []
    finally:
        await sink.stop()
    assert fake.messages == ["orders #1: hello"]


async def test_poison_events_are_rejected_and_the_rest_delivered(vendor: tuple[Vendor, Any]) -> None:
    kind, fake = vendor
    sink = await _sink(kind.sink, {**fake.config(), "template": "#{data[n]:d} {data[text]}"})
    unrenderable = ConnectorRecord(
        data={"n": "seven", "text": "x"}, id="e-x", source="/tests", datacontenttype="application/json"
    )
    try:
        rejections = await sink.put([_record(1), unrenderable, _record(2, f"a {REFUSED_WORD} word"), _record(3)])
    finally:
        await sink.stop()
    assert [(r.record.id, "template" in r.reason) for r in rejections] == [("e-x", True), ("e-2", False)]
    assert "refused" in rejections[1].reason
    assert fake.messages == ["#1 hello", "#3 hello"]


async def test_refused_credentials_are_retried_never_rejected_and_never_logged(vendor: tuple[Vendor, Any]) -> None:
    kind, fake = vendor
    wrong = "wrong-credential-value"
    config = {key: wrong if value == TOKEN else value for key, value in fake.config().items()}
    sink = await _sink(kind.sink, config)
    try:
        with capture_logs() as logs, pytest.raises(RetriableError, match="refuses the configured credentials") as info:
            await sink.put([_record(1)])
    finally:
        await sink.stop()
    assert logs and logs[0]["log_level"] == "error"
    assert wrong not in str(info.value) and wrong not in repr(logs)
    assert wrong not in repr(sink.config)
    assert fake.messages == []


async def test_a_failed_call_never_quotes_the_credential_in_its_error(vendor: tuple[Vendor, Any]) -> None:
    kind, fake = vendor
    await fake.server.stop()  # connection refused; DingTalk's and WeCom's tokens are in the URL, Lark's in the path
    sink = await _sink(kind.sink, {**fake.config(), "connect_timeout": 1})
    try:
        with pytest.raises(RetriableError, match="failed") as info:
            await sink.put([_record(1)])
        fake.server.faults = [Canned(502, {"echo": f"{fake.server.url}/?key={TOKEN}"})]
        await fake.server.start()
        with pytest.raises(RetriableError, match="502") as echoed:
            await sink.put([_record(1)])
    finally:
        await sink.stop()
    assert TOKEN not in str(info.value) and TOKEN not in str(echoed.value) and "***" in str(echoed.value)


@pytest.mark.parametrize("fake_class", [DingtalkFake, LarkFake], ids=["dingtalk", "lark"])
async def test_signed_robots_sign_every_call_and_a_wrong_secret_is_a_setup_error(fake_class: Any) -> None:
    fake = fake_class(secret=SIGNING_SECRET)
    sink_class = DingtalkSink if fake_class is DingtalkFake else LarkSink
    async with fake.server:
        sink = await _sink(sink_class, {**fake.config(), "template": "{data[text]}"})
        try:
            assert await sink.put([_record(1, "signed")]) == []
        finally:
            await sink.stop()
        sink = await _sink(sink_class, {**fake.config(), "secret": "SECnot-the-secret"})
        try:
            with pytest.raises(RetriableError, match=r"19021|310000"):
                await sink.put([_record(2)])
        finally:
            await sink.stop()
    assert fake.messages == ["signed"]


async def test_slack_escapes_event_values_but_not_the_template() -> None:
    fake = SlackFake()
    async with fake.server:
        sink = await _sink(SlackSink, {**fake.config(), "template": "<!here> {data[text]}", "username": "mesh"})
        try:
            await sink.put([_record(1, "<!channel> & <@U1>")])
        finally:
            await sink.stop()
    assert fake.messages == ["<!here> &lt;!channel&gt; &amp; &lt;@U1&gt;"]
    assert fake.bodies[0]["username"] == "mesh" and fake.bodies[0]["mrkdwn"] is True


async def test_markdown_messages_and_mentions() -> None:
    dingtalk, wecom = DingtalkFake(), WecomFake()
    async with dingtalk.server, wecom.server:
        sink = await _sink(
            DingtalkSink,
            {
                **dingtalk.config(),
                "msgtype": "markdown",
                "title": "order {data[n]}",
                "template": "**{data[text]}**",
                "at_all": True,
            },
        )
        try:
            await sink.put([_record(1)])
        finally:
            await sink.stop()
        sink = await _sink(WecomSink, {**wecom.config(), "template": "{data[text]}", "mentioned_list": ["@all"]})
        try:
            rejections = await sink.put([_record(1), _record(2, "x" * 2049)])
        finally:
            await sink.stop()
    assert dingtalk.bodies == [
        {"msgtype": "markdown", "markdown": {"title": "order 1", "text": "**hello**"}, "at": {"atMobiles": [], "isAtAll": True}}
    ]
    assert wecom.bodies[0]["text"] == {"content": "hello", "mentioned_list": ["@all"], "mentioned_mobile_list": []}
    assert [(r.record.id, "over the API's limit of 2048" in r.reason) for r in rejections] == [("e-2", True)]


async def test_messages_are_paced_by_min_interval() -> None:
    fake = WecomFake()
    async with fake.server:
        sink = await _sink(WecomSink, {**fake.config(), "min_interval": 0.2})
        try:
            started = time.monotonic()
            await sink.put([_record(n) for n in range(3)])
            elapsed = time.monotonic() - started
        finally:
            await sink.stop()
    assert elapsed >= 0.4 and len(fake.messages) == 3


@pytest.mark.parametrize(
    ("template", "problem"),
    [("{data.secret}", "attribute access"), ("{0}", "positional"), ("{}", "positional"), ("{subject", "not a valid format")],
)
def test_a_bad_template_fails_at_load_naming_the_key(template: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        validate_model(SlackSinkConfig, {"token": "t", "channel": "C1", "template": template}, prefix="config")
    assert info.value.key == "config.template"


def test_api_endpoints_must_be_http_urls() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        validate_model(WecomSinkConfig, {"key": "k", "webhook_url": "qyapi.weixin.qq.com/cgi-bin/webhook/send"}, prefix="config")


def test_secrets_are_required_and_hidden() -> None:
    for model, secret_key in [(DingtalkSinkConfig, "access_token"), (WecomSinkConfig, "key"), (LarkSinkConfig, "hook")]:
        with pytest.raises(ConfigError) as info:
            validate_model(model, {}, prefix="config")
        assert secret_key in str(info.value)
        assert TOKEN not in repr(validate_model(model, {secret_key: TOKEN}))


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_through_the_worker_poison_is_dead_lettered_and_a_rate_limit_waits(tmp_path: Path) -> None:
    fake = DingtalkFake(secret=SIGNING_SECRET)
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    dead: list[CloudEvent] = []

    async def read_dead_letters() -> None:
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("dlq-reader", "sub"), request_timeout=5) as client:
            await client.subscribe("alerts-to-dingtalk-dlq", SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
            await client.listen()
            async for pushed in client.pushed():
                dead.append(pushed.event)
                await pushed.ack()

    config = {
        "name": "alerts-to-dingtalk",
        "connector": DingtalkSink.name,
        "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
        "sink": {"topics": ["alerts"], "batch_size": 10, "linger_ms": 20, "retry_initial": 0.1, "retry_max": 1.0},
        "registry": {"kind": "file", "path": str(tmp_path / "registry")},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": {**fake.config(), "template": "#{data[n]:d} {data[text]}", "min_interval": 0, "rate_limit_backoff": 0.5},
    }
    worker = WorkerProcess(DingtalkSink, config, tmp_path)
    reader = asyncio.create_task(read_dead_letters())
    events = [
        ({"n": 1, "text": "first"}, "e-1"),
        ({"n": "seven", "text": "unrenderable"}, "e-2"),
        ({"n": 3, "text": REFUSED_WORD}, "e-3"),
        ({"n": 4, "text": "after the rate limit"}, "e-4"),
    ]
    try:
        async with fake.server:
            fake.server.faults = [PASS, PASS, fake.rate_limit]  # #1, #3 (refused), then #4 is told to slow down
            await worker.start(30)
            async with MeshClient(
                f"127.0.0.1:{mesh.port}", user_agent_for("alerts-producer", "pub"), request_timeout=5
            ) as client:
                for data, event_id in events:
                    attributes = {"id": event_id, "source": "/alerts", "type": "alert", "subject": "alerts"}
                    await client.publish(CloudEvent({**attributes, "datacontenttype": "application/json"}, data))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if len(fake.messages) >= 2 and len(dead) >= 2:
                    break
                await asyncio.sleep(0.1)
            assert await worker.terminate(30) == 0, worker.log_tail()
    finally:
        await worker.kill()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await mesh.stop()
    assert fake.messages == ["#1 first", "#4 after the rate limit"], worker.log_tail()
    assert fake.server.calls == 4, "a retried batch posted a message again or asked about a refused one"
    reasons = {event.get_id(): str(event.get_attributes()["dlqreason"]) for event in dead}
    assert reasons.keys() == {"e-2", "e-3"}
    assert "template" in reasons["e-2"] and "310000" in reasons["e-3"]
    log = worker.log_path.read_text()
    assert TOKEN not in log and SIGNING_SECRET not in log


async def test_conformance(vendor: tuple[Vendor, Any], tmp_path: Path) -> None:
    kind, fake = vendor

    async def read() -> list[str]:
        return [text.split(" ", 1)[0] for text in fake.messages]

    await run_sink_conformance(
        SinkHarness(
            connector=kind.sink,
            config=lambda: {**fake.config(), "template": "{id} says {data[text]}", "min_interval": 0, "rate_limit_backoff": 0.5},
            read=read,
            kill_system=fake.server.stop,
            restart_system=fake.server.start,
        ),
        workdir=tmp_path,
    )
