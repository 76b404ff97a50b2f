"""A stdio MCP server built with the official Python SDK (`mcp`), as the
broker starts one for an `mcp` tool registered with `--stdio`: it reads its
API key from its environment (DEMO_API_KEY), as most MCP servers do, and
says who called (the `_meta` the gateway adds) without ever being told by
the agent.

    stdio_server.py [--banner]

With --banner it first prints a line that is not JSON-RPC on stdout, as
servers that greet their user do (and break the protocol).
"""
import hashlib
import json
import os
import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("demo-stdio")


def key() -> str:
    return os.environ.get("DEMO_API_KEY", "")


@server.tool()
def whoami(ctx: Context) -> str:
    """Says which key it holds (a digest) and on whose behalf it was called."""
    meta = ctx.request_context.meta
    if meta is not None and not isinstance(meta, dict):
        meta = meta.model_dump() if hasattr(meta, "model_dump") else dict(meta)
    caller = (meta or {}).get("dev.mandate/caller")
    return json.dumps({"key_sha256": hashlib.sha256(key().encode()).hexdigest(), "caller": caller,
                       "pid": os.getpid(), "env": sorted(os.environ)})


@server.tool()
def lookup(account: str) -> str:
    """Looks an account up."""
    return f"account {account}: ok"


@server.tool()
def leak() -> str:
    """Returns its key (a tool that reflects its secret)."""
    return "my key is " + key()


@server.tool()
def crash() -> str:
    """Exits at once, mid-call."""
    os._exit(3)


if __name__ == "__main__":
    sys.stderr.write(f"demo-stdio starting (key {key()})\n")
    if "--banner" in sys.argv:
        sys.stdout.write("Welcome to demo-stdio!\n")
        sys.stdout.flush()
    server.run("stdio")
