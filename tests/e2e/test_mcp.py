"""The MCP gateway end to end: an MCP server and an MCP client from the
official Python SDK (`mcp`), the real broker between them.

The upstream logs every request it receives, so each refusal is also checked
to have sent nothing upstream, and each call to carry the injected key and
never the agent's credential.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import httpx2
import pytest
from joserfc.jwk import OKPKey
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from test_story import BIN, ROOT, broker, exchange, free_port, http, nonce_broker  # noqa: F401 (fixtures)

HERE = Path(__file__).resolve().parent
UPSTREAM_KEY = "upstream-key-7f3c9a-not-for-agents"

POLICY = """
@id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);
@id("small-eur") forbid (principal, action == Mandate::Action::"payments:pay", resource)
unless { context.arguments.amount <= 100 && context.arguments.currency == "EUR" };
@id("no-secret-memos") forbid (principal, action == Mandate::Action::"payments:pay", resource)
when { context.arguments has memo && context.arguments.memo like "*secret*" };
"""


@pytest.fixture
def upstream(tmp_path):
    port = free_port()
    log = tmp_path / "upstream.log"
    log.write_text("")
    proc = subprocess.Popen([sys.executable, str(HERE / "mcp" / "upstream.py"), "--port", str(port), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("the MCP server did not start: " + proc.stdout.read().decode())

    class U:
        url = f"http://127.0.0.1:{port}/mcp"

        def seen(self):
            return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

        def calls(self):
            out = []
            for r in self.seen():
                try:
                    body = json.loads(r["body"] or "null")
                except ValueError:
                    continue
                if isinstance(body, dict) and body.get("method") == "tools/call":
                    out.append((r, body))
            return out

    yield U()
    proc.terminate()
    proc.wait(timeout=10)


def setup_gateway(b, upstream, tmp_path):
    b.cli("tenant", "create", "acme")
    b.cli("principal", "create", "--tenant", "acme", "alice@example.com")
    b.cli("agent", "create", "--tenant", "acme", "pay-bot", "--owner", "team-finance", "--purpose", "pays invoices",
          "--envelope", "payments:*")
    b.cli("tool", "create", "--tenant", "acme", "payments", "--provider", "mcp", "--upstream", upstream.url,
          "--inject-header", "Authorization", "--inject-format", "Bearer {secret}",
          "--action", "pay", "--action", "echo", "--action", "leak", "--action", "create_issue", "--action", "slow")
    secret = tmp_path / "key.txt"
    secret.write_text(UPSTREAM_KEY)
    b.cli("tool", "set-secret", "--tenant", "acme", "payments", "--file", str(secret))
    synced = b.cli("tool", "sync", "--tenant", "acme", "payments").stdout
    assert "pay" in synced and "enabled" in synced, synced
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "baseline.cedar"))
    policy = tmp_path / "mcp.cedar"
    policy.write_text(POLICY)
    b.cli("policy", "add", "--tenant", "acme", "--name", "mcp", str(policy))
    gateway = f"{b.url}/mcp/payments"
    run, tok = start_run(b, "pay-bot", ["payments:pay", "payments:echo", "payments:leak", "payments:slow"],
                         gateway, "pay echo leak slow", task="pay invoice 7")
    assert tok["token_type"] == "Bearer" and tok["mcp_url"] == gateway
    return gateway, tok["access_token"], run


def start_run(b, agent, caps, audience, scope, task="t", key=None):
    """A run of `agent` for alice with a grant of `caps`, and its gateway
    credential for `audience` and `scope` (the MCP tool names), the
    exchange proved with `key` (the run's key; a new one if none)."""
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", "acme", "--principal", "alice@example.com",
                             "--agent", agent, *[x for c in caps for x in ("--cap", c)], "--task", task).stdout)
    key = key or OKPKey.generate_key("Ed25519")
    run = json.loads(b.cli("--json", "run", "start", "--tenant", "acme", "--agent", agent,
                           "--principal", "alice@example.com", "--grant", grant["id"],
                           "--jwk", json.dumps(key.as_dict(private=False))).stdout)
    status, tok = exchange(b, run["mandate"], key, "EdDSA", audience, scope)
    assert status == 200, tok
    return run, tok


def with_client(url, token, fn, mode="auto"):
    """`mode`: "auto" probes server/discover (2026-07-28, stateless); "legacy"
    is the initialize handshake and a session (2025-11-25)."""
    async def main():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http_client:
            async with Client(streamable_http_client(url, http_client=http_client), mode=mode) as client:
                return await fn(client)
    return anyio.run(main)


