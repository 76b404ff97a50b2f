"""End-to-end: the real `mandate` binary, driven over HTTP and through its CLI.

Keys and DPoP proofs are made, and the issued JWT is verified against the
broker's JWKS, by joserfc, a JOSE implementation we did not write.
"""
import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OKPKey

BIN = os.environ.get("MANDATE_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).resolve().parents[2] / "target")) / "debug" / "mandate"
)
ROOT = Path(__file__).resolve().parents[2]
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MANDATE_TYPE = "urn:mandate:params:oauth:token-type:mandate"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    b = start_broker(tmp_path)
    yield b
    b.proc.terminate()
    b.proc.wait(timeout=10)


@pytest.fixture
def nonce_broker(tmp_path):
    b = start_broker(tmp_path, "--dpop-nonce")
    yield b
    b.proc.terminate()
    b.proc.wait(timeout=10)


def start_broker(tmp_path, *extra):
    port = free_port()
    env = dict(os.environ)
    env.update(
        MANDATE_CONFIG_DIR=str(tmp_path / "config"),
        MANDATE_DATA_DIR=str(tmp_path / "data"),
        MANDATE_URL=f"http://127.0.0.1:{port}",
        RUST_LOG="warn",
    )
    env.pop("MANDATE_MASTER_KEY", None)
    env.pop("MANDATE_ADMIN_TOKEN_FILE", None)
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("broker did not start: " + proc.stdout.read().decode())

    class B:
        pass

    b = B()
    b.url, b.env, b.proc, b.dir = url, env, proc, tmp_path
    b.admin = (tmp_path / "config" / "admin.token").read_text().strip()

    def cli(*args, check=True):
        r = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"mandate {' '.join(args)} failed: {r.stderr}{r.stdout}")
        return r

    b.cli = cli
    return b


def http(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def dpop(key, alg, url, nonce=None):
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    claims = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": url, "iat": int(time.time())}
    if nonce:
        claims["nonce"] = nonce
    return jwt.encode(header, claims, key, algorithms=[alg])


def token_form(mandate, scope="read", **target):
    """The RFC 8693 form body; `target` is `resource=...` or `audience=...`."""
    return urllib.parse.urlencode({
        "grant_type": TOKEN_EXCHANGE, "subject_token": mandate, "subject_token_type": MANDATE_TYPE,
        **target, "scope": scope,
    }).encode()


def exchange(b, mandate, key, alg, audience, scope):
    """As an RFC 9449 client: asked for a nonce (`use_dpop_nonce`, e.g. just
    after the broker restarted), retry once with the `DPoP-Nonce` given."""
    meta = http("GET", b.url + "/.well-known/oauth-authorization-server")[1]
    form = token_form(mandate, scope, resource=audience)
    endpoint = meta["token_endpoint"]
    nonce = None
    for _ in range(2):
        req = urllib.request.Request(endpoint, data=form, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "DPoP": dpop(key, alg, endpoint, nonce)})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            status, body, nonce = e.code, json.loads(e.read() or b"null"), e.headers.get("DPoP-Nonce")
            if not (body and body.get("error") == "use_dpop_nonce" and nonce):
                return status, body
    return status, body


def register(b, tenant):
    b.cli("tenant", "create", tenant)
    b.cli("principal", "create", "--tenant", tenant, "alice@example.com")
    b.cli("agent", "create", "--tenant", tenant, "support-bot", "--owner", "team-support",
          "--purpose", "answers tickets", "--envelope", "crm:*", "--envelope", "mail:send")
    b.cli("tool", "create", "--tenant", tenant, "crm", "--audience", f"https://crm.{tenant}.example",
          "--action", "read", "--action", "write", "--label", "pii", "--max-ttl", "2m")
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", tenant, "--principal", "alice@example.com",
                             "--agent", "support-bot", "--cap", "crm:read", "--task", "answer ticket 42").stdout)
    b.cli("policy", "add", "--tenant", tenant, str(ROOT / "examples" / "policies" / "baseline.cedar"))
    return grant["id"]


def start_run(b, tenant, grant, key):
    out = b.cli("--json", "run", "start", "--tenant", tenant, "--agent", "support-bot",
                "--principal", "alice@example.com", "--grant", grant,
                "--jwk", json.dumps(key.as_dict(private=False))).stdout
    return json.loads(out)


