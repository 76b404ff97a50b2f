"""W5: soak and crash (issue 10, "beyond the list").

1. Soak: a mixed load for --minutes (default 10) against one release
   broker: token exchanges, proxy calls (to a local upstream), runs started
   and revoked, payments that wait for finance and are approved. The
   broker's RSS is sampled every 10 s; the report gives the samples and the
   growth over the second half (flat means: memory bounded under load).
2. Crash: --kills times (default 10): exchanges from 8 threads, kill -9 at
   a random moment, restart, and every credential a client received must
   have its `token.exchange` event in the trail; `audit verify` must pass.

Run by bench/w5.sh (which builds the release binary); prints a JSON report
on stdout. Keys, DPoP proofs and approvals are made with joserfc, a JOSE
implementation we did not write.
"""
import argparse
import base64
import json
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import OKPKey

ROOT = Path(__file__).resolve().parents[1]
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MANDATE_TYPE = "urn:mandate:params:oauth:token-type:mandate"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, {"raw": raw[:200].decode(errors="replace")}


class Broker:
    def __init__(self, binary, work):
        self.bin, self.work, self.port = binary, Path(work), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, MANDATE_CONFIG_DIR=str(self.work / "config"),
                        MANDATE_DATA_DIR=str(self.work / "data"), MANDATE_URL=self.url, RUST_LOG="warn")
        self.env.pop("MANDATE_ADMIN_TOKEN_FILE", None)
        self.proc = None

    def start(self):
        log = open(self.work / "broker.log", "ab")
        self.proc = subprocess.Popen([self.bin, "serve", "--listen", f"127.0.0.1:{self.port}",
                                      "--dpop-replay-per-key", "2000000"], env=self.env, stdout=log, stderr=log)
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("broker did not start; see " + str(self.work / "broker.log"))
        self.admin = (self.work / "config" / "admin.token").read_text().strip()

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cli(self, *args):
        r = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"mandate {' '.join(args)}: {r.stderr}{r.stdout}")
        return r.stdout

    def admin_post(self, path, body):
        return http("POST", self.url + path, json.dumps(body).encode(),
                    {"Authorization": f"Bearer {self.admin}", "Content-Type": "application/json"})


def upstream():
    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}"


def setup(b, upstream_url):
    t = "acme"
    b.cli("tenant", "create", t)
    b.cli("principal", "create", "--tenant", t, "alice@example.com")
    b.cli("principal", "create", "--tenant", t, "bob@example.com", "--group", "finance")
    b.cli("agent", "create", "--tenant", t, "worker", "--owner", "ops", "--envelope", "crm:*",
          "--envelope", "pay:transfer", "--envelope", "api:read")
    b.cli("tool", "create", "--tenant", t, "crm", "--audience", "https://crm.example", "--action", "read",
          "--max-ttl", "2m")
    b.cli("tool", "create", "--tenant", t, "pay", "--audience", "https://pay.example", "--action", "transfer",
          "--label", "money")
    b.cli("tool", "create", "--tenant", t, "api", "--provider", "proxy", "--upstream", upstream_url,
          "--route", "GET /items/*=read", "--action", "read")
    subprocess.run([b.bin, "tool", "set-secret", "--tenant", t, "api"], input="sk_live_w5", text=True,
                   env=b.env, check=True, capture_output=True)
    grant = json.loads(b.cli("--json", "grant", "create", "--tenant", t, "--principal", "alice@example.com",
                             "--agent", "worker", "--cap", "crm:read", "--cap", "pay:transfer",
                             "--cap", "api:read", "--task", "soak"))["id"]
    b.cli("policy", "add", "--tenant", t, str(ROOT / "examples" / "policies" / "baseline.cedar"))
    b.cli("policy", "add", "--tenant", t, str(ROOT / "examples" / "policies" / "approvals.cedar"))
    s, v = b.admin_post(f"/v1/tenants/{t}/principals/bob@example.com/approver-tokens", {})
    assert s in (200, 201), v
    return grant, v["token"]


class Run:
    def __init__(self, b, grant, ttl=3600):
        self.key = OKPKey.generate_key("Ed25519")
        s, v = b.admin_post("/v1/runs", {"tenant": "acme", "agent": "worker", "principal": "alice@example.com",
                                         "grant": grant, "ttl_secs": ttl,
                                         "jwk": self.key.as_dict(private=False)})
        assert s == 201, v
        self.b, self.run, self.mandate = b, v["run"], v["mandate"]

    def exchange(self, audience, scope, details=None):
        endpoint = self.b.url + "/oauth/token"
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": self.mandate, "subject_token_type": MANDATE_TYPE,
                "audience": audience, "scope": scope}
        if details is not None:
            form["authorization_details"] = json.dumps(details)
        nonce = None
        for _ in range(2):
            claims = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": endpoint, "iat": int(time.time())}
            if nonce:
                claims["nonce"] = nonce
            proof = jwt.encode({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": self.key.as_dict(private=False)},
                               claims, self.key, algorithms=["EdDSA"])
            req = urllib.request.Request(endpoint, data=urllib.parse.urlencode(form).encode(), method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded",
                                                  "DPoP": proof})
            try:
                with urllib.request.urlopen(req, timeout=15) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                status, body, nonce = e.code, json.loads(e.read() or b"null"), e.headers.get("DPoP-Nonce")
                if not (body and body.get("error") == "use_dpop_nonce" and nonce):
                    return status, body
        return status, body