def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def without_ids(v):
    """An event without what may hold any digits by chance (hashes, digests,
    ids: one word of 20+ characters; sequence numbers and times), so a test
    can look for an argument's value in what is left."""
    import re
    if isinstance(v, dict):
        return {k: without_ids(x) for k, x in v.items() if k not in ("seq", "time_ms")}
    if isinstance(v, list):
        return [without_ids(x) for x in v]
    if isinstance(v, str) and re.fullmatch(r"[\w:=+/.-]{20,}", v):
        return ""
    return v


def test_an_mcp_client_calls_tools_judged_on_their_arguments(broker, upstream, tmp_path):
    b = broker
    gateway, token, run = setup_gateway(b, upstream, tmp_path)

    async def session(client):
        # The SDK probes server/discover and speaks the stateless revision.
        assert client.protocol_version == "2026-07-28", client.protocol_version
        listed = sorted(t.name for t in (await client.list_tools()).tools)
        ok = await client.call_tool("pay", {"amount": 50, "currency": "EUR"})
        too_much = await client.call_tool("pay", {"amount": 500, "currency": "EUR"})
        memo = await client.call_tool("pay", {"amount": 5, "currency": "EUR", "memo": "a secret plan"})
        wrong_type = None
        try:
            await client.call_tool("pay", {"amount": "50", "currency": "EUR"})
        except MCPError as e:
            wrong_type = e
        unknown = None
        try:
            await client.call_tool("create_issue", {"repo": "acme/x", "title": "t"})
        except MCPError as e:
            unknown = e
        leaked = await client.call_tool("leak", {})
        return listed, ok, too_much, memo, wrong_type, unknown, leaked

    listed, ok, too_much, memo, wrong_type, unknown, leaked = with_client(gateway, token, session)
    # Only what the run may call: create_issue is enabled but not granted.
    assert listed == ["echo", "leak", "pay", "slow"]
    assert not ok.is_error and text_of(ok) == "paid 50 EUR"
    assert too_much.is_error and "small-eur" in text_of(too_much)
    assert memo.is_error and "no-secret-memos" in text_of(memo)
    assert wrong_type is not None and wrong_type.error.code == -32602 and "/amount" in wrong_type.error.message
    # create_issue is not in the credential: the SDK sees the HTTP 403 as an error.
    assert unknown is not None
    # The key the gateway injected never comes back to the agent.
    assert UPSTREAM_KEY not in text_of(leaked) and "[REDACTED]" in text_of(leaked)

    calls = upstream.calls()
    # Exactly the allowed calls reached the MCP server (pay 50, leak), with
    # the injected key and never the agent's credential.
    assert [c[1]["params"]["name"] for c in calls] == ["pay", "leak"]
    assert calls[0][1]["params"]["arguments"] == {"amount": 50, "currency": "EUR"}
    for r in upstream.seen():
        assert r["headers"].get("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert token not in json.dumps(r)

    # Every decision is in the audit trail, with argument keys and a digest, never values.
    events = json.loads(b.cli("--json", "audit", "--run", run["run"], "--limit", "100").stdout)
    events = events.get("events", events) if isinstance(events, dict) else events
    calls_ev = [e for e in events if e["event_type"] == "mcp.call"]
    assert {e["decision"] for e in calls_ev} == {"allow", "deny"}
    denied = [e for e in calls_ev if e["decision"] == "deny" and "mcp/small-eur" in e.get("policies", [])]
    assert denied and denied[0]["details"]["arg_keys"] == ["amount", "currency"]
    assert "500" not in json.dumps(without_ids(denied[0]))
    results = [e for e in events if e["event_type"] == "mcp.result"]
    assert {e["details"]["status"] for e in results} == {"ok"}
    assert any(e["details"]["secret_reflected"] for e in results)
    assert b.cli("audit", "verify").returncode == 0


def raw(url, token, body, headers=None):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http("POST", url, data, h)


def test_the_gateway_refuses_what_it_cannot_judge(broker, upstream, tmp_path):
    b = broker
    gateway, token, run = setup_gateway(b, upstream, tmp_path)
    call = lambda name, args, i=1: {"jsonrpc": "2.0", "id": i, "method": "tools/call",  # noqa: E731
                                     "params": {"name": name, "arguments": args}}
    cases = [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"amount":5,"amount":5000,"currency":"EUR"}}}', -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"amount":5,"Amount":5000,"currency":"EUR"}}}', -32700),
        (json.dumps([call("pay", {"amount": 5, "currency": "EUR"})]).encode(), -32600),
        (json.dumps(call("pay", {"amount": 1e2, "currency": "EUR"})).encode(), -32602),
        (json.dumps(call("pay", {"amount": 9007199254740993, "currency": "EUR"})).encode(), -32602),
        (json.dumps(call("pay", [5, "EUR"])).encode(), -32602),
        (json.dumps(call("pay", {"amount": 5, "currency": "EUR", "extra": 1})).encode(), -32602),
        (json.dumps(call("Pay", {"amount": 5, "currency": "EUR"})).encode(), -32602),
        (json.dumps(call("nope", {})).encode(), -32602),
        (json.dumps({"jsonrpc": "2.0", "id": None, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}).encode(), -32600),
        (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "Tools/call", "params": {"name": "echo"}}).encode(), -32601),
        (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}).encode(), -32601),
    ]
    for body, code in cases:
        status, answer = raw(gateway, token, body)
        assert answer and answer["error"]["code"] == code, (body, status, answer)
    # Without a credential, or with one for another tool: 401 and where to learn more.
    status, _ = raw(gateway, None, call("echo", {"text": "x"}))
    assert status == 401
    status, _ = raw(gateway, "not-a-jwt", call("echo", {"text": "x"}))
    assert status == 401
    status, _ = raw(f"{b.url}/mcp/other", token, call("echo", {"text": "x"}))
    assert status == 401
    # From a browser (an Origin header): refused.
    status, _ = raw(gateway, token, call("echo", {"text": "x"}), {"Origin": "https://evil.example"})
    assert status == 403
    # Too big.
    status, _ = raw(gateway, token, json.dumps(call("echo", {"text": "x" * (2 * 1024 * 1024)})).encode())
    assert status == 413
    # The protected resource metadata names the broker (RFC 9728).
    status, meta = http("GET", f"{b.url}/.well-known/oauth-protected-resource/mcp/payments")
    assert status == 200 and meta["resource"] == gateway and meta["authorization_servers"] == [b.url]
    # Nothing of that reached the MCP server (only the sync's requests did).
    assert upstream.calls() == []
    # A revoked run is cut off at once.
    status, answer = raw(gateway, token, call("echo", {"text": "hi"}))
    assert status == 200 and answer["result"]["content"][0]["text"] == "hi", answer
    b.cli("revoke", "--run", run["run"])
    status, _ = raw(gateway, token, call("echo", {"text": "hi"}))
    assert status == 401
    assert len(upstream.calls()) == 1


