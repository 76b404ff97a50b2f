"""The Python SDK against the real broker: under `mandate exec` (the socket)
and standalone (a join token, the key held by the SDK), through httpx,
httpx2, requests and the official MCP SDK to the broker's MCP gateway,
which checks every DPoP proof (method, URL, `ath`, nonce, replay)."""
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_mcp import setup_gateway
from test_story import BIN, ROOT

HERE = Path(__file__).resolve().parent
SDK = HERE.parent / "src"

PAY_POLICY = """
@id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);
@id("small-eur") forbid (principal, action == Mandate::Action::"payments:pay", resource)
unless { context.arguments.amount <= 100 && context.arguments.currency == "EUR" };
"""


def claims_of(token):
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


class Agent:
    """The agent process (tests/agent.py): one JSON command, one JSON answer."""

    def __init__(self, argv, env):
        env = dict(env, PYTHONPATH=str(SDK))
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def __call__(self, op, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the agent died: " + self.proc.stderr.read())
        return json.loads(line)

    def ok(self, op, **args):
        out = self(op, **args)
        assert "ok" in out, out
        return out["ok"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=20)


@pytest.fixture
def redirector():
    """Two origins: A answers a request with a 307 to B (to its own
    `/landed` for a path under `/same`); B and `/landed` answer 401 asking
    for a DPoP nonce. Both record the headers they got."""
    import http.server
    import threading

    seen = {"a": [], "b": []}
    servers = []

    def handler(name, answer):
        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen[name].append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                answer(self)

            def log_message(self, *args):
                pass
        return H

    def to_b(h):
        if h.path == "/landed":
            return nonce(h)
        h.send_response(307)
        port = servers[0 if h.path.startswith("/same") else 1].server_port
        h.send_header("Location", f"http://127.0.0.1:{port}/{'landed' if h.path.startswith('/same') else 'mcp/payments'}")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def nonce(h):
        body = b'{"error":"use_dpop_nonce"}'
        h.send_response(401)
        h.send_header("WWW-Authenticate", 'DPoP error="use_dpop_nonce"')
        h.send_header("DPoP-Nonce", "from-b")
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    for name, answer in (("a", to_b), ("b", nonce)):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(name, answer))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    yield f"http://127.0.0.1:{servers[0].server_port}/api", seen
    for srv in servers:
        srv.shutdown()


def setup(b, upstream, tmp_path):
    """The tenant of tests/e2e/test_mcp.py (an MCP tool `payments` at the
    gateway, DPoP-bound), plus a `bank` tool whose large transfers wait for
    finance (examples/policies/approvals.cedar), and an agent with both."""
    gateway, _, _ = setup_gateway(b, upstream, tmp_path)
    b.cli("tool", "update", "--tenant", "acme", "payments", "--dpop", "true")
    b.cli("principal", "create", "--tenant", "acme", "bob@example.com", "--group", "finance")
    b.cli("tool", "create", "--tenant", "acme", "bank", "--audience", "https://bank.example",
          "--action", "transfer", "--label", "money", "--max-ttl", "6s")
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "approvals.cedar"))
    b.cli("agent", "create", "--tenant", "acme", "sdk-bot", "--owner", "team-sdk",
          "--envelope", "payments:*", "--envelope", "bank:transfer")
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", "acme", "--principal", "alice@example.com",
                             "--agent", "sdk-bot", "--cap", "payments:pay", "--cap", "payments:echo",
                             "--cap", "bank:transfer", "--task", "pay invoices").stdout)["id"]
    return gateway, grant


def waits_for_finance(a, b, tmp_path):
    """A payment over 100.00 waits for finance: ApprovalPending with the
    approval's id; waiting, it proceeds once bob approves; the next one,
    with nobody approving, times out."""
    big = {"amount": 25_000, "currency": "EUR", "target": "invoice 7"}
    pending = a("credential", tool="bank", details=big)
    assert pending["error"] == "ApprovalPending" and pending["approval_id"], pending
    bob = tmp_path / "bob.token"
    b.cli("principal", "approver-token", "--tenant", "acme", "bob@example.com", "--out", str(bob))
    b.cli("approvals", "approve", pending["approval_id"], "--as", str(bob))
    got = a.ok("credential", tool="bank", details=big, wait=30)
    assert claims_of(got["token"])["approval"]["approver"] == "principal:bob@example.com"
    timed = a("credential", tool="bank", details=dict(big, target="invoice 8"), wait=1)
    assert timed["error"] == "ApprovalTimeout" and timed["approval_id"], timed


