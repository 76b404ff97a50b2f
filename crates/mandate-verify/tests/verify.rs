//! A tool verifying credentials: each way a request can be wrong is refused, and says why.
#![allow(clippy::unwrap_used)]

use mandate_core::credential::{self, AccessClaims, Actor, Confirmation};
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::{BrokerKeys, SigningKey};
use mandate_verify::{Request, Verifier, VerifyError};
use rand::rngs::OsRng;
use serde_json::json;

/// `ath` = base64url(SHA-256(access token)) (RFC 9449 §4.2).
fn ath(token: &str) -> String {
    b64(&mandate_core::mandate::token_digest(token))
}

const NOW: u64 = 1_800_000_000;
const ISS: &str = "http://127.0.0.1:8407";
const AUD: &str = "https://crm.acme.example";
const URI: &str = "https://crm.acme.example/contacts";

struct Fixture {
    keys: BrokerKeys,
    run_key: SigningKey,
    verifier: Verifier,
}

fn fixture() -> Fixture {
    let keys = BrokerKeys::generate(&mut OsRng);
    let run_key = SigningKey::generate(Alg::ES256, &mut OsRng);
    let mut verifier = Verifier::new(ISS, AUD);
    assert_eq!(verifier.set_jwks(&keys.jwks()), 2);
    Fixture {
        keys,
        run_key,
        verifier,
    }
}

fn claims(f: &Fixture) -> AccessClaims {
    AccessClaims {
        iss: ISS.into(),
        aud: AUD.into(),
        sub: "alice@example.com".into(),
        act: Actor {
            sub: "spiffe://mandate.local/tenant/acme/agent/bot/run/run_1".into(),
            act: Some(Box::new(Actor {
                sub: "spiffe://mandate.local/tenant/acme/agent/lead/run/run_0".into(),
                act: None,
            })),
        },
        client_id: "spiffe://mandate.local/tenant/acme/agent/bot".into(),
        scope: "read write".into(),
        jti: "cred_1".into(),
        iat: NOW,
        exp: NOW + 300,
        cnf: Some(Confirmation {
            jkt: f.run_key.kid(),
        }),
        tenant: "acme".into(),
        run: "run_1".into(),
        agent: "bot".into(),
        task: "sync contacts".into(),
        grant: Some("grt_1".into()),
        path_prefix: None,
        authorization_details: None,
        approval: None,
        approvals: vec![],
        blocks: vec![],
    }
}

fn proof(k: &SigningKey, token: &str, jti: &str, method: &str, uri: &str) -> String {
    k.sign_jws(
        &json!({"typ": "dpop+jwt", "jwk": k.public().to_json()}),
        &json!({"jti": jti, "htm": method, "htu": uri, "iat": NOW, "ath": ath(token)}),
    )
}

fn req<'a>(token: &'a str, p: Option<&'a str>) -> Request<'a> {
    Request {
        credential: token,
        proof: p,
        method: "GET",
        uri: URI,
    }
}

#[test]
fn a_bound_credential_with_its_proof_verifies() {
    let f = fixture();
    for alg in [Alg::EdDSA, Alg::ES256] {
        let t = credential::sign(f.keys.jwt_key(alg), &claims(&f)).unwrap();
        let p = proof(&f.run_key, &t, &format!("p-{alg:?}"), "GET", URI);
        let id = f.verifier.verify(&req(&t, Some(&p)), NOW + 1).unwrap();
        assert_eq!(
            (id.tenant.as_str(), id.agent.as_str(), id.subject.as_str()),
            ("acme", "bot", "alice@example.com")
        );
        assert_eq!(id.scopes, vec!["read", "write"]);
        assert_eq!(id.actors.len(), 2);
        assert!(id.actors[0].ends_with("/run/run_1"));
    }
}

#[test]
fn wrong_issuer_audience_and_times_are_refused() {
    let f = fixture();
    let mut c = claims(&f);
    c.aud = "https://other.example".into();
    let t = credential::sign(&f.keys.jwt_eddsa, &c).unwrap();
    let p = proof(&f.run_key, &t, "a", "GET", URI);
    assert!(matches!(
        f.verifier.verify(&req(&t, Some(&p)), NOW),
        Err(VerifyError::WrongParty {
            what: "audience",
            ..
        })
    ));
    let mut c = claims(&f);
    c.iss = "http://evil.example".into();
    let t = credential::sign(&f.keys.jwt_eddsa, &c).unwrap();
    assert!(matches!(
        f.verifier.verify(&req(&t, None), NOW),
        Err(VerifyError::WrongParty { what: "issuer", .. })
    ));
    let t = credential::sign(&f.keys.jwt_eddsa, &claims(&f)).unwrap();
    let e = f.verifier.verify(&req(&t, None), NOW + 400).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    let e = f.verifier.verify(&req(&t, None), NOW - 60).unwrap_err();
    assert!(e.to_string().contains("future"), "{e}");
    // Longer than any credential of the broker lives: forged.
    let mut c = claims(&f);
    c.exp = NOW + 10 * 365 * 86_400;
    let t = credential::sign(&f.keys.jwt_eddsa, &c).unwrap();
    let e = f.verifier.verify(&req(&t, None), NOW).unwrap_err();
    assert!(e.to_string().contains("lives longer"), "{e}");
}

