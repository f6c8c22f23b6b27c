#!/usr/bin/env python3
"""A CoTrackPro-like MCP server built with the official `mcp` Python package, for the interop
test: the Rust MCP client must initialize, list and call tools against the real thing.

Usage: mcp_server.py PORT   (serves streamable HTTP at http://127.0.0.1:PORT/mcp)
"""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("cotrackpro-interop")


@server.tool()
def start_session(role: str, trigger: str) -> str:
    """Start a CoTrackPro documentation session for a role."""
    return f"session s-1 started for {role} ({trigger})"


@server.tool()
def check_safety(sessionId: str, context: str) -> str:
    """Safety triage when harm, danger, abuse, weapons or an emergency is mentioned."""
    tier = 1 if "gun" in context or "weapon" in context else 3
    return f"tier {tier} for session {sessionId}"


@server.tool()
def broken_tool(reason: str) -> str:
    """Always fails, to exercise isError."""
    raise ValueError(f"broken on purpose: {reason}")


if __name__ == "__main__":
    port = int(sys.argv[1])
    server.run(transport="streamable-http", host="127.0.0.1", port=port)
