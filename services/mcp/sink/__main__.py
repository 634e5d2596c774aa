"""mcp-sink: call a tool of a remote MCP server for each event."""

from runtime import main_for
from services.mcp.sink.connector import McpSink

main_for(McpSink)
