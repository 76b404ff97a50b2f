"""MCP client auth for the official Python MCP SDK pointed at Mandate's MCP
gateway (`<broker>/mcp/<tool>`):

    from mandate.mcp import client_auth
    async with httpx2.AsyncClient(auth=client_auth(m, "payments")) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            await client.call_tool("pay", {"amount": 50})

The gateway credential for the tool is attached per request (a fresh DPoP
proof when the tool takes bound credentials, the nonce retry included), so
the MCP client needs no other change. The gateway URL is the credential's
`mcp_url` (`gateway_url(m, tool)`).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from .auth import httpx2_auth, httpx_auth
from .client import Mandate


def client_auth(mandate: Mandate, tool: str, actions: Optional[Iterable[str]] = None,
                lib: Optional[str] = None) -> Any:
    """An auth for the HTTP client the installed MCP SDK uses (`lib`:
    "httpx2" for MCP SDK 2.x, "httpx" for 1.x; found from the SDK's
    streamable HTTP transport when not given)."""
    lib = lib or _sdk_http_lib()
    if lib == "httpx2":
        return httpx2_auth(mandate, tool, actions)
    if lib == "httpx":
        return httpx_auth(mandate, tool, actions)
    raise ValueError('`lib` is "httpx2" or "httpx"')


def _sdk_http_lib() -> str:
    try:
        from mcp.client import streamable_http
    except ImportError:
        streamable_http = None  # type: ignore[assignment]
    for name in ("httpx2", "httpx"):
        if streamable_http is not None and hasattr(streamable_http, name):
            return name
    raise ValueError('cannot tell which HTTP client the MCP SDK uses: pass lib="httpx2" or lib="httpx"')


def gateway_url(mandate: Mandate, tool: str) -> str:
    """The MCP gateway URL of `tool`, as the broker gives it with its credential."""
    url = mandate.credential(tool).mcp_url
    if not url:
        raise ValueError(f"`{tool}` is not an MCP tool (its credential names no gateway URL)")
    return url
