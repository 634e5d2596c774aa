"""MCP (Model Context Protocol, JSON-RPC 2.0 over Streamable HTTP): mcp-source, an MCP server whose tool calls
become events, and mcp-sink, an MCP client that calls a remote tool per event; what both share is in
:mod:`services.mcp.client`."""
