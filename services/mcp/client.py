"""What mcp-source (a server) and mcp-sink (a client) share: the protocol revisions, headers and JSON-RPC codes.

Both speak the initialize handshake of the Streamable HTTP transport (revisions 2025-06-18 and
2025-11-25): one JSON-RPC 2.0 message per ``POST``, the session named by the ``Mcp-Session-Id``
header the server hands out with its ``initialize`` answer, and the negotiated revision repeated in
``MCP-Protocol-Version`` on every later request. JSON-RPC batches are not part of these revisions.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_VERSION",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PROTOCOL_VERSIONS",
    "SESSION_HEADER",
    "TOOL_NAME_PATTERN",
    "VERSION_HEADER",
    "jsonrpc_error",
]

PROTOCOL_VERSIONS: Final = ("2025-06-18", "2025-11-25")
"""The MCP revisions spoken, oldest first."""
LATEST_VERSION: Final = PROTOCOL_VERSIONS[-1]

SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"

# A tool name as the 2025-11-25 revision allows it.
TOOL_NAME_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,128}$"

# JSON-RPC 2.0 error codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603


def jsonrpc_error(request_id: str | int | None, code: int, message: str) -> dict[str, Any]:
    """The JSON-RPC error response to ``request_id`` (None when the request's id could not be read)."""
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
