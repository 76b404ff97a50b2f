//! Every file in `testdata/` gets the verdict `samples.json` says it must.
#![allow(clippy::unwrap_used)]

use mandate_core::dpop::{ProofExpectations, verify_proof};
use mandate_core::jose::{CompactJws, PublicJwk};
use serde_json::Value;

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// Verifies a credential against a JWKS the way a tool would: allow-listed
/// `alg`, `kid` lookup, signature, `typ`, expiry.
fn verify_credential(jwks: &Value, token: &str, now: u64) -> Result<(), String> {
    let jws = CompactJws::parse("credential", token, 8192).map_err(|e| e.to_string())?;
    if jws.header_str("typ") != Some("at+jwt") {
        return Err("typ".into());
    }
    let kid = jws.header_str("kid").ok_or("kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or("signature: unknown kid")?;
    let key = PublicJwk::from_json(jwk).map_err(|e| e.to_string())?;
    key.verify(
        "credential",
        jws.alg,
        jws.signing_input.as_bytes(),
        &jws.signature,
    )
    .map_err(|e| e.to_string())?;
    let claims = jws.claims("credential").map_err(|e| e.to_string())?;
    if claims["exp"].as_u64().unwrap_or(0) < now {
        return Err("expired".into());
    }
    Ok(())
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
