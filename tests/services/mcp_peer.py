"""A real MCP server for the mcp-sink tests: the `mcp` SDK's MCPServer over Streamable HTTP, in its own process.

Its tool ``store(event_id, n, text)`` appends ``{"event_id", "n", "text"}`` as a JSON line to a file
(which outlives the process, so a restarted server keeps what was stored), once per event id (it
deduplicates as a tool given mcp-sink's ``id_argument`` can), and fails (a tool result with
``isError: true``) when the text is ``poison``. Killing the process drops its sessions, as a
restarted server does. Run: ``python -m tests.services.mcp_peer <port> <file>``.
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


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
