"""The broker's webhook, checked by an independent RFC 9421 implementation
(PyPI http-message-signatures) with the key from the broker's JWKS: an
approval request and an anomaly alert arrive signed; the alert suspended
the run (`--suspend-on-anomaly`), and `mandate run resume` lets it go on."""

import json
import os
import subprocess
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from http_message_signatures import HTTPMessageVerifier, InvalidSignature, MappingKeyResolver, algorithms
from joserfc import jwt
from joserfc.jwk import OKPKey

from test_story import BIN, free_port, http, start_broker, start_run
from test_approvals import setup, pay, TOKEN_EXCHANGE, MANDATE_TYPE


class Req:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers


@pytest.fixture
def hook():
    got = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers.items()), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    port = free_port()
    srv = HTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}/hook", got
    srv.shutdown()


def wait_for(got, n):
    for _ in range(200):
        if len(got) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"expected {n} webhook calls, got {len(got)}")


def denied(b, mandate, key):
    meta = http("GET", b.url + "/.well-known/oauth-authorization-server")[1]
    form = urllib.parse.urlencode({"grant_type": TOKEN_EXCHANGE, "subject_token": mandate,
                                   "subject_token_type": MANDATE_TYPE, "audience": "pay", "scope": "refund"}).encode()
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key.as_dict(private=False)}
    claims = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": meta["token_endpoint"], "iat": int(time.time())}
    return http("POST", meta["token_endpoint"], form, {"Content-Type": "application/x-www-form-urlencoded",
                                                       "DPoP": jwt.encode(header, claims, key, algorithms=["EdDSA"])})


def test_webhooks_are_signed_and_alerts_suspend(tmp_path, hook):
    url, got = hook
    b = start_broker(tmp_path, "--webhook-url", url, "--anomaly-denials", "2", "--suspend-on-anomaly")
    try:
        grant = setup(b)
        key = OKPKey.generate_key("Ed25519")
        run = start_run(b, "acme", grant, key)
        s, v = pay(b, run["mandate"], key, 30_000)
        assert v["error"] == "authorization_pending", v
        wait_for(got, 1)

        jwks = http("GET", b.url + "/jwks.json")[1]["keys"]
        keys = {k["kid"]: OKPKey.import_key(k).public_key for k in jwks if k.get("crv") == "Ed25519"}
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519,
                                       key_resolver=MappingKeyResolver(public_keys=keys, private_keys={}))
        headers, body = got[0]
        res = verifier.verify(Req("POST", url, headers), body=body, expect_tag="mandate-webhook",
                              require_components=("@method", "@target-uri", "content-digest"))
        assert len(res) == 1
        event = json.loads(body)
        assert event["type"] == "approval.requested" and event["data"]["id"] == v["approval_id"]
        with pytest.raises(InvalidSignature):
            verifier.verify(Req("POST", url, headers), body=body.replace(b"30000", b"3000"))

        # Two denials in a minute: an alert, signed, and the run is suspended.
        for _ in range(2):
            s, d = denied(b, run["mandate"], key)
            assert s == 400, d
        wait_for(got, 2)
        headers, body = got[-1]
        verifier.verify(Req("POST", url, headers), body=body, expect_tag="mandate-webhook")
        alert = json.loads(body)
        assert alert["type"] == "alert" and alert["data"]["kind"] == "denial_burst"
        assert alert["data"]["suspended"] is True and alert["data"]["run"] == run["run"]
        s, v = pay(b, run["mandate"], key, 100)
        assert s == 400 and "suspended" in v["error_description"], v
        b.cli("run", "resume", run["run"])
        s, v = pay(b, run["mandate"], key, 100)
        assert s == 200, v
        r = b.cli("run", "resume", run["run"], check=False)
        assert r.returncode != 0 and "not suspended" in r.stderr
    finally:
        b.proc.terminate()
        b.proc.wait(timeout=10)


def test_serve_refuses_a_bad_webhook_url(tmp_path):
    r = subprocess.run([BIN, "serve", "--listen", f"127.0.0.1:{free_port()}", "--webhook-url", "ftp://x",
                        "--data-dir", str(tmp_path / "data")],
                       env=dict(os.environ, MANDATE_CONFIG_DIR=str(tmp_path / "config")),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--webhook-url must be an http(s) URL" in r.stderr, r.stderr
