"""Human approval with the real binary (issue 5 §1): a payment over the
limit waits (`authorization_pending`), finance sees it with `mandate
approvals`, approves it with an approver credential, and the agent's retry
of exactly that request gets a credential that names the approval (checked
with joserfc); a denial is final; the admin credential cannot decide."""

import json
import time
import urllib.parse
import uuid

from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from test_story import ROOT, broker, http, start_run  # noqa: F401 (broker is a fixture)

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MANDATE_TYPE = "urn:mandate:params:oauth:token-type:mandate"


def setup(b):
    b.cli("tenant", "create", "acme")
    b.cli("principal", "create", "--tenant", "acme", "alice@example.com")
    b.cli("principal", "create", "--tenant", "acme", "bob@example.com", "--group", "finance")
    b.cli("agent", "create", "--tenant", "acme", "support-bot", "--owner", "ops", "--envelope", "pay:transfer")
    b.cli("tool", "create", "--tenant", "acme", "pay", "--audience", "https://pay.acme.example",
          "--action", "transfer", "--label", "money")
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", "acme", "--principal", "alice@example.com",
                             "--agent", "support-bot", "--cap", "pay:transfer", "--task", "pay invoices").stdout)
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "baseline.cedar"))
    b.cli("policy", "add", "--tenant", "acme", str(ROOT / "examples" / "policies" / "approvals.cedar"))
    return grant["id"]


def pay(b, mandate, key, amount):
    meta = http("GET", b.url + "/.well-known/oauth-authorization-server")[1]
    form = urllib.parse.urlencode({
        "grant_type": TOKEN_EXCHANGE, "subject_token": mandate, "subject_token_type": MANDATE_TYPE,
        "audience": "pay", "scope": "transfer",
        "authorization_details": json.dumps([{"type": "mandate", "amount": amount, "currency": "EUR",
                                              "target": "invoice 7"}]),
    }).encode()
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key.as_dict(private=False)}
    claims = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": meta["token_endpoint"], "iat": int(time.time())}
    return http("POST", meta["token_endpoint"], form, {
        "Content-Type": "application/x-www-form-urlencoded",
        "DPoP": jwt.encode(header, claims, key, algorithms=["EdDSA"]),
    })


