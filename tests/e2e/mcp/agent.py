"""An agent under `mandate exec`: an MCP client (the official Python SDK)
that reads two variables, the gateway URL and its credential, and nothing
else about Mandate. Prints what its calls returned, as JSON."""
import json
import os

import anyio
import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main():
    url, token = os.environ["MCP_URL"], os.environ["MCP_TOKEN"]
    out = {"env_has_upstream_key": any("upstream-key" in v for v in os.environ.values())}
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http_client:
        async with Client(streamable_http_client(url, http_client=http_client)) as client:
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            for amount in (50, 5000):
                r = await client.call_tool("pay", {"amount": amount, "currency": "EUR"})
                out[str(amount)] = {"error": r.is_error,
                                    "text": "".join(c.text for c in r.content if c.type == "text")}
    print(json.dumps(out))


anyio.run(main)
