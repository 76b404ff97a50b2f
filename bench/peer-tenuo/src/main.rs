//! W2 against the peer: µs per offline verification with proof of
//! possession, for the same capability (one tool, one action), in one run:
//! - mandate-verify: parse the credential (compact JWS), check `alg`, find
//!   the key, verify Ed25519, check `iss`/`aud`/`exp`/`iat`, look up 1,000
//!   revoked ids, parse and verify a fresh DPoP proof (Ed25519, `htm`,
//!   `htu`, `iat`, `ath`, `cnf.jkt`) and the replay cache;
//! - tenuo 0.3.5: decode the warrant from its base64 wire form, then
//!   `Authorizer::authorize_one` with a proof-of-possession signature
//!   (signature, trust root, expiry, capability, PoP);
//! - the floor: raw Ed25519 verification × 2.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mandate_core::credential::{self, AccessClaims, Actor, Confirmation};
use mandate_core::jose::{Alg, b64};
use mandate_core::keys::{BrokerKeys, SigningKey};
use rand::rngs::OsRng;
use serde_json::json;

fn per_op(n: u32, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n as usize {
        f(i);
    }
    start.elapsed().as_secs_f64() / f64::from(n) * 1e6
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // Mandate: a credential for crm:read bound to the run key, and n proofs.
    let keys = BrokerKeys::generate(&mut OsRng);
    let run_key = SigningKey::generate(Alg::EdDSA, &mut OsRng);
    let (iss, aud, uri) = ("http://127.0.0.1:8407", "https://crm.example", "https://crm.example/contacts");
    let claims = AccessClaims {
        iss: iss.into(),
        aud: aud.into(),
        sub: "alice@example.com".into(),
        act: Actor { sub: "spiffe://mandate.local/tenant/t/agent/a/run/r".into(), act: None },
        client_id: "spiffe://mandate.local/tenant/t/agent/a".into(),
        scope: "read".into(),
        jti: "cred_1".into(),
        iat: now,
        exp: now + 300,
        cnf: Some(Confirmation { jkt: run_key.kid() }),
        tenant: "t".into(),
        run: "r".into(),
        agent: "a".into(),
        task: "bench".into(),
        grant: None,
        path_prefix: None,
        authorization_details: None,
        approval: None,
    };
    let token = credential::sign(&keys.jwt_eddsa, &claims).unwrap();
    let ath = b64(&mandate_core::mandate::token_digest(&token));
    let header = json!({"typ": "dpop+jwt", "jwk": run_key.public().to_json()});
    let proofs: Vec<String> = (0..n)
        .map(|i| run_key.sign_jws(&header, &json!({"jti": format!("p{i}"), "htm": "GET", "htu": uri, "iat": now, "ath": ath})))
        .collect();
    let mut verifier = mandate_verify::Verifier::new(iss, aud);
    verifier.set_jwks(&keys.jwks());
    for i in 0..1000 {
        verifier.revoke(&format!("cred:other-{i}"));
    }

    // Tenuo: a warrant for the same capability, held by a key, and n PoPs.
    let issuer = tenuo::SigningKey::generate();
    let holder = tenuo::SigningKey::generate();
    let warrant = tenuo::Warrant::builder()
        .capability("crm.read", tenuo::ConstraintSet::new())
        .holder(holder.public_key())
        .ttl(Duration::from_secs(300))
        .build(&issuer)
        .unwrap();
    let wire = tenuo::wire::encode_base64(&warrant).unwrap();
    let args: HashMap<String, tenuo::ConstraintValue> = HashMap::new();
    let pops: Vec<tenuo::Signature> = (0..n).map(|_| warrant.sign(&holder, "crm.read", &args).unwrap()).collect();
    let mut authorizer = tenuo::Authorizer::new();
    authorizer.add_trusted_root(issuer.public_key());

    // Warm up, and check both accept.
    for i in 0..100.min(n as usize) {
        let _ = verifier.verify(&mandate_verify::Request { credential: &token, proof: Some(&proofs[i]), method: "GET", uri }, now);
    }
    let w = tenuo::wire::decode_base64(&wire).unwrap();
    authorizer.authorize_one(&w, "crm.read", &args, Some(&pops[0]), &[]).unwrap();

    for round in 1..=3 {
        // Fresh proofs for mandate (its replay cache refuses reuse).
        let proofs: Vec<String> = (0..n)
            .map(|i| run_key.sign_jws(&header, &json!({"jti": format!("r{round}-{i}"), "htm": "GET", "htu": uri, "iat": now, "ath": ath})))
            .collect();
        let mandate_us = per_op(n, |i| {
            let r = verifier.verify(&mandate_verify::Request { credential: &token, proof: Some(&proofs[i]), method: "GET", uri }, now);
            assert!(r.is_ok(), "{r:?}");
        });
        let tenuo_us = per_op(n, |i| {
            let w = tenuo::wire::decode_base64(&wire).unwrap();
            let r = authorizer.authorize_one(&w, "crm.read", &args, Some(&pops[i]), &[]);
            assert!(r.is_ok(), "{r:?}");
        });
        let (a, b) = (keys.jwt_eddsa.public(), run_key.public());
        let msg1 = vec![1u8; token.len()];
        let msg2 = vec![2u8; proofs[0].len()];
        let (s1, s2) = (keys.jwt_eddsa.sign(&msg1), run_key.sign(&msg2));
        let raw_us = per_op(n, |_| {
            assert!(a.verify("b", Alg::EdDSA, &msg1, &s1).is_ok());
            assert!(b.verify("b", Alg::EdDSA, &msg2, &s2).is_ok());
        });
        println!(
            "run {round}: mandate-verify {mandate_us:.1} us/op; tenuo {tenuo_us:.1} us/op; raw Ed25519 x2 {raw_us:.1} us/op; mandate/raw {:.2}x; mandate/tenuo {:.2}x",
            mandate_us / raw_us,
            mandate_us / tenuo_us
        );
    }
}
