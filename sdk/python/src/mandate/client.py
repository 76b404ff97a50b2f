"""`Mandate`: credentials for an agent run, from `mandate exec`'s socket or
straight from the broker (standalone).

Under `mandate exec` (`Mandate.from_env()`) the run key and the mandate stay
in the wrapper: Python asks the socket for credentials and proofs. Standalone
(`Mandate.join(...)`, `Mandate.from_mandate(...)`) this object holds the run
key in memory and speaks RFC 8693 token exchange with RFC 9449 DPoP itself.

Credentials are cached per (tool, actions) and asked anew once two thirds of
their life has passed; a request with `details` (RFC 9396, e.g. an amount)
is never cached: it is for one call.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple
from urllib.parse import urlencode, urlsplit

from . import _http, _compat
from .errors import (ApprovalPending, ApprovalTimeout, MandateError, NotUnderExec, Unavailable,
                     from_answer)
from .keys import RunKey

SOCKET_ENV = "MANDATE_AGENT_SOCK"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MANDATE_TOKEN_TYPE = "urn:mandate:params:oauth:token-type:mandate"


@dataclass(frozen=True)
class Credential:
    """A credential for one tool: `access_token` (never in repr), how to
    present it (`token_type`: `DPoP` = bound to the run key, a fresh proof
    per request; `Bearer`), and when it dies."""

    tool: str
    token_type: str
    scope: str
    issued_at: float
    expires_at: float
    credential_id: Optional[str]
    proxy_url: Optional[str]
    mcp_url: Optional[str]
    access_token: str = field(repr=False)
    answer: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def bound(self) -> bool:
        """True when each use needs a DPoP proof of the run key."""
        return self.token_type.lower() == "dpop"

    def fresh(self, now: Optional[float] = None) -> bool:
        """More than a third of its life left."""
        now = time.time() if now is None else now
        life = self.expires_at - self.issued_at
        return self.expires_at - now > life / 3

    @classmethod
    def from_answer(cls, tool: str, body: Any, now: float) -> "Credential":
        """From the token endpoint's (or the socket's) answer. `expires_in`
        is what is left (a held credential from the wrapper is part-used):
        the life, for renewal at two thirds, is the JWT's `exp - iat`."""
        if not isinstance(body, dict):
            raise Unavailable("server_error", "the answer is not a JSON object")
        token, left = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not all(33 <= ord(c) < 127 for c in token):
            # (Not quoted: it would be the secret.)
            raise Unavailable("server_error", "the answer carries no credential that fits an HTTP header")
        if isinstance(left, bool) or not isinstance(left, (int, float)) or not math.isfinite(left) or left < 0:
            raise Unavailable("server_error", "the answer's `expires_in` is not a number of seconds")
        life = _jwt_life(token) or float(left)
        expires_at = now + float(left)
        opt = {k: body.get(k) if isinstance(body.get(k), str) else None
               for k in ("credential_id", "proxy_url", "mcp_url")}
        return cls(tool=tool, token_type=str(body.get("token_type", "Bearer")), scope=str(body.get("scope", "")),
                   issued_at=expires_at - max(life, float(left)), expires_at=expires_at, access_token=token,
                   answer=dict(body), **opt)


def _jwt_life(token: str) -> Optional[float]:
    """`exp - iat` of a JWT credential (read, not verified: only for when
    to renew); None for other credentials."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        life = float(claims["exp"]) - float(claims["iat"])
    except (ValueError, KeyError, TypeError):
        return None
    return life if math.isfinite(life) and life > 0 else None


class _Socket:
    """The `mandate exec` wrapper's socket (docs/api.md, "The agent socket")."""

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout = path, timeout

    def _call(self, method: str, path: str, body: Any = None) -> _http.Answer:
        return _http.unix(self.path, method, path, body, self.timeout)

    def identity(self) -> Dict[str, Any]:
        a = self._call("GET", "/v1/identity")
        if a.status != 200:
            raise from_answer(a.status, a.body)
        return _object(a)

    def obtain(self, tool: str, actions: List[str], details: Optional[Mapping[str, Any]],
               fresh: bool, approval_id: Optional[str]) -> Dict[str, Any]:
        body: Dict[str, Any] = {"tool": tool, "actions": actions}
        if details is not None:
            body["details"] = dict(details)
        if fresh:
            body["fresh"] = True
        a = self._call("POST", "/v1/credentials", body)
        if a.status == 200:
            return _object(a)
        if a.status == 202:
            raise ApprovalPending(a.body or {}, a.status)
        raise from_answer(a.status, a.body)

    def proof(self, method: str, url: str, access_token: Optional[str], nonce: Optional[str]) -> str:
        body: Dict[str, Any] = {"method": method.upper(), "url": url}
        if access_token is not None:
            body["access_token"] = access_token
        if nonce is not None:
            body["nonce"] = nonce
        a = self._call("POST", "/v1/dpop", body)
        proof = _object(a).get("dpop") if a.status == 200 else None
        if not isinstance(proof, str):
            raise from_answer(a.status, a.body)
        return proof

    def attenuate(self, narrowing: Dict[str, Any]) -> Dict[str, Any]:
        a = self._call("POST", "/v1/attenuate", narrowing)
        if a.status != 200:
            raise from_answer(a.status, a.body)
        return _object(a)

    def delegate(self, body: Dict[str, Any]) -> Dict[str, Any]:
        a = self._call("POST", "/v1/delegate", body)
        if a.status != 200:
            raise from_answer(a.status, a.body)
        return _object(a)