@pytest.mark.parametrize("alg,make_key", [
    ("EdDSA", lambda: OKPKey.generate_key("Ed25519")),
    ("ES256", lambda: ECKey.generate_key("P-256")),
])
def test_the_whole_story(broker, alg, make_key):
    b = broker
    grant = register(b, "acme")
    register(b, "globex")
    key = make_key()
    run = start_run(b, "acme", grant, key)
    assert run["capabilities"] == ["crm:read"]

    # Exchange: a DPoP-bound JWT for the crm tool.
    status, tok = exchange(b, run["mandate"], key, alg, "https://crm.acme.example", "read")
    assert status == 200, tok
    assert tok["token_type"] == "DPoP" and tok["scope"] == "read"
    assert 0 < tok["expires_in"] <= 120

    # Verify it with joserfc against the published JWKS.
    meta = http("GET", b.url + "/.well-known/oauth-authorization-server")[1]
    jwks = KeySet.import_key_set(http("GET", meta["jwks_uri"])[1])
    decoded = jwt.decode(tok["access_token"], jwks, algorithms=["EdDSA", "ES256"])
    assert decoded.header["typ"] == "at+jwt"
    claims = decoded.claims
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": meta["issuer"]},
        aud={"essential": True, "value": "https://crm.acme.example"},
        exp={"essential": True},
    ).validate(claims)
    assert claims["sub"] == "alice@example.com"
    assert claims["act"]["sub"] == run["run_id"]
    assert claims["client_id"] == run["agent_id"]
    assert claims["cnf"]["jkt"] == key.thumbprint()
    assert claims["tenant"] == "acme" and claims["run"] == run["run"] and claims["task"] == "answer ticket 42"
    assert claims["exp"] <= run["expires_at"]

    # A credential for another tenant's tool is refused.
    status, err = exchange(b, run["mandate"], key, alg, "https://crm.globex.example", "read")
    assert status == 400 and err["error"] == "invalid_target", err

    # A stolen mandate without the run key is useless.
    thief = OKPKey.generate_key("Ed25519")
    status, err = exchange(b, run["mandate"], thief, "EdDSA", "https://crm.acme.example", "read")
    assert status == 400 and err["error"] == "invalid_dpop_proof", err

    # Revoke the run: refused from then on.
    b.cli("revoke", "--run", run["run"], "--reason", "e2e")
    status, err = exchange(b, run["mandate"], key, alg, "https://crm.acme.example", "read")
    assert status == 400 and err["error"] == "invalid_grant" and "revoked" in err["error_description"], err

    # The trail shows allow, deny and revoke, filterable, and verifies.
    events = json.loads(b.cli("--json", "audit", "--run", run["run"]).stdout)
    kinds = [(e["event_type"], e["decision"]) for e in events]
    assert ("run.start", "allow") in kinds
    assert ("token.exchange", "allow") in kinds
    # The wrong tenant's tool is refused once the key is proven: the run's.
    assert kinds.count(("token.exchange", "deny")) == 1
    assert ("revoke", "ok") in kinds
    allowed = [e for e in events if e["event_type"] == "token.exchange" and e["decision"] == "allow"][0]
    assert allowed["credential_id"] == claims["jti"]
    assert allowed["agent"] == "support-bot" and allowed["principal"] == "alice@example.com"
    denials = json.loads(b.cli("--json", "audit", "--decision", "deny", "--tenant", "acme").stdout)
    assert len(denials) == 1
    # The thief's proof and the revoked run's attempt proved no key: they are
    # anyone's, audited through the per-client throttle (with their reasons).
    anyone = json.loads(b.cli("--json", "audit", "--decision", "deny", "--type", "token.exchange").stdout)
    reasons = " ".join(e.get("reason") or "" for e in anyone)
    assert "revoked" in reasons or "cnf" in reasons, reasons
    table = b.cli("audit", "--run", run["run"]).stdout
    assert "token.exchange" in table and "SEQ" in table
    assert "intact" in b.cli("audit", "verify").stdout

    # Alter one event in the SQLite file: `audit verify` names it.
    target = allowed["seq"]
    db = sqlite3.connect(b.dir / "data" / "mandate.db")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET body = replace(body, 'alice@example.com', 'mallory@example.com') WHERE seq = ?", (target,))
    db.commit()
    db.close()
    r = b.cli("audit", "verify", check=False)
    assert r.returncode != 0
    assert f"BROKEN at event {target}" in r.stdout, r.stdout
    v = json.loads(b.cli("--json", "audit", "verify", check=False).stdout)
    assert v["ok"] is False and v["first_bad"]["seq"] == target


def restart(b, kill=False):
    if kill:
        b.proc.kill()
    else:
        b.proc.terminate()
    b.proc.wait(timeout=10)
    port = b.url.rsplit(":", 1)[1]
    b.proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}"], env=b.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(b.url + "/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("broker did not restart")


def test_restart_keeps_everything(broker):
    b = broker
    grant = register(b, "acme")
    key = OKPKey.generate_key("Ed25519")
    run = start_run(b, "acme", grant, key)
    kid_before = http("GET", b.url + "/jwks.json")[1]["keys"][0]["kid"]
    restart(b)
    assert http("GET", b.url + "/jwks.json")[1]["keys"][0]["kid"] == kid_before
    status, tok = exchange(b, run["mandate"], key, "EdDSA", "https://crm.acme.example", "read")
    assert status == 200, tok
    assert "intact" in b.cli("audit", "verify").stdout


