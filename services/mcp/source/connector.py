"""mcp-source: an MCP server (Streamable HTTP) whose tools publish their calls as events.

AI agents connect to ``<path>`` with any MCP client. Each configured tool (``tools``) has a JSON
Schema for its arguments (``input_schema``, an object schema); a ``tools/call`` whose arguments
fit it becomes one event: the arguments are its data, its topic is the tool's ``topic`` (or, with
``topic_argument``, the caller's ``topic`` argument, which must be ``source.topic`` or match
``source.allowed_topics``), its type the tool's ``event_type``, its ``mcptool`` extension the tool's name.

The call is answered once the event is durably in the mesh (the shared intake,
:mod:`services.intake`): a successful result means stored. Its id is the caller's
``idempotency_key`` argument when given, else the session id and the JSON-RPC request id, so a
call the client sends again unchanged is the same event for idempotent sinks.

What the caller gets:

* a result ``{"id", "topic"}`` (``structuredContent`` and text) once the event is stored;
* a result with ``isError: true`` when it could not be stored in time, the queue is full or the
  server stops: nothing was published, the call may be sent again;
* a JSON-RPC error for what retrying cannot fix: malformed JSON (-32700), no JSON-RPC request
  (-32600), an unknown method (-32601), an unknown tool, arguments outside the schema or a topic
  not allowed (-32602).

HTTP-level refusals: a wrong bearer token (401), an ``Origin`` not in ``allowed_origins`` (403),
a body over ``max_body_bytes`` (413), no JSON content type (415), a missing (400) or unknown (404,
the client initializes again) ``Mcp-Session-Id``, an unsupported ``MCP-Protocol-Version`` (400).
``GET`` (a server-to-client stream) is not offered (405); ``DELETE`` ends a session. Sessions are
bounded in number (``max_sessions``, the least recently used is dropped) and idle time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Self

import jsonschema
import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime import MAX_EVENT_BODY, ConnectorRecord, DataError, SourceContext
from services.intake import IntakeConfig, IntakeSource, Refused
from services.mcp.client import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_VERSION,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROTOCOL_VERSIONS,
    SESSION_HEADER,
    TOOL_NAME_PATTERN,
    VERSION_HEADER,
    jsonrpc_error,
)

__all__ = ["McpSource", "McpSourceConfig", "ToolSpec"]

log = structlog.get_logger()

EXTENSION = "mcptool"  # the CloudEvent extension that names the tool called
IDEMPOTENCY_ARGUMENT = "idempotency_key"
TOPIC_ARGUMENT = "topic"
_MAX_ID_CHARS = 200
_OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "topic": {"type": "string"}},
    "required": ["id", "topic"],
}


class ToolSpec(BaseModel):
    """One tool the server offers; its calls become events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=TOOL_NAME_PATTERN, description="Tool name (letters, digits, _ - .; at most 128).")
    description: str = Field("", description="What the tool does, for the agent (operator text).")
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="JSON Schema (2020-12) of the arguments, an object schema; the arguments become the event data.",
    )
    topic: str | None = Field(
        None, description="Topic of the events (source.topic or one matching source.allowed_topics); unset: source.topic."
    )
    topic_argument: bool = Field(
        False, description="The caller names the topic in a 'topic' argument (source.topic or one of source.allowed_topics)."
    )
    event_type: str | None = Field(None, min_length=1, description="CloudEvent type of the events; unset: source.event_type.")

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        if schema.get("type") != "object":
            raise ValueError('the arguments of a tool are an object: give "type": "object"')
        reserved = {IDEMPOTENCY_ARGUMENT, TOPIC_ARGUMENT} & set(schema.get("properties", {}))
        if reserved:
            raise ValueError(f"argument(s) {', '.join(sorted(reserved))} are the connector's own; rename them")
        return schema

    @model_validator(mode="after")
    def _one_topic_rule(self) -> Self:
        if self.topic_argument and self.topic is not None:
            raise ValueError("give either topic or topic_argument: true, not both")
        return self

    def listing(self) -> dict[str, Any]:
        """The tool as ``tools/list`` shows it: the schema with the connector's own arguments added."""
        schema = dict(self.input_schema)
        properties = dict(schema.get("properties", {}))
        properties[IDEMPOTENCY_ARGUMENT] = {
            "type": "string",
            "minLength": 1,
            "maxLength": _MAX_ID_CHARS,
            "description": "Optional id of this event: the same key again is the same event (a retry is not a duplicate).",
        }
        if self.topic_argument:
            properties[TOPIC_ARGUMENT] = {"type": "string", "description": "Topic to publish the event to."}
            schema["required"] = sorted({*schema.get("required", []), TOPIC_ARGUMENT})
        schema["properties"] = properties
        return {"name": self.name, "description": self.description, "inputSchema": schema, "outputSchema": _OUTPUT_SCHEMA}