APPROVAL_POLICY = """
@id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);
@id("big-payments") @approval("principal")
forbid (principal, action == Mandate::Action::"payments:pay", resource)
when { context.arguments.amount > 100 } unless { context.approved };
"""


def test_a_call_waits_for_a_human_and_the_approval_is_for_that_call_only(broker, upstream, tmp_path):
    b = broker
    gateway, token, run = setup_gateway(b, upstream, tmp_path)
    policy = tmp_path / "mcp.cedar"
    policy.write_text(APPROVAL_POLICY)
    b.cli("policy", "add", "--tenant", "acme", "--name", "mcp", str(policy))
    alice = tmp_path / "alice.token"
    b.cli("principal", "approver-token", "--tenant", "acme", "alice@example.com", "--out", str(alice))

    async def pay(client, amount):
        try:
            r = await client.call_tool("pay", {"amount": amount, "currency": "EUR"})
            return ("ok", text_of(r))
        except MCPError as e:
            return ("error", e.error)

    first = with_client(gateway, token, lambda c: pay(c, 500))
    assert first[0] == "error" and first[1].code == -31001, first
    data = first[1].data
    assert data["error"] == "authorization_pending" and data["interval"] > 0
    approval = data["approvals"][0]["id"]
    assert data["approvals"][0]["approvers"] == ["principal:alice@example.com"]
    assert upstream.calls() == []
    # The approver sees the call as it would go.
    shown = json.loads(b.cli("--json", "approvals", "show", approval, "--as", str(alice)).stdout)
    assert shown["details"]["mcp_call"] == {"name": "pay", "arguments": {"amount": 500, "currency": "EUR"}}
    # Asking again before a decision: still waiting on the same approval.
    again = with_client(gateway, token, lambda c: pay(c, 500))
    assert again[1].data["approvals"][0]["id"] == approval
    b.cli("approvals", "approve", approval, "--as", str(alice), "--comment", "invoice 7")
    # Another amount is another call: not approved.
    other = with_client(gateway, token, lambda c: pay(c, 501))
    assert other[0] == "error" and other[1].data["approvals"][0]["id"] != approval
    # The approved call goes through once; small ones need nobody.
    assert with_client(gateway, token, lambda c: pay(c, 500)) == ("ok", "paid 500 EUR")
    assert with_client(gateway, token, lambda c: pay(c, 50)) == ("ok", "paid 50 EUR")
    # The approval was spent: the same call asks anew.
    third = with_client(gateway, token, lambda c: pay(c, 500))
    assert third[0] == "error" and third[1].data["approvals"][0]["id"] != approval
    assert [c[1]["params"]["arguments"]["amount"] for c in upstream.calls()] == [500, 50]
    # The audit trail names the approver of the call, and no argument values.
    events = json.loads(b.cli("--json", "audit", "--run", run["run"], "--limit", "100").stdout)
    events = events.get("events", events) if isinstance(events, dict) else events
    spent = [e for e in events if e["event_type"] == "mcp.call" and e["decision"] == "allow"
             and e["details"].get("approvals")]
    assert spent and spent[0]["details"]["approvals"][0]["approved_by"] == "principal:alice@example.com"
    decided = [e for e in events if e["event_type"].startswith("approval.") and e["details"].get("details")]
    assert decided and all("500" not in json.dumps(without_ids(e["details"]["details"])) for e in decided)


