"""RFC 9421 interoperability both ways with an independent implementation,
`http-message-signatures` from PyPI (pinned in requirements.txt):
- it signs a token request with the run key (Ed25519 and P-256) and the
  broker accepts it, once;
- `mandate key sign-request` signs, and it verifies (and refuses a body
  changed afterwards); the broker accepts that request too."""

import datetime
import json
import uuid

import pytest
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, InvalidSignature, MappingKeyResolver
from http_message_signatures import algorithms
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OKPKey

from test_story import broker, http, register, start_run, token_form  # noqa: F401 (broker is a fixture)


class Req:
    """The message interface the library reads: method, url, headers."""

    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers


def hwk(key):
    d = key.as_dict(private=False)
    members = [f'kty="{d["kty"]}"', f'crv="{d["crv"]}"', f'x="{d["x"]}"'] + ([f'y="{d["y"]}"'] if "y" in d else [])
    return "sig1=hwk;" + ";".join(members)


def post(url, body, headers):
    return http("POST", url, body, dict(headers))


@pytest.mark.parametrize("alg,make_key", [
    (algorithms.ED25519, lambda: OKPKey.generate_key("Ed25519")),
    (algorithms.ECDSA_P256_SHA256, lambda: ECKey.generate_key("P-256")),
])
def test_their_signature_our_verification(broker, alg, make_key):
    grant = register(broker, "acme")
    key = make_key()
    run = start_run(broker, "acme", grant, key)
    meta = http("GET", broker.url + "/.well-known/oauth-authorization-server")[1]
    body = token_form(run["mandate"], "read", resource="https://crm.acme.example")
    req = Req("POST", meta["token_endpoint"], {
        "Content-Type": "application/x-www-form-urlencoded", "Signature-Key": hwk(key)})
    kid = key.thumbprint()
    signer = HTTPMessageSigner(signature_algorithm=alg,
                               key_resolver=MappingKeyResolver(public_keys={}, private_keys={kid: key.private_key}))
    now = datetime.datetime.now(datetime.timezone.utc)
    signer.sign(req, key_id=kid, label="sig1", created=now, expires=now + datetime.timedelta(seconds=30),
                nonce=str(uuid.uuid4()), body=body,
                covered_component_ids=("@method", "@target-uri", "content-type", "signature-key"))
    assert "Content-Digest" in req.headers or "content-digest" in req.headers
    s, v = post(req.url, body, req.headers)
    assert s == 200, v
    claims = jwt.decode(v["access_token"], KeySet.import_key_set(http("GET", meta["jwks_uri"])[1]),
                        algorithms=["EdDSA", "ES256"]).claims
    assert claims["cnf"]["jkt"] == kid
    # The same signed request again: the nonce was used.
    s, v = post(req.url, body, req.headers)
    assert s == 400 and v["error"] == "invalid_signature" and "nonce" in v["error_description"], v
    # Signed by the library with the right key but for another URL: refused.
    req2 = Req("POST", broker.url + "/oauth/introspect", {
        "Content-Type": "application/x-www-form-urlencoded", "Signature-Key": hwk(key)})
    signer.sign(req2, key_id=kid, label="sig1", created=now, expires=now + datetime.timedelta(seconds=30),
                nonce=str(uuid.uuid4()), body=body,
                covered_component_ids=("@method", "@target-uri", "content-type", "signature-key"))
    s, v = post(req.url, body, req2.headers)
    assert s == 400 and v["error"] == "invalid_signature", v


@pytest.mark.parametrize("alg,make_key", [
    (algorithms.ED25519, lambda: OKPKey.generate_key("Ed25519")),
    (algorithms.ECDSA_P256_SHA256, lambda: ECKey.generate_key("P-256")),
])
def test_our_signature_their_verification(broker, tmp_path, alg, make_key):
    grant = register(broker, "acme")
    key = make_key()
    run = start_run(broker, "acme", grant, key)
    kf = tmp_path / "run.jwk"
    kf.write_text(json.dumps(key.as_dict(private=True)))
    meta = http("GET", broker.url + "/.well-known/oauth-authorization-server")[1]
    body = token_form(run["mandate"], "read", resource="https://crm.acme.example")
    (tmp_path / "body").write_bytes(body)
    out = broker.cli("--json", "key", "sign-request", "--key-file", str(kf), "--url", meta["token_endpoint"],
                     "-H", "Content-Type: application/x-www-form-urlencoded", "--body-file", str(tmp_path / "body"))
    added = json.loads(out.stdout)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **added}
    verifier = HTTPMessageVerifier(signature_algorithm=alg, key_resolver=MappingKeyResolver(
        public_keys={key.thumbprint(): key.private_key.public_key()}, private_keys={}))
    results = verifier.verify(Req("POST", meta["token_endpoint"], headers), body=body,
                              require_components=("@method", "@target-uri", "content-type", "content-digest",
                                                  "signature-key"))
    assert len(results) == 1 and results[0].parameters["nonce"]
    with pytest.raises(InvalidSignature):
        verifier.verify(Req("POST", meta["token_endpoint"], headers), body=body + b"&scope=write")
    with pytest.raises(InvalidSignature):
        verifier.verify(Req("PUT", meta["token_endpoint"], headers))
    # And the broker accepts what we signed.
    s, v = post(meta["token_endpoint"], body, headers)
    assert s == 200, v


def test_sign_request_refuses_bad_input(broker, tmp_path):
    kf = tmp_path / "k.jwk"
    broker.cli("key", "generate", "--out", str(kf))
    for args, needle in [
        (["--url", "not-a-url"], "absolute"),
        (["--url", "http://x/", "-H", "no colon"], "Name: value"),
        (["--url", "http://x/", "--body-file", str(tmp_path / "missing")], "cannot read body file"),
    ]:
        r = broker.cli("key", "sign-request", "--key-file", str(kf), *args, check=False)
        assert r.returncode != 0 and needle in r.stderr, (args, r.stderr)
    r = broker.cli("key", "sign-request", "--key-file", str(kf), "--url", "http://x/a", check=False)
    assert r.returncode == 0 and "Signature-Input: sig1=(" in r.stdout