def delegated(a, b):
    """`delegate()` a child run for sdk-helper (payments:echo only), kept
    as `child` in the agent process: echo yes, pay no."""
    b.cli("agent", "create", "--tenant", "acme", "sdk-helper", "--owner", "team-sdk", "--envelope", "payments:echo")
    # The wrapper delegates from the run's own mandate only; the broker
    # checks the rest of the body, as for any caller.
    sub_jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    other = a.ok("socket", path="/v1/delegate", body={"agent": "sdk-helper", "jwk": sub_jwk, "mandate": "x.y.z"})
    assert other["status"] == 400 and "leave `mandate` out" in other["body"]["error_description"], other
    odd = a.ok("socket", path="/v1/delegate", body={"agent": "sdk-helper", "jwk": sub_jwk, "depth": 0})
    assert odd["status"] == 403 and odd["body"]["error"] == "invalid_request", odd
    # Only to the agents `mandate exec --delegate-to` names.
    other_agent = a("delegate", agent="pay-bot", capabilities=["payments:echo"])
    assert other_agent.get("code") == "refused" and "sdk-helper only" in other_agent["description"], other_agent
    child = a.ok("delegate", agent="sdk-helper", capabilities=["payments:echo"], ttl_secs=300, **{"as": "child"})
    assert child["depth"] == 1, child
    echo = a.ok("credential", who="child", tool="payments", actions=["echo"])
    assert claims_of(echo["token"])["agent"] == "sdk-helper", claims_of(echo["token"])
    pay = a("credential", who="child", tool="payments", actions=["pay"])
    assert pay.get("code") in ("invalid_scope", "access_denied"), pay


def under_exec(b, grant, tmp_path):
    return Agent([BIN, "exec", "-q", "--tenant", "acme", "--agent", "sdk-bot", "--on-behalf-of", "alice@example.com",
                  "--grant", grant, "--tool", "payments", "--delegate-to", "sdk-helper", "--",
                  sys.executable, str(HERE / "agent.py")], b.env)


def test_credentials_never_follow_a_redirect_elsewhere(broker, upstream, redirector, tmp_path):
    """A tool's URL redirects to another origin, which asks for a DPoP nonce:
    no library sends the credential there (not even on the nonce retry),
    and the other origin's nonce is not heeded. A credential the broker
    says is for a gateway URL is not sent anywhere else."""
    b = broker
    gateway, grant = setup(b, upstream, tmp_path)
    a = under_exec(b, grant, tmp_path)
    url, seen = redirector
    try:
        a.ok("from_env")
        for lib in ("requests", "httpx"):
            r = a.ok("call", lib=lib, url=url, tool="bank", name="x", arguments={}, follow=True)
            assert r["status"] == 401, r
        assert len(seen["a"]) == 2 and all(h["authorization"].startswith("DPoP ") for h in seen["a"]), seen
        assert seen["b"] and all("authorization" not in h for h in seen["b"]), seen["b"]
        # Nor to another path of the same origin (requests keeps Authorization there).
        r = a.ok("call", lib="requests", url=url.replace("/api", "/same"), tool="bank", name="x", arguments={})
        assert r["status"] == 401, r
        landed = [h for h in seen["a"] if h["path"] == "/landed"]
        assert len(landed) == 1 and "authorization" not in landed[0] and "dpop" not in landed[0], landed
        # A gateway credential is for its gateway URL only.
        wrong = a("call", lib="httpx", url=upstream.url, tool="payments", name="pay", arguments={})
        assert wrong["code"] == "wrong_url", wrong
        assert upstream.calls() == []
    finally:
        a.close()


