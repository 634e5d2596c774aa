"""What the chat sinks (slack, dingtalk, wecom, lark, wechat) share: message templates and the API call seam.

A message is rendered from each event with a Python format string (``str.format`` syntax) over the
event: ``{id}``, ``{source}``, ``{type}``, ``{subject}``, ``{time}``, ``{datacontenttype}``,
``{dataschema}``, each extension by its name, and ``{data}``. JSON data is reached by index,
``{data[order][total]:.2f}`` or ``{data[items][0]}``; a dict or list renders as compact JSON, text
as itself. A name or key the event does not have renders as ``missing`` (default empty): templates
are shared by events of many shapes. Attribute access (``{data.x}``) and positional fields are
refused when the config is loaded. A format spec the value does not fit (``{data[name]:d}`` on a
string) fails that event alone: it is rejected to the dead-letter topic with the reason.

Delivery (:class:`ChatbotSink`): the events of a batch are sent one at a time, in order, at most
one message every ``min_interval`` seconds (the vendors throttle robots per minute). ``put`` returns
once every message was confirmed by the API. A rate limit, a 5xx, a timeout or a dropped connection
raises :class:`~runtime.errors.RetriableError` (with the server's ``Retry-After`` when it gives one),
and the worker retries the batch; what became of each event (confirmed, or rejected and why) is
remembered by ``source`` + ``id`` for the last ``remember`` events, so a retried batch or a
redelivered event posts no message twice and asks the API nothing it already answered (within one
process: a restarted worker may post a message again that was confirmed but not yet acked).
Credentials or a target the API refuses are a broken dependency, not bad data: retried (and
logged), never dead-lettered. Anything else the API refuses rejects that event.
"""

from __future__ import annotations

import asyncio
import re
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import aiohttp
import orjson
import structlog
from pydantic import Field, SecretStr, field_validator

from runtime import ConnectorConfig, ConnectorRecord, DataError, Rejection, RetriableError, Sink, SinkContext
from services.deliveries import retry_after_seconds

__all__ = [
    "ApiAnswer",
    "ChatbotConfig",
    "ChatbotSink",
    "MessageTemplate",
    "Post",
    "check_length",
    "validate_template",
]

log = structlog.get_logger()

_RETRIABLE_STATUS = frozenset({408, 425, 429})


class _Missing:
    """Stands for a name or key the event does not have."""


_MISSING = _Missing()


_FIELD_HEAD = re.compile(r"[^.\[]*")
_FIELD_PART = re.compile(r"\.([^.\[]*)|\[([^\]]*)\]")


def _field_parts(field_name: str) -> tuple[str, list[tuple[bool, int | str]]]:
    """``data[a][0]`` -> ``("data", [(False, "a"), (False, 0)])``: str.format's field grammar (True: attribute)."""
    head = _FIELD_HEAD.match(field_name)
    first = head.group() if head is not None else ""
    parts: list[tuple[bool, int | str]] = []
    position = len(first)
    while position < len(field_name):
        part = _FIELD_PART.match(field_name, position)
        if part is None:
            raise ValueError(f"field {{{field_name}}} is malformed: use name[key][index]")
        attribute, key = part.groups()
        if attribute is not None:
            parts.append((True, attribute))
        else:
            parts.append((False, int(key) if key.isdigit() else key))
        position = part.end()
    return first, parts