class _Standalone:
    """The run key and mandate held here; the broker spoken to directly."""

    def __init__(self, broker: str, mandate: str, key: RunKey, started: Mapping[str, Any], timeout: float,
                 allow_http: bool = False):
        self.broker, self.mandate, self.key, self.timeout = broker.rstrip("/"), mandate, key, timeout
        self.started, self.allow_http = dict(started), allow_http
        endpoint = started.get("token_endpoint")
        self.token_endpoint = endpoint if isinstance(endpoint, str) else f"{self.broker}/oauth/token"
        # The mandate goes there: the same rule as for the broker's own URL.
        _check_broker(self.token_endpoint, allow_http)
        self.nonce: Optional[str] = None

    def identity(self) -> Dict[str, Any]:
        out = {k: v for k, v in self.started.items() if k != "mandate"}
        out["key_thumbprint"] = self.key.thumbprint
        return out

    def _post_proved(self, url: str, headers: Dict[str, str], data: bytes) -> _http.Answer:
        """POST with a DPoP proof; once more with the broker's nonce when it
        asks for one (RFC 9449 §8)."""
        a = None
        for _ in range(2):
            a = _http.request(url, "POST", {**headers, "DPoP": self.key.proof("POST", url, nonce=self.nonce)},
                              data, self.timeout)
            if a.headers.get("dpop-nonce"):
                self.nonce = a.headers["dpop-nonce"]
            if not (isinstance(a.body, dict) and a.body.get("error") == "use_dpop_nonce"):
                break
        assert a is not None
        return a

    def obtain(self, tool: str, actions: List[str], details: Optional[Mapping[str, Any]],
               fresh: bool, approval_id: Optional[str]) -> Dict[str, Any]:
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": self.mandate,
                "subject_token_type": MANDATE_TOKEN_TYPE, "audience": tool, "scope": " ".join(actions)}
        if details is not None:
            form["authorization_details"] = json.dumps([{**details, "type": "mandate"}])
        if approval_id is not None:
            form["approval_id"] = approval_id
        a = self._post_proved(self.token_endpoint, {"Content-Type": "application/x-www-form-urlencoded"},
                              urlencode(form).encode())
        if a.status == 200 and isinstance(a.body, dict):
            return _object(a)
        raise from_answer(a.status, a.body)

    def proof(self, method: str, url: str, access_token: Optional[str], nonce: Optional[str]) -> str:
        return self.key.proof(method, url, access_token, nonce)

    def attenuate(self, narrowing: Dict[str, Any]) -> Dict[str, Any]:
        raise MandateError("not_supported", "attenuation is signed in Mandate's offline block format, which this "
                           "SDK makes only under `mandate exec` (the wrapper signs); standalone, use "
                           "`mandate token attenuate`, or `delegate()` for a sub-agent run")

    def end(self) -> None:
        a = _http.request(f"{self.broker}/oauth/revoke", "POST",
                          {"Content-Type": "application/x-www-form-urlencoded"},
                          urlencode({"token": self.mandate}).encode(), self.timeout)
        if a.status != 200:
            raise from_answer(a.status, a.body)

    def delegate(self, body: Dict[str, Any]) -> Dict[str, Any]:
        url = f"{self.broker}/v1/runs/delegate"
        a = self._post_proved(url, {"Content-Type": "application/json"},
                              json.dumps({"mandate": self.mandate, **body}).encode())
        if a.status in (200, 201) and isinstance(a.body, dict):
            return _object(a)
        raise from_answer(a.status, a.body)


