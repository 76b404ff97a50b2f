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
from typing import Any, Iterable, Mapping, Optional

from .client import Mandate

_ERROR = re.compile(r'error="([^"]*)"')


class Flow:
    """The decisions, shared by every library's adapter."""

    def __init__(self, mandate: Mandate, tool: str, actions: Optional[Iterable[str]] = None):
        self.mandate, self.tool = mandate, tool
        self.actions = None if actions is None else list(actions)
        self.nonce: Optional[str] = None

    def headers(self, method: str, url: str, fresh: bool = False) -> dict:
        cred = self.mandate.credential(self.tool, self.actions, fresh=fresh)
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

        def __init__(self, mandate: Mandate, tool: str, actions: Optional[Iterable[str]] = None):
            self.flow = Flow(mandate, tool, actions)

        def _set(self, request: Any, fresh: bool = False) -> None:
            url = str(request.url)
            request.headers.update(self.flow.headers(request.method, url, fresh))

        def auth_flow(self, request: Any):  # type: ignore[override]
            self._set(request)
            response = yield request
            again = self.flow.retry(response.status_code, response.headers)
            if again:
                self._set(request, fresh=again == "fresh")
                yield request

        async def async_auth_flow(self, request: Any):  # type: ignore[override]
            await asyncio.to_thread(self._set, request)
            response = yield request
            again = self.flow.retry(response.status_code, response.headers)
            if again:
                await asyncio.to_thread(self._set, request, again == "fresh")
                yield request

    return MandateAuth


def httpx_auth(mandate: Mandate, tool: str, actions: Optional[Iterable[str]] = None) -> Any:
    """An `httpx.Auth` for `tool`'s credentials."""
    import httpx

    return _httpx_class(httpx)(mandate, tool, actions)


def httpx2_auth(mandate: Mandate, tool: str, actions: Optional[Iterable[str]] = None) -> Any:
    """An `httpx2.Auth` for `tool`'s credentials (e.g. for the MCP SDK's
    `streamable_http_client(url, http_client=httpx2.AsyncClient(auth=...))`)."""
    import httpx2  # type: ignore[import-not-found]

    return _httpx_class(httpx2)(mandate, tool, actions)


def requests_auth(mandate: Mandate, tool: str, actions: Optional[Iterable[str]] = None) -> Any:
    """A `requests` auth (`requests.get(url, auth=...)`) for `tool`'s credentials."""
    import requests

    class MandateAuth(requests.auth.AuthBase):
        def __init__(self) -> None:
            self.flow = Flow(mandate, tool, actions)

        def __call__(self, r: Any) -> Any:
            r.headers.update(self.flow.headers(r.method, r.url))
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