def test_an_agent_under_exec_reads_two_variables(broker, upstream, tmp_path):
    b = broker
    setup_gateway(b, upstream, tmp_path)
    b.cli("tool", "update", "--tenant", "acme", "payments",
          "--env", "MCP_URL={mcp_url}", "--env", "MCP_TOKEN={credential}")
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", "acme", "--principal", "alice@example.com",
                             "--agent", "pay-bot", "--cap", "payments:pay", "--task", "pay invoice 8").stdout)
    proc = subprocess.run(
        [BIN, "exec", "--tenant", "acme", "--agent", "pay-bot", "--on-behalf-of", "alice@example.com",
         "--grant", grant["id"], "--tool", "payments", "--", sys.executable, str(HERE / "mcp" / "agent.py")],
        env=b.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["env_has_upstream_key"] is False
    assert out["tools"] == ["pay"]
    assert out["50"] == {"error": False, "text": "paid 50 EUR"}
    assert out["5000"]["error"] is True and "small-eur" in out["5000"]["text"]


def test_the_typescript_sdk_is_a_client_too(broker, upstream, tmp_path):
    node_dir = os.environ.get("MANDATE_NODE_DIR", str(Path.home() / ".cache" / "mandate-node"))
    if not (Path(node_dir) / "node_modules" / "@modelcontextprotocol" / "sdk").exists():
        pytest.fail(f"@modelcontextprotocol/sdk is not installed in {node_dir}; scripts/test.sh installs it")
    gateway, token, _ = setup_gateway(broker, upstream, tmp_path)
    proc = subprocess.run(["node", str(HERE / "mcp" / "agent.mjs"), gateway, token],
                          env=dict(os.environ, MANDATE_NODE_DIR=node_dir), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tools"] == ["echo", "leak", "pay", "slow"]
    assert out["50"] == {"error": False, "text": "paid 50 EUR"}
    assert out["5000"]["error"] is True and "small-eur" in out["5000"]["text"]
    assert out["wrongType"] == -32602
    assert [c[1]["params"]["arguments"]["amount"] for c in upstream.calls()] == [50]


def test_revocation_cancels_a_call_in_flight(broker, upstream, tmp_path):
    b = broker
    gateway, token, run = setup_gateway(b, upstream, tmp_path)
    result = {}

    async def session(client):
        async def call():
            started = time.monotonic()
            try:
                await client.call_tool("slow", {"ms": 20000})
                result["outcome"] = "finished"
            except MCPError as e:
                result["outcome"] = e.error.code
            result["seconds"] = time.monotonic() - started

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(lambda: b.cli("revoke", "--run", run["run"]))

    with_client(gateway, token, session)
    assert result["outcome"] == -31020, result
    assert result["seconds"] < 5, result
    events = json.loads(b.cli("--json", "audit", "--run", run["run"], "--limit", "50").stdout)
    events = events.get("events", events) if isinstance(events, dict) else events
    assert any(e["event_type"] == "mcp.result" and e["details"]["status"] == "revoked" for e in events)
    status, _ = raw(gateway, token, {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                     "params": {"name": "echo", "arguments": {"text": "x"}}})
    assert status == 401


def test_the_mcp_server_gets_a_credential_naming_the_human(broker, upstream, tmp_path):
    """--mint-audience: each forwarded call carries a JWT of the broker's for
    the MCP server (aud = its identifier, sub = the human, act = the run), which
    any JOSE library verifies with the broker's JWKS; never the agent's own."""
    from joserfc import jwt
    from joserfc.jwk import KeySet

    b = broker
    audience = "https://payments.internal"
    b.cli("tenant", "create", "acme")
    b.cli("principal", "create", "--tenant", "acme", "alice@example.com")
    b.cli("agent", "create", "--tenant", "acme", "pay-bot", "--owner", "team-finance", "--purpose", "pays",
          "--envelope", "minted:*")
    made = b.cli("tool", "create", "--tenant", "acme", "minted", "--provider", "mcp", "--upstream", upstream.url,
                 "--mint-audience", audience, "--action", "echo", "--action", "leak")
    # It sends no static key, so nobody is told to set one.
    assert "needs a secret" not in made.stderr, made.stderr
    # The minted audience names the MCP server alone: no other tool may take it.
    clash = b.cli("tool", "create", "--tenant", "acme", "lookalike", "--audience", audience, "--action", "read",
                  check=False)
    assert clash.returncode != 0 and "mint" in clash.stderr, clash.stderr
    clash = b.cli("tool", "create", "--tenant", "acme", "twin", "--provider", "mcp", "--upstream", upstream.url,
                  "--mint-audience", audience, "--action", "echo", check=False)
    assert clash.returncode != 0, clash.stderr
    own = b.cli("tool", "create", "--tenant", "acme", "mine", "--provider", "mcp", "--upstream", upstream.url,
                "--mint-audience", f"{b.url}/oauth", "--action", "echo", check=False)
    assert own.returncode != 0, own.stderr
    b.cli("tool", "sync", "--tenant", "acme", "minted")
    policy = tmp_path / "p.cedar"
    policy.write_text('@id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);')
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "baseline.cedar"))
    b.cli("policy", "add", "--tenant", "acme", "--name", "mcp", str(policy))
    gateway = f"{b.url}/mcp/minted"
    run, tok = start_run(b, "pay-bot", ["minted:echo", "minted:leak"], gateway, "echo leak")

    async def session(client):
        return (await client.call_tool("echo", {"text": "hi"}), await client.call_tool("leak", {}))

    echoed, leaked = with_client(gateway, tok["access_token"], session)
    assert text_of(echoed) == "hi"
    jwks = KeySet.import_key_set(http("GET", b.url + "/jwks.json")[1])
    calls = upstream.calls()
    assert [c[1]["params"]["name"] for c in calls] == ["echo", "leak"]
    for r, body in calls:
        bearer = r["headers"]["authorization"].removeprefix("Bearer ")
        assert bearer != tok["access_token"]
        claims = jwt.decode(bearer, jwks, algorithms=["EdDSA", "ES256"]).claims
        assert claims["iss"] == b.url and claims["aud"] == audience
        assert claims["sub"] == "alice@example.com" and claims["run"] == run["run"]
        assert claims["act"]["sub"].startswith("spiffe://") and claims["scope"] == body["params"]["name"]
        assert claims["exp"] - claims["iat"] <= 60 and "cnf" not in claims
    # The MCP server reflecting its credential does not hand it to the agent.
    assert "[REDACTED]" in text_of(leaked) and "eyJ" not in text_of(leaked)
    # The sync's own tools/list was sent with a credential naming the broker.
    synced = [r for r in upstream.seen() if '"tools/list"' in (r["body"] or "")]
    assert synced
    claims = jwt.decode(synced[0]["headers"]["authorization"].removeprefix("Bearer "), jwks,
                        algorithms=["EdDSA", "ES256"]).claims
    assert claims["sub"] == b.url and claims["scope"] == "tools/list"
    # Each call's minted credential id is in its audit event.
    events = json.loads(b.cli("--json", "audit", "--run", run["run"], "--limit", "50").stdout)
    events = events.get("events", events) if isinstance(events, dict) else events
    jtis = {e["details"].get("minted_jti") for e in events if e["event_type"] == "mcp.call"}
    first = jwt.decode(calls[0][0]["headers"]["authorization"].removeprefix("Bearer "), jwks,
                       algorithms=["EdDSA", "ES256"]).claims
    assert first["jti"] in jtis