def validate_template(template: str) -> str:
    """Check ``template`` once, when the config is loaded (raises ValueError with the fix)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid format string ({exc}); write literal braces as {{{{ and }}}}") from exc
    for name in fields:
        first, rest = _field_parts(name)
        if not first or first.isdigit():
            raise ValueError(f"field {{{name}}} is positional; name an event attribute, e.g. {{subject}} or {{data[key]}}")
        if any(is_attribute for is_attribute, _ in rest):
            raise ValueError(f"field {{{name}}} uses attribute access; index JSON data instead, e.g. {{data[key]}}")
    return template


def _lookup(value: Any, key: int | str) -> Any:
    if isinstance(value, Mapping):
        if key in value:
            return value[key]
        return value.get(str(key), _MISSING)
    if isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
        return value[key]
    return _MISSING


class _EventFormatter(string.Formatter):
    def __init__(self, missing: str, escape: Callable[[str], str]) -> None:
        super().__init__()
        self.missing = missing
        self.escape = escape

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        first, rest = _field_parts(field_name)
        value = kwargs.get(first, _MISSING)
        for _, key in rest:
            value = _lookup(value, key)
        return value, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        return value if value is _MISSING else super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is _MISSING:
            return self.missing
        if value is None or isinstance(value, dict | list | bool):
            value = orjson.dumps(value).decode()
        return self.escape(format(value, format_spec))


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """A validated format string (see the module docstring) that renders events as message text."""

    template: str
    missing: str = ""
    escape: Callable[[str], str] = str

    def render(self, record: ConnectorRecord) -> str:
        """The text for ``record``; :class:`DataError` when a value does not fit its format spec."""
        data = record.data
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        names: dict[str, Any] = {
            **record.extensions,
            "id": record.id,
            "source": record.source,
            "type": record.type,
            "subject": record.subject,
            "time": record.timestamp.isoformat(),
            "datacontenttype": record.effective_content_type,
            "dataschema": record.dataschema,
            "data": data,
        }
        names = {name: _MISSING if value is None else value for name, value in names.items()}
        try:
            return _EventFormatter(self.missing, self.escape).vformat(self.template, (), names)
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataError(f"message template cannot render this event: {exc}") from exc


def check_length(text: str, limit: int, unit: str = "bytes") -> str:
    """``text`` if the API takes it; :class:`DataError` when it is empty or longer than ``limit`` (UTF-8 bytes or characters)."""
    if not text.strip():
        raise DataError("the rendered message is empty: the API refuses empty messages")
    size = len(text.encode()) if unit == "bytes" else len(text)
    if size > limit:
        raise DataError(f"the rendered message is {size} {unit}, over the API's limit of {limit}")
    return text


class ChatbotConfig(ConnectorConfig):
    """Settings every chat robot sink has (its own config model adds the target and credentials)."""

    template: str = Field(
        "{subject}: {data}", description="Message text: a format string over the event, e.g. 'order {data[id]} paid'."
    )
    missing: str = Field("", description="Text for a template field the event does not have.")
    timeout: float = Field(10.0, gt=0, description="Seconds for a whole API call (connect, send, answer).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    min_interval: float = Field(3.0, ge=0, description="Seconds between two messages at least (the API's rate limit).")
    rate_limit_backoff: float = Field(
        60.0, gt=0, description="Seconds to wait when the API says 'too fast' without a Retry-After."
    )
    remember: int = Field(
        10_000, ge=0, description="Event ids whose outcome is kept, so a retried batch repeats no message (0 = none)."
    )

    @field_validator("template")
    @classmethod
    def _valid_template(cls, template: str) -> str:
        return validate_template(template)


@dataclass(frozen=True, slots=True)
class Post:
    """One API call: where, what JSON (None: no body), which headers, which method."""

    url: str
    body: Mapping[str, Any] | None
    headers: Mapping[str, str]
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """What the API said: HTTP status, ``Retry-After`` seconds if any, the decoded JSON body (None if not JSON)."""

    status: int
    retry_after: float | None
    body: Any


ConfigT = TypeVar("ConfigT", bound=ChatbotConfig)


class ChatbotSink(Sink[ConfigT]):
    """A chat robot sink: subclasses say how a text becomes a request and what an answer means."""

    escape: ClassVar[Callable[[str], str]] = str
    """Applied to each value put into the template (not to the template's own text)."""

    def __init__(self, config: ConfigT) -> None:
        super().__init__(config)
        self._template = MessageTemplate(config.template, config.missing, type(self).escape)
        self._session: aiohttp.ClientSession | None = None
        self._outcomes: OrderedDict[tuple[str | None, str | None], str | None] = OrderedDict()
        """What became of the last ``remember`` events, by source + id: None delivered, else the rejection reason."""
        self._last_sent = 0.0

    def message(self, text: str, record: ConnectorRecord) -> Post:
        """The request posting ``text`` (raise :class:`DataError` when the API cannot take it)."""
        raise NotImplementedError

    def compose(self, record: ConnectorRecord) -> Post:
        """The request for ``record``: by default ``template`` rendered and handed to :meth:`message`."""
        return self.message(self._template.render(record), record)

    async def exchange(self, post: Post) -> str | None:
        """Send ``post`` and judge the answer: by default one call, judged by :meth:`verdict`."""
        return self.verdict(await self.send(post))

    def verdict(self, answer: ApiAnswer) -> str | None:
        """None when the message was delivered, else the reason it is rejected; raises RetriableError."""
        raise NotImplementedError

    async def start(self, context: SinkContext) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout, sock_connect=self.config.connect_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        rejections: list[Rejection] = []
        for record in records:
            key = (record.source, record.id)
            if key in self._outcomes:  # handled by an earlier attempt of this batch, or an earlier delivery
                reason = self._outcomes[key]
            else:
                reason = await self._deliver(record)
                self._remember(key, reason)
            if reason is not None:
                rejections.append(Rejection(record, reason))
        return rejections

    async def _deliver(self, record: ConnectorRecord) -> str | None:
        """Post the message of ``record``: None once the API confirmed it, else why it cannot be delivered."""
        try:
            post = self.compose(record)
        except DataError as exc:
            return exc.reason
        reason = await self.exchange(post)
        if reason is not None:
            log.warning("chat message rejected", connector=self.name, id=record.id, reason=reason)
        return reason

    def _remember(self, key: tuple[str | None, str | None], reason: str | None) -> None:
        if self.config.remember == 0 or key[1] is None:
            return
        self._outcomes[key] = reason
        if len(self._outcomes) > self.config.remember:
            self._outcomes.popitem(last=False)

    async def send(self, post: Post) -> ApiAnswer:
        """Make one API call, paced; the one seam where aiohttp's errors become ours."""
        assert self._session is not None, "start() first"
        wait = self._last_sent + self.config.min_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_sent = time.monotonic()
        try:
            async with self._session.request(post.method, post.url, json=post.body, headers=dict(post.headers)) as response:
                raw = await response.content.read(64 * 1024)
                status, retry_after_header = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetriableError(self.redact(f"{self.name}: the API call failed: {exc.__class__.__name__} {exc}")) from exc
        retry_after = retry_after_seconds(retry_after_header)
        if retry_after is None and status == 429:
            retry_after = self.config.rate_limit_backoff
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        excerpt = self.redact(raw[:200].decode("utf-8", "replace"))
        if status in _RETRIABLE_STATUS or status >= 500:
            raise RetriableError(f"{self.name}: the API answered {status}: {excerpt}", retry_after=retry_after)
        if body is None:
            raise RetriableError(f"{self.name}: the API answered {status} with no JSON: {excerpt}")
        return ApiAnswer(status, retry_after, body)

    def redact(self, text: str) -> str:
        """``text`` without the config's secrets: the tokens travel in URLs, which errors may quote."""
        for value in self.config.model_dump().values():
            if isinstance(value, SecretStr) and value.get_secret_value():
                text = text.replace(value.get_secret_value(), "***")
        return text

    def rate_limited(self, what: str, answer: ApiAnswer) -> RetriableError:
        """The error for an answer that says 'too fast'."""
        retry_after = answer.retry_after if answer.retry_after is not None else self.config.rate_limit_backoff
        return RetriableError(f"{self.name}: rate limited by the API ({what})", retry_after=retry_after)

    def refused_setup(self, what: str) -> RetriableError:
        """The error for credentials or a target the API refuses: fix the config; the events wait."""
        log.error("the API refuses the configured credentials or target; check the config", connector=self.name, answer=what)
        return RetriableError(f"{self.name}: the API refuses the configured credentials or target: {what}")

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
