"""dingtalk-sink: post a message rendered from each event to a DingTalk group through a custom robot.

API flavour: the custom robot webhook (自定义机器人), ``POST https://oapi.dingtalk.com/robot/send?access_token=...``.
With the robot's "加签" security setting, the query also carries ``timestamp`` (milliseconds) and
``sign`` = Base64(HmacSHA256(key=secret, message="<timestamp>\\n<secret>")), which this sink adds
when ``secret`` is set. JSON body: ``{"msgtype": "text", "text": {"content": ...}, "at": {"atMobiles":
[...], "isAtAll": false}}`` or ``{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}, "at": ...}``.
DingTalk answers ``{"errcode": 0, "errmsg": "ok"}``; a robot may send 20 messages a minute, beyond
that ``errcode`` 130101 ("send too fast") and a pause of some minutes.

What each answer means here: ``errcode`` 0 delivered; 130101 and 410100 (rate limit) retried after
``rate_limit_backoff``; a bad or stopped token, a signature or IP whitelist refusal (300001, 400101,
400102, 310000 other than keywords) retried and logged, since every event would fail alike; 310000
"keywords not in content" and any other code reject the event (the template lacks the robot's keyword
for it). The Java connector uses the enterprise app robot API (``appKey``, ``appSecret``,
``robotCode``, ``openConversationId``); this one uses the webhook robot, which needs no app.
See :mod:`services.chat.client` for templates, pacing and repeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Literal
from urllib.parse import urlencode

from pydantic import Field, field_validator

from runtime import ConnectorRecord, HttpEndpoint, Secret
from services.chat.client import (
    ApiAnswer,
    ChatbotConfig,
    ChatbotSink,
    MessageTemplate,
    Post,
    check_length,
    validate_template,
)

__all__ = ["DingtalkSink", "DingtalkSinkConfig", "dingtalk_sign"]

_RATE_LIMITED = frozenset({130101, 410100})
_SETUP_ERRORS = frozenset({300001, 400101, 400102, 310000})
_TEXT_LIMIT = 20_000  # bytes of content


def dingtalk_sign(timestamp_ms: int, secret: str) -> str:
    """The ``sign`` query value of a signed robot call (before URL encoding)."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class DingtalkSinkConfig(ChatbotConfig):
    access_token: Secret = Field(description="The robot's access_token (from its webhook URL).")
    secret: Secret | None = Field(None, description="The robot's signing secret (SEC...), when it uses 加签.")
    webhook_url: HttpEndpoint = Field("https://oapi.dingtalk.com/robot/send", description="The robot webhook endpoint.")
    msgtype: Literal["text", "markdown"] = Field("text", description="Message type: plain text or DingTalk markdown.")
    title: str = Field("{subject}", description="Markdown messages: title template (shown in notifications).")
    at_mobiles: list[str] = Field(default_factory=list, description="Mobile numbers to @mention in each message.")
    at_all: bool = Field(False, description="@mention everyone in each message.")

    @field_validator("title")
    @classmethod
    def _valid_title(cls, title: str) -> str:
        return validate_template(title)


class DingtalkSink(ChatbotSink[DingtalkSinkConfig]):
    name = "dingtalk-sink"
    description = "Posts a message rendered from each event through a DingTalk custom robot webhook."
    config_model = DingtalkSinkConfig

    def __init__(self, config: DingtalkSinkConfig) -> None:
        super().__init__(config)
        self._title = MessageTemplate(config.title, config.missing)

    def message(self, text: str, record: ConnectorRecord) -> Post:
        check_length(text, _TEXT_LIMIT)
        at = {"atMobiles": self.config.at_mobiles, "isAtAll": self.config.at_all}
        if self.config.msgtype == "markdown":
            title = self._title.render(record).strip() or self.config.msgtype
            body: dict[str, object] = {"msgtype": "markdown", "markdown": {"title": title, "text": text}, "at": at}
        else:
            body = {"msgtype": "text", "text": {"content": text}, "at": at}
        query = {"access_token": self.config.access_token.get_secret_value()}
        if self.config.secret is not None:
            timestamp = int(time.time() * 1000)
            query |= {"timestamp": str(timestamp), "sign": dingtalk_sign(timestamp, self.config.secret.get_secret_value())}
        return Post(f"{self.config.webhook_url}?{urlencode(query)}", body, {})

    def verdict(self, answer: ApiAnswer) -> str | None:
        body = answer.body if isinstance(answer.body, dict) else {}
        code, text = body.get("errcode"), str(body.get("errmsg", ""))
        if code == 0:
            return None
        if code in _RATE_LIMITED:
            raise self.rate_limited(f"errcode {code} {text}", answer)
        if code in _SETUP_ERRORS and "keyword" not in text:
            raise self.refused_setup(f"errcode {code} {text}")
        return f"DingTalk refused the message: errcode {code} {text}"
