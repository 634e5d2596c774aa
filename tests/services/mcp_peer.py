"""A real MCP server for the mcp-sink tests: the `mcp` SDK's MCPServer over Streamable HTTP, in its own process.

Its tool ``store(event_id, n, text)`` appends ``{"event_id", "n", "text"}`` as a JSON line to a file
(which outlives the process, so a restarted server keeps what was stored), once per event id (it
deduplicates as a tool given mcp-sink's ``id_argument`` can), and fails (a tool result with
``isError: true``) when the text is ``poison``. Killing the process drops its sessions, as a
restarted server does. Run: ``python -m tests.services.mcp_peer <port> <file>``.

:class:`McpGate` stands in front of it to answer chosen tool calls with an HTTP refusal (429, 503, 401, ...)
and to note when each call came.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.servers import free_port

POISON = "poison"


def serve(port: int, stored: Path) -> None:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("meshconnect-test-peer", log_level="WARNING")
    seen = {json.loads(line)["event_id"] for line in stored.read_text().splitlines() if line} if stored.exists() else set()

    @server.tool()
    def store(event_id: str, n: int, text: str) -> str:
        """Store one numbered text."""
        if text == POISON:
            raise ToolError("poison is not stored")
        if event_id not in seen:
            with stored.open("a") as file:
                file.write(json.dumps({"event_id": event_id, "n": n, "text": text}) + "\n")
            seen.add(event_id)
        return f"stored {event_id}"

    asyncio.run(server.run_streamable_http_async(host="127.0.0.1", port=port))


class McpPeer:
    """The server process: ``start``, ``kill`` (SIGKILL: gone mid-stream, sessions lost), ``start`` again on the port;
    the ``*_now`` forms block, for a module's fixture."""

    def __init__(self, port: int, stored: Path) -> None:
        self.port = port
        self.stored = stored
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        await asyncio.to_thread(self.start_now)

    async def kill(self) -> None:
        await asyncio.to_thread(self.kill_now)

    def start_now(self, within: float = 30.0) -> None:
        command = [sys.executable, "-m", "tests.services.mcp_peer", str(self.port), str(self.stored)]
        self.process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + within
        while not _accepts(self.port):
            assert self.process.poll() is None, f"the MCP test server exited with {self.process.returncode}"
            assert time.monotonic() < deadline, f"the MCP test server did not listen within {within}s"
            time.sleep(0.05)

    def kill_now(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def calls(self, prefix: str = "") -> list[dict[str, Any]]:
        """Every stored call whose event id starts with ``prefix``, in order."""
        if not self.stored.exists():
            return []
        calls = [json.loads(line) for line in self.stored.read_text().splitlines() if line]
        return [call for call in calls if call["event_id"].startswith(prefix)]


class McpGate:
    """An HTTP hop between mcp-sink and an MCP server that forwards every request and its answer, except a
    ``tools/call`` while a refusal is scripted: it gets the next of ``refusals`` (status, headers), else ``lasting``
    when set. ``calls`` holds (when it came, monotonic; the status it got) of each ``tools/call``."""

    _REQUEST_HEADERS = ("Accept", "Authorization", "Content-Type", "Mcp-Session-Id", "MCP-Protocol-Version")
    _ANSWER_HEADERS = ("Content-Type", "Mcp-Session-Id")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.refusals: list[tuple[int, dict[str, str]]] = []
        self.lasting: tuple[int, dict[str, str]] | None = None
        self.calls: list[tuple[float, int]] = []
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def __aenter__(self) -> McpGate:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_route("*", "/mcp", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.read()
        is_call = request.method == "POST" and b'"tools/call"' in body
        came = time.monotonic()
        refusal = (self.refusals.pop(0) if self.refusals else self.lasting) if is_call else None
        if refusal is not None:
            status, headers = refusal
            self.calls.append((came, status))
            return web.json_response({"error": "refused by the gate"}, status=status, headers=headers)
        headers = {name: request.headers[name] for name in self._REQUEST_HEADERS if name in request.headers}
        async with self._http.request(request.method, self.upstream, data=body, headers=headers) as answer:
            content = await answer.read()
            if is_call:
                self.calls.append((came, answer.status))
            kept = {name: answer.headers[name] for name in self._ANSWER_HEADERS if name in answer.headers}
            return web.Response(status=answer.status, body=content, headers=kept)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
