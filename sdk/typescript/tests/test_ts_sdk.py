"""@mandate/sdk (TypeScript) against the real broker: under `mandate exec`
and standalone (WebCrypto keys), through its fetch wrapper and the official
MCP TypeScript SDK to the broker's MCP gateway (which checks every DPoP
proof), the broker asking for nonces; proofs also checked with joserfc."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey

from test_sdk import Agent, claims_of, delegated, setup, waits_for_finance
from test_story import BIN

HERE = Path(__file__).resolve().parent
DIST = HERE.parent / "dist" / "index.js"
NODE_DIR = os.environ.get("MANDATE_NODE_DIR", str(Path.home() / ".cache" / "mandate-node"))


def node_env(env, entry=DIST):
    if not Path(entry).exists():
        pytest.fail(f"{entry} is missing: scripts/test.sh builds the TypeScript SDK (tsc) first")
    return dict(env, MANDATE_TS_SDK=str(entry), MANDATE_NODE_DIR=NODE_DIR)


def ts_agent(argv_prefix, env):
    return Agent([*argv_prefix, "node", str(HERE / "agent.mjs")], node_env(env))


def under_exec(b, grant):
    return ts_agent([BIN, "exec", "-q", "--tenant", "acme", "--agent", "sdk-bot", "--on-behalf-of",
                     "alice@example.com", "--grant", grant, "--tool", "payments", "--delegate-to", "sdk-helper",
                     "--"], b.env)


def pay_text(r):
    return r["body"]["result"]["content"][0]["text"]


def test_ts_units_with_node_test():
    r = subprocess.run(["node", "--test", str(HERE / "units.test.mjs")], env=node_env(dict(os.environ)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ts_under_mandate_exec(nonce_broker, upstream, tmp_path):
    b = nonce_broker
    gateway, grant = setup(b, upstream, tmp_path)
    a = under_exec(b, grant)
    try:
        assert a.ok("from_env") == "Mandate(mandate exec)"
        me = a.ok("identity")
        assert me["agent"] == "sdk-bot", me
        first = a.ok("credential", tool="payments")
        assert first["token_type"] == "DPoP" and first["token"] not in first["shown"], first
        assert a.ok("credential", tool="payments")["token"] == first["token"]
        assert a.ok("credential", tool="payments", fresh=True)["token"] != first["token"]
        # The fetch wrapper: named tool, then found by URL; nonce asked once.
        r = a.ok("call", url=gateway, tool="payments", name="pay", arguments={"amount": 5, "currency": "EUR"})
        assert r["status"] == 200 and pay_text(r) == "paid 5 EUR", r
        r = a.ok("call", url=gateway, name="pay", arguments={"amount": 6, "currency": "EUR"})
        assert r["status"] == 200 and pay_text(r) == "paid 6 EUR", r
        wrong = a("call", url=upstream.url, tool="payments", name="pay", arguments={})
        assert wrong["code"] == "wrong_url", wrong
        # The official MCP TypeScript SDK with `mcpFetch`.
        r = a.ok("mcp", url=gateway, tool="payments", name="pay", arguments={"amount": 7, "currency": "EUR"})
        assert r == {"listed": ["echo", "pay"], "text": "paid 7 EUR"}, r
        assert [c[1]["params"]["arguments"]["amount"] for c in upstream.calls()] == [5, 6, 7]
        for req, _ in upstream.calls():
            assert "dpop" not in req["headers"] and first["token"] not in json.dumps(req)

        # Approvals: ApprovalPending, then a wait that proceeds once bob approves.
        waits_for_finance(a, b, tmp_path)

        # Attenuation for a sub-agent's WebCrypto key; used by that key only.
        sub = ts_agent([], {k: v for k, v in b.env.items() if not k.startswith("MANDATE_")} | {"PATH": os.environ["PATH"]})
        try:
            thumb = sub.ok("key", name="sub")
            sub.ok("key", name="other")
            narrowed = a.ok("attenuate", to=thumb, only=["payments:echo"], ttl_secs=120)
            sub.ok("from_mandate", broker=b.url, mandate=narrowed, key="other")
            assert sub("credential", tool="payments", actions=["echo"]).get("code") in ("invalid_dpop_proof", "invalid_grant")
            sub.ok("from_mandate", broker=b.url, mandate=narrowed, key="sub")
            echo = sub.ok("credential", tool="payments", actions=["echo"])
            assert thumb in json.dumps(claims_of(echo["token"])["act"])
            assert sub("credential", tool="payments", actions=["pay"]).get("code") in ("invalid_scope", "access_denied")
        finally:
            sub.close()

        delegated(a, b)
        b.cli("revoke", "--run", me["run"] if me["run"].startswith("run_") else me["run_id"])
        gone = a("credential", tool="payments", fresh=True)
        assert gone["error"] == "Revoked" and "revoked" in gone["description"], gone
        assert first["token"] not in json.dumps(gone)
        assert a("credential", who="child", tool="payments", actions=["echo"], fresh=True)["error"] == "Revoked"
    finally:
        a.close()


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_ts_standalone_with_a_join_token(nonce_broker, upstream, tmp_path, alg):
    b = nonce_broker
    gateway, grant = setup(b, upstream, tmp_path)
    b.cli("agent", "create", "--tenant", "acme", "sdk-helper", "--owner", "team-sdk", "--envelope", "payments:echo")
    join = tmp_path / "join.token"
    b.cli("agent", "join-token", "--tenant", "acme", "sdk-bot", "--principal", "alice@example.com",
          "--grant", grant, "--ttl", "5m", "--out", str(join))
    a = ts_agent([], {"PATH": os.environ["PATH"]})
    try:
        # Its proofs verify with an independent JOSE library.
        a.ok("key", name="k", alg=alg)
        p = a.ok("proof", key="k", method="post", url="https://api.example/x?y#z", access_token="tok", nonce="n")
        public = (OKPKey if alg == "EdDSA" else ECKey).import_key(p["jwk"])
        claims = json.loads(jws.deserialize_compact(p["proof"], public, algorithms=[alg]).payload)
        assert claims["htm"] == "POST" and claims["htu"] == "https://api.example/x" and claims["nonce"] == "n"

        me = a.ok("join", broker=b.url, token=join.read_text() + "\n", tenant="acme", agent="sdk-bot",
                  principal="alice@example.com", grant=grant, alg=alg, tools=["payments"])
        assert me["agent"] == "sdk-bot" and "mandate" not in me, me
        first = a.ok("credential", tool="bank")
        assert a.ok("credential", tool="bank")["token"] == first["token"]
        time.sleep(max(0.0, first["expires_at"] - 2 - time.time()) + 0.2)
        assert a.ok("credential", tool="bank")["token"] != first["token"]
        r = a.ok("call", url=gateway, name="pay", arguments={"amount": 9, "currency": "EUR"})
        assert r["status"] == 200 and pay_text(r) == "paid 9 EUR", r
        if alg == "ES256":
            # Ending the run: its credentials are refused from then on.
            assert a("end") == {"ok": None}
            assert a("credential", tool="bank", fresh=True)["error"] == "Revoked"
            return
        child = a.ok("delegate", agent="sdk-helper", capabilities=["payments:echo"], ttl_secs=300)
        assert child["depth"] == 1, child
        assert a.ok("credential", tool="payments", actions=["echo"])["token_type"] == "DPoP"
        assert a("credential", tool="payments", actions=["pay"]).get("code") in ("invalid_scope", "access_denied")
        b.cli("revoke", "--run", me["run"] if me["run"].startswith("run_") else me["run_id"])
        assert a("credential", tool="payments", actions=["echo"], fresh=True)["error"] == "Revoked"
    finally:
        a.close()


def test_ts_credentials_never_follow_a_redirect_elsewhere(broker, upstream, redirector, tmp_path):
    b = broker
    _, grant = setup(b, upstream, tmp_path)
    a = under_exec(b, grant)
    url, seen = redirector
    try:
        a.ok("from_env")
        # A request carrying a credential is not redirected by fetch: the
        # 307 comes back to the caller, and nothing reached the other origin.
        r = a.ok("call", url=url, tool="bank", name="x", arguments={}, follow=True)
        assert r["status"] == 307, r
        assert len(seen["a"]) == 1 and seen["a"][0]["authorization"].startswith("DPoP "), seen
        assert seen["b"] == [], seen["b"]
        r = a.ok("call", url=url.replace("/api", "/same"), tool="bank", name="x", arguments={}, follow=True)
        assert r["status"] == 307 and not [h for h in seen["a"] if h["path"] == "/landed"], (r, seen)
    finally:
        a.close()


def test_ts_package_installs_from_its_tarball_into_an_empty_folder(broker, tmp_path):
    """npm pack, then npm install of the tarball in a fresh folder without
    the network (the package has no dependencies), then an import by name
    and one call under `mandate exec`."""
    pkg = HERE.parent
    packed = subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(tmp_path)], cwd=pkg,
                            capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    tarball = tmp_path / packed.stdout.strip().splitlines()[-1]
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    inst = subprocess.run(["npm", "install", "--offline", "--no-audit", "--no-fund", "--silent", str(tarball)],
                          cwd=app, capture_output=True, text=True, timeout=120)
    assert inst.returncode == 0, inst.stderr
    b = broker
    b.cli("tenant", "create", "acme")
    b.cli("principal", "create", "--tenant", "acme", "alice@example.com")
    b.cli("agent", "create", "--tenant", "acme", "bot", "--owner", "o", "--envelope", "crm:read")
    b.cli("tool", "create", "--tenant", "acme", "crm", "--audience", "https://crm.example", "--action", "read")
    b.cli("policy", "add", "--tenant", "acme", str(pkg.parents[1] / "examples" / "policies" / "baseline.cedar"))
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", "acme", "--principal", "alice@example.com",
                             "--agent", "bot", "--cap", "crm:read", "--task", "t").stdout)["id"]
    (app / "main.mjs").write_text(
        'import { Mandate } from "@mandate/sdk";\n'
        'const c = await Mandate.fromEnv().credential("crm");\n'
        'console.log(JSON.stringify({ type: c.tokenType, scope: c.scope }));\n')
    r = subprocess.run([BIN, "exec", "-q", "--tenant", "acme", "--agent", "bot", "--on-behalf-of",
                        "alice@example.com", "--grant", grant, "--", "node", "main.mjs"],
                       cwd=app, env=b.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"type": "DPoP", "scope": "read"}
    assert (app / "node_modules" / "@mandate" / "sdk" / "dist" / "index.d.ts").exists()
