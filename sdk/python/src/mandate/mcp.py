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


def client_auth(mandate: Mandate, tool: str, actions: Optional[Iterable[str]] = None) -> Any:
    """An auth for the HTTP client the MCP SDK uses: `httpx2` (MCP SDK 2.x)
    when installed, else `httpx` (MCP SDK 1.x)."""
    try:
        import httpx2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return httpx_auth(mandate, tool, actions)
    return httpx2_auth(mandate, tool, actions)


def gateway_url(mandate: Mandate, tool: str) -> str:
    """The MCP gateway URL of `tool`, as the broker gives it with its credential."""
    url = mandate.credential(tool).mcp_url
    if not url:
        raise ValueError(f"`{tool}` is not an MCP tool (its credential names no gateway URL)")
    return url
