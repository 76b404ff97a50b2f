//! Proof of possession at the token endpoint: DPoP (RFC 9449). RFC 9421
//! signatures are checked by [`super::httpsig`].

use mandate_core::dpop::{self, ProofExpectations};

use crate::error::{ApiError, Code, err};
use crate::state::AppState;

/// Verifies a DPoP proof (RFC 9449) at the token endpoint for the key `jkt`,
/// and that it is its first use.
pub fn dpop_at_token_endpoint(
    s: &AppState,
    proof: &str,
    jkt: &str,
    now: u64,
) -> Result<(), ApiError> {
    let known = s.known_run_key(jkt).map(|k| (*k).clone());
    let verified = dpop::verify_proof(
        proof,
        &ProofExpectations {
            method: "POST",
            uri: &s.token_endpoint,
            now,
            max_age: s.config.dpop_max_age,
            max_skew: s.config.dpop_max_skew,
            jkt: Some(jkt),
            access_token: None,
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
