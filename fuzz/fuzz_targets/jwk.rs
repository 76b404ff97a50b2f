//! JWKs: public keys in proofs and registrations, private JWK files
//! (`mandate key`), and RFC 9421 `Signature-Key` fields carrying a key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::httpsig::parse_signature_key;
use mandate_core::jose::PublicJwk;
use mandate_core::keys::SigningKey;
use mandate_fuzz::{fixture, write_seeds};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    write_seeds("jwk", || {
        vec![
            f.run_key.public().to_json().to_string().into_bytes(),
            f.keys.jwt_es256.public().to_json().to_string().into_bytes(),
            f.run_key.to_private_jwk().expose().to_vec(),
            mandate_core::httpsig::signature_key_field("sig", &f.run_key.public()).into_bytes(),
        ]
    });
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(k) = PublicJwk::from_json(&v)
    {
        let _ = k.thumbprint();
        let _ = k.verify("x", k.alg(), b"input", data);
    }
    let _ = SigningKey::from_private_jwk(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_signature_key(text, "sig");
    }
});
