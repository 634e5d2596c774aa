"""wechat-sink against a fake of the WeChat official-account API that checks each call as WeChat documents it.

The fake issues access tokens on ``GET /cgi-bin/token`` (query exactly ``grant_type=client_credential``,
``appid``, ``secret``; ``{"access_token", "expires_in"}`` or an ``errcode``) and takes template messages
on ``POST /cgi-bin/message/template/send`` (query exactly ``access_token``; a JSON body of the
documented keys with ``data`` as ``{field: {"value": str}}``). A token it issued stops being valid
when it issues the next one or when the test expires it (errcode 42001), as WeChat does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from runtime.connector import SinkContext
from runtime.errors import ConfigError, RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, run_sink_conformance
from runtime.validation import validate_model
from services.chat.wechat.connector import WechatSink, WechatSinkConfig
from tests.services.fake_http import DROP, PASS, Canned, FakeHttpServer

APPID = "wx5f3e2a1b0c9d8e7f"
APPSECRET = "a8f5f167f44f4964e6c998dee827110c"
TEMPLATE_ID = "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"
MESSAGE_KEYS = {"touser", "template_id", "url", "miniprogram", "client_msg_id", "data"}


class WechatFake:
    """The two documented calls; ``messages`` holds every accepted body, ``tokens_issued`` counts token calls."""

    def __init__(self, expires_in: int = 7200) -> None:
        self.expires_in = expires_in
        self.valid_token: str | None = None
        self.tokens_issued = 0
        self.messages: list[dict[str, Any]] = []
        self.sends = 0
        self.server = FakeHttpServer(
            [("GET", "/cgi-bin/token", self._token), ("POST", "/cgi-bin/message/template/send", self._send)]
        )

    def expire(self) -> None:
        self.valid_token = None

    async def _token(self, request: web.Request) -> web.Response:
        assert set(request.query) == {"grant_type", "appid", "secret"}, dict(request.query)
        assert request.query["grant_type"] == "client_credential"
        assert request.can_read_body is False, "the token call has no body"
        if request.query["appid"] != APPID:
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid rid: 6566a1b2-0a1b2c3d"})
        if request.query["secret"] != APPSECRET:
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret rid: 6566a1b2-0a1b2c3e"})
        self.tokens_issued += 1
        self.valid_token = f"ACCESS_TOKEN_{self.tokens_issued}_{'x' * 40}"
        return web.json_response({"access_token": self.valid_token, "expires_in": self.expires_in})

    async def _send(self, request: web.Request) -> web.Response:
        self.sends += 1
        assert set(request.query) == {"access_token"}, dict(request.query)
        assert request.content_type == "application/json", request.content_type
        body = await request.json()
        if request.query["access_token"] != self.valid_token:
            expired = request.query["access_token"].startswith("ACCESS_TOKEN_")
            if expired:
                return web.json_response({"errcode": 42001, "errmsg": "access_token expired rid: 6566a1b2-0a1b2c3f"})
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"})
        assert set(body) <= MESSAGE_KEYS, body
        assert isinstance(body["touser"], str) and body["touser"], body
        assert isinstance(body["client_msg_id"], str) and 0 < len(body["client_msg_id"]) <= 64, body
        if body["template_id"] != TEMPLATE_ID:
            return web.json_response({"errcode": 40037, "errmsg": "invalid template_id"})
        fields = body["data"]
        assert isinstance(fields, dict) and all(set(value) <= {"value", "color"} for value in fields.values()), body
        assert all(isinstance(value["value"], str) for value in fields.values()), body
        if not body["touser"].startswith("o"):
            return web.json_response({"errcode": 40003, "errmsg": "invalid openid"})
        self.messages.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": 200228332 + len(self.messages)})

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "appid": APPID,
            "appsecret": APPSECRET,
            "api_url": self.server.url,
            "template_id": TEMPLATE_ID,
            "touser": "{data[openid]}",
            "fields": {"order": "{data[order]}", "amount": "{data[total]:.2f}"},
            "url": "https://shop.example.com/orders",
            "rate_limit_backoff": 0.5,
            **overrides,
        }


@pytest.fixture
async def fake() -> AsyncIterator[WechatFake]:
    fake = WechatFake()
    async with fake.server:
        yield fake


async def _sink(config: dict[str, Any]) -> WechatSink:
    sink = WechatSink(validate_model(WechatSinkConfig, {"timeout": 5, **config}))
    await sink.start(SinkContext(connector_name="test"))
    return sink


def _record(n: int, openid: str = "oUser123", **data: Any) -> ConnectorRecord:
    return ConnectorRecord(
        data={"openid": openid, "order": f"A-{n}", "total": 10.5 * n, **data},
        id=f"e-{n}",
        source="/shop",
        type="order.paid",
        subject="orders",
        datacontenttype="application/json",
    )


async def test_messages_are_built_from_the_config_with_one_cached_token(fake: WechatFake) -> None:
    sink = await _sink(fake.config())
    try:
        assert await sink.put([_record(1), _record(2)]) == []
    finally:
        await sink.stop()
    assert fake.tokens_issued == 1
    first = fake.messages[0]
    assert {key: first[key] for key in ("touser", "template_id", "url", "data")} == {
        "touser": "oUser123",
        "template_id": TEMPLATE_ID,
        "url": "https://shop.example.com/orders",
        "data": {"order": {"value": "A-1"}, "amount": {"value": "10.50"}},
    }
    assert first["client_msg_id"] != fake.messages[1]["client_msg_id"]


async def test_the_event_data_can_be_the_whole_body_as_in_the_java_connector(fake: WechatFake) -> None:
    sink = await _sink({key: value for key, value in fake.config().items() if key not in ("template_id", "fields", "url")})
    body = {"touser": "oUser9", "template_id": TEMPLATE_ID, "data": {"first": {"value": "hi", "color": "#173177"}}}
    not_a_message = ConnectorRecord(data={"touser": "oUser9", "text": "hi"}, id="e-bad", source="/shop")
    try:
        rejections = await sink.put([ConnectorRecord(data=body, id="e-1", source="/shop"), not_a_message])
    finally:
        await sink.stop()
    assert fake.messages == [{**body, "client_msg_id": fake.messages[0]["client_msg_id"]}]
    assert [(r.record.id, "keys the API does not know" in r.reason) for r in rejections] == [("e-bad", True)]


async def test_an_expired_token_is_replaced_and_the_message_sent_once_more(fake: WechatFake) -> None:
    sink = await _sink(fake.config())
    try:
        assert await sink.put([_record(1)]) == []
        fake.expire()  # WeChat: 42001 access_token expired
        assert await sink.put([_record(2)]) == []
    finally:
        await sink.stop()
    assert fake.tokens_issued == 2
    assert [message["data"]["order"]["value"] for message in fake.messages] == ["A-1", "A-2"]
    assert fake.sends == 3, "one refused send, one resend with the new token"


async def test_the_token_is_refreshed_before_it_expires(fake: WechatFake) -> None:
    fake.expires_in = 300  # within token_refresh_margin of its issue: due again before the next message
    sink = await _sink(fake.config(token_refresh_margin=300))
    try:
        assert await sink.put([_record(1), _record(2), _record(3)]) == []
    finally:
        await sink.stop()
    assert fake.tokens_issued == 3 and fake.sends == 3, "every message went out with a fresh token, none was refused"


async def test_a_token_refused_twice_is_retriable(fake: WechatFake) -> None:
    sink = await _sink(fake.config())
    try:
        fake.server.faults = [PASS, Canned(200, {"errcode": 40001, "errmsg": "invalid credential"}), PASS]
        fake.server.faults.append(Canned(200, {"errcode": 42001, "errmsg": "access_token expired"}))
        with pytest.raises(RetriableError, match="freshly fetched"):
            await sink.put([_record(1)])
        assert await sink.put([_record(1)]) == []
    finally:
        await sink.stop()
    assert len(fake.messages) == 1


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        ({"errcode": 45011, "errmsg": "api minute-quota reach limit  mustslower  retry next minute"}, 0.5),
        ({"errcode": 45009, "errmsg": "reach max api daily quota limit"}, 0.5),
        ({"errcode": -1, "errmsg": "system error"}, None),
    ],
    ids=["45011", "45009", "busy"],
)
async def test_rate_limits_and_busy_are_retriable_and_the_retry_repeats_nothing(
    fake: WechatFake, answer: dict[str, Any], retry_after: float | None
) -> None:
    sink = await _sink(fake.config())
    records = [_record(1), _record(2, openid="xNotAnOpenid"), _record(3)]
    try:
        fake.server.faults = [PASS, PASS, PASS, Canned(200, answer)]  # token, #1, #2 (refused), #3 told to wait
        with pytest.raises(RetriableError) as info:
            await sink.put(records)
        assert info.value.retry_after == retry_after
        rejections = await sink.put(records)
    finally:
        await sink.stop()
    assert [(r.record.id, "40003" in r.reason) for r in rejections] == [("e-2", True)]
    assert [message["data"]["order"]["value"] for message in fake.messages] == ["A-1", "A-3"]
    assert fake.server.calls == 5, "the retry sent #1 or #2 again"


async def test_a_wrong_appsecret_is_retried_never_rejected_and_never_logged(fake: WechatFake) -> None:
    wrong = "0" * 32
    sink = await _sink(fake.config(appsecret=wrong))
    try:
        with capture_logs() as logs, pytest.raises(RetriableError, match="refuses the configured credentials") as info:
            await sink.put([_record(1)])
    finally:
        await sink.stop()
    assert logs and logs[0]["log_level"] == "error" and "40125" in repr(logs)
    assert wrong not in str(info.value) and wrong not in repr(logs) and wrong not in repr(sink.config)
    assert fake.messages == []


async def test_no_failed_call_quotes_the_appsecret_or_the_token(fake: WechatFake) -> None:
    sink = await _sink(fake.config(connect_timeout=1))
    try:
        assert await sink.put([_record(1)]) == []
        token = fake.valid_token
        assert token is not None
        fake.server.faults = [Canned(502, {"echo": f"/cgi-bin/message/template/send?access_token={token}"})]
        with pytest.raises(RetriableError, match="502") as echoed:
            await sink.put([_record(2)])
        sink_token_call = Canned(502, {"echo": f"/cgi-bin/token?secret={APPSECRET}"})
        fake.expire()
        fake.server.faults = [PASS, sink_token_call]  # 42001, then the token call fails
        with pytest.raises(RetriableError, match="502") as echoed_secret:
            await sink.put([_record(3)])
        fake.server.faults = [DROP, DROP]  # aiohttp repeats a GET once on a dropped keep-alive connection
        with pytest.raises(RetriableError, match="failed") as dropped:
            await sink.put([_record(3)])
    finally:
        await sink.stop()
    for error in (echoed.value, echoed_secret.value, dropped.value):
        assert token not in str(error) and APPSECRET not in str(error)
    assert "***" in str(echoed.value) and "***" in str(echoed_secret.value)


async def test_an_answer_that_echoes_the_appsecret_is_redacted(fake: WechatFake) -> None:
    sink = await _sink(fake.config())
    echo = {"errcode": 40164, "errmsg": f"invalid ip 10.0.0.1, not in whitelist, secret={APPSECRET}"}
    try:
        fake.server.faults = [Canned(200, echo)]
        with capture_logs() as logs, pytest.raises(RetriableError, match="40164") as info:
            await sink.put([_record(1)])
    finally:
        await sink.stop()
    assert APPSECRET not in str(info.value) and APPSECRET not in repr(logs) and "***" in str(info.value)


def test_the_appsecret_is_required_and_hidden_and_templates_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        validate_model(WechatSinkConfig, {"appid": APPID}, prefix="config")
    assert "appsecret" in str(info.value)
    assert APPSECRET not in repr(validate_model(WechatSinkConfig, {"appid": APPID, "appsecret": APPSECRET}))
    with pytest.raises(ConfigError, match="attribute access") as bad:
        validate_model(WechatSinkConfig, {"appid": APPID, "appsecret": "s", "fields": {"x": "{data.x}"}}, prefix="config")
    assert bad.value.key == "config.fields"


async def test_conformance(fake: WechatFake, tmp_path: Path) -> None:
    async def read() -> list[str]:
        return [message["data"]["id"]["value"] for message in fake.messages]

    await run_sink_conformance(
        SinkHarness(
            connector=WechatSink,
            config=lambda: fake.config(touser="oConformance", fields={"id": "{id}", "text": "{data[text]}"}),
            read=read,
            kill_system=fake.server.stop,
            restart_system=fake.server.start,
        ),
        workdir=tmp_path,
    )
