//! Every file in `testdata/` gets the verdict `samples.json` says it must.
#![allow(clippy::unwrap_used)]

use mandate_core::dpop::{ProofExpectations, verify_proof};
use std::collections::HashMap;

use mandate_core::credential::{Expect, Refusal, verify_with};
use mandate_core::jose::{CompactJws, PublicJwk};
use serde_json::Value;

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// Verifies a credential against a JWKS the way a tool would, with the
/// core's one credential verifier (issuer and audience as the samples were
/// made; lifetime, retirement and time as for any credential).
fn verify_credential(jwks: &Value, token: &str, now: u64) -> Result<(), String> {
    let keys: HashMap<String, PublicJwk> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                PublicJwk::from_json(k).unwrap(),
            )
        })
        .collect();
    // The issuer is what the sample says: this checks everything else.
    let issuer = CompactJws::parse("credential", token, 8192)
        .ok()
        .and_then(|j| j.claims("credential").ok())
        .and_then(|c| c["iss"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let refused = |r: Refusal| match r {
        Refusal::UnknownKey(_) => "signature: unknown kid".to_owned(),
        Refusal::Expired(_) => "expired".to_owned(),
        other => other.to_string(),
    };
    verify_with(
        &keys,
        token,
        &Expect {
            issuer: &issuer,
            audience: None,
            now,
            leeway: 0,
            allow_expired: false,
        },
    )
    .map(|_| ())
    .map_err(refused)
}

#[test]
fn every_sample_gets_its_verdict() {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("samples.json")).unwrap())
            .unwrap();
    let root_hex = meta["mandate_root_public_key_hex"].as_str().unwrap();
    let root_bytes: Vec<u8> = (0..root_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&root_hex[i..i + 2], 16).unwrap())
        .collect();
    let root =
        biscuit_auth::PublicKey::from_bytes(&root_bytes, biscuit_auth::Algorithm::Ed25519).unwrap();
    let jkt = meta["run_key_jkt"].as_str().unwrap();
    let htu = meta["htu"].as_str().unwrap();
    let samples = meta["samples"].as_array().unwrap();
    assert!(samples.len() >= 20);
    for s in samples {
        let file = s["file"].as_str().unwrap();
        let token = std::fs::read_to_string(dir().join(file)).unwrap();
        let now = s["now"].as_u64().unwrap();
        let result: Result<(), String> = match s["kind"].as_str().unwrap() {
            "mandate" => mandate_core::mandate::verify(root, &token, now)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "dpop" => verify_proof(
                &token,
                &ProofExpectations {
                    method: "POST",
                    uri: htu,
                    now,
                    max_age: 60,
                    max_skew: 5,
                    jkt: Some(jkt),
                    access_token: None,
                    known_key: None,
                    nonces: None,
                },
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
            "credential" => verify_credential(&meta["jwks"], &token, now),
            other => panic!("unknown kind {other}"),
        };
        match (s["expect"].as_str().unwrap(), result) {
            ("ok", Ok(())) => {}
            ("ok", Err(e)) => panic!("{file}: expected ok, got `{e}`"),
            (want, Ok(())) => {
                panic!("{file}: expected a refusal containing `{want}`, but it verified")
            }
            (want, Err(e)) => assert!(
                e.contains(want),
                "{file}: refusal `{e}` does not say `{want}`"
            ),
        }
    }
}