def test_under_mandate_exec(nonce_broker, upstream, tmp_path):
    """Socket mode: identity, cached credentials, DPoP through every HTTP
    library to the gateway (the broker asks for nonces), the MCP SDK, an
    approval that proceeds once finance approves, attenuation used by a
    second key, and revocation as `Revoked`."""
    b = nonce_broker
    gateway, grant = setup(b, upstream, tmp_path)
    a = under_exec(b, grant, tmp_path)
    try:
        assert a.ok("from_env") == "Mandate(mandate exec)"
        me = a.ok("identity")
        assert me["agent"] == "sdk-bot" and me["principal"] == "alice@example.com", me
        run_id = me["run"] if me["run"].startswith("run_") else me["run_id"]

        # Cached: the same credential until two thirds of its life are gone;
        # `fresh` drops it. The token never shows in a repr.
        first = a.ok("credential", tool="payments")
        assert first["token_type"] == "DPoP" and first["token"] not in first["repr"]
        assert a.ok("credential", tool="payments")["token"] == first["token"]
        assert a.ok("credential", tool="payments", fresh=True)["token"] != first["token"]

        # A bound credential with a fresh proof per request, through each
        # library; the gateway (under --dpop-nonce) asks for its nonce once.
        for lib in ("httpx", "httpx-async", "httpx2", "requests"):
            r = a.ok("call", lib=lib, url=gateway, tool="payments", name="pay",
                     arguments={"amount": 5, "currency": "EUR"})
            assert r["status"] == 200 and r["body"]["result"]["content"][0]["text"] == "paid 5 EUR", (lib, r)
        # Without naming the tool: the auth finds it by URL (the run's
        # tools' URLs, whole path segments), and sends nothing elsewhere.
        r = a.ok("call", lib="httpx", url=gateway, name="pay", arguments={"amount": 6, "currency": "EUR"})
        assert r["status"] == 200 and r["body"]["result"]["content"][0]["text"] == "paid 6 EUR", r
        a("call", lib="requests", url=upstream.url, name="pay", arguments={"amount": 1, "currency": "EUR"})
        direct = upstream.calls()[-1][0]["headers"]
        assert "authorization" not in direct and "dpop" not in direct, direct
        r = a.ok("call", lib="httpx2", url=gateway + "x", name="pay", arguments={"amount": 1, "currency": "EUR"})
        assert r["status"] in (401, 404), r
        # The official MCP SDK through `mandate.mcp.client_auth`.
        r = a.ok("mcp", url=gateway, tool="payments", name="pay", arguments={"amount": 7, "currency": "EUR"})
        assert r == {"listed": ["echo", "pay"], "text": "paid 7 EUR"}, r
        amounts = [c[1]["params"]["arguments"]["amount"] for c in upstream.calls()]
        assert amounts == [5, 5, 5, 5, 6, 1, 7], amounts
        # No proof or credential of the agent reached the MCP server.
        for req, _ in upstream.calls():
            assert "dpop" not in req["headers"] and first["token"] not in json.dumps(req)

        waits_for_finance(a, b, tmp_path)

        # Framework tools (LangChain, the OpenAI Agents SDK), called through
        # their own tool-calling API: a credential per call, its RFC 9396
        # details from the call's arguments; a refusal is the tool's output.
        for fw in ("langchain", "openai"):
            out = json.loads(a.ok(fw, arguments={"amount": 4_200, "to": "acct-9"}))
            assert out["scope"] == "transfer" and out["aud"] == "https://bank.example", out
            assert out["details"][0]["amount"] == 4_200 and out["details"][0]["target"] == "acct-9", out
            waits = a.ok(fw, arguments={"amount": 90_000, "to": "acct-9"})
            assert waits.startswith("Refused by Mandate (authorization_pending)"), waits

        # Attenuation for a sub-agent: its own key, only payments:echo; it
        # exchanges the narrowed mandate itself (standalone, DPoP by its key).
        sub = Agent([sys.executable, str(HERE / "agent.py")], b.env)
        try:
            thumb = sub.ok("key", name="sub")
            sub.ok("key", name="other")
            narrowed = a.ok("attenuate", to=thumb, only=["payments:echo"], ttl_secs=120)
            # A key the narrowed mandate does not name cannot use it.
            sub.ok("from_mandate", broker=b.url, mandate=narrowed, key="other")
            wrong = sub("credential", tool="payments", actions=["echo"])
            assert wrong.get("code") in ("invalid_dpop_proof", "invalid_grant"), wrong
            # The named key gets echo, with itself in the credential's `act`; not pay.
            sub.ok("from_mandate", broker=b.url, mandate=narrowed, key="sub")
            echo = sub.ok("credential", tool="payments", actions=["echo"])
            act = json.dumps(claims_of(echo["token"])["act"])
            assert thumb in act, act
            pay = sub("credential", tool="payments", actions=["pay"])
            assert pay.get("code") in ("invalid_scope", "access_denied"), pay
        finally:
            sub.close()

        # Delegation from under `mandate exec`: the wrapper proves the
        # parent run; the child run has its own key (made here) and less.
        delegated(a, b)

        # Revoked: the next credential request says so, by kind; the child
        # run goes with its parent.
        b.cli("revoke", "--run", run_id)
        gone = a("credential", tool="payments", fresh=True)
        assert gone["error"] == "Revoked" and gone["code"] == "invalid_grant", gone
        assert "revoked" in gone["description"]
        assert a("credential", who="child", tool="payments", actions=["echo"], fresh=True)["error"] == "Revoked"
    finally:
        a.close()



