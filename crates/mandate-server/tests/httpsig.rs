//! RFC 9421 HTTP message signatures as proof of possession at the token
//! endpoint (issue 4 §3): Ed25519 and P-256 run keys; replayed, expired,
//! wrong-component, wrong-key and tampered requests are refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mandate_core::jose::Alg;
use mandate_core::keys::SigningKey;
use serde_json::Value;

const ALL: &[&str] = &[
    "@method",
    "@target-uri",
    "content-type",
    "content-digest",
    "signature-key",
];

fn send(b: &Broker, headers: &[(String, String)], body: &str) -> (u16, Value) {
    let mut req = Broker::agent().post(b.token_url());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    read(req.send(body).unwrap())
}

fn signed(
    b: &Broker,
    key: &SigningKey,
    body: &str,
    components: &[&str],
    created: u64,
    nonce: &str,
) -> Vec<(String, String)> {
    signed_headers(
        key,
        "POST",
        &b.token_url(),
        vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body.as_bytes(),
        components,
        created,
        nonce,
    )
}

#[test]
fn signed_exchanges_get_bound_credentials_for_both_algorithms() {
    let b = Broker::start("sig-ok");
    let grant = b.seed("acme");
    for alg in [Alg::EdDSA, Alg::ES256] {
        let (run, mandate, key) = b.start_run("acme", &grant, alg);
        let body = form(&mandate, "https://crm.acme.example", "read");
        let h = signed(&b, &key, &body, ALL, now(), &jti());
        let (s, v) = send(&b, &h, &body);
        assert_eq!(s, 200, "{v}");
        let cred = v["access_token"].as_str().unwrap();
        let claims: Value = serde_json::from_slice(
            &mandate_core::jose::unb64("c", cred.split('.').nth(1).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(claims["cnf"]["jkt"], key.kid());
        // Replayed as is: the nonce was used.
        assert_refused(
            &send(&b, &h, &body),
            400,
            "invalid_signature",
            "nonce was already used",
        );
        let ev = b.audit(&format!("type=token.exchange&run={run}&decision=allow"));
        assert_eq!(ev[0]["details"]["proof"], "httpsig");
    }
}

#[test]
fn bad_signatures_are_refused_with_reasons() {
    let b = Broker::start("sig-bad");
    let grant = b.seed("acme");
    let (_, mandate, key) = b.start_run("acme", &grant, Alg::EdDSA);
    let body = form(&mandate, "https://crm.acme.example", "read");
    let t = now();
    // Expired (created long ago, expires 30 s after).
    let h = signed(&b, &key, &body, ALL, t - 600, &jti());
    assert_refused(&send(&b, &h, &body), 400, "invalid_signature", "expired");
    // From the future.
    let h = signed(&b, &key, &body, ALL, t + 600, &jti());
    assert_refused(&send(&b, &h, &body), 400, "invalid_signature", "future");
    // Not covering the body.
    let h = signed(
        &b,
        &key,
        &body,
        &["@method", "@target-uri", "signature-key"],
        t,
        &jti(),
    );
    assert_refused(
        &send(&b, &h, &body),
        400,
        "invalid_signature",
        "must cover `content-digest`",
    );
    // Not covering the key header.
    let h = signed(
        &b,
        &key,
        &body,
        &["@method", "@target-uri", "content-digest"],
        t,
        &jti(),
    );
    assert_refused(
        &send(&b, &h, &body),
        400,
        "invalid_signature",
        "must cover `signature-key`",
    );
    // Signed by another key (its own Signature-Key): not the mandate's.
    let other = SigningKey::generate(Alg::EdDSA, &mut rand::rngs::OsRng);
    let h = signed(&b, &other, &body, ALL, t, &jti());
    assert_refused(
        &send(&b, &h, &body),
        400,
        "invalid_signature",
        "key other than",
    );
    // The mandate's key in Signature-Key, but signed by another key.
    let mut h = signed(&b, &other, &body, ALL, t, &jti());
    let right = mandate_core::httpsig::signature_key_field("sig1", &key.public());
    for (n, v) in h.iter_mut() {
        if n == "signature-key" {
            *v = right.clone();
        }
    }
    assert_refused(&send(&b, &h, &body), 400, "invalid_signature", "signature");
    // The body changed after signing (another scope): digest mismatch.
    let h = signed(&b, &key, &body, ALL, t, &jti());
    let changed = form(&mandate, "https://crm.acme.example", "write");
    assert_refused(
        &send(&b, &h, &changed),
        400,
        "invalid_signature",
        "does not match",
    );
    // Without Signature-Key.
    let h: Vec<_> = signed(&b, &key, &body, ALL, t, &jti())
        .into_iter()
        .filter(|(n, _)| n != "signature-key")
        .collect();
    assert_refused(&send(&b, &h, &body), 400, "invalid_signature", "");
    // Garbage.
    let h = vec![
        (
            "content-type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("signature-input".to_owned(), "sig1=(".to_owned()),
        ("signature".to_owned(), "sig1=:AAAA:".to_owned()),
    ];
    assert_refused(&send(&b, &h, &body), 400, "invalid_signature", "");
    // Both DPoP and a signature.
    let mut h = signed(&b, &key, &body, ALL, t, &jti());
    h.push(("dpop".into(), b.proof(&key)));
    assert_refused(&send(&b, &h, &body), 400, "invalid_request", "not both");
    // Neither.
    let h = vec![(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    assert_refused(
        &send(&b, &h, &body),
        400,
        "invalid_dpop_proof",
        "proof of possession is required",
    );
    // And a good one still works after all that.
    let h = signed(&b, &key, &body, ALL, t, &jti());
    assert_eq!(send(&b, &h, &body).0, 200);
}

/// An `mcp` tool that takes DPoP-bound credentials only: an exchange signed
/// with RFC 9421 is refused before anything is spent (its credential would
/// be refused at the gateway), and one proved with DPoP gets a bound one.
#[test]
fn a_dpop_only_mcp_tool_refuses_a_signed_exchange_first() {
    let b = Broker::start("sig-mcp-dpop");
    for (path, body) in [
        ("/v1/tenants", serde_json::json!({"name": "beta"})),
        (
            "/v1/tenants/beta/principals",
            serde_json::json!({"id": "alice@example.com"}),
        ),
        (
            "/v1/tenants/beta/agents",
            serde_json::json!({"name": "triage", "owner": "ops", "envelope": ["pay:*"]}),
        ),
        (
            "/v1/tenants/beta/tools",
            serde_json::json!({"name": "pay", "provider": "mcp", "actions": ["transfer"],
            "mcp": {"upstream": "http://127.0.0.1:9/mcp", "dpop": true}}),
        ),
    ] {
        let (s, v) = b.admin_post(path, body);
        assert_eq!(s, 201, "{path}: {v}");
    }
    let (s, v) = b.admin_post(
        "/v1/tenants/beta/grants",
        serde_json::json!({"principal": "alice@example.com", "agent": "triage", "capabilities": ["pay:transfer"], "task": "pay"}),
    );
    assert_eq!(s, 201, "{v}");
    let grant = v["id"].as_str().unwrap().to_owned();
    let (s, v) = b.admin_put_text(
        "/v1/tenants/beta/policies/baseline",
        include_str!("../../../examples/policies/baseline.cedar"),
    );
    assert_eq!(s, 200, "{v}");
    let (run, mandate, key) = b.start_run("beta", &grant, Alg::EdDSA);
    let gateway = format!("{}/mcp/pay", b.url);
    let body = form(&mandate, &gateway, "transfer");
    let h = signed(&b, &key, &body, ALL, now(), &jti());
    assert_refused(
        &send(&b, &h, &body),
        400,
        "invalid_request",
        "DPoP-bound credentials only",
    );
    let ev = b.audit(&format!("type=token.exchange&run={run}&decision=deny"));
    assert_eq!(ev.len(), 1, "{ev:?}");
    let (s, v) = b.exchange(&mandate, &key, &gateway, "transfer");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP", "{v}");
    let cred = v["access_token"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &mandate_core::jose::unb64("c", cred.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["cnf"]["jkt"], key.kid());
}
