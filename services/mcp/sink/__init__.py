"""mcp-sink: call a tool of a remote MCP server for each event."""