class Mandate:
    """Credentials for one agent run. Make one with `from_env()` (under
    `mandate exec`), `join()` (a join token) or `from_mandate()` (a mandate
    and key handed to this runtime, e.g. an attenuated one). Thread-safe."""

    def __init__(self, backend: Any):
        self._b = backend
        self._held: Dict[Tuple[str, Tuple[str, ...]], Credential] = {}
        self._stale: Set[Tuple[str, Tuple[str, ...]]] = set()
        self._inflight: Dict[Tuple[str, Tuple[str, ...]], threading.Lock] = {}
        self._lock = threading.Lock()
        self._identity: Optional[Dict[str, Any]] = None

    # -- making one ---------------------------------------------------

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, timeout: float = 30.0) -> "Mandate":
        """Under `mandate exec`: the wrapper's socket (`MANDATE_AGENT_SOCK`)."""
        env = os.environ if environ is None else environ
        path = env.get(SOCKET_ENV)
        if not path:
            raise NotUnderExec("not_under_exec", f"{SOCKET_ENV} is not set: run the agent under "
                               "`mandate exec --tenant T --agent A -- COMMAND`, or use Mandate.join() "
                               "with a join token")
        return cls(_Socket(path, timeout))

    @classmethod
    def join(cls, broker: str, join_token: str, *, tenant: str, agent: str, principal: Optional[str] = None,
             grant: Optional[str] = None, task: Optional[str] = None, ttl_secs: Optional[int] = None,
             tools: Optional[Iterable[str]] = None, capabilities: Optional[Iterable[str]] = None,
             key: Optional[RunKey] = None, alg: str = "EdDSA", timeout: float = 30.0,
             allow_http: bool = False) -> "Mandate":
        """Standalone: start a run with a join token (`mandate agent join-token`,
        good for one run). The run key is made here (`key`, else a new
        `alg` key) and kept in memory. `tools`: the tools whose URLs the
        auth adapters match requests against (as `mandate exec --tool`).
        An `http://` broker must be on this host unless `allow_http`."""
        _check_broker(broker, allow_http)
        token = _header_safe(join_token, "the join token")
        key = key or RunKey.generate(alg)
        body: Dict[str, Any] = {"tenant": tenant, "agent": agent, "jwk": key.jwk}
        for k, v in (("principal", principal), ("grant", grant), ("task", task), ("ttl_secs", ttl_secs),
                     ("tools", list(tools) if tools is not None else None),
                     ("capabilities", list(capabilities) if capabilities is not None else None)):
            if v is not None:
                body[k] = v
        a = _http.request(broker.rstrip("/") + "/v1/runs", "POST",
                          {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                          json.dumps(body).encode(), timeout)
        if a.status != 201 or not isinstance(a.body, dict) or "mandate" not in a.body:
            raise from_answer(a.status, a.body)
        started = {"tenant": tenant, "agent": agent, "principal": principal, **a.body}
        return cls(_Standalone(broker, a.body["mandate"], key, started, timeout, allow_http))

    @classmethod
    def from_mandate(cls, broker: str, mandate: str, key: RunKey, timeout: float = 30.0,
                     allow_http: bool = False) -> "Mandate":
        """Standalone: a mandate this runtime was given with the key it names
        as holder (e.g. one attenuated for it by a parent agent)."""
        _check_broker(broker, allow_http)
        return cls(_Standalone(broker, _header_safe(mandate, "the mandate"), key, {}, timeout, allow_http))

    # -- who ----------------------------------------------------------

    def identity(self) -> Dict[str, Any]:
        """The run: `run`, `run_id`, `tenant`, `agent`, `principal`,
        `capabilities`, `tools` (what the broker said at start)."""
        if self._identity is None:
            self._identity = self._b.identity()
        return dict(self._identity)

    @property
    def standalone(self) -> bool:
        return isinstance(self._b, _Standalone)

    # -- credentials --------------------------------------------------

    def _actions(self, tool: str, actions: Optional[Iterable[str]]) -> List[str]:
        if actions is not None:
            out = sorted(set(actions))
            if not out:
                raise ValueError("name at least one action")
            return out
        me = self.identity()
        for t in me.get("tools") or []:
            if t.get("name") == tool and t.get("actions"):
                return sorted(t["actions"])
        # The run's capabilities name `tool:action` (a wildcard is not an action).
        held = sorted({c.split(":", 1)[1] for c in me.get("capabilities") or []
                       if isinstance(c, str) and c.startswith(tool + ":") and "*" not in c})
        if held:
            return held
        raise ValueError(f"name the actions you need on `{tool}` (the run lists none for it)")

    def _attempt(self, tool: str, actions: List[str], details: Optional[Mapping[str, Any]], fresh: bool,
                 approval_id: Optional[str]) -> Credential:
        if details is not None:  # for one request: never cached, never shared
            return Credential.from_answer(tool, self._b.obtain(tool, actions, details, fresh, approval_id), time.time())
        key = (tool, tuple(actions))
        with self._lock:
            one = self._inflight.setdefault(key, threading.Lock())
        # Concurrent callers of the same credential share one exchange (and
        # one approval request): the second finds the first's in the cache.
        with one:
            with self._lock:
                fresh = key in self._stale or fresh
                self._stale.discard(key)
                held = self._held.get(key)
            if not fresh and held is not None and held.fresh():
                return held
            cred = Credential.from_answer(tool, self._b.obtain(tool, actions, None, fresh, approval_id), time.time())
            with self._lock:
                self._held[key] = cred
            return cred

    @staticmethod
    def _deadline(wait: Optional[float]) -> Optional[float]:
        if wait is None:
            return None
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) or wait < 0:
            raise ValueError("`wait` is a finite number of seconds")
        return time.monotonic() + wait

    @staticmethod
    def _pause(p: ApprovalPending, deadline: Optional[float], wait: Optional[float]) -> float:
        """How long to wait before asking again; raises when not waiting."""
        if deadline is None:
            raise p
        pause = min(p.interval, deadline - time.monotonic())
        if pause <= 0:
            raise ApprovalTimeout(_pending_body(p, wait), p.status) from None
        return pause

    def credential(self, tool: str, actions: Optional[Iterable[str]] = None, *,
                   details: Optional[Mapping[str, Any]] = None, fresh: bool = False,
                   wait: Optional[float] = None) -> Credential:
        """A credential for `tool` and `actions` (default: all the run holds
        on it). `details`: RFC 9396 fields of this one request (`amount` in
        minor units, `currency`, `target`, `description`). `fresh`: drop
        the held one first. A request that needs a human's approval raises
        `ApprovalPending`; with `wait=` seconds it is asked again at the
        broker's interval until approved, then `ApprovalTimeout` (one
        request may take up to the client's `timeout` beyond `wait`)."""
        deadline = self._deadline(wait)
        acts = self._actions(tool, actions)
        approval: Optional[str] = None
        while True:
            try:
                return self._attempt(tool, acts, details, fresh, approval)
            except ApprovalPending as p:
                approval = p.approval_id or approval
                time.sleep(self._pause(p, deadline, wait))
            fresh = False

    async def acredential(self, tool: str, actions: Optional[Iterable[str]] = None, *,
                          details: Optional[Mapping[str, Any]] = None, fresh: bool = False,
                          wait: Optional[float] = None) -> Credential:
        """`credential()` for async code (asyncio, or trio through anyio):
        requests run in a thread and waits do not block the loop."""
        deadline = self._deadline(wait)
        acts = await _compat.to_thread(self._actions, tool, actions)
        approval: Optional[str] = None
        while True:
            try:
                return await _compat.to_thread(self._attempt, tool, acts, details, fresh, approval)
            except ApprovalPending as p:
                approval = p.approval_id or approval
                await _compat.sleep(self._pause(p, deadline, wait))
            fresh = False

    def forget(self, tool: str, actions: Optional[Iterable[str]] = None) -> None:
        """Drops held credentials for `tool` (only those for `actions` if
        given): the next request asks for a fresh one (past the wrapper's
        cache too)."""
        only = None if actions is None else tuple(sorted(set(actions)))
        with self._lock:
            for k in [k for k in self._held if k[0] == tool and (only is None or k[1] == only)]:
                del self._held[k]
                self._stale.add(k)

    # -- proofs, sub-agents -------------------------------------------

    def proof(self, method: str, url: str, access_token: Optional[str] = None,
              nonce: Optional[str] = None) -> str:
        """A DPoP proof of the run key for one request (RFC 9449): `access_token`
        sets `ath`, `nonce` is the server's `DPoP-Nonce`."""
        return self._b.proof(method, url, access_token, nonce)

    def attenuate(self, to: str, *, only: Optional[Iterable[str]] = None, ttl_secs: Optional[int] = None,
                  uses: Optional[int] = None, path_prefix: Optional[str] = None,
                  to_name: Optional[str] = None) -> str:
        """The run's mandate narrowed for a sub-agent holding the key with
        thumbprint `to` (`RunKey.thumbprint`): only `["tool:action"]`, for
        `ttl_secs`, `uses` exchanges, under `path_prefix`. Offline: the
        sub-agent exchanges it with `Mandate.from_mandate(broker, m, key)`."""
        n: Dict[str, Any] = {"to": to}
        for k, v in (("only", list(only) if only is not None else None), ("ttl_secs", ttl_secs),
                     ("uses", uses), ("path_prefix", path_prefix), ("to_name", to_name)):
            if v is not None:
                n[k] = v
        m = self._b.attenuate(n).get("mandate")
        if not isinstance(m, str):
            raise Unavailable("server_error", "the answer carries no mandate")
        return m

    def delegate(self, agent: str, *, capabilities: Optional[Iterable[str]] = None,
                 ttl_secs: Optional[int] = None, task: Optional[str] = None,
                 key: Optional[RunKey] = None) -> "Mandate":
        """Start a child run for `agent` (a registered agent) with at most
        this run's capabilities; returns the child's `Mandate`, standalone
        with its own key (`key`, or a new one). Under `mandate exec` the
        wrapper proves the parent run (its key never enters Python)."""
        key = key or RunKey.generate(self._b.key.alg if isinstance(self._b, _Standalone) else "EdDSA")
        body: Dict[str, Any] = {"agent": agent, "jwk": key.jwk}
        for k, v in (("capabilities", list(capabilities) if capabilities is not None else None),
                     ("ttl_secs", ttl_secs), ("task", task)):
            if v is not None:
                body[k] = v
        child = self._b.delegate(body)
        if not isinstance(child.get("mandate"), str):
            raise Unavailable("server_error", "the answer carries no mandate")
        if isinstance(self._b, _Standalone):
            broker, timeout, allow_http = self._b.broker, self._b.timeout, self._b.allow_http
        else:
            broker, timeout = str(self.identity().get("broker") or ""), self._b.timeout
            allow_http = False
        _check_broker(broker, allow_http)
        return Mandate(_Standalone(broker, child["mandate"], key, child, timeout, allow_http))

    def end(self) -> None:
        """Standalone: ends this run now (RFC 7009 revocation of its mandate
        by its holder): every credential it got is refused from here on.
        Under `mandate exec` the run ends when the command exits."""
        if not isinstance(self._b, _Standalone):
            raise MandateError("not_supported", "under `mandate exec` the run ends when the command exits")
        self._b.end()
        with self._lock:
            self._held.clear()

    def __repr__(self) -> str:
        return f"Mandate({'standalone' if self.standalone else 'mandate exec'})"


