"""mcp-sink's MCP client: a session with one server over Streamable HTTP, and the outcome of each tool call.

:class:`McpClientSession` initializes lazily and once (``initialize``, then
``notifications/initialized``; the ``Mcp-Session-Id`` the server hands out and the negotiated
``MCP-Protocol-Version`` go with every later request), checks that the server offers the tool,
and initializes again when the server answers 404 to the session (it restarted or expired it).
Only a call that finds no session negotiated takes the lock around initializing, so concurrent
calls start one handshake between them.
It is the one seam where aiohttp's errors and the server's answers become meshconnect's:

* a tool result: :data:`CALLED` (success), or a :class:`ToolRefused` reason (``isError: true``, or
  a JSON-RPC ``-32602`` invalid-params error: this event's arguments, to dead-letter);
* :class:`~runtime.RetriableError`: the server is unreachable, times out, answers 429 or 5xx or
  another JSON-RPC error, refuses the credentials (401, 403: logged once, until a request succeeds
  again), lacks the tool, or speaks no revision of :data:`~services.mcp.client.PROTOCOL_VERSIONS`.

An answer is read as JSON or as a server-sent event stream (:class:`SseDecoder`), at most
``max_response_bytes`` of it; requests the server sends on the stream are not answered (the
client declares no capabilities).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
import structlog

from runtime import RetriableError
from services.deliveries import retry_after_seconds
from services.mcp.client import INVALID_PARAMS, PROTOCOL_VERSIONS, SESSION_HEADER, VERSION_HEADER

__all__ = ["CALLED", "McpClientSession", "SseDecoder", "ToolRefused"]

log = structlog.get_logger()

CALLED: Final = None
"""The outcome of a successful tool call."""
_EXCERPT = 300  # characters of a refusal kept in its reason
_MAX_TOOL_PAGES = 50  # tools/list pages read at most to find the tool
_RETRIABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class ToolRefused:
    """The server refused this call's arguments or the tool failed on them: a data error."""

    reason: str


class SseDecoder:
    """Server-sent events, sans IO: feed bytes, get the ``data`` of each complete event (lines end in LF or CRLF;
    the fields other than ``data`` are ignored). Each byte is looked at once: a chunk without a line end is only
    kept, so a long line fed in small chunks costs its length, not its length squared."""

    def __init__(self) -> None:
        self._partial = bytearray()  # the line begun, not yet ended
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        last_end = chunk.rfind(b"\n")
        if last_end < 0:
            self._partial += chunk
            return
        self._partial += chunk[: last_end + 1]
        lines = bytes(self._partial).split(b"\n")[:-1]
        self._partial = bytearray(chunk[last_end + 1 :])
        for raw in lines:
            line = raw.removesuffix(b"\r")
            if not line:
                if self._data:
                    yield b"\n".join(self._data)
                self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value.removeprefix(b" "))


