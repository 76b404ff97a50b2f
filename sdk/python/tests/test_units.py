"""The SDK's pure parts, checked against an independent JOSE implementation
(joserfc): proofs verify, thumbprints agree, secrets stay out of reprs."""
import json
import sys
from pathlib import Path

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mandate  # noqa: E402
from mandate.client import Credential  # noqa: E402
from mandate.errors import from_answer  # noqa: E402
from mandate.keys import RunKey, ath, htu  # noqa: E402


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_proofs_verify_with_joserfc_and_thumbprints_agree(alg):
    key = RunKey.generate(alg)
    public = (OKPKey if alg == "EdDSA" else ECKey).import_key(key.jwk)
    assert key.thumbprint == public.thumbprint()
    proof = key.proof("post", "https://api.example/v1/pay?x=1#f", access_token="tok", nonce="n-1")
    obj = jws.deserialize_compact(proof, public, algorithms=[alg])
    header, claims = obj.protected, json.loads(obj.payload)
    assert header["typ"] == "dpop+jwt" and header["jwk"] == key.jwk and "d" not in header["jwk"]
    assert claims["htm"] == "POST" and claims["htu"] == "https://api.example/v1/pay"
    assert claims["ath"] == ath("tok") and claims["nonce"] == "n-1"
    # A fresh jti every time.
    assert json.loads(jws.deserialize_compact(key.proof("GET", "https://a.example/"), public,
                                              algorithms=[alg]).payload)["jti"] != claims["jti"]


def test_a_key_survives_pem_only_when_asked_and_never_shows():
    key = RunKey.generate("ES256")
    again = RunKey.from_pem(key.to_pem(b"pw"), b"pw")
    assert again.thumbprint == key.thumbprint and again.alg == "ES256"
    assert "PRIVATE" not in repr(key) and key.thumbprint in repr(key)
    with pytest.raises(ValueError):
        RunKey.generate("RS256")


def test_htu_drops_query_and_fragment():
    assert htu("https://h.example:8443/a/b?c=d#e") == "https://h.example:8443/a/b"
    assert htu("http://h.example") == "http://h.example/"


def test_refusals_become_exceptions_by_kind():
    def kind(status, body):
        return type(from_answer(status, body)).__name__
    assert kind(400, {"error": "invalid_grant", "error_description": "the mandate has been revoked (run)"}) == "Revoked"
    assert kind(400, {"error": "invalid_grant", "error_description": "the mandate has expired"}) == "Expired"
    assert kind(403, {"error": "access_denied", "error_description": "policy"}) == "Denied"
    assert kind(503, {"error": "temporarily_unavailable"}) == "Unavailable"
    assert kind(502, "not json") == "Unavailable"
    p = from_answer(400, {"error": "authorization_pending", "approval_id": "ap_1", "interval": 3})
    assert isinstance(p, mandate.ApprovalPending) and p.approval_id == "ap_1" and p.interval == 3
    # A broker asking for a zero interval is not polled in a hot loop.
    assert from_answer(400, {"error": "authorization_pending", "interval": 0}).interval == 1


def test_a_credential_is_renewed_after_two_thirds_of_its_life_and_hides_its_token():
    c = Credential.from_answer("crm", {"access_token": "secret.token.value", "token_type": "DPoP",
                                       "expires_in": 300, "scope": "read"}, now=1000.0)
    assert c.bound and c.fresh(1000.0) and c.fresh(1199.0) and not c.fresh(1201.0)
    assert "secret.token.value" not in repr(c)
    with pytest.raises(mandate.MandateError):
        Credential.from_answer("crm", {"error": "x"}, now=0)


def test_outside_mandate_exec_the_error_says_what_to_do():
    with pytest.raises(mandate.NotUnderExec) as e:
        mandate.Mandate.from_env({})
    assert "mandate exec" in str(e.value) and "join" in str(e.value)