def _object(a: _http.Answer) -> Dict[str, Any]:
    """A success's JSON object (anything else is the server's fault)."""
    if not isinstance(a.body, dict):
        raise Unavailable("server_error", f"the answer (HTTP {a.status}) is not a JSON object")
    return dict(a.body)


def _check_broker(broker: str, allow_http: bool) -> None:
    """An `http://` broker only on this host (loopback), unless allowed:
    join tokens and mandates are bearer secrets to whoever reads the wire."""
    u = urlsplit(broker)
    if u.scheme == "https":
        return
    if u.scheme != "http" or not u.hostname:
        raise ValueError("the broker's URL is https://host[:port] (or http:// on this host)")
    host = u.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not (loopback or allow_http):
        raise ValueError(f"refusing to send a join token or mandate in clear to {host}: use https, "
                         "or pass allow_http=True on a network you trust")


def _header_safe(secret: str, what: str) -> str:
    """`secret` trimmed; refused (without quoting it) unless it is one line
    of printable ASCII, as an HTTP header or form value needs."""
    if not isinstance(secret, str):
        raise TypeError(f"{what} is a string")
    out = secret.strip()
    if not out or not all(33 <= ord(c) < 127 for c in out):
        raise ValueError(f"{what} is not one word of printable ASCII (was it read with extra characters?)")
    return out


def _pending_body(p: ApprovalPending, waited: Optional[float]) -> Dict[str, Any]:
    return {"error_description": f"no approval within {waited} s: {p.description}",
            "approval_id": p.approval_id, "interval": p.interval, "approvers": list(p.approvers)}


__all__ = ["Credential", "Mandate", "SOCKET_ENV", "Unavailable"]