def test_standalone_with_a_join_token(nonce_broker, upstream, tmp_path):
    """Standalone: the SDK makes the run key (EdDSA, then ES256), starts the
    run with a one-time join token, proves every exchange itself (asked for
    the broker's nonce), renews a credential past two thirds of its life,
    uses the gateway with its own proofs, delegates to a sub-agent run, and
    reports revocation as `Revoked`."""
    b = nonce_broker
    gateway, grant = setup(b, upstream, tmp_path)
    b.cli("agent", "create", "--tenant", "acme", "sdk-helper", "--owner", "team-sdk", "--envelope", "payments:echo")
    for alg in ("EdDSA", "ES256"):
        token_file = tmp_path / f"join-{alg}.token"
        b.cli("agent", "join-token", "--tenant", "acme", "sdk-bot", "--principal", "alice@example.com",
              "--grant", grant, "--ttl", "5m", "--out", str(token_file))
        token = token_file.read_text().strip()
        env = {k: v for k, v in b.env.items() if not k.startswith("MANDATE_")}
        a = Agent([sys.executable, str(HERE / "agent.py")], env)
        try:
            me = a.ok("join", broker=b.url, token=token, tenant="acme", agent="sdk-bot",
                      principal="alice@example.com", grant=grant, alg=alg)
            assert me["agent"] == "sdk-bot" and "mandate" not in me, me
            # The join token starts one run only.
            again = Agent([sys.executable, str(HERE / "agent.py")], env)
            used = again("join", broker=b.url, token=token, tenant="acme", agent="sdk-bot",
                         principal="alice@example.com", grant=grant)
            again.close()
            assert used["error"] == "MandateError" and "already used" in used["description"], used
            assert token not in json.dumps(used)

            # Renewal: `bank` credentials live 6 s; the same one is returned
            # until two thirds of that have passed, then a new one.
            first = a.ok("credential", tool="bank")
            assert claims_of(first["token"])["cnf"]["jkt"], first
            assert a.ok("credential", tool="bank")["token"] == first["token"]
            time.sleep(max(0.0, first["expires_at"] - 2 - time.time()) + 0.2)
            renewed = a.ok("credential", tool="bank")
            assert renewed["token"] != first["token"] and renewed["expires_at"] > first["expires_at"]

            # The gateway with the SDK's own proofs (and the nonce retry).
            r = a.ok("call", lib="httpx2", url=gateway, tool="payments", name="pay",
                     arguments={"amount": 9, "currency": "EUR"})
            assert r["status"] == 200 and r["body"]["result"]["content"][0]["text"] == "paid 9 EUR", r
            # A policy refusal is the tool's result, with the reason.
            r = a.ok("call", lib="requests", url=gateway, tool="payments", name="pay",
                     arguments={"amount": 900, "currency": "EUR"})
            assert r["body"]["result"]["isError"] is True and "small-eur" in json.dumps(r["body"]), r
            # Ending the run: its credentials are refused from then on.
            assert a("end") == {"ok": None}
            assert a("credential", tool="bank", fresh=True)["error"] == "Revoked"
        finally:
            a.close()

    # Delegation: a sub-agent run of its own (its own key), with less.
    token_file = tmp_path / "join-d.token"
    b.cli("agent", "join-token", "--tenant", "acme", "sdk-bot", "--principal", "alice@example.com",
          "--grant", grant, "--ttl", "5m", "--out", str(token_file))
    a = Agent([sys.executable, str(HERE / "agent.py")], {"PATH": os.environ["PATH"]})
    try:
        parent = a.ok("join", broker=b.url, token=token_file.read_text().strip(), tenant="acme", agent="sdk-bot",
                      principal="alice@example.com", grant=grant)
        child = a.ok("delegate", agent="sdk-helper", capabilities=["payments:echo"], ttl_secs=300)
        assert child["parent"] == parent["run"] or parent["run_id"] in json.dumps(child), (parent, child)
        assert a.ok("credential", tool="payments", actions=["echo"])["token_type"] == "DPoP"
        refused = a("credential", tool="payments", actions=["pay"])
        assert refused.get("code") in ("invalid_scope", "access_denied"), refused
        # Revoking the parent run revokes the child's too.
        b.cli("revoke", "--run", next(v for v in (parent["run"], parent["run_id"]) if v.startswith("run_")))
        gone = a("credential", tool="payments", actions=["echo"], fresh=True)
        assert gone["error"] == "Revoked", gone
    finally:
        a.close()