#[test]
fn forged_unknown_key_and_alg_confusion_are_refused() {
    let f = fixture();
    let other = BrokerKeys::generate(&mut OsRng);
    let t = credential::sign(&other.jwt_eddsa, &claims(&f)).unwrap();
    assert!(matches!(
        f.verifier.verify(&req(&t, None), NOW),
        Err(VerifyError::UnknownKey(_))
    ));
    let good = credential::sign(&f.keys.jwt_eddsa, &claims(&f)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let kid = f.keys.jwt_eddsa.kid();
    for alg in ["none", "HS256"] {
        let h = b64(json!({"alg": alg, "typ": "at+jwt", "kid": kid})
            .to_string()
            .as_bytes());
        let forged = format!(
            "{h}.{}.{}",
            parts[1],
            if alg == "none" { "" } else { parts[2] }
        );
        let e = f.verifier.verify(&req(&forged, None), NOW).unwrap_err();
        assert!(
            matches!(e, VerifyError::Malformed(_) | VerifyError::BadSignature),
            "{alg}: {e}"
        );
    }
    // Claims changed after signing.
    let mut c = claims(&f);
    c.scope = "admin".into();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        b64(serde_json::to_string(&c).unwrap().as_bytes()),
        parts[2]
    );
    assert_eq!(
        f.verifier.verify(&req(&swapped, None), NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn revoked_credentials_and_runs_are_refused() {
    let mut f = fixture();
    let t = credential::sign(&f.keys.jwt_eddsa, &claims(&f)).unwrap();
    f.verifier.revoke("run:run_1");
    let p = proof(&f.run_key, &t, "a", "GET", URI);
    assert_eq!(
        f.verifier.verify(&req(&t, Some(&p)), NOW),
        Err(VerifyError::Revoked("run".into()))
    );
}

#[test]
fn stolen_credential_without_the_run_key_is_refused() {
    let f = fixture();
    let t = credential::sign(&f.keys.jwt_eddsa, &claims(&f)).unwrap();
    let e = f.verifier.verify(&req(&t, None), NOW).unwrap_err();
    assert!(e.to_string().contains("DPoP proof"), "{e}");
    let thief = SigningKey::generate(Alg::ES256, &mut OsRng);
    let p = proof(&thief, &t, "a", "GET", URI);
    assert!(
        f.verifier
            .verify(&req(&t, Some(&p)), NOW)
            .unwrap_err()
            .to_string()
            .contains("cnf.jkt")
    );
    // A proof made for another credential (`ath`), method or URI.
    let other = credential::sign(&f.keys.jwt_es256, &claims(&f)).unwrap();
    let p = proof(&f.run_key, &other, "b", "GET", URI);
    assert!(
        f.verifier
            .verify(&req(&t, Some(&p)), NOW)
            .unwrap_err()
            .to_string()
            .contains("ath")
    );
    let p = proof(&f.run_key, &t, "c", "POST", URI);
    assert!(
        f.verifier
            .verify(&req(&t, Some(&p)), NOW)
            .unwrap_err()
            .to_string()
            .contains("htm")
    );
    let p = proof(&f.run_key, &t, "d", "GET", "https://crm.acme.example/admin");
    assert!(
        f.verifier
            .verify(&req(&t, Some(&p)), NOW)
            .unwrap_err()
            .to_string()
            .contains("htu")
    );
    // Replay.
    let p = proof(&f.run_key, &t, "e", "GET", URI);
    assert!(f.verifier.verify(&req(&t, Some(&p)), NOW).is_ok());
    assert!(
        f.verifier
            .verify(&req(&t, Some(&p)), NOW)
            .unwrap_err()
            .to_string()
            .contains("replayed")
    );
}

/// Headers of a request to `URI` signed (RFC 9421) by `k`, carrying `token`.
fn signed(
    k: &SigningKey,
    token: &str,
    body: &[u8],
    comps: &[&str],
    nonce: &str,
) -> Vec<(String, String)> {
    use mandate_core::httpsig;
    let mut h = vec![("authorization".to_owned(), format!("DPoP {token}"))];
    if !body.is_empty() {
        h.push(("content-digest".into(), httpsig::content_digest(body)));
    }
    h.push((
        "signature-key".into(),
        httpsig::signature_key_field("sig1", &k.public()),
    ));
    let (i, s) = httpsig::sign(
        &httpsig::Message::request("POST", URI, h.clone()),
        k,
        &httpsig::SignParams {
            label: "sig1",
            components: comps,
            created: NOW,
            expires: Some(NOW + 30),
            nonce: Some(nonce),
            keyid: None,
            include_alg: true,
            tag: None,
        },
    )
    .unwrap();
    h.push(("signature-input".into(), i));
    h.push(("signature".into(), s));
    h
}

#[test]
fn a_request_signed_by_the_bound_key_verifies_instead_of_dpop() {
    let f = fixture();
    let t = credential::sign(&f.keys.jwt_eddsa, &claims(&f)).unwrap();
    let all = [
        "@method",
        "@target-uri",
        "authorization",
        "content-digest",
        "signature-key",
    ];
    let body = br#"{"name":"x"}"#;
    let h = signed(&f.run_key, &t, body, &all, "nonce-0001");
    let r = |h: &[(String, String)], body: &[u8]| {
        f.verifier.verify_signed(
            &mandate_verify::SignedRequest {
                credential: &t,
                method: "POST",
                uri: URI,
                headers: h,
                body,
            },
            NOW,
        )
    };
    let id = r(&h, body).unwrap();
    assert_eq!(id.run, "run_1");
    // Replayed, tampered, another key, missing coverage, no signature: refused.
    assert!(matches!(r(&h, body), Err(VerifyError::Proof(m)) if m.contains("replayed")));
    let h2 = signed(&f.run_key, &t, body, &all, "nonce-0002");
    assert!(r(&h2, br#"{"name":"y"}"#).is_err());
    let other = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let h3 = signed(&other, &t, body, &all, "nonce-0003");
    assert!(matches!(r(&h3, body), Err(VerifyError::Proof(m)) if m.contains("other than")));
    let h4 = signed(
        &f.run_key,
        &t,
        body,
        &["@method", "@target-uri", "content-digest", "signature-key"],
        "nonce-0004",
    );
    assert!(matches!(r(&h4, body), Err(VerifyError::Proof(m)) if m.contains("authorization")));
    assert!(r(&[], body).is_err());
    // The credential checks still apply: another broker's credential is refused.
    let stranger = BrokerKeys::generate(&mut OsRng);
    let t2 = credential::sign(&stranger.jwt_eddsa, &claims(&f)).unwrap();
    let h5 = signed(&f.run_key, &t2, body, &all, "nonce-0005");
    assert!(
        f.verifier
            .verify_signed(
                &mandate_verify::SignedRequest {
                    credential: &t2,
                    method: "POST",
                    uri: URI,
                    headers: &h5,
                    body
                },
                NOW
            )
            .is_err()
    );
}

/// A credential narrowed to a path prefix is good on paths under it only,
/// as sent: not outside it, not through dot segments or encoded `/`, `.`,
/// `%`. The identity carries the prefix, the details and the approvals.
#[test]
fn a_path_prefix_is_enforced_on_the_request_path() {
    let f = fixture();
    let mut c = claims(&f);
    c.path_prefix = Some("/contacts/acme".into());
    c.authorization_details = Some(json!({"type": "crm", "amount": 5}));
    c.approvals = vec![credential::ApprovalClaim {
        id: "apr_1".into(),
        approver: "principal:alice".into(),
        approved_at: NOW - 10,
        request_digest: "d".into(),
    }];
    let t = credential::sign(&f.keys.jwt_eddsa, &c).unwrap();
    let at = |n: usize, uri: &str| {
        let p = proof(&f.run_key, &t, &format!("pp-{n}"), "GET", uri);
        f.verifier.verify(
            &Request {
                credential: &t,
                proof: Some(&p),
                method: "GET",
                uri,
            },
            NOW,
        )
    };
    for (n, ok) in [
        "https://crm.acme.example/contacts/acme",
        "https://crm.acme.example/contacts/acme/42?full=1",
    ]
    .into_iter()
    .enumerate()
    {
        let id = at(n, ok).unwrap();
        assert_eq!(id.path_prefix.as_deref(), Some("/contacts/acme"));
        assert_eq!(id.authorization_details, c.authorization_details);
        assert_eq!(id.approvals, c.approvals);
    }
    for (n, bad) in [
        "https://crm.acme.example/contacts",
        "https://crm.acme.example/contacts/acme-other",
        "https://crm.acme.example/contacts/acme/../other",
        "https://crm.acme.example/contacts/acme/%2e%2e/other",
        "https://crm.acme.example/contacts/acme%2Fx",
        "https://crm.acme.example/contacts/acme/%252e",
        "https://crm.acme.example",
    ]
    .into_iter()
    .enumerate()
    {
        let e = at(100 + n, bad).unwrap_err();
        assert!(
            matches!(&e, VerifyError::OutsidePath { prefix, .. } if prefix == "/contacts/acme"),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("/contacts/acme"), "{e}");
    }
    // Without a prefix, any path.
    let t = credential::sign(&f.keys.jwt_eddsa, &claims(&f)).unwrap();
    let p = proof(
        &f.run_key,
        &t,
        "pp-free",
        "GET",
        "https://crm.acme.example/x/../y",
    );
    let r = Request {
        credential: &t,
        proof: Some(&p),
        method: "GET",
        uri: "https://crm.acme.example/x/../y",
    };
    assert!(f.verifier.verify(&r, NOW).unwrap().path_prefix.is_none());
}
