"""wecom-sink: post a message rendered from each event to a WeCom (企业微信) group through its robot.

API flavour: the group robot webhook (群机器人), ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=<key>``,
JSON body ``{"msgtype": "text", "text": {"content": ..., "mentioned_list": [...],
"mentioned_mobile_list": [...]}}`` or ``{"msgtype": "markdown", "markdown": {"content": ...}}``; text
content is limited to 2048 bytes and markdown to 4096 (UTF-8). WeCom answers ``{"errcode": 0,
"errmsg": "ok"}``; a robot may send 20 messages a minute, beyond that ``errcode`` 45009
("api freq out of limit").

What each answer means here: ``errcode`` 0 delivered; 45009 retried after ``rate_limit_backoff``;
an invalid or removed webhook key (93000, 40014, 93004) retried and logged, since every event would
fail alike; any other code rejects the event. The Java connector's ``robotWebhookKey`` is ``key``.
See :mod:`services.chat.client` for templates, pacing and repeats.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlencode

from pydantic import Field

from runtime import ConnectorRecord, HttpEndpoint, Secret
from services.chat.client import ApiAnswer, ChatbotConfig, ChatbotSink, Post, check_length

__all__ = ["WecomSink", "WecomSinkConfig"]

_RATE_LIMITED = frozenset({45009})
_SETUP_ERRORS = frozenset({93000, 40014, 93004})
_LIMITS = {"text": 2048, "markdown": 4096}  # bytes of content


class WecomSinkConfig(ChatbotConfig):
    key: Secret = Field(description="The robot's webhook key (the key= of its webhook URL).")
    webhook_url: HttpEndpoint = Field(
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send", description="The robot webhook endpoint."
    )
    msgtype: Literal["text", "markdown"] = Field("text", description="Message type: plain text or WeCom markdown.")
    mentioned_list: list[str] = Field(
        default_factory=list, description="Text messages: user ids to @mention ('@all' for everyone)."
    )
    mentioned_mobile_list: list[str] = Field(default_factory=list, description="Text messages: mobile numbers to @mention.")


class WecomSink(ChatbotSink[WecomSinkConfig]):
    name = "wecom-sink"
    description = "Posts a message rendered from each event through a WeCom group robot webhook."
    config_model = WecomSinkConfig

    def message(self, text: str, record: ConnectorRecord) -> Post:
        check_length(text, _LIMITS[self.config.msgtype])
        if self.config.msgtype == "markdown":
            body: dict[str, object] = {"msgtype": "markdown", "markdown": {"content": text}}
        else:
            content = {
                "content": text,
                "mentioned_list": self.config.mentioned_list,
                "mentioned_mobile_list": self.config.mentioned_mobile_list,
            }
            body = {"msgtype": "text", "text": content}
        return Post(f"{self.config.webhook_url}?{urlencode({'key': self.config.key.get_secret_value()})}", body, {})

    def verdict(self, answer: ApiAnswer) -> str | None:
        body = answer.body if isinstance(answer.body, dict) else {}
        code, text = body.get("errcode"), str(body.get("errmsg", ""))
        if code == 0:
            return None
        if code in _RATE_LIMITED:
            raise self.rate_limited(f"errcode {code} {text}", answer)
        if code in _SETUP_ERRORS:
            raise self.refused_setup(f"errcode {code} {text}")
        return f"WeCom refused the message: errcode {code} {text}"
