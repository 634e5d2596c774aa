"""lark-sink: post a message rendered from each event to a Lark/Feishu group through a custom bot.

API flavour: the custom bot webhook (自定义机器人), ``POST https://open.feishu.cn/open-apis/bot/v2/hook/<hook id>``
(Lark: ``https://open.larksuite.com/open-apis/bot/v2/hook/...``), JSON body ``{"msg_type": "text",
"content": {"text": ...}}``. With the bot's signature verification on, the body also carries
``timestamp`` (seconds, as a string) and ``sign`` = Base64(HmacSHA256(key="<timestamp>\\n<secret>",
message="")), which this sink adds when ``secret`` is set. The request body is limited to 20 KB.
Lark answers ``{"code": 0, "msg": "success", "data": {}}`` (older deployments: ``{"StatusCode": 0,
"StatusMessage": "success"}``); a bot may send 100 messages a minute and 5 a second, beyond that
``code`` 9499 ("too many request").

What each answer means here: ``code`` 0 delivered; 9499 and HTTP 429 retried after ``Retry-After``
or ``rate_limit_backoff``; a signature, IP whitelist or hook refusal (19021, 19022, 19001) retried and
logged, since every event would fail alike; 19024 (the message lacks the bot's keyword) and any other
code reject the event. The Java connector uses the IM app API (``appId``, ``appSecret``,
``receiveIdType``, ``receiveId``); this one uses the webhook bot, which needs no app.
See :mod:`services.chat.client` for templates, pacing and repeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from pydantic import Field

from runtime import ConnectorRecord, HttpEndpoint, Secret
from services.chat.client import ApiAnswer, ChatbotConfig, ChatbotSink, Post, check_length

__all__ = ["LarkSink", "LarkSinkConfig", "lark_sign"]

_RATE_LIMITED = frozenset({9499})
_SETUP_ERRORS = frozenset({19001, 19021, 19022})
_TEXT_LIMIT = 19_000  # bytes: the whole request body may be 20 KB


def lark_sign(timestamp: int, secret: str) -> str:
    """The ``sign`` of a signed bot call: the HMAC key is the string to sign, the message empty."""
    digest = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class LarkSinkConfig(ChatbotConfig):
    hook: Secret = Field(description="The bot's hook id (the last part of its webhook URL).")
    secret: Secret | None = Field(None, description="The bot's signature verification secret, when it has one.")
    webhook_url: HttpEndpoint = Field(
        "https://open.feishu.cn/open-apis/bot/v2/hook",
        description="Webhook base; https://open.larksuite.com/open-apis/bot/v2/hook for Lark.",
    )
    min_interval: float = Field(0.6, ge=0, description="Seconds between two messages at least (100 a minute allowed).")


class LarkSink(ChatbotSink[LarkSinkConfig]):
    name = "lark-sink"
    description = "Posts a message rendered from each event through a Lark/Feishu custom bot webhook."
    config_model = LarkSinkConfig

    def message(self, text: str, record: ConnectorRecord) -> Post:
        body: dict[str, object] = {"msg_type": "text", "content": {"text": check_length(text, _TEXT_LIMIT)}}
        if self.config.secret is not None:
            timestamp = int(time.time())
            body |= {"timestamp": str(timestamp), "sign": lark_sign(timestamp, self.config.secret.get_secret_value())}
        return Post(f"{self.config.webhook_url.rstrip('/')}/{self.config.hook.get_secret_value()}", body, {})

    def verdict(self, answer: ApiAnswer) -> str | None:
        body = answer.body if isinstance(answer.body, dict) else {}
        code = body.get("code", body.get("StatusCode"))
        text = str(body.get("msg", body.get("StatusMessage", "")))
        if code == 0:
            return None
        if code in _RATE_LIMITED:
            raise self.rate_limited(f"code {code} {text}", answer)
        if code in _SETUP_ERRORS:
            raise self.refused_setup(f"code {code} {text}")
        return f"Lark refused the message: code {code} {text}"
