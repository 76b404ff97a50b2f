//! DPoP proofs (RFC 9449 §4.3) against the token endpoint's expectations.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::dpop::{ProofExpectations, normalize_htu, verify_proof};
use mandate_fuzz::{NOW, TOKEN_URL, fixture, write_seeds};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    write_seeds("dpop", || vec![f.proof.clone().into_bytes()]);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let jkt = f.run_key.kid();
    let known = f.run_key.public();
    for known_key in [None, Some(&known)] {
        let _ = verify_proof(
            text,
            &ProofExpectations {
                method: "POST",
                uri: TOKEN_URL,
                now: NOW,
                max_age: 60,
                max_skew: 5,
                jkt: Some(&jkt),
                access_token: Some("at"),
                known_key,
                nonces: None,
            },
        );
    }
    let _ = normalize_htu(text);
});