def test_a_client_of_the_handshake_era_is_served_too(broker, upstream, tmp_path):
    """The 2025-11-25 handshake (initialize, a session bound to the run) as
    clients that do not probe server/discover speak it; and a stateless
    request whose headers contradict its body is refused."""
    b = broker
    gateway, token, run = setup_gateway(b, upstream, tmp_path)

    async def session(client):
        assert client.protocol_version == "2025-11-25", client.protocol_version
        listed = sorted(t.name for t in (await client.list_tools()).tools)
        ok = await client.call_tool("pay", {"amount": 50, "currency": "EUR"})
        refused = await client.call_tool("pay", {"amount": 500, "currency": "EUR"})
        return listed, ok, refused

    listed, ok, refused = with_client(gateway, token, session, mode="legacy")
    assert listed == ["echo", "leak", "pay", "slow"]
    assert not ok.is_error and refused.is_error and "small-eur" in text_of(refused)
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "pay", "arguments": {"amount": 5, "currency": "EUR"}, "_meta": meta}}
    for headers in [{"Mcp-Method": "tools/list", "MCP-Protocol-Version": "2026-07-28", "Mcp-Name": "pay"},
                    {"Mcp-Method": "tools/call", "MCP-Protocol-Version": "2026-07-28", "Mcp-Name": "echo"},
                    {"Mcp-Method": "tools/call", "Mcp-Name": "pay"}]:
        status, answer = raw(gateway, token, call, headers)
        assert status == 400 and answer["error"]["code"] == -32020, (headers, answer)
    status, answer = raw(gateway, token, dict(call, params=dict(call["params"], _meta={
        "io.modelcontextprotocol/protocolVersion": "2099-01-01"})))
    assert status == 400 and answer["error"]["code"] == -32022 and answer["error"]["data"]["supported"] == ["2026-07-28"]
    status, answer = raw(gateway, token, call, {"Mcp-Method": "tools/call", "MCP-Protocol-Version": "2026-07-28",
                                                 "Mcp-Name": "pay"})
    assert status == 200 and answer["result"]["resultType"] == "complete", answer
    assert len(upstream.calls()) == 2


