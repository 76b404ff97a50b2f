//! What an agent (or a test, or a benchmark) sends the broker and tools:
//! the RFC 8693 token-exchange form and RFC 9449 DPoP proofs. Pure: the
//! caller passes the time and the proof id.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::jose::b64;
use crate::keys::SigningKey;

/// RFC 8693 §2.1 grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The subject token type of a mandate.
pub const TOKEN_TYPE_MANDATE: &str = "urn:mandate:params:oauth:token-type:mandate";

/// Whether a URL's host is this machine (127.0.0.0/8, `::1`, `localhost`):
/// where plain `http://` may carry a credential.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token-exchange form body: `mandate` for a credential for `tool`
/// (its name, sent as `audience`) and the space-separated `scope`.
pub fn exchange_form(mandate: &str, tool: &str, scope: &str) -> String {
    format!(
        "grant_type={}&subject_token={}&subject_token_type={}&audience={}&scope={}",
        form_encode(GRANT_TOKEN_EXCHANGE),
        form_encode(mandate),
        form_encode(TOKEN_TYPE_MANDATE),
        form_encode(tool),
        form_encode(scope)
    )
}

/// A DPoP proof (RFC 9449 §4.2) by `key` for `method` `url` at `iat`, with
/// the server's `nonce` (§8) and `ath` for `access_token` (§4.2) when given.
pub fn dpop_proof(
    key: &SigningKey,
    method: &str,
    url: &str,
    iat: u64,
    jti: &str,
    nonce: Option<&str>,
    access_token: Option<&str>,
) -> String {
    let mut claims = json!({"jti": jti, "htm": method, "htu": url, "iat": iat});
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    if let Some(t) = access_token {
        claims["ath"] = json!(b64(&Sha256::digest(t.as_bytes())));
    }
    key.sign_jws(
        &json!({"typ": "dpop+jwt", "jwk": key.public().to_json()}),
        &claims,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpop::{ProofExpectations, verify_proof};
    use crate::jose::Alg;

    #[test]
    fn proofs_verify_and_forms_encode() {
        let k = SigningKey::generate(Alg::EdDSA, &mut rand_core::OsRng);
        let p = dpop_proof(
            &k,
            "GET",
            "https://t.example/x",
            1000,
            "j1",
            None,
            Some("tok"),
        );
        let ok = verify_proof(
            &p,
            &ProofExpectations {
                method: "GET",
                uri: "https://t.example/x",
                now: 1000,
                max_age: 60,
                max_skew: 5,
                jkt: Some(&k.kid()),
                access_token: Some("tok"),
                known_key: None,
                nonces: None,
            },
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(form_encode("a b/c"), "a%20b%2Fc");
        assert!(
            exchange_form("m", "crm", "read write").ends_with("audience=crm&scope=read%20write")
        );
    }
}