class McpClientSession:
    """One MCP session with the server at ``url``; ``call`` is safe to run concurrently."""

    def __init__(
        self,
        url: str,
        *,
        tool: str,
        version: str,
        headers: Mapping[str, str],
        timeout: float,
        connect_timeout: float,
        concurrency: int,
        max_response_bytes: int,
    ) -> None:
        self._url = url
        self._tool = tool
        self._version = version
        self._headers = {**headers, "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._concurrency = concurrency
        self._max_response_bytes = max_response_bytes
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._session_id: str | None = None
        self._negotiated: str | None = None
        self._opening = asyncio.Lock()
        self._credentials_refused = False  # logged once until the server takes them again

    async def open(self) -> None:
        """Initialize a session, unless one is open; :class:`RetriableError` when the server cannot be used yet."""
        if self._negotiated is not None:  # the common case, without the lock: nothing to wait for
            return
        async with self._opening:
            if self._negotiated is not None:
                return
            if self._http is None:
                connector = aiohttp.TCPConnector(limit=self._concurrency)
                self._http = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)
            try:
                session_id, version = await self._initialize()
                await self._notify("notifications/initialized", session_id=session_id, version=version)
                await self._require_tool(session_id, version)
            except _SessionLost:
                raise RetriableError(f"MCP server at {self._url} forgot the session it just opened") from None
            except _AnswerTooLarge:
                problem = f"MCP server at {self._url} answered the handshake with more than max_response_bytes"
                raise RetriableError(problem) from None
            self._session_id, self._negotiated = session_id, version
            log.info("mcp session open", url=self._url, version=version, session=session_id is not None)

    async def call(self, arguments: Mapping[str, Any]) -> ToolRefused | None:
        """Call the tool once: :data:`CALLED` or a :class:`ToolRefused`; :class:`RetriableError` when it did not answer."""
        params = {"name": self._tool, "arguments": arguments}
        for attempt in (1, 2):
            await self.open()
            session_id = self._session_id
            try:
                response, _ = await self._exchange("tools/call", params, session_id=session_id, version=self._negotiated)
                break
            except _AnswerTooLarge:
                return ToolRefused(f"the answer of {self._tool} is larger than max_response_bytes ({self._max_response_bytes})")
            except _SessionLost:
                self._forget(session_id)
                if attempt == 2:
                    raise RetriableError(f"MCP server at {self._url} forgot a new session at once") from None
                log.info("mcp session lost; initializing a new one", url=self._url)
        error = response.get("error")
        if isinstance(error, dict):
            message = str(error.get("message", ""))[:_EXCERPT]
            if error.get("code") == INVALID_PARAMS:
                return ToolRefused(f"MCP server refused the arguments of {self._tool} (-32602): {message}")
            raise RetriableError(f"MCP server answered tools/call with error {error.get('code')}: {message}")
        result = _result_of(response, "tools/call")
        if result.get("isError") is True:
            return ToolRefused(f"tool {self._tool} failed: {_text_of(result)}")
        return CALLED

    async def close(self) -> None:
        """End the session (best effort: the server may be gone) and the HTTP client."""
        if self._http is None:
            return
        if self._session_id is not None:
            headers = {SESSION_HEADER: self._session_id, VERSION_HEADER: self._negotiated or self._version}
            try:
                async with self._http.delete(self._url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)):
                    pass
            except (aiohttp.ClientError, TimeoutError):
                log.info("mcp session not ended: the server did not answer", url=self._url)
        await self._http.close()
        self._http = None
        self._session_id = self._negotiated = None

    # -- the wire ---------------------------------------------------------------------

    async def _initialize(self) -> tuple[str | None, str]:
        """The session id the server gave (None: it keeps none) and the revision it chose."""
        params = {
            "protocolVersion": self._version,
            "capabilities": {},
            "clientInfo": {"name": "meshconnect-mcp-sink", "version": "0.1.0"},
        }
        response, session_id = await self._exchange("initialize", params, session_id=None, version=None)
        version = _result_of(response, "initialize").get("protocolVersion")
        if not isinstance(version, str) or version not in PROTOCOL_VERSIONS:
            raise RetriableError(
                f"MCP server at {self._url} speaks revision {str(version)[:30]!r}; this sink speaks"
                f" {', '.join(PROTOCOL_VERSIONS)}: upgrade one of them"
            )
        return session_id, version

    def _forget(self, session_id: str | None) -> None:
        if self._session_id == session_id:  # another call may have opened a new one already
            self._session_id = self._negotiated = None

    async def _require_tool(self, session_id: str | None, version: str) -> None:
        cursor: str | None = None
        offered: list[str] = []
        for _ in range(_MAX_TOOL_PAGES):
            params = {"cursor": cursor} if cursor else {}
            response, _ = await self._exchange("tools/list", params, session_id=session_id, version=version)
            result = _result_of(response, "tools/list")
            tools = result.get("tools")
            names = [tool.get("name") for tool in tools if isinstance(tool, dict)] if isinstance(tools, list) else []
            if self._tool in names:
                return
            offered.extend(str(name)[:100] for name in names)
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        raise RetriableError(
            f"MCP server at {self._url} offers no tool {self._tool!r} (it offers {', '.join(offered[:20]) or 'none'});"
            " check config.tool"
        )

    async def _notify(self, method: str, *, session_id: str | None, version: str) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        async with self._post(message, session_id, version) as response:
            if response.status not in (200, 202, 204):
                raise RetriableError(f"MCP server at {self._url} answered {method} with HTTP {response.status}")

    async def _exchange(
        self, method: str, params: Mapping[str, Any], *, session_id: str | None, version: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """Send one request; its JSON-RPC response and the session id the server named (initialize)."""
        request_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            async with self._post(message, session_id, version) as response:
                self._check_status(response, method, session_id)
                answer = await self._read_response(response, request_id, method)
                return answer, response.headers.get(SESSION_HEADER)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetriableError(f"MCP server at {self._url} did not answer {method}: {type(exc).__name__} {exc}") from exc

    def _post(self, message: Mapping[str, Any], session_id: str | None, version: str | None) -> Any:
        assert self._http is not None, "open() creates the HTTP client"
        headers = {}
        if session_id is not None:
            headers[SESSION_HEADER] = session_id
        if version is not None:
            headers[VERSION_HEADER] = version
        return self._http.post(self._url, data=orjson.dumps(message), headers=headers, allow_redirects=False)

    def _check_status(self, response: aiohttp.ClientResponse, method: str, session_id: str | None) -> None:
        status = response.status
        if status == 200:
            self._credentials_refused = False
            return
        if status == 404 and session_id is not None:
            raise _SessionLost
        problem = f"MCP server at {self._url} answered {method} with HTTP {status}"
        if status in (401, 403):
            if not self._credentials_refused:  # the worker retries: one line for the outage, not one per call
                self._credentials_refused = True
                log.error("mcp server refuses the sink's credentials; check token and headers", url=self._url, status=status)
            raise RetriableError(f"{problem}: check token and headers")
        if status in _RETRIABLE_STATUS or status >= 500:
            raise RetriableError(problem, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        raise RetriableError(f"{problem}; the server does not take this client's requests")

    async def _read_response(self, response: aiohttp.ClientResponse, request_id: int, method: str) -> dict[str, Any]:
        """The JSON-RPC response to ``request_id``, from a JSON body or an event stream, within max_response_bytes."""
        budget = self._max_response_bytes
        if response.content_type == "text/event-stream":
            decoder = SseDecoder()
            async for chunk in response.content.iter_any():
                budget -= len(chunk)
                if budget < 0:
                    raise _AnswerTooLarge
                for data in decoder.feed(chunk):
                    message = _json_or_none(data)
                    if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
                        return message
            raise RetriableError(f"MCP server's event stream for {method} ended without the answer")
        body = await response.content.read(budget + 1)
        while len(body) <= budget and not response.content.at_eof():
            body += await response.content.read(budget + 1 - len(body))
        if len(body) > budget:
            raise _AnswerTooLarge
        message = _json_or_none(body)
        if not isinstance(message, dict) or message.get("id") != request_id:
            raise RetriableError(f"MCP server answered {method} with no JSON-RPC response to it")
        return message


class _SessionLost(Exception):
    """The server answered 404 to the session: it forgot it."""


class _AnswerTooLarge(Exception):
    """The answer is longer than max_response_bytes."""


def _json_or_none(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _result_of(response: dict[str, Any], method: str) -> dict[str, Any]:
    result = response.get("result")
    if isinstance(result, dict):
        return result
    error = response.get("error")
    detail = f"error {error.get('code')}: {str(error.get('message'))[:_EXCERPT]}" if isinstance(error, dict) else "no result"
    raise RetriableError(f"MCP server answered {method} with {detail}")


def _text_of(result: dict[str, Any]) -> str:
    content = result.get("content")
    texts = [item.get("text") for item in content if isinstance(item, dict)] if isinstance(content, list) else []
    text = " ".join(str(part) for part in texts if isinstance(part, str))
    return text[:_EXCERPT] or "(no text)"
