"""chatgpt-source: an HTTP endpoint that asks an OpenAI-compatible chat model about each text POSTed to it.

Two modes (``mode``): ``chat`` publishes the model's answer to the text; ``parse`` has the model write
the event itself from the operator's ``parse_prompt`` template, and publishes what of it the config
lets the model choose (see *Parse mode* below).

Accepted requests: ``POST <path>`` with ``Content-Type: application/json`` and a body
``{"text": "<prompt>", "id": "<optional delivery id>"}``. The text becomes the user message of one
Chat Completions call (``POST <base_url>/chat/completions``, ``Authorization: Bearer <api_key>``,
body ``{"model", "messages", "max_tokens"}`` plus ``temperature`` when set), after the configured
``system_prompt`` if any. The answer (``choices[0].message.content``) is published as one event on
``source.topic``, with data ``{"answer", "model", "finish_reason"}``. The request's text is only ever
prompt text: it chooses no topic, URL, model or option.

Parse mode: the user message is ``parse_prompt`` with each ``${text}`` replaced by the posted text
(plain substitution, once: the text is never read as a template). The answer must be one JSON
object (optionally inside a Markdown ```` ```json ```` fence) holding ``data`` and, of the attributes
``parse_attributes`` names, those the model chooses to set (``specversion`` may be given as "1.0");
any other member, ``id`` and ``source`` included, dead-letters the request: the id stays the
request's and the source the config's (``source.event_source``), a ``subject`` must be
``source.topic`` or a topic ``source.allowed_topics`` admits, and the event must pass the checks
the worker applies to every record (:meth:`runtime.publishing.PublishRules.encode`).

The event id is the sender's (``id`` in the body, else an ``Idempotency-Key`` header), so a retried
delivery is the same event for idempotent sinks; without one, each request is a new event.

The sender's response is held until the event is durably in the mesh (as http-source does): 200
means stored. What the API answers:

* 200 with a well-formed completion: published;
* 200 with a malformed body (not JSON, no ``choices[0].message.content`` text; in parse mode also
  an answer that is not an event the config allows), or a 400/413/422 refusing this prompt: the
  request is dead-lettered with the reason (the sender gets 200 with ``"dead_lettered": true``: it
  was stored, retrying cannot help);
* 429, 5xx, a timeout or a dropped connection: retried up to ``max_attempts`` times with
  exponential backoff and full jitter, honouring ``Retry-After``, within ``response_timeout``; then the
  sender gets 503 with ``Retry-After`` and nothing is published;
* 401, 403, 404 (key, permission or model wrong): logged as a setup problem, the sender gets 503.

Bounds: request bodies (``max_body_bytes``), prompt length (``max_prompt_chars``), answer size
(``max_tokens``, ``max_response_bytes``), calls in flight (``max_concurrent_calls``), events waiting
(``queue_size``), open connections (``max_connections``), the time a request head may take
(``header_timeout``, :mod:`services.connections`) and its body (``body_timeout``, then 408), every
network wait (``connect_timeout``, ``request_timeout``) and every request (``response_timeout``).
The API key appears in no log line or error message.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
import structlog
from aiohttp import web
from pydantic import Field, ValidationInfo, field_validator

from runtime import (
    MAX_EVENT_BODY,
    ConnectorRecord,
    DataError,
    HttpEndpoint,
    Secret,
    SourceContext,
)
from services.deliveries import retry_after_seconds
from services.intake import IntakeConfig, IntakeSource, Refused, error_response

__all__ = ["ChatGptSource", "ChatGptSourceConfig"]

log = structlog.get_logger()

EVENT_TYPE = "com.openai.chat.completion"
_REFUSED_PROMPT_STATUS = frozenset({400, 413, 422})  # the API says this prompt cannot be answered
_SETUP_STATUS = frozenset({401, 403, 404})  # key, permission or model: every prompt would fail alike
_EXCERPT = 300  # characters of an API error body kept in a reason
TEXT_PLACEHOLDER = "${text}"
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")
# A whole answer wrapped in one Markdown code fence, as chat models like to write JSON.
_FENCED = re.compile(r"\s*```(?:json)?[ \t]*\n(.*)\n[ \t]*```\s*", re.DOTALL)
ParseAttribute = Literal["type", "subject", "datacontenttype", "dataschema"]


class ChatGptSourceConfig(IntakeConfig):
    path: str = Field("/chatgpt", pattern=r"^/", description="URL path that accepts POSTed prompts.")
    max_body_bytes: int = Field(64 * 1024, ge=1, description="Largest request body accepted (413 above).")
    max_prompt_chars: int = Field(16_000, ge=1, description="Longest prompt text accepted, in characters (413 above).")
    mode: Literal["chat", "parse"] = Field(
        "chat",
        description="chat: publish the model's answer to each text; parse: the model writes the event from parse_prompt.",
    )
    parse_prompt: str | None = Field(
        None,
        validate_default=True,
        description="Mode parse: the prompt template, with ${text} where the posted text goes (its only placeholder).",
    )
    parse_attributes: list[ParseAttribute] = Field(
        ["type", "subject", "datacontenttype"],
        description="Mode parse: the CloudEvent attributes the model's answer may set besides data (a subject only to"
        " source.topic or a topic of source.allowed_topics).",
    )
    api_key: Secret = Field(description="API key of the chat API, sent as 'Authorization: Bearer <api_key>'.")
    base_url: HttpEndpoint = Field(
        "https://api.openai.com/v1",
        description="Base URL of an OpenAI-compatible API; '/chat/completions' is appended.",
    )
    model: str = Field("gpt-4o-mini", min_length=1, description="Model asked, e.g. gpt-4o-mini.")
    system_prompt: str | None = Field(None, description="System message sent before each prompt (operator text, not data).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; unset = the API's default.")
    max_tokens: int = Field(1024, ge=1, le=1_000_000, description="Most tokens an answer may have (sent as max_tokens).")
    max_response_bytes: int = Field(
        1024 * 1024, ge=1024, le=4 * 1024 * 1024, description="Largest API answer read, in bytes; larger is dead-lettered."
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to connect to the API.")
    request_timeout: float = Field(60.0, gt=0, description="Seconds one API call may take in all.")
    max_attempts: int = Field(4, ge=1, le=20, description="API calls per prompt at most (429, 5xx and network errors).")
    backoff_base: float = Field(1.0, gt=0, description="Seconds of the first backoff; doubled per attempt, full jitter.")
    backoff_max: float = Field(30.0, gt=0, description="Longest backoff in seconds (a longer Retry-After gives up).")
    max_concurrent_calls: int = Field(8, ge=1, description="API calls in flight at most; more requests wait.")
    queue_size: int = Field(100, ge=1, description="Answers not yet in the mesh, at most (503 above).")
    response_timeout: float = Field(
        180.0, gt=0, description="Seconds a request may take in all (API calls, retries, storing); 503 after."
    )
    retry_after: int = Field(5, ge=0, description="Seconds sent in Retry-After with a 503 when the API gave none.")

    @field_validator("parse_prompt")
    @classmethod
    def _template_fits_the_mode(cls, template: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode") != "parse":
            if template is not None:
                raise ValueError("parse_prompt is used only in mode parse: set mode: parse, or remove parse_prompt")
            return template
        if template is None or TEXT_PLACEHOLDER not in template:
            raise ValueError(f"mode parse needs a prompt template with {TEXT_PLACEHOLDER} where the posted text goes")
        unknown = sorted({found for found in _PLACEHOLDER.findall(template) if found != TEXT_PLACEHOLDER})
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join(name[:50] for name in unknown[:5])}: only {TEXT_PLACEHOLDER} is"
                " filled in; write other values into the template itself"
            )
        return template


class ChatGptSource(IntakeSource[ChatGptSourceConfig]):
    name = "chatgpt-source"
    description = (
        "HTTP endpoint that asks an OpenAI-compatible chat model about each POSTed text and publishes the answer,"
        " or the event the model wrote (mode parse)."
    )
    config_model = ChatGptSourceConfig

    def __init__(self, config: ChatGptSourceConfig) -> None:
        super().__init__(config)
        self._url = f"{config.base_url.rstrip('/')}/chat/completions"
        self._asking = 0  # requests admitted whose answer is not queued yet
        self._calls = asyncio.Semaphore(config.max_concurrent_calls)
        self._session: aiohttp.ClientSession | None = None

    async def start(self, context: SourceContext) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout, sock_connect=self.config.connect_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            await super().start(context)
        except BaseException:  # a refusal, or a stop while starting: the session is not left open
            await self._close_session()
            raise
        log.info("chatgpt source listening", host=self.config.host, port=self.port, path=self.config.path, api=self._url)

    async def stop(self) -> None:
        await super().stop()
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- request handling -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self.config.response_timeout):
                return await self._answer_request(request)
        except Refused as rejected:
            return self._refuse(request, rejected)
        except TimeoutError:
            return error_response(
                503, "no answer stored within response_timeout; retry later", retry_after=self.config.retry_after
            )

    async def _answer_request(self, request: web.Request) -> web.Response:
        self._check_token(request)
        prompt, event_id = await self._read_prompt(request)
        if self._held.pending + self._asking >= self.config.queue_size:
            raise Refused(503, "too many prompts waiting; retry later", retry_after=self.config.retry_after)
        self._asking += 1
        try:
            async with self._calls:
                record = await self._complete(prompt, event_id)
        finally:
            self._asking -= 1
        stored = self._held.hold([record])
        if not await asyncio.shield(stored):
            return error_response(503, "server stopping; retry later", retry_after=self.config.retry_after)
        return web.json_response({"id": record.id, "dead_lettered": record.refusal is not None})

    async def _read_prompt(self, request: web.Request) -> tuple[str, str]:
        body = await self._read_json_body(request)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, f"invalid JSON: {exc}") from exc
        if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str) or not parsed["text"].strip():
            raise Refused(400, 'send a JSON object {"text": "<prompt>"} with a non-empty text')
        unknown = sorted(set(parsed) - {"text", "id"})
        if unknown:
            raise Refused(400, f"unknown field(s) {', '.join(name[:50] for name in unknown[:5])}; send only text and id")
        text: str = parsed["text"]
        if len(text) > self.config.max_prompt_chars:
            raise Refused(413, f"text of {len(text)} characters is longer than max_prompt_chars ({self.config.max_prompt_chars})")
        given_id = parsed.get("id", request.headers.get("Idempotency-Key"))
        if given_id is not None and (not isinstance(given_id, str) or not 0 < len(given_id) <= 200):
            raise Refused(400, "id must be a text of 1 to 200 characters")
        return text, given_id or str(uuid.uuid4())

    # -- the chat API -----------------------------------------------------------------

    def _payload(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        messages.append({"role": "user", "content": self._user_message(prompt)})
        payload: dict[str, Any] = {"model": self.config.model, "messages": messages, "max_tokens": self.config.max_tokens}
        if self.config.temperature is not None:
            payload["temperature"] = self.config.temperature
        return payload

    def _user_message(self, prompt: str) -> str:
        """The prompt itself (chat), or the template with the prompt put in place of each ``${text}`` (parse):
        one pass over the template, so nothing in the prompt is ever read as a placeholder."""
        if self.config.parse_prompt is None:
            return prompt
        return self.config.parse_prompt.replace(TEXT_PLACEHOLDER, prompt)

    async def _complete(self, prompt: str, event_id: str) -> ConnectorRecord:
        """The record for ``prompt``: its answer, or a refusal to dead-letter; Refused(503) when the API stays away."""
        payload = orjson.dumps(self._payload(prompt))
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                status, retry_after, body = await self._call(payload)
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem, retry_after = f"the chat API could not be reached ({type(exc).__name__})", None
            else:
                if status == 200 and len(body) > self.config.max_response_bytes:
                    reason = f"answer from the chat API larger than max_response_bytes ({self.config.max_response_bytes})"
                    return _refused(prompt, event_id, reason)
                if status == 200:
                    return self._record_of(body, prompt, event_id)
                excerpt = body[:_EXCERPT].decode(errors="replace")
                if status in _REFUSED_PROMPT_STATUS:
                    return _refused(prompt, event_id, f"the chat API refused the prompt: HTTP {status}: {excerpt}")
                if status in _SETUP_STATUS:
                    log.error("chat API refuses the connector's setup; check api_key, base_url and model", status=status)
                    raise Refused(503, f"the chat API answered {status}; the connector's setup needs fixing")
                problem = f"the chat API answered {status}: {excerpt}"
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            if attempt == self.config.max_attempts or delay > self.config.backoff_max:
                log.warning("chat API unavailable; sender asked to retry", attempts=attempt, problem=problem)
                raise Refused(503, f"{problem}; retry later", retry_after=math.ceil(delay) or self.config.retry_after)
            log.info("chat API call failed; retrying", attempt=attempt, delay=round(delay, 2), problem=problem)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _record_of(self, body: bytes, prompt: str, event_id: str) -> ConnectorRecord:
        """The record for a 200 answer: the answer (chat) or the model's event (parse), else a refusal."""
        try:
            completion = _completion(body)
        except DataError as exc:
            return _refused(prompt, event_id, exc.reason)
        if self.config.mode == "chat":
            return _answer_record(completion, event_id)
        try:
            return self._parsed_event(completion.content, event_id)
        except DataError as exc:
            return _refused(prompt, event_id, exc.reason, answer=completion.content)

    def _parsed_event(self, answer: str, event_id: str) -> ConnectorRecord:
        """The event the model wrote in ``answer`` (parse mode), with the request's id; :class:`DataError` saying why
        when it is not one the config lets the model write."""
        fenced = _FENCED.fullmatch(answer)
        try:
            event = orjson.loads(fenced.group(1) if fenced else answer)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"the model's answer is not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise DataError(f"the model's answer is a JSON {type(event).__name__}, not an object")
        settable = {"data", "specversion", *self.config.parse_attributes}
        refused = sorted(set(event) - settable)
        if refused:
            raise DataError(
                f"the model's answer sets {', '.join(repr(name[:50]) for name in refused[:5])}, which it may not (it may"
                f" set {', '.join(sorted(settable))}; id and source are the connector's)"
            )
        if event.get("specversion", "1.0") != "1.0":
            raise DataError("the model's answer has a specversion other than 1.0")
        if "data" not in event:
            raise DataError("the model's answer has no data")
        attributes = {name: event[name] for name in self.config.parse_attributes if name in event}
        # Checked before use: a subject is matched against topics, and an empty value would leave the worker's default.
        wrong = [name for name, value in attributes.items() if not isinstance(value, str) or not value]
        if wrong:
            raise DataError(f"attribute {wrong[0]!r} in the model's answer must be a non-empty string")
        rules = self._context.rules
        refusal = rules.refusal(attributes.get("subject"))
        if refusal is not None:
            raise DataError(refusal)
        record = ConnectorRecord(data=event["data"], id=event_id, **attributes)
        size = len(rules.encode(record).body)  # the worker's own checks, here, so that the sender hears of a refusal
        if size > MAX_EVENT_BODY:
            raise DataError(f"the model's event of {size} bytes is larger than an EventMesh event may be ({MAX_EVENT_BODY})")
        return record

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1)))

    async def _call(self, payload: bytes) -> tuple[int, float | None, bytes]:
        assert self._session is not None, "start() opens the session"
        headers = {
            "Authorization": f"Bearer {self.config.api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }
        async with self._session.post(self._url, data=payload, headers=headers, allow_redirects=False) as response:
            body = await response.content.read(self.config.max_response_bytes + 1)
            while len(body) <= self.config.max_response_bytes and not response.content.at_eof():
                body += await response.content.read(self.config.max_response_bytes + 1 - len(body))
            return response.status, retry_after_seconds(response.headers.get("Retry-After")), body


@dataclass(frozen=True, slots=True)
class _Completion:
    """What a Chat Completions answer says: the model's text, and which model wrote it and why it stopped."""

    content: str
    model: str | None
    finish_reason: str | None


def _completion(body: bytes) -> _Completion:
    """The completion in a 200 answer's ``body``; :class:`DataError` when it holds none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DataError(f"malformed answer from the chat API: not JSON ({len(body)} bytes)") from None
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise DataError("malformed answer from the chat API: no text in choices[0].message.content")
    model = parsed.get("model")
    finish_reason = first.get("finish_reason")
    return _Completion(
        content, model if isinstance(model, str) else None, finish_reason if isinstance(finish_reason, str) else None
    )


def _answer_record(completion: _Completion, event_id: str) -> ConnectorRecord:
    return ConnectorRecord(
        data={"answer": completion.content, "model": completion.model, "finish_reason": completion.finish_reason},
        id=event_id,
        type=EVENT_TYPE,
        datacontenttype="application/json",
    )


def _refused(prompt: str, event_id: str, reason: str, *, answer: str | None = None) -> ConnectorRecord:
    """The record that dead-letters ``prompt`` with ``reason``; with the model's ``answer`` when it was the problem."""
    data = {"text": prompt} if answer is None else {"text": prompt, "answer": answer}
    return ConnectorRecord(data=data, id=event_id, type=EVENT_TYPE, datacontenttype="application/json", refusal=reason)
