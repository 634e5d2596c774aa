"""slack-sink: post a message rendered from each event to one Slack channel.

API flavour: the Web API method ``chat.postMessage`` (``POST https://slack.com/api/chat.postMessage``),
authenticated with a bot token as ``Authorization: Bearer xoxb-...`` (scope ``chat:write``), JSON
body ``{"channel": <channel id>, "text": <message>, "mrkdwn": true}`` (plus ``username`` and
``icon_emoji`` when set). Slack answers HTTP 200 with ``{"ok": true, "channel": ..., "ts": ...}``, or
``{"ok": false, "error": "<code>"}``; a rate limit is HTTP 429 with ``Retry-After`` seconds and
``error: ratelimited``.

What each answer means here: ``ok: true`` delivered; 429, ``ratelimited``, ``service_unavailable``,
``internal_error``, ``fatal_error``, ``request_timeout`` and 5xx retried (honouring ``Retry-After``);
token and channel errors (``invalid_auth``, ``not_authed``, ``token_revoked``, ``missing_scope``,
``channel_not_found``, ``not_in_channel``, ``is_archived``...) retried and logged, since every event
would fail alike until the config is fixed; any other error (``msg_too_long``, ``no_text``...)
rejects the event. Values put into the template are escaped as Slack asks (``&``, ``<``, ``>``), so
event data cannot mention ``@channel``; the template's own text may (``<!here>``).
The Java connector's keys map as ``appToken`` -> ``token``, ``channelId`` -> ``channel``.
See :mod:`services.chat.client` for templates, pacing and repeats.
"""

from __future__ import annotations

from pydantic import Field

from runtime import ConnectorRecord, HttpEndpoint, RetriableError, Secret
from services.chat.client import ApiAnswer, ChatbotConfig, ChatbotSink, Post, check_length

__all__ = ["SlackSink", "SlackSinkConfig"]

_RATE_LIMITED = frozenset({"ratelimited", "rate_limited"})
_TRANSIENT_ERRORS = frozenset({"service_unavailable", "internal_error", "fatal_error", "request_timeout"})
_SETUP_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "team_access_not_granted",
        "access_denied",
        "ekm_access_denied",
        "org_login_required",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "restricted_action",
    }
)
_TEXT_LIMIT = 40_000  # characters: Slack refuses longer text with msg_too_long


def slack_escape(value: str) -> str:
    """Slack's escaping of control characters in message text."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackSinkConfig(ChatbotConfig):
    token: Secret = Field(description="Bot token (xoxb-...) with the chat:write scope.")
    channel: str = Field(min_length=1, description="Channel id (C0123...) or name to post to.")
    api_url: HttpEndpoint = Field("https://slack.com/api", description="Base URL of the Slack Web API.")
    username: str | None = Field(None, description="Display name of the messages (needs chat:write.customize).")
    icon_emoji: str | None = Field(None, description="Icon of the messages, e.g. ':robot_face:' (needs chat:write.customize).")
    min_interval: float = Field(
        1.0, ge=0, description="Seconds between two messages at least (Slack allows about one per second per channel)."
    )


class SlackSink(ChatbotSink[SlackSinkConfig]):
    name = "slack-sink"
    description = "Posts a message rendered from each event to a Slack channel (chat.postMessage)."
    config_model = SlackSinkConfig
    escape = slack_escape

    def message(self, text: str, record: ConnectorRecord) -> Post:
        body: dict[str, object] = {
            "channel": self.config.channel,
            "text": check_length(text, _TEXT_LIMIT, "characters"),
            "mrkdwn": True,
        }
        if self.config.username is not None:
            body["username"] = self.config.username
        if self.config.icon_emoji is not None:
            body["icon_emoji"] = self.config.icon_emoji
        headers = {"Authorization": f"Bearer {self.config.token.get_secret_value()}"}
        return Post(f"{self.config.api_url.rstrip('/')}/chat.postMessage", body, headers)

    def verdict(self, answer: ApiAnswer) -> str | None:
        body = answer.body if isinstance(answer.body, dict) else {}
        if body.get("ok") is True:
            return None
        error = str(body.get("error", f"HTTP {answer.status} without an error code"))
        if error in _RATE_LIMITED:
            raise self.rate_limited(error, answer)
        if error in _TRANSIENT_ERRORS:
            raise RetriableError(f"Slack could not take the message for now: {error}", retry_after=answer.retry_after)
        if error in _SETUP_ERRORS:
            raise self.refused_setup(error)
        return f"Slack refused the message: {error}"