def test_a_payment_waits_for_finance_and_the_retry_names_the_approval(broker, tmp_path):
    grant = setup(broker)
    b = broker
    key = OKPKey.generate_key("Ed25519")
    run = start_run(b, "acme", grant, key)
    s, v = pay(b, run["mandate"], key, 9_000)
    assert s == 200, v
    s, v = pay(b, run["mandate"], key, 25_000)
    assert s == 400 and v["error"] == "authorization_pending", v
    approval = v["approval_id"]
    assert v["approvers"] == ["group:finance"] and v["interval"] > 0

    bob = tmp_path / "bob.token"
    b.cli("principal", "approver-token", "--tenant", "acme", "bob@example.com", "--out", str(bob))
    assert bob.stat().st_mode & 0o777 == 0o600
    listed = json.loads(b.cli("--json", "approvals", "list", "--status", "pending", "--as", str(bob)).stdout)
    assert [a["id"] for a in listed] == [approval]
    shown = b.cli("approvals", "show", approval, "--as", str(bob)).stdout
    assert "pay:transfer" in shown and "25000" in shown and "group:finance" in shown, shown
    # The admin credential reads but cannot decide.
    r = b.cli("approvals", "approve", approval, check=False)
    assert r.returncode != 0 and "approver credential" in r.stderr
    # Alice is not in finance.
    alice = tmp_path / "alice.token"
    b.cli("principal", "approver-token", "--tenant", "acme", "alice@example.com", "--out", str(alice))
    r = b.cli("approvals", "approve", approval, "--as", str(alice), check=False)
    assert r.returncode != 0 and "not an approver" in r.stderr, r.stderr
    b.cli("approvals", "approve", approval, "--as", str(bob), "--comment", "invoice checked")

    s, v = pay(b, run["mandate"], key, 25_000)
    assert s == 200, v
    jwks = KeySet.import_key_set(http("GET", b.url + "/jwks.json")[1])
    claims = jwt.decode(v["access_token"], jwks, algorithms=["EdDSA", "ES256"]).claims
    assert claims["approval"]["id"] == approval
    assert claims["approval"]["approver"] == "principal:bob@example.com"
    assert claims["authorization_details"][0]["amount"] == 25_000
    trail = json.loads(b.cli("--json", "audit", "--run", run["run"]).stdout)
    done = [e for e in trail if e["event_type"] == "token.exchange" and e["details"].get("approval")]
    assert done and done[0]["details"]["approval"]["approved_by"] == "principal:bob@example.com"

    # A denial is final for that request.
    s, v = pay(b, run["mandate"], key, 40_000)
    denied = v["approval_id"]
    b.cli("approvals", "deny", denied, "--as", str(bob), "--comment", "duplicate invoice")
    s, v = pay(b, run["mandate"], key, 40_000)
    assert s == 403 and "duplicate invoice" in v["error_description"], v
    r = b.cli("approvals", "approve", denied, "--as", str(bob), check=False)
    assert r.returncode != 0 and "denied" in r.stderr
    # Bad input.
    r = b.cli("approvals", "show", "apr_nope", "--as", str(bob), check=False)
    assert r.returncode != 0 and "not found" in r.stderr
    r = b.cli("approvals", "list", "--status", "maybe", "--as", str(bob), check=False)
    assert r.returncode != 0 and "status" in r.stderr
    r = b.cli("principal", "approver-token", "--tenant", "acme", "nobody@example.com", check=False)
    assert r.returncode != 0 and "not found" in r.stderr


CHILD = r'''
import http.client, json, os, socket, sys, time
from pathlib import Path

class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("agent")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

def ask(body):
    c = UnixConn(os.environ["MANDATE_AGENT_SOCK"])
    c.request("POST", "/v1/credentials", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")

work = Path(sys.argv[1])
req = {"tool": "pay", "actions": ["transfer"], "details": {"amount": 25000, "currency": "EUR", "target": "invoice 9"}}
out = {"first": ask(req), "bad": ask({"tool": "pay", "actions": ["transfer"], "details": "lots"})}
(work / "pending.json").write_text(json.dumps(out))
while not (work / "go").exists():
    time.sleep(0.05)
out["second"] = ask(req)
(work / "out.json").write_text(json.dumps(out))
'''


def test_exec_children_declare_details_and_wait_for_approval(broker, tmp_path):
    import subprocess
    import sys
    from test_story import BIN
    grant = setup(broker)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.Popen([BIN, "exec", "--tenant", "acme", "--agent", "support-bot", "--on-behalf-of",
                             "alice@example.com", "--grant", grant, "--", sys.executable, str(tmp_path / "child.py"),
                             str(work)], env=broker.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if (work / "pending.json").exists():
            break
        time.sleep(0.05)
    first = json.loads((work / "pending.json").read_text())
    status, body = first["first"]
    assert status == 202 and body["error"] == "authorization_pending", first
    assert first["bad"][0] == 400 and "object" in first["bad"][1]["error_description"]
    bob = tmp_path / "bob.token"
    broker.cli("principal", "approver-token", "--tenant", "acme", "bob@example.com", "--out", str(bob))
    broker.cli("approvals", "approve", body["approval_id"], "--as", str(bob))
    (work / "go").write_text("1")
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    status, body2 = json.loads((work / "out.json").read_text())["second"]
    assert status == 200, body2
    jwks = KeySet.import_key_set(http("GET", broker.url + "/jwks.json")[1])
    claims = jwt.decode(body2["access_token"], jwks, algorithms=["EdDSA", "ES256"]).claims
    assert claims["approval"]["id"] == body["approval_id"]
    assert claims["authorization_details"][0]["target"] == "invoice 9"
