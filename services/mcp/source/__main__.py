"""mcp-source: an MCP server whose tool calls become events."""

from runtime import main_for
from services.mcp.source.connector import McpSource

main_for(McpSource)