def test_a_url_belongs_to_a_tool_by_origin_and_whole_path_segments():
    from mandate.auth import tool_for, under
    assert under("https://b.example/mcp/pay", "https://b.example/mcp/pay")
    assert under("https://B.example:443/mcp/pay/x?y=1", "https://b.example/mcp/pay")
    assert not under("https://b.example/mcp/payments", "https://b.example/mcp/pay")
    assert not under("http://b.example/mcp/pay", "https://b.example/mcp/pay")
    assert not under("https://b.example:8443/mcp/pay", "https://b.example/mcp/pay")
    assert not under("https://b.example@evil.example/mcp/pay", "https://b.example/mcp/pay")
    assert not under("https://evil.example/b.example/mcp/pay", "https://b.example/mcp/pay")
    assert not under("urn:x", "https://b.example/") and not under("https://b.example/", "urn:x")
    me = {"tools": [{"name": "pay", "mcp_url": "https://b.example/mcp/pay", "audience": "https://b.example/mcp/pay"},
                    {"name": "mail", "proxy_url": "https://b.example/proxy/mail", "audience": "urn:mail"},
                    {"name": "api", "audience": "https://b.example/"}]}
    assert tool_for(me, "https://b.example/mcp/pay") == "pay"
    assert tool_for(me, "https://b.example/proxy/mail/emails") == "mail"
    assert tool_for(me, "https://b.example/other") == "api"  # the longest match wins, else the broadest
    assert tool_for(me, "https://elsewhere.example/mcp/pay") is None


def test_secrets_with_stray_characters_are_refused_without_being_quoted():
    from mandate.client import Mandate as M
    for bad in ("mj_secret-join-token\nX-Evil: 1", "mj_secret join", ""):
        with pytest.raises(ValueError) as e:
            M.join("http://127.0.0.1:1", bad, tenant="t", agent="a")
        assert "secret" not in str(e.value)
    # A trailing newline (a token read from a file) is trimmed, not refused:
    # the request then fails on the closed port, without the token.
    with pytest.raises(mandate.Unavailable) as e:
        M.join("http://127.0.0.1:1", "mj_token-ok\n", tenant="t", agent="a", timeout=2)
    assert "mj_token-ok" not in str(e.value)


def test_join_tokens_and_mandates_go_in_clear_only_on_this_host():
    from mandate.client import Mandate as M
    key = RunKey.generate()
    for url in ("http://broker.example:8407", "http://10.0.0.5", "ftp://x"):
        with pytest.raises(ValueError):
            M.from_mandate(url, "m.a.n", key)
    for url in ("http://127.0.0.1:8407", "http://localhost", "http://[::1]:1", "https://broker.example"):
        M.from_mandate(url, "m.a.n", key)
    M.from_mandate("http://broker.example", "m.a.n", key, allow_http=True)


def test_proofs_never_carry_userinfo():
    assert htu("https://user:pw@h.example:8443/p?q") == "https://h.example:8443/p"
    assert htu("http://[::1]:80/x") == "http://[::1]:80/x"


def test_malformed_answers_fail_closed_as_unavailable():
    for body in ({"access_token": "t", "expires_in": "soon"}, {"access_token": "t", "expires_in": float("inf")},
                 {"access_token": "t", "expires_in": -1}, {"expires_in": 60}, ["not", "an", "object"], None):
        with pytest.raises(mandate.Unavailable):
            Credential.from_answer("crm", body, now=0)
    for interval in (float("inf"), float("nan"), "5", None, True):
        assert from_answer(400, {"error": "authorization_pending", "interval": interval}).interval == 5
    assert from_answer(400, {"error": "authorization_pending", "interval": 10**9}).interval == 300
    assert isinstance(from_answer(429, {"error": "slow_down"}), mandate.Unavailable)


def test_a_held_credential_is_renewed_by_its_whole_life_not_what_is_left():
    import base64 as b64
    claims = b64.urlsafe_b64encode(json.dumps({"iat": 1000, "exp": 1300}).encode()).rstrip(b"=").decode()
    # Handed over by the wrapper with 120 s of its 300 left: renewed once
    # 100 s are left (a third of 300), 20 s later; not when 40 s are left.
    c = Credential.from_answer("crm", {"access_token": f"h.{claims}.s", "expires_in": 120}, now=5000.0)
    assert c.fresh(5019.0) and not c.fresh(5021.0)