def test_cli_errors_are_actionable(broker):
    b = broker
    r = b.cli("tenant", "create", "Bad Name", check=False)
    assert r.returncode != 0 and "invalid tenant" in r.stderr
    bad = b.dir / "bad.cedar"
    b.cli("tenant", "create", "acme")
    bad.write_text('permit (principal, action, resource)\nwhen { resource.colour == "red" };\n')
    r = b.cli("policy", "add", "--tenant", "acme", str(bad), check=False)
    assert r.returncode != 0 and "line 2, column" in r.stderr, r.stderr
    env = dict(b.env, MANDATE_ADMIN_TOKEN_FILE=str(b.dir / "nope"))
    r = subprocess.run([BIN, "tenant", "list"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "admin credential" in r.stderr
    r = subprocess.run([BIN, "tenant", "list"], env=dict(b.env, MANDATE_URL="http://127.0.0.1:9"),
                       capture_output=True, text=True)
    assert r.returncode != 0 and "cannot reach the broker" in r.stderr
    for verb in ["serve", "tenant", "agent", "tool", "grant", "policy", "run", "revoke", "audit"]:
        assert subprocess.run([BIN, verb, "--help"], capture_output=True).returncode == 0


@pytest.fixture
def pg_broker(tmp_path):
    """A broker on a fresh PostgreSQL database of the test server
    (`MANDATE_TEST_PG`, which the test command sets)."""
    admin = os.environ.get("MANDATE_TEST_PG")
    if not admin:
        pytest.skip("MANDATE_TEST_PG is not set (the test command sets it)")
    name = "e2e_" + uuid.uuid4().hex[:12]
    subprocess.run(["psql", "-q", admin, "-c", f"CREATE DATABASE {name}"], check=True)
    os.environ["MANDATE_STORE"] = admin.rsplit("/", 1)[0] + "/" + name
    try:
        b = start_broker(tmp_path)
    finally:
        del os.environ["MANDATE_STORE"]
    yield b
    b.proc.terminate()
    b.proc.wait(timeout=10)
    subprocess.run(["psql", "-q", admin, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


def test_kill_9_under_load_loses_no_credentials_event(broker):
    """Every credential a client received has its audit event, even when the
    broker is killed with SIGKILL in the middle of the load."""
    kill_9_under_load(broker)


def test_kill_9_under_load_on_postgres_loses_no_credentials_event(pg_broker):
    """The same on a PostgreSQL store: what the broker answered was committed
    there first."""
    assert "MANDATE_STORE" in pg_broker.env
    kill_9_under_load(pg_broker)


def kill_9_under_load(b):
    import base64
    import threading

    grant = register(b, "acme")
    key = OKPKey.generate_key("Ed25519")
    run = start_run(b, "acme", grant, key)
    endpoint = b.url + "/oauth/token"
    form = token_form(run["mandate"], audience="crm")
    received, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                status, tok = http("POST", endpoint, form, {
                    "Content-Type": "application/x-www-form-urlencoded", "DPoP": dpop(key, "EdDSA", endpoint)})
            except OSError:
                continue
            if status == 200:
                payload = tok["access_token"].split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
                received.append(claims["jti"])

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.time() + 20
    while len(received) < 200 and time.time() < deadline:
        time.sleep(0.05)
    b.proc.kill()  # SIGKILL, mid-load
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert len(received) >= 200, "the load did not get going"
    restart(b)
    events = json.loads(b.cli("--json", "audit", "--run", run["run"], "--type", "token.exchange",
                              "--decision", "allow", "--limit", "100000").stdout)
    audited = {e["credential_id"] for e in events}
    missing = [j for j in received if j not in audited]
    assert not missing, f"{len(missing)} credentials were returned without an audit event"
    assert "intact" in b.cli("audit", "verify").stdout


def test_dpop_nonce_round_trip_with_an_independent_client(nonce_broker):
    """With `--dpop-nonce`, a client written with joserfc follows RFC 9449 §8:
    refused with `use_dpop_nonce`, it retries with the `DPoP-Nonce` it was given."""
    b = nonce_broker
    grant = register(b, "acme")
    key = ECKey.generate_key("P-256")
    run = start_run(b, "acme", grant, key)
    endpoint = b.url + "/oauth/token"
    form = token_form(run["mandate"], resource="https://crm.acme.example")

    def attempt(nonce=None):
        claims = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": endpoint, "iat": int(time.time())}
        if nonce:
            claims["nonce"] = nonce
        proof = jwt.encode({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}, claims, key,
                           algorithms=["ES256"])
        req = urllib.request.Request(endpoint, data=form, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "DPoP": proof})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read()), r.headers.get("DPoP-Nonce")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), e.headers.get("DPoP-Nonce")

    status, body, nonce = attempt()
    assert status == 400 and body["error"] == "use_dpop_nonce", body
    assert nonce
    status, body, next_nonce = attempt(nonce)
    assert status == 200, body
    assert body["token_type"] == "DPoP" and next_nonce
    status, body, _ = attempt("made-up")
    assert status == 400 and body["error"] == "use_dpop_nonce", body
