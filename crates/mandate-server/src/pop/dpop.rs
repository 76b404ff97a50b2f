//! Proof of possession with DPoP (RFC 9449): at the token endpoint, and at
//! the broker's own resources that take DPoP-bound credentials (the MCP
//! gateway). RFC 9421 signatures are checked by [`super::httpsig`].

use mandate_core::dpop::{self, ProofExpectations, Spent};

use crate::error::{ApiError, Code, err};
use crate::state::AppState;

/// Verifies a DPoP proof (RFC 9449) at the token endpoint for the key `jkt`,
/// and that it is its first use.
pub fn dpop_at_token_endpoint(
    s: &AppState,
    proof: &str,
    jkt: &str,
    now: u64,
) -> Result<Spent, ApiError> {
    check(
        s,
        proof,
        Target {
            method: "POST",
            uri: &s.token_endpoint,
            access_token: None,
            jkt,
        },
        now,
    )
}

/// A request to one of the broker's resources, as its DPoP proof must name
/// it (RFC 9449 §7.1): method, URL, the credential it carries (`ath`), and
/// the key the credential is bound to.
#[derive(Debug, Clone, Copy)]
pub struct AtResource<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The resource's URL (the broker's, as clients are told it).
    pub uri: &'a str,
    /// The DPoP-bound credential presented with it.
    pub access_token: &'a str,
    /// The credential's `cnf.jkt`.
    pub jkt: &'a str,
}

/// Verifies the DPoP proof of a request to a broker resource, and that it
/// is its first use (a proof seen before, here or at the token endpoint,
/// is refused).
pub fn dpop_at_resource(
    s: &AppState,
    proof: &str,
    r: AtResource<'_>,
    now: u64,
) -> Result<Spent, ApiError> {
    check(
        s,
        proof,
        Target {
            method: r.method,
            uri: r.uri,
            access_token: Some(r.access_token),
            jkt: r.jkt,
        },
        now,
    )
}

struct Target<'a> {
    method: &'a str,
    uri: &'a str,
    access_token: Option<&'a str>,
    jkt: &'a str,
}

fn check(s: &AppState, proof: &str, t: Target<'_>, now: u64) -> Result<Spent, ApiError> {
    let known = s.known_run_key(t.jkt).map(|k| (*k).clone());
    let verified = dpop::verify_proof(
        proof,
        &ProofExpectations {
            method: t.method,
            uri: t.uri,
            now,
            max_age: s.config.dpop_max_age,
            max_skew: s.config.dpop_max_skew,
            jkt: Some(t.jkt),
            access_token: t.access_token,
            known_key: known.as_ref(),
            nonces: s.required_nonces(),
        },
    )
    .map_err(|e| match e {
        mandate_core::Error::DpopNonce(m) => err(Code::UseDpopNonce, m),
        other => err(Code::InvalidDpopProof, other.to_string()),
    })?;
    if known.is_none() {
        s.remember_run_key(&verified.jkt, verified.key.clone());
    }
    s.first_use_of_proof(&verified, now)
}