def resource_proof(key, method, url, token, jti=None, nonce=None):
    """An RFC 9449 proof for a request to a resource: htm, htu, ath (and
    the server's nonce, when given)."""
    import base64
    import hashlib
    import uuid

    from joserfc import jwt
    ath = base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key.as_dict(private=False)}
    claims = {"jti": jti or str(uuid.uuid4()), "htm": method, "htu": url, "iat": int(time.time()), "ath": ath}
    if nonce is not None:
        claims["nonce"] = nonce
    return jwt.encode(header, claims, key, algorithms=["EdDSA"])


class DPoPAuth(httpx2.Auth):
    """What an MCP client needs for a DPoP-bound credential: `Authorization:
    DPoP` and a fresh proof of the run's key per request (RFC 9449 §7)."""

    def __init__(self, token, key):
        self.token, self.key = token, key

    def auth_flow(self, request):
        url = str(request.url).split("?")[0]
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = resource_proof(self.key, request.method, url, self.token)
        yield request


class NonceDPoPAuth(httpx2.Auth):
    """DPoPAuth as RFC 9449 §9 clients do it: asked for a nonce (401
    `use_dpop_nonce` with `DPoP-Nonce`), retry once with it, and keep it."""

    def __init__(self, token, key):
        self.token, self.key, self.nonce, self.asked = token, key, None, 0

    def auth_flow(self, request):
        url = str(request.url).split("?")[0]
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = resource_proof(self.key, request.method, url, self.token, nonce=self.nonce)
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and 'error="use_dpop_nonce"' in challenge:
            self.asked += 1
            self.nonce = response.headers["DPoP-Nonce"]
            request.headers["DPoP"] = resource_proof(self.key, request.method, url, self.token, nonce=self.nonce)
            yield request


