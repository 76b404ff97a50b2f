//! Credentials (RFC 9068 JWTs) as a tool or the broker's proxy sees them:
//! compact JWS parsing, header and claims, signature by the JWKS keys.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate_core::credential;
use mandate_core::jose::CompactJws;
use mandate_fuzz::{ISSUER, NOW, fixture, write_seeds};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    write_seeds("credential", || vec![f.credential.clone().into_bytes()]);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = credential::verify(&f.keys, ISSUER, text, NOW, false);
    let _ = credential::verify(&f.keys, ISSUER, text, NOW, true);
    if let Ok(j) = CompactJws::parse("jws", text, 16 * 1024) {
        let _ = j.claims("jws");
        let _ = j.header_str("kid");
    }
});