def test_installs_from_its_wheel_into_a_fresh_venv(broker, tmp_path):
    """Packaging: the wheel that scripts/test.sh built (with the wheels of
    its dependencies, `MANDATE_SDK_WHEELS`) installs into an empty venv
    without the network, and works there under `mandate exec`."""
    wheels = os.environ.get("MANDATE_SDK_WHEELS")
    if not wheels:
        assert not os.environ.get("CI"), "MANDATE_SDK_WHEELS is set by scripts/test.sh"
        pytest.skip("no wheelhouse (scripts/test.sh makes one)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels, "mandate-sdk"],
                   check=True, timeout=300)
    b = broker
    b.cli("tenant", "create", "acme")
    b.cli("principal", "create", "--tenant", "acme", "alice@example.com")
    b.cli("agent", "create", "--tenant", "acme", "bot", "--owner", "o", "--envelope", "crm:read")
    b.cli("tool", "create", "--tenant", "acme", "crm", "--audience", "https://crm.example", "--action", "read")
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "baseline.cedar"))
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", "acme", "--principal", "alice@example.com",
                             "--agent", "bot", "--cap", "crm:read", "--task", "t").stdout)["id"]
    script = ("import mandate, json; m = mandate.Mandate.from_env(); c = m.credential('crm'); "
              "print(json.dumps({'file': mandate.__file__, 'type': c.token_type, 'scope': c.scope}))")
    r = subprocess.run([BIN, "exec", "-q", "--tenant", "acme", "--agent", "bot", "--on-behalf-of",
                        "alice@example.com", "--grant", grant, "--", py, "-c", script],
                       env=b.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["file"].startswith(str(venv)) and out["type"] == "DPoP" and out["scope"] == "read", out
    # Outside `mandate exec`, the error says what to do.
    r = subprocess.run([py, "-c", "import mandate; mandate.Mandate.from_env()"], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"]})
    assert r.returncode != 0 and "mandate exec" in r.stderr, r.stderr
