//! `Content-Digest` (RFC 9530): what a signature covers of a body.

use sha2::{Digest, Sha256, Sha512};

use super::fields::{Bare, Item, Member, parse_dictionary};
use crate::error::{Result, malformed};

/// `Content-Digest` for `body` with SHA-256 (RFC 9530 §2).
pub fn content_digest(body: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
    )
}

/// Checks a `Content-Digest` field against `body`: every `sha-256` and
/// `sha-512` member must match, and at least one must be present; other
/// algorithms are ignored (RFC 9530 §2, §6.2 forbids insecure ones anyway).
pub fn check_content_digest(field: &str, body: &[u8]) -> Result<()> {
    let mut checked = 0;
    for (alg, m) in parse_dictionary(field)? {
        let Member::Item(Item {
            value: Bare::Bytes(d),
            ..
        }) = m
        else {
            return Err(malformed("Content-Digest", "members are byte sequences"));
        };
        let ok = match alg.as_str() {
            "sha-256" => Sha256::digest(body).as_slice() == d.as_slice(),
            "sha-512" => Sha512::digest(body).as_slice() == d.as_slice(),
            _ => continue,
        };
        if !ok {
            return Err(malformed(
                "Content-Digest",
                format!("the {alg} digest does not match the body"),
            ));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(malformed("Content-Digest", "no sha-256 or sha-512 digest"));
    }
    Ok(())
}

// ------------------------------------------- draft-hardt-httpbis-signature-key
