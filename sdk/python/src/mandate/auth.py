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

import functools
import re
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from ._compat import to_thread
from .client import Mandate
from .errors import MandateError

_ERROR = re.compile(r'error="([^"]*)"')
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: A fresh credential after a 401 `invalid_token` at most this often per tool
#: (a tool that keeps saying so must not turn each request into an exchange).
FRESH_AT_MOST_EVERY = 10.0


def origin(url: str) -> Optional[Tuple[str, str, int]]:
    """(scheme, host, port) of an http(s) URL, the default port filled in."""
    u = urlsplit(url)
    if u.scheme not in _DEFAULT_PORTS or not u.hostname:
        return None
    try:
        return u.scheme, u.hostname.lower(), u.port or _DEFAULT_PORTS[u.scheme]
    except ValueError:
        return None


def _segments(url: str) -> Optional[List[str]]:
    """The path's segments; None for a path a server could read as another
    one (`.`/`..` segments, encoded or not, encoded slashes or backslashes,
    empty segments inside it)."""
    path = urlsplit(url).path
    segs = path.split("/")[1:]
    if segs and segs[-1] == "":
        segs = segs[:-1]  # a trailing slash
    for seg in segs:
        low = seg.lower().replace("%2e", ".")
        if seg == "" or low in (".", "..") or "%2f" in low or "%5c" in low or "\\" in seg:
            return None
    return segs


def under(url: str, base: str) -> bool:
    """`url` is at `base` or below it: same scheme, host and port, and
    `base`'s path segments first (so `/mcp/pay` is not under `/mcp/payments`);
    never a path with dot segments or encoded separators."""
    if origin(url) is None or origin(url) != origin(base):
        return False
    a, b = _segments(url), _segments(base)
    return a is not None and b is not None and a[: len(b)] == b


def tool_for(identity: Mapping[str, object], url: str) -> Optional[str]:
    """The run's tool whose URL (`mcp_url`, `proxy_url`, or an http(s)
    `audience`) `url` is under, the one with the most path segments; None
    if none is."""
    best: Optional[Tuple[int, str]] = None
    for t in identity.get("tools") or []:  # type: ignore[union-attr]
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            continue
        for k in ("mcp_url", "proxy_url", "audience"):
            base = t.get(k)
            if isinstance(base, str) and under(url, base):
                depth = len(_segments(base) or [])
                if best is None or depth > best[0]:
                    best = (depth, t["name"])
    return None if best is None else best[1]


class Flow:
    """The decisions, shared by every library's adapter.

    With `tool=None` the tool is the run's tool whose URL the request goes
    to (tools named at the run's start: `mandate exec --tool`); a request to
    any other URL goes without a credential. A named tool's credential goes
    to any URL, unless the broker says where it is used (`mcp_url`,
    `proxy_url`): then only there (`MandateError` `wrong_url` otherwise)."""

    def __init__(self, mandate: Mandate, tool: Optional[str], actions: Optional[Iterable[str]] = None):
        self.mandate, self.tool = mandate, tool
        self.actions = None if actions is None else list(actions)
        self.nonces: Dict[Tuple[str, str, int], str] = {}  # per origin (RFC 9449 §9)
        self.refreshed: Dict[str, float] = {}
        self.lock = threading.Lock()

    def headers(self, method: str, url: str, fresh: bool = False) -> dict:
        tool = self.tool or tool_for(self.mandate.identity(), url)
        if tool is None:
            return {}
        cred = self.mandate.credential(tool, self.actions, fresh=fresh)
        where = [u for u in (cred.mcp_url, cred.proxy_url) if u]
        if where and not any(under(url, u) for u in where):
            raise MandateError("wrong_url", f"the credential for `{tool}` is used at {where[0]} only; "
                               "this request goes elsewhere, so it was not sent")
        kind = cred.token_type.lower()
        if kind == "bearer":
            return {"Authorization": f"Bearer {cred.access_token}"}
        if kind != "dpop":
            raise MandateError("wrong_credential", f"a `{cred.token_type}` credential (`{tool}`) is not sent "
                               "in an Authorization header")
        with self.lock:
            nonce = self.nonces.get(origin(url))  # type: ignore[arg-type]
        proof = self.mandate.proof(method, url, cred.access_token, nonce)
        return {"Authorization": f"DPoP {cred.access_token}", "DPoP": proof}

    def retry(self, sent_to: str, answered_by: str, status: int, headers: Mapping[str, str]) -> Optional[str]:
        """After the answer to a request that carried a credential: `"nonce"`
        or `"fresh"` when a 401 of that very URL asks for another try, else
        None. An answer from elsewhere (a redirect's target) is not heeded."""
        if answered_by != sent_to:
            return None
        nonce = headers.get("dpop-nonce")
        if nonce:
            with self.lock:
                self.nonces[origin(sent_to)] = nonce  # type: ignore[index]
        if status != 401:
            return None
        errors = [m.group(1) for m in _ERROR.finditer(headers.get("www-authenticate", ""))]
        if "use_dpop_nonce" in errors and nonce:
            return "nonce"
        if "invalid_token" in errors:
            tool = self.tool or tool_for(self.mandate.identity(), sent_to) or ""
            now = time.monotonic()
            with self.lock:
                if now - self.refreshed.get(tool, -FRESH_AT_MOST_EVERY) < FRESH_AT_MOST_EVERY:
                    return None
                self.refreshed[tool] = now
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

        def _again(self, request: Any, response: Any) -> Optional[str]:
            # `response.request` is the last hop's when redirects were followed.
            return self.flow.retry(str(request.url), str(response.request.url), response.status_code,
                                   response.headers)

        def auth_flow(self, request: Any):  # type: ignore[override]
            attached = self._set(request)
            response = yield request
            again = attached and self._again(request, response)
            if again:
                self._set(request, fresh=again == "fresh")
                yield request

        async def async_auth_flow(self, request: Any):  # type: ignore[override]
            attached = await to_thread(self._set, request)
            response = yield request
            again = attached and self._again(request, response)
            if again:
                await to_thread(self._set, request, again == "fresh")
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
                # Bound to this URL: requests copies hooks onto redirected
                # requests, whose answers must not get a credential.
                r.register_hook("response", functools.partial(self._again, r.url))
            return r

        def _again(self, sent_to: str, response: Any, **kwargs: Any) -> Any:
            if response.is_redirect and response.request.url == sent_to:
                # requests copies this request's headers onto the redirect
                # (dropping Authorization only for another host): the
                # credential stays with the URL it was made for.
                for h in ("Authorization", "DPoP"):
                    response.request.headers.pop(h, None)
                return response
            again = self.flow.retry(sent_to, response.request.url, response.status_code, response.headers)
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
