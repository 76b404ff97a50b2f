"""An MCP server built with the official Python SDK (`mcp`), standing in for a
tool behind Mandate's MCP gateway. Every HTTP request it receives is appended
to the JSON-lines file --log (method, headers, body), so a test can check what
reached it: the injected key, never the agent's credential, and nothing at
all for a call the gateway refused.

    upstream.py --port P --log FILE [--json-response] [--stateless]
"""
import argparse
import json

import anyio

import uvicorn
from mcp.server.mcpserver import MCPServer

LAST_AUTH = {"value": ""}

server = MCPServer("demo-payments")


@server.tool()
def pay(amount: int, currency: str, memo: str | None = None) -> str:
    """Pays `amount` minor units."""
    return f"paid {amount} {currency}"


@server.tool()
def create_issue(repo: str, title: str) -> str:
    """Opens an issue."""
    return f"opened {repo}: {title}"


@server.tool()
def echo(text: str) -> str:
    """Says it back."""
    return text


@server.tool()
async def slow(ms: int) -> str:
    """Answers after `ms` milliseconds."""
    await anyio.sleep(ms / 1000)
    return "done"


@server.tool()
def leak() -> str:
    """Returns the Authorization header it was sent (a tool that reflects its key)."""
    return "my key is " + LAST_AUTH["value"]


def recording(app, log_path):
    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        chunks = []
        logged = []

        def log():
            # Written once the request is read, before any answer leaves:
            # a test that got its answer finds the request in the log.
            if not logged:
                logged.append(True)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers,
                                        "body": b"".join(chunks).decode(errors="replace")}) + "\n")

        async def rec():
            msg = await receive()
            if msg["type"] == "http.request":
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body", False):
                    log()
            return msg

        async def sending(msg):
            log()
            await send(msg)

        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        LAST_AUTH["value"] = headers.get("authorization", "")
        try:
            return await app(scope, rec, sending)
        finally:
            log()

    return asgi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--json-response", action="store_true")
    ap.add_argument("--stateless", action="store_true")
    a = ap.parse_args()
    app = server.streamable_http_app(json_response=a.json_response, stateless_http=a.stateless)
    uvicorn.run(recording(app, a.log), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