def test_a_dpop_gateway_asks_for_its_nonce(nonce_broker, upstream, tmp_path):
    """Under `--dpop-nonce` the gateway, like the token endpoint, takes a
    proof only with the broker's current nonce (RFC 9449 §9): without it,
    or with a made-up one, 401 `use_dpop_nonce` with a `DPoP-Nonce` to use
    and nothing upstream; the official SDK behind an Auth that retries
    with the nonce is served."""
    b = nonce_broker
    gateway, _, _ = setup_gateway(b, upstream, tmp_path)
    b.cli("tool", "update", "--tenant", "acme", "payments", "--dpop", "true")
    key = OKPKey.generate_key("Ed25519")
    _, tok = start_run(b, "pay-bot", ["payments:pay"], gateway, "pay", task="pay invoice 11", key=key)
    token = tok["access_token"]
    assert tok["token_type"] == "DPoP", tok
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pay", "arguments": {"amount": 5, "currency": "EUR"}}}

    def asked_for_nonce(status, body, headers):
        assert status == 401, (status, body)
        assert body["error"] == "use_dpop_nonce", body
        assert headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"'), headers
        assert headers.get("DPoP-Nonce"), headers
        return headers["DPoP-Nonce"]

    auth = {"Authorization": f"DPoP {token}"}
    nonce = asked_for_nonce(*_send(gateway, call, {**auth, "DPoP": resource_proof(key, "POST", gateway, token)}))
    asked_for_nonce(*_send(gateway, call, {**auth, "DPoP": resource_proof(key, "POST", gateway, token,
                                                                         nonce="made-up-" + nonce)}))
    assert upstream.calls() == []
    status, body, _ = _send(gateway, call, {**auth, "DPoP": resource_proof(key, "POST", gateway, token, nonce=nonce)})
    assert status == 200 and body["result"]["content"][0]["text"] == "paid 5 EUR", body

    dpop = NonceDPoPAuth(token, key)

    async def main():
        async with httpx2.AsyncClient(auth=dpop) as http_client:
            async with Client(streamable_http_client(gateway, http_client=http_client)) as client:
                return text_of(await client.call_tool("pay", {"amount": 7, "currency": "EUR"}))
    assert anyio.run(main) == "paid 7 EUR"
    assert dpop.asked == 1
    assert [c[1]["params"]["arguments"]["amount"] for c in upstream.calls()] == [5, 7]


def test_a_tool_can_take_dpop_bound_credentials_only(broker, upstream, tmp_path):
    """`--dpop true`: the exchange binds the credential to the run's key
    (token_type DPoP, cnf.jkt), and the gateway takes it only with a fresh
    proof of that key for this method and URL; a bearer one, a replayed,
    misdirected or foreign proof is refused (401, a DPoP challenge) and
    nothing reaches the MCP server."""
    import base64

    b = broker
    gateway, bearer, _ = setup_gateway(b, upstream, tmp_path)
    b.cli("tool", "update", "--tenant", "acme", "payments", "--dpop", "true")
    # `--dpop` says how the gateway takes credentials: other providers have none.
    nope = b.cli("tool", "create", "--tenant", "acme", "crm", "--audience", "https://crm.example",
                 "--action", "read", "--dpop", "true", check=False)
    assert nope.returncode != 0 and "--dpop are for `mcp` tools" in nope.stderr, nope.stderr
    meta = http("GET", f"{b.url}/.well-known/oauth-protected-resource/mcp/payments")[1]
    assert "EdDSA" in meta["dpop_signing_alg_values_supported"]
    key = OKPKey.generate_key("Ed25519")
    run, tok = start_run(b, "pay-bot", ["payments:pay"], gateway, "pay", task="pay invoice 9", key=key)
    assert tok["token_type"] == "DPoP", tok
    token = tok["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["cnf"]["jkt"] == key.thumbprint()

    async def use(client):
        names = [t.name for t in (await client.list_tools()).tools]
        paid = await client.call_tool("pay", {"amount": 50, "currency": "EUR"})
        return names, text_of(paid)

    async def main():
        async with httpx2.AsyncClient(auth=DPoPAuth(token, key)) as http_client:
            async with Client(streamable_http_client(gateway, http_client=http_client)) as client:
                return await use(client)
    names, paid = anyio.run(main)
    assert names == ["pay"] and paid == "paid 50 EUR"
    assert len(upstream.calls()) == 1
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pay", "arguments": {"amount": 5, "currency": "EUR"}}}

    def send(headers):
        return _send(gateway, call, {"Authorization": f"DPoP {token}", **headers})

    def refused(status, body, headers, why):
        assert status == 401, (status, body)
        assert headers.get("WWW-Authenticate", "").startswith("DPoP error="), headers
        assert why in body["error_description"], body

    # Sent as a bearer token, the bound credential is refused.
    status, body, h = _send(gateway, call, {"Authorization": f"Bearer {token}"})
    refused(status, body, h, "DPoP-bound")
    # No proof; a proof for another URL; another key's proof; another token's.
    refused(*_send(gateway, call, {"Authorization": f"DPoP {token}"}), "`DPoP` header")
    refused(*send({"DPoP": resource_proof(key, "POST", gateway + "x", token)}), "htu")
    other = OKPKey.generate_key("Ed25519")
    refused(*send({"DPoP": resource_proof(other, "POST", gateway, token)}), "key")
    refused(*send({"DPoP": resource_proof(key, "POST", gateway, bearer)}), "ath")
    refused(*send({"DPoP": resource_proof(key, "GET", gateway, token)}), "htm")
    # A proof is good once.
    once = resource_proof(key, "POST", gateway, token)
    status, body, _ = send({"DPoP": once})
    assert status == 200 and body["result"]["content"][0]["text"] == "paid 5 EUR", body
    refused(*send({"DPoP": once}), "already used")
    # An unbound credential presented as DPoP (with a proof of some key) is refused.
    status, body, h = _send(gateway, call, {"Authorization": f"DPoP {bearer}",
                                            "DPoP": resource_proof(key, "POST", gateway, bearer)})
    assert status == 401 and "not DPoP-bound" in body["error_description"], body
    # A bearer credential issued before the tool asked for DPoP is refused now.
    status, body, h = _send(gateway, call, {"Authorization": f"Bearer {bearer}"})
    refused(status, body, h, "DPoP-bound credentials only")
    # Each refusal of the bound credential is the run's, in its audit trail
    # (a bound credential without its key is what a stolen one looks like).
    events = json.loads(b.cli("--json", "audit", "--run", run["run"], "--limit", "100").stdout)
    unproven = [e for e in events if e["event_type"] == "mcp.call" and e["decision"] == "deny"]
    assert len(unproven) == 7, [e.get("reason") for e in unproven]
    assert all(e["reason"].startswith("invalid_dpop_proof") and e["credential_id"] == claims["jti"]
               for e in unproven), unproven
    # Only the two proven calls reached the MCP server, without the agent's
    # credential or its proofs.
    calls = upstream.calls()
    assert [c[1]["params"]["arguments"]["amount"] for c in calls] == [50, 5]
    for r, _ in calls:
        assert token not in json.dumps(r["headers"]) and "dpop" not in r["headers"]


def _send(url, body, headers):
    """POST `body`; (status, JSON body, headers) whatever the status."""
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), e.headers


