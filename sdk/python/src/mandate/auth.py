"""HTTP client auth that attaches the right Mandate credential per request.

    client = httpx.Client(auth=mandate.auth.httpx_auth(m, "payments"))

Per request: the held credential for the tool (renewed at two thirds of its
life); a DPoP-bound one as `Authorization: DPoP` with a fresh proof for this
method and URL (`ath` set), a bearer one as `Authorization: Bearer`. Once
per request, on a 401 that asks for a DPoP nonce (RFC 9449 §9:
`WWW-Authenticate: DPoP error="use_dpop_nonce"` and `DPoP-Nonce`) the
request is sent again with it, and the nonce is kept for the next; on a 401
`invalid_token` (the credential expired, or the tool now takes bound
credentials only) it is sent again with a fresh credential. A revoked run
surfaces as `mandate.Revoked` from the credential request.

`httpx_auth` (httpx), `httpx2_auth` (httpx2, what the official MCP SDK 2.x
uses) and `requests_auth` (requests); each library is imported only when
its function is called.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .client import Mandate

_ERROR = re.compile(r'error="([^"]*)"')


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _parts(url: str) -> Optional[Tuple[str, str, int, List[str]]]:
    u = urlsplit(url)
    if u.scheme not in _DEFAULT_PORTS or not u.hostname:
        return None
    try:
        port = u.port or _DEFAULT_PORTS[u.scheme]
    except ValueError:
        return None
    return u.scheme, u.hostname.lower(), port, [seg for seg in u.path.split("/") if seg]


def under(url: str, base: str) -> bool:
    """`url` is at `base` or below it: same scheme, host and port, and
    `base`'s path segments first (so `/mcp/pay` is not under `/mcp/payments`)."""
    a, b = _parts(url), _parts(base)
    if a is None or b is None or a[:3] != b[:3]:
        return False
    return a[3][: len(b[3])] == b[3]


def tool_for(identity: Mapping[str, object], url: str) -> Optional[str]:
    """The run's tool whose URL (`mcp_url`, `proxy_url`, or an http(s)
    `audience`) `url` is under; the longest match; None if none is."""
    best: Optional[Tuple[int, str]] = None
    for t in identity.get("tools") or []:  # type: ignore[union-attr]
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            continue
        for k in ("mcp_url", "proxy_url", "audience"):
            base = t.get(k)
            if isinstance(base, str) and under(url, base):
                size = len(base)
                if best is None or size > best[0]:
                    best = (size, t["name"])
    return None if best is None else best[1]


class Flow:
    """The decisions, shared by every library's adapter. With `tool=None`
    the tool is the run's tool whose URL the request goes to (tools named
    at the run's start: `mandate exec --tool`); a request to any other URL
    goes without a credential."""

    def __init__(self, mandate: Mandate, tool: Optional[str], actions: Optional[Iterable[str]] = None):
        self.mandate, self.tool = mandate, tool
        self.actions = None if actions is None else list(actions)
        self.nonce: Optional[str] = None

    def headers(self, method: str, url: str, fresh: bool = False) -> dict:
        tool = self.tool or tool_for(self.mandate.identity(), url)
        if tool is None:
            return {}
        cred = self.mandate.credential(tool, self.actions, fresh=fresh)
        if not cred.bound:
            return {"Authorization": f"Bearer {cred.access_token}"}
        proof = self.mandate.proof(method, url, cred.access_token, self.nonce)
        return {"Authorization": f"DPoP {cred.access_token}", "DPoP": proof}

    def retry(self, status: int, headers: Mapping[str, str]) -> Optional[str]:
        """`"nonce"` or `"fresh"` when a 401 asks for another try, else None."""
        if status != 401:
            return None
        errors = [m.group(1) for m in _ERROR.finditer(headers.get("www-authenticate", ""))]
        nonce = headers.get("dpop-nonce")
        if "use_dpop_nonce" in errors and nonce:
            self.nonce = nonce
            return "nonce"
        if "invalid_token" in errors:
            return "fresh"
        return None


def _httpx_class(lib: Any) -> type:
    class MandateAuth(lib.Auth):  # type: ignore[misc, name-defined]
        """`auth=` for an httpx(2) client; see `mandate.auth`."""

        requires_response_body = False

        def __init__(self, mandate: Mandate, tool: Optional[str] = None, actions: Optional[Iterable[str]] = None):
            self.flow = Flow(mandate, tool, actions)

        def _set(self, request: Any, fresh: bool = False) -> bool:
            added = self.flow.headers(request.method, str(request.url), fresh)
            request.headers.update(added)
            return bool(added)

        def auth_flow(self, request: Any):  # type: ignore[override]
            attached = self._set(request)
            response = yield request
            again = attached and self.flow.retry(response.status_code, response.headers)
            if again:
                self._set(request, fresh=again == "fresh")
                yield request

        async def async_auth_flow(self, request: Any):  # type: ignore[override]
            attached = await asyncio.to_thread(self._set, request)
            response = yield request
            again = attached and self.flow.retry(response.status_code, response.headers)
            if again:
                await asyncio.to_thread(self._set, request, again == "fresh")
                yield request

    return MandateAuth


def httpx_auth(mandate: Mandate, tool: Optional[str] = None, actions: Optional[Iterable[str]] = None) -> Any:
    """An `httpx.Auth` for `tool`'s credentials."""
    import httpx

    return _httpx_class(httpx)(mandate, tool, actions)


def httpx2_auth(mandate: Mandate, tool: Optional[str] = None, actions: Optional[Iterable[str]] = None) -> Any:
    """An `httpx2.Auth` for `tool`'s credentials (e.g. for the MCP SDK's
    `streamable_http_client(url, http_client=httpx2.AsyncClient(auth=...))`)."""
    import httpx2  # type: ignore[import-not-found]

    return _httpx_class(httpx2)(mandate, tool, actions)


def requests_auth(mandate: Mandate, tool: Optional[str] = None, actions: Optional[Iterable[str]] = None) -> Any:
    """A `requests` auth (`requests.get(url, auth=...)`) for `tool`'s credentials."""
    import requests

    class MandateAuth(requests.auth.AuthBase):
        def __init__(self) -> None:
            self.flow = Flow(mandate, tool, actions)

        def __call__(self, r: Any) -> Any:
            added = self.flow.headers(r.method, r.url)
            if added:
                r.headers.update(added)
                r.register_hook("response", self._again)
            return r

        def _again(self, response: Any, **kwargs: Any) -> Any:
            again = self.flow.retry(response.status_code, response.headers)
            if not again or getattr(response.request, "_mandate_retried", False):
                return response
            response.content  # read, so the connection can be reused
            response.close()
            prep = response.request.copy()
            prep._mandate_retried = True
            prep.headers.update(self.flow.headers(prep.method, prep.url, fresh=again == "fresh"))
            sent = response.connection.send(prep, **kwargs)
            sent.history.append(response)
            sent.request = prep
            return sent

    return MandateAuth()