def jti_of(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


def soak(b, grant, approver, minutes):
    stop = threading.Event()
    counts, errors, lock = {}, {}, threading.Lock()

    def count(kind, ok, why=None):
        with lock:
            counts[kind] = counts.get(kind, 0) + (1 if ok else 0)
            if not ok:
                errors[f"{kind}: {why}"] = errors.get(f"{kind}: {why}", 0) + 1

    def exchanger():
        r = Run(b, grant)
        while not stop.is_set():
            s, v = r.exchange("crm", "read")
            count("exchange", s == 200, v.get("error") if isinstance(v, dict) else s)

    def proxier():
        r = Run(b, grant)
        while not stop.is_set():
            s, v = r.exchange("api", "read")
            if s != 200:
                count("proxy", False, v.get("error"))
                continue
            for i in range(5):
                st, _ = http("GET", f"{b.url}/proxy/api/items/{i}",
                             headers={"Authorization": f"Bearer {v['access_token']}"})
                count("proxy", st == 200, st)

    def revoker():
        while not stop.is_set():
            r = Run(b, grant, ttl=300)
            s, _ = r.exchange("crm", "read")
            st, v = b.admin_post("/v1/revocations", {"kind": "run", "id": r.run, "tenant": "acme",
                                                     "reason": "w5"})
            s2, v2 = r.exchange("crm", "read")
            count("revoke", s == 200 and st in (200, 201) and s2 == 400, (s, st, s2))

    def approver_loop():
        r = Run(b, grant)
        while not stop.is_set():
            amount = random.randint(10_001, 1_000_000)
            details = [{"type": "mandate", "amount": amount, "currency": "EUR", "target": "invoice"}]
            s, v = r.exchange("pay", "transfer", details)
            if not (s == 400 and v.get("error") == "authorization_pending"):
                count("approval", False, v.get("error"))
                continue
            st, _ = http("POST", f"{b.url}/v1/approvals/{v['approval_id']}/approve", b"{}",
                         {"Authorization": f"Bearer {approver}", "Content-Type": "application/json"})
            s2, v2 = r.exchange("pay", "transfer", details)
            count("approval", st == 200 and s2 == 200, (st, s2, v2.get("error")))

    workers = [exchanger] * 3 + [proxier] * 2 + [revoker, approver_loop]
    threads = [threading.Thread(target=w, daemon=True) for w in workers]
    for t in threads:
        t.start()
    samples, started = [], time.time()
    while time.time() - started < minutes * 60:
        samples.append({"t": round(time.time() - started), "rss_kib": b.rss_kib()})
        time.sleep(10)
    samples.append({"t": round(time.time() - started), "rss_kib": b.rss_kib()})
    stop.set()
    for t in threads:
        t.join(timeout=30)
    half = [s["rss_kib"] for s in samples[len(samples) // 2:]]
    return {"minutes": minutes, "counts": counts, "errors": errors, "rss_samples": samples,
            "rss_second_half_growth_kib": half[-1] - half[0] if half else 0,
            "rss_max_kib": max(s["rss_kib"] for s in samples)}


def audited_credentials(b, run):
    """Every credential id of the run's allowed exchanges, page by page (the
    audit endpoint answers at most 10,000 events at a time)."""
    ids, after = set(), 0
    while True:
        q = urllib.parse.urlencode({"run": run, "type": "token.exchange", "decision": "allow",
                                    "after_seq": after, "limit": 10000})
        s, page = http("GET", f"{b.url}/v1/audit?{q}", headers={"Authorization": f"Bearer {b.admin}"})
        assert s == 200, page
        ids.update(e["credential_id"] for e in page)
        if len(page) < 10000:
            return ids
        after = max(e["seq"] for e in page)


def crash(b, grant, kills):
    rounds = []
    for i in range(kills):
        r = Run(b, grant)
        received, stop = [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    s, v = r.exchange("crm", "read")
                except OSError:
                    continue
                if s == 200:
                    received.append(jti_of(v["access_token"]))

        threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(random.uniform(2, 6))
        b.kill9()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        b.start()
        audited = audited_credentials(b, r.run)
        missing = [j for j in received if j not in audited]
        verify = json.loads(b.cli("--json", "audit", "verify"))
        rounds.append({"round": i + 1, "credentials_received": len(received), "missing_from_trail": len(missing),
                       "audit_verify_ok": verify.get("ok")})
        print(f"crash round {i + 1}: {len(received)} credentials, {len(missing)} missing, "
              f"verify ok={verify.get('ok')}", flush=True, file=__import__("sys").stderr)
    return rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--kills", type=int, default=10)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mandate-w5.")
    b = Broker(a.bin, work)
    b.start()
    grant, approver = setup(b, upstream())
    report = {"work_dir": work}
    if a.minutes > 0:
        report["soak"] = soak(b, grant, approver, a.minutes)
    report["crash"] = crash(b, grant, a.kills)
    b.stop()
    report["crash_missing_total"] = sum(r["missing_from_trail"] for r in report["crash"])
    report["crash_verify_all_ok"] = all(r["audit_verify_ok"] for r in report["crash"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