def _send_pairs(url, body, pairs):
    """POST `body` with header `pairs` (a name may repeat); (status, JSON, headers)."""
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    data = json.dumps(body).encode()
    c.putrequest("POST", u.path)
    for k, v in [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream"),
                 ("Content-Length", str(len(data)))] + pairs:
        c.putheader(k, v)
    c.endheaders(data)
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"null"), r.headers
    c.close()
    return out


def test_headers_sent_twice_are_refused(broker, upstream, tmp_path):
    """Two `Authorization`, two `DPoP`, two `Mcp-Method` or two
    `MCP-Protocol-Version` headers: which one would a proxy in front, or the
    MCP server, believe? Refused, and nothing goes upstream."""
    b = broker
    gateway, bearer, _ = setup_gateway(b, upstream, tmp_path)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "pay", "arguments": {"amount": 5, "currency": "EUR"},
                       "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}
    auth = ("Authorization", f"Bearer {bearer}")
    status, body, h = _send_pairs(gateway, call, [auth, auth])
    assert status == 401 and "send one `Authorization" in body["error_description"], body
    for name, value in [("Mcp-Method", "tools/call"), ("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Name", "pay")]:
        status, body, _ = _send_pairs(gateway, call, [auth, (name, value), (name, value)])
        assert status == 400 and body["error"]["code"] == -32020 and "twice" in body["error"]["message"], body
    b.cli("tool", "update", "--tenant", "acme", "payments", "--dpop", "true")
    key = OKPKey.generate_key("Ed25519")
    _, tok = start_run(b, "pay-bot", ["payments:pay"], gateway, "pay", task="pay invoice 10", key=key)
    token = tok["access_token"]
    first, second = (resource_proof(key, "POST", gateway, token) for _ in range(2))
    mirrored = [("Mcp-Method", "tools/call"), ("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Name", "pay")]
    status, body, h = _send_pairs(gateway, call, [("Authorization", f"DPoP {token}"), ("DPoP", first),
                                                  ("DPoP", second)] + mirrored)
    assert status == 401 and h["WWW-Authenticate"].startswith("DPoP"), (status, body)
    # No credential at all: both schemes are offered (which tools take only
    # DPoP is not said to a caller nobody authenticated).
    status, body, h = _send_pairs(gateway, call, mirrored)
    challenges = h.get_all("WWW-Authenticate")
    assert status == 401 and [c.split(" ")[0] for c in challenges] == ["Bearer", "DPoP"], challenges
    assert all("resource_metadata=" in c for c in challenges) and 'algs="EdDSA ES256"' in challenges[1]
    # Each proof alone still works (the refused request spent neither).
    status, body, _ = _send_pairs(gateway, call, [("Authorization", f"DPoP {token}"), ("DPoP", first)] + mirrored)
    assert status == 200 and body["result"]["content"][0]["text"] == "paid 5 EUR", body
    assert len(upstream.calls()) == 1
