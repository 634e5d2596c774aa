"""wechat-sink: send a WeChat official-account template message (模板消息) for each event.

API flavour: the official-account server API. The access token comes from
``GET https://api.weixin.qq.com/cgi-bin/token?grant_type=client_credential&appid=<appid>&secret=<appsecret>``,
answered ``{"access_token": ..., "expires_in": 7200}`` (seconds) or ``{"errcode": ..., "errmsg": ...}``.
A message is ``POST https://api.weixin.qq.com/cgi-bin/message/template/send?access_token=<token>`` with
the JSON body ``{"touser": <openid>, "template_id": ..., "url": ..., "client_msg_id": ..., "data":
{<field>: {"value": ...}}}``, answered ``{"errcode": 0, "errmsg": "ok", "msgid": ...}``. WeChat sends
one message per ``touser`` + ``client_msg_id`` within ten minutes, so the id derived from the event's
``source`` + ``id`` keeps a message redelivered soon after from reaching the user twice.

The token is fetched on the first message, kept, and fetched again ``token_refresh_margin`` seconds
before its ``expires_in`` runs out, or at once when a send answers 40001, 40014 or 42001 (invalid or
expired token: another process may have fetched a newer one), after which the message is sent once
more. The appsecret and the token travel in URLs; neither appears in a log line or an error.

What each answer means here: ``errcode`` 0 delivered; -1 (system busy) retried; 45009 (daily quota)
and 45011 (too frequent) retried after ``rate_limit_backoff``; a token the API refuses to issue
(wrong appid or appsecret, caller IP not whitelisted) or a send it refuses for the account
(48001, 40037 with the template from the config) retried and logged; any other code rejects the event.
The Java connector's ``appId`` / ``appSecret`` are ``appid`` / ``appsecret``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import urlencode

import orjson
from pydantic import Field, field_validator

from runtime import ConnectorRecord, DataError, HttpEndpoint, RetriableError, Secret
from services.chat.client import ApiAnswer, ChatbotConfig, ChatbotSink, MessageTemplate, Post, validate_template

__all__ = ["WechatSink", "WechatSinkConfig"]

_TOKEN_INVALID = frozenset({40001, 40014, 42001})
"""A send refused for its token: fetch a new one and send again."""
_RATE_LIMITED = frozenset({45009, 45011})
_BUSY = -1
_TOKEN_SETUP_ERRORS = frozenset({40001, 40002, 40013, 40125, 40164, 40243, 41002, 41004, 89501, 89503})
"""The token endpoint refuses the appid/appsecret or the caller."""
_SEND_SETUP_ERRORS = frozenset({48001})
_MESSAGE_KEYS = frozenset({"touser", "template_id", "url", "miniprogram", "client_msg_id", "data"})


class WechatSinkConfig(ChatbotConfig):
    template: str = Field(
        "{data}",
        description="Without template_id: renders the whole message body as JSON (default: the event data is the body).",
    )
    appid: str = Field(min_length=1, description="The official account's AppID.")
    appsecret: Secret = Field(description="The official account's AppSecret.")
    api_url: HttpEndpoint = Field("https://api.weixin.qq.com", description="The WeChat API base URL.")
    template_id: str | None = Field(
        None, description="Build each message from this template id, touser and fields (unset: the body comes from the event)."
    )
    touser: str = Field("{data[openid]}", description="With template_id: the receiver's openid, a format string over the event.")
    fields: dict[str, str] = Field(
        default_factory=dict, description="With template_id: template field name -> its value, a format string over the event."
    )
    url: str | None = Field(None, description="With template_id: the page a tap on the message opens.")
    token_refresh_margin: float = Field(
        300.0, ge=0, description="Seconds before the access token's expiry at which a new one is fetched."
    )
    min_interval: float = Field(0.0, ge=0, description="Seconds between two API calls at least.")

    @field_validator("touser")
    @classmethod
    def _valid_touser(cls, template: str) -> str:
        return validate_template(template)

    @field_validator("fields")
    @classmethod
    def _valid_fields(cls, fields: dict[str, str]) -> dict[str, str]:
        for name, template in fields.items():
            try:
                validate_template(template)
            except ValueError as exc:
                raise ValueError(f"field {name!r}: {exc}") from exc
        return fields


class WechatSink(ChatbotSink[WechatSinkConfig]):
    name = "wechat-sink"
    description = "Sends a WeChat official-account template message for each event (access token cached and refreshed)."
    config_model = WechatSinkConfig

    def __init__(self, config: WechatSinkConfig) -> None:
        super().__init__(config)
        self._touser = MessageTemplate(config.touser, config.missing)
        self._fields = {name: MessageTemplate(template, config.missing) for name, template in config.fields.items()}
        self._token: str | None = None
        self._token_due = 0.0
        """time.monotonic() at which the token is fetched again."""

    def compose(self, record: ConnectorRecord) -> Post:
        body = self._built(record) if self.config.template_id is not None else self._given(record)
        body.setdefault("client_msg_id", _client_msg_id(record))
        return Post(f"{self.config.api_url}/cgi-bin/message/template/send", body, {})

    def _built(self, record: ConnectorRecord) -> dict[str, Any]:
        touser = self._touser.render(record)
        if not touser.strip():
            raise DataError("the rendered touser is empty: the message needs the receiver's openid")
        body: dict[str, Any] = {
            "touser": touser,
            "template_id": self.config.template_id,
            "data": {name: {"value": template.render(record)} for name, template in self._fields.items()},
        }
        if self.config.url is not None:
            body["url"] = self.config.url
        return body

    def _given(self, record: ConnectorRecord) -> dict[str, Any]:
        """The body the event carries (rendered by ``template``), checked against the API's shape."""
        text = self._template.render(record)
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"the rendered message body is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise DataError(f"the message body must be a JSON object, got {type(body).__name__}")
        unknown = set(body) - _MESSAGE_KEYS
        if unknown:
            raise DataError(f"the message body has keys the API does not know: {sorted(unknown)}")
        for key in ("touser", "template_id"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise DataError(f"the message body needs {key!r} as a non-empty string")
        if not isinstance(body.get("data"), dict):
            raise DataError("the message body needs 'data' as an object of {field: {'value': ...}}")
        return body

    async def exchange(self, post: Post) -> str | None:
        answer = await self.send(self._with_token(post, await self._access_token()))
        if _errcode(answer) in _TOKEN_INVALID:
            self._token = None  # expired early, or replaced by a fetch elsewhere: one fresh token, one more try
            answer = await self.send(self._with_token(post, await self._access_token()))
            if _errcode(answer) in _TOKEN_INVALID:
                raise RetriableError(f"{self.name}: WeChat refuses a freshly fetched access token: {self._describe(answer)}")
        return self.verdict(answer)

    @staticmethod
    def _with_token(post: Post, token: str) -> Post:
        return Post(f"{post.url}?{urlencode({'access_token': token})}", post.body, post.headers)

    async def _access_token(self) -> str:
        """The cached token, or a new one when none is cached or it is due for refresh."""
        if self._token is not None and time.monotonic() < self._token_due:
            return self._token
        query = {
            "grant_type": "client_credential",
            "appid": self.config.appid,
            "secret": self.config.appsecret.get_secret_value(),
        }
        fetched_at = time.monotonic()
        answer = await self.send(Post(f"{self.config.api_url}/cgi-bin/token?{urlencode(query)}", None, {}, method="GET"))
        body = answer.body if isinstance(answer.body, dict) else {}
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if isinstance(token, str) and token and isinstance(expires_in, int | float) and expires_in > 0:
            self._token = token
            self._token_due = fetched_at + max(0.0, expires_in - self.config.token_refresh_margin)
            return token
        code = body.get("errcode")
        if code == _BUSY:
            raise RetriableError(f"{self.name}: WeChat is busy issuing an access token: {self._describe(answer)}")
        if code in _RATE_LIMITED:
            raise self.rate_limited(f"access token: {self._describe(answer)}", answer)
        if code in _TOKEN_SETUP_ERRORS:
            raise self.refused_setup(f"access token: {self._describe(answer)}")
        raise RetriableError(f"{self.name}: WeChat issued no access token: {self._describe(answer)}")

    def verdict(self, answer: ApiAnswer) -> str | None:
        code = _errcode(answer)
        if code == 0:
            return None
        if code == _BUSY:
            raise RetriableError(f"{self.name}: WeChat is busy: {self._describe(answer)}")
        if code in _RATE_LIMITED:
            raise self.rate_limited(self._describe(answer), answer)
        if code in _SEND_SETUP_ERRORS or (code == 40037 and self.config.template_id is not None):
            raise self.refused_setup(self._describe(answer))
        return f"WeChat refused the message: {self._describe(answer)}"

    def _describe(self, answer: ApiAnswer) -> str:
        """The API's code and message, for errors and logs (redacted: an answer may echo what was sent)."""
        body = answer.body if isinstance(answer.body, dict) else {}
        return self.redact(f"errcode {body.get('errcode')} {body.get('errmsg', '')}".strip())

    def redact(self, text: str) -> str:
        text = super().redact(text)
        return text if self._token is None else text.replace(self._token, "***")


def _client_msg_id(record: ConnectorRecord) -> str:
    """The same id for every delivery of one event, so WeChat drops a repeat within its window."""
    return hashlib.sha256(f"{record.source}\x00{record.id}".encode()).hexdigest()[:32]


def _errcode(answer: ApiAnswer) -> Any:
    return answer.body.get("errcode") if isinstance(answer.body, dict) else None