class McpSourceConfig(IntakeConfig):
    path: str = Field("/mcp", pattern=r"^/", description="URL path of the MCP endpoint.")
    max_body_bytes: int = Field(256 * 1024, ge=1, description="Largest request body accepted (413 above).")
    queue_size: int = Field(100, ge=1, description="Tool calls whose event is not yet in the mesh, at most (busy above).")
    retry_after: int = Field(1, ge=0, description="Seconds sent in Retry-After with a 503 (too many connections).")
    tools: list[ToolSpec] = Field(min_length=1, description="The tools offered; each call of one becomes an event.")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origin header values accepted (browser clients); a request with any other Origin is refused (403).",
    )
    response_timeout: float = Field(
        30.0, gt=0, description="Seconds a tool call waits for its event to be stored; then answered isError (call again)."
    )
    body_timeout: float = Field(10.0, gt=0, description="Seconds a request has to send its whole body; 408 after.")
    max_sessions: int = Field(1000, ge=1, description="Sessions kept at most; the least recently used is dropped.")
    session_idle_timeout: float = Field(3600.0, gt=0, description="Seconds a session may be unused before it is dropped.")
    instructions: str | None = Field(None, description="Text for agents in the initialize answer (operator text).")

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools: list[ToolSpec]) -> list[ToolSpec]:
        names = [tool.name for tool in tools]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"tool name(s) {', '.join(twice)} given twice")
        return tools


class _CallError(Exception):
    """A JSON-RPC request answered with an error (HTTP 200): retrying it unchanged cannot help."""

    def __init__(self, code: int, message: str, refusal: str = "malformed", *, logged: str | None = None) -> None:
        self.code = code
        self.message = message
        self.refusal = refusal
        self.logged = message if logged is None else logged  # what the log line says: no argument's value
        super().__init__(message)


class McpSource(IntakeSource[McpSourceConfig]):
    name = "mcp-source"
    description = "MCP server (Streamable HTTP) whose tool calls become events, answered once stored."
    config_model = McpSourceConfig

    def __init__(self, config: McpSourceConfig) -> None:
        super().__init__(config)
        self._tools = {tool.name: tool for tool in config.tools}
        self._validators = {tool.name: jsonschema.Draft202012Validator(tool.input_schema) for tool in config.tools}
        self._sessions: OrderedDict[str, float] = OrderedDict()  # session id -> when last used (monotonic)

    @classmethod
    def configured_topics(cls, config: McpSourceConfig) -> Iterable[tuple[str, str]]:
        return [(f"config.tools[{index}].topic", tool.topic) for index, tool in enumerate(config.tools) if tool.topic is not None]

    async def start(self, context: SourceContext) -> None:
        await super().start(context)
        log.info("mcp source listening", host=self.config.host, port=self.port, path=self.config.path, tools=list(self._tools))

    def _routes(self, app: web.Application) -> None:
        super()._routes(app)
        app.router.add_delete(self.config.path, self._end_session)
        app.router.add_get(self.config.path, self._no_stream)

    # -- HTTP --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            self._admit(request)
            message = await self._read_message(request)
        except Refused as rejected:
            return self._refuse(request, rejected)
        except _CallError as failed:
            self._context.count_refused(failed.refusal)
            return web.json_response(jsonrpc_error(None, failed.code, failed.message), status=400)
        if "method" not in message or "id" not in message:
            return web.Response(status=202)  # a notification, or a client's answer: nothing to do
        request_id = message["id"]
        try:
            if message["method"] == "initialize":
                return self._initialize(request_id, message.get("params"))
            session = self._session_of(request)
            result = await self._answer(session, request_id, message["method"], message.get("params"))
        except Refused as rejected:
            return self._refuse(request, rejected)
        except _CallError as failed:
            log.info("mcp call refused", code=failed.code, reason=failed.logged, remote=request.remote)
            self._context.count_refused(failed.refusal)
            return web.json_response(jsonrpc_error(request_id, failed.code, failed.message))
        return web.json_response({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _admit(self, request: web.Request) -> None:
        """Origin and token, before any of the body is read."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.config.allowed_origins:
            raise Refused(403, f"origin {origin[:100]!r} is not allowed; ask the operator to add it to allowed_origins")
        self._check_token(request)
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in PROTOCOL_VERSIONS:
            spoken = ", ".join(PROTOCOL_VERSIONS)
            raise Refused(400, f"unsupported {VERSION_HEADER} {version[:50]!r}; this server speaks {spoken}")

    async def _read_message(self, request: web.Request) -> dict[str, Any]:
        body = await self._read_json_body(request)
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _CallError(PARSE_ERROR, f"invalid JSON: {exc}") from exc
        if isinstance(message, list):
            raise _CallError(INVALID_REQUEST, "JSON-RPC batches are not part of this MCP revision; send one message per POST")
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise _CallError(INVALID_REQUEST, 'not a JSON-RPC 2.0 message: send an object with "jsonrpc": "2.0"')
        method, request_id = message.get("method"), message.get("id")
        if "method" in message and not isinstance(method, str):
            raise _CallError(INVALID_REQUEST, "method must be a string")
        if "id" in message and (isinstance(request_id, bool) or not isinstance(request_id, str | int)):
            raise _CallError(INVALID_REQUEST, "id must be a string or an integer")
        if isinstance(request_id, str) and len(request_id) > _MAX_ID_CHARS:
            raise _CallError(INVALID_REQUEST, f"id longer than {_MAX_ID_CHARS} characters")
        return message

    async def _end_session(self, request: web.Request) -> web.Response:
        try:
            self._admit(request)
            session = self._session_of(request)
        except Refused as rejected:
            return self._refuse(request, rejected)
        del self._sessions[session]
        return web.Response(status=204)

    async def _no_stream(self, request: web.Request) -> web.Response:
        return web.Response(status=405, headers={"Allow": "POST, DELETE"})

    # -- sessions ----------------------------------------------------------------------

    def _initialize(self, request_id: str | int, params: Any) -> web.Response:
        asked = params.get("protocolVersion") if isinstance(params, dict) else None
        version = asked if asked in PROTOCOL_VERSIONS else LATEST_VERSION
        session = secrets.token_urlsafe(24)
        self._expire_sessions()
        while len(self._sessions) >= self.config.max_sessions:
            self._sessions.popitem(last=False)
        self._sessions[session] = time.monotonic()
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "meshconnect-mcp-source", "version": "0.1.0"},
        }
        if self.config.instructions:
            result["instructions"] = self.config.instructions
        return web.json_response({"jsonrpc": "2.0", "id": request_id, "result": result}, headers={SESSION_HEADER: session})

    def _session_of(self, request: web.Request) -> str:
        session = request.headers.get(SESSION_HEADER)
        if not session:
            raise Refused(400, f"no {SESSION_HEADER} header: send initialize first and then the session id it gave")
        self._expire_sessions()
        if session not in self._sessions:
            raise Refused(404, "unknown or expired session: initialize a new one")
        self._sessions[session] = time.monotonic()
        self._sessions.move_to_end(session)
        return session

    def _expire_sessions(self) -> None:
        oldest_allowed = time.monotonic() - self.config.session_idle_timeout
        while self._sessions and next(iter(self._sessions.values())) < oldest_allowed:
            self._sessions.popitem(last=False)

    # -- methods -----------------------------------------------------------------------

    async def _answer(self, session: str, request_id: str | int, method: str, params: Any) -> dict[str, Any]:
        if method == "ping":
            return {}
        if method == "tools/list":
            return {"tools": [tool.listing() for tool in self._tools.values()]}
        if method == "tools/call":
            return await self._call(session, request_id, params)
        raise _CallError(METHOD_NOT_FOUND, f"method {method[:100]!r} is not offered (initialize, ping, tools/list, tools/call)")

    async def _call(self, session: str, request_id: str | int, params: Any) -> dict[str, Any]:
        record = self._record(session, request_id, params)
        if self._held.pending >= self.config.queue_size:
            self._context.count_refused("busy")
            return _failed("too many calls waiting to be stored; call again later")
        stored = self._held.hold([record])
        try:
            if not await asyncio.wait_for(asyncio.shield(stored), timeout=self.config.response_timeout):
                return _failed("server stopping; nothing was published, call again")
        except TimeoutError:
            return _failed(f"event {record.id} not yet stored in the mesh; call again with idempotency_key {record.id!r}")
        topic = record.subject or self._context.rules.topic or ""
        answer = {"id": record.id, "topic": topic}
        text = f"published event {record.id} to {topic}"
        return {"content": [{"type": "text", "text": text}], "structuredContent": answer, "isError": False}

    def _record(self, session: str, request_id: str | int, params: Any) -> ConnectorRecord:
        """The event of a ``tools/call``, or :class:`_CallError` when its params are not a call of an offered tool."""
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            raise _CallError(INVALID_PARAMS, "tools/call needs params {name, arguments}")
        tool = self._tools.get(params["name"])
        if tool is None:
            raise _CallError(INVALID_PARAMS, f"unknown tool {params['name'][:128]!r}; tools/list names the tools offered")
        arguments = params.get("arguments", {})
        if not isinstance(arguments, dict):
            raise _CallError(INVALID_PARAMS, "arguments must be a JSON object")
        data = dict(arguments)
        key = data.pop(IDEMPOTENCY_ARGUMENT, None)
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= _MAX_ID_CHARS):
            raise _CallError(INVALID_PARAMS, f"{IDEMPOTENCY_ARGUMENT} must be a text of 1 to {_MAX_ID_CHARS} characters")
        topic = tool.topic
        if tool.topic_argument:
            topic = data.pop(TOPIC_ARGUMENT, None)
            if not isinstance(topic, str) or not self._context.rules.permits(topic):
                shown = repr(topic[:200]) if isinstance(topic, str) else "none"
                raise _CallError(
                    INVALID_PARAMS, f"topic {shown} is not one this server publishes to; ask the operator", refusal="topic"
                )
        error = next(iter(self._validators[tool.name].iter_errors(data)), None)
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "(the arguments)"
            problem = f"arguments of {tool.name} do not fit its input schema at {where}"
            # The validator's message repeats the value, which may be a secret: the caller hears it, the log does not.
            raise _CallError(INVALID_PARAMS, f"{problem}: {error.message[:300]}", logged=f"{problem} ({error.validator})")
        record = ConnectorRecord(
            data=data,
            id=key or f"{session}-{request_id}",
            type=tool.event_type,
            subject=topic,
            datacontenttype="application/json",
            extensions={EXTENSION: tool.name},
        )
        try:
            size = len(self._context.rules.encode(record).body)
        except DataError as exc:
            raise _CallError(INVALID_PARAMS, f"cannot be an event: {exc.reason}") from exc
        if size > MAX_EVENT_BODY:
            raise _CallError(INVALID_PARAMS, f"event of {size} bytes is larger than the mesh takes ({MAX_EVENT_BODY})", "size")
        return record


def _failed(text: str) -> dict[str, Any]:
    """A tool result saying the call did nothing and may be sent again."""
    return {"content": [{"type": "text", "text": text}], "isError": True}
