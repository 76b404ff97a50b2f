//! RFC 9421 HTTP message signatures as proof of possession, on the token
//! endpoint and the proxy (the AAuth direction: every request signed by the
//! key that holds the mandate). The key travels in `Signature-Key` (scheme
//! `hwk`) and must be the one the mandate or credential is bound to; the
//! signature must cover the method, the target URI, `content-digest` (RFC
//! 9530) whenever there is a body, the header that carries a credential,
//! and `signature-key`; it needs `created`, `expires` and a `nonce`, and a
//! nonce is accepted once.

use axum::http::HeaderMap;
use mandate_core::httpsig::{self, Message, Policy};

use crate::error::{ApiError, Code, err};
use crate::state::AppState;

/// Whether the request carries an RFC 9421 signature.
pub fn present(headers: &HeaderMap) -> bool {
    headers.contains_key("signature-input") || headers.contains_key("signature")
}

/// A verified signature.
#[derive(Debug)]
pub struct Signed {
    /// Thumbprint of the signing key.
    pub jkt: String,
    /// The signature's parameters.
    pub found: httpsig::Found,
    /// Its nonce's use, to be committed with what it is for.
    pub spent: mandate_core::dpop::Spent,
}

/// What a signature must be over and by whom.
#[derive(Debug)]
pub struct Expect<'a> {
    /// The request method.
    pub method: &'a str,
    /// The absolute target URI as the client addressed it.
    pub target_uri: &'a str,
    /// The body, checked against `Content-Digest` (required when not empty).
    pub body: Option<&'a [u8]>,
    /// Thumbprint of the key the token is bound to.
    pub jkt: &'a str,
    /// Components to cover besides the defaults.
    pub must_cover: &'a [&'a str],
}

/// Verifies the request's signature as `x` says.
pub fn verify(
    s: &AppState,
    headers: &HeaderMap,
    x: &Expect<'_>,
    now: u64,
) -> Result<Signed, ApiError> {
    let Expect {
        method,
        target_uri,
        body,
        jkt,
        must_cover,
    } = *x;
    for n in ["signature-input", "signature", "signature-key"] {
        if headers.get_all(n).iter().count() > 1 {
            return Err(err(
                Code::InvalidSignature,
                format!("send one `{n}` header, with one signature"),
            ));
        }
    }
    let mut msg_headers = Vec::with_capacity(headers.len());
    for (n, v) in headers {
        if let Ok(v) = v.to_str() {
            msg_headers.push((n.as_str().to_owned(), v.to_owned()));
        }
    }
    let msg = Message::request(method, target_uri, msg_headers);
    let found = httpsig::verify_bound(
        &msg,
        jkt,
        body.unwrap_or_default(),
        &Policy {
            now,
            skew: s.config.dpop_max_skew,
            max_lifetime: s.config.dpop_max_age.max(60),
            required: must_cover,
        },
    )
    .map_err(|e| err(Code::InvalidSignature, e.to_string()))?;
    // A nonce is good once (RFC 9421 §7.2.2), remembered until it expires.
    let nonce = format!("httpsig:{}", found.nonce.as_deref().unwrap_or_default());
    let used = mandate_core::dpop::ProofUse {
        jkt,
        id: &nonce,
        dated: found.created.unwrap_or(0).max(0) as u64,
        forget_after: found.expires.unwrap_or(0).max(0) as u64 + s.config.dpop_max_skew,
        nonce: false,
    };
    let spent = s
        .first_use(&used, now)
        .map_err(|e| replay_refusal(e, now))?;
    Ok(Signed {
        jkt: jkt.to_owned(),
        found,
        spent,
    })
}

/// Why a signature's nonce was not accepted, and what to do.
fn replay_refusal(e: mandate_core::dpop::ReplayError, now: u64) -> ApiError {
    use mandate_core::dpop::ReplayError;
    match e {
        ReplayError::Replayed => err(
            Code::InvalidSignature,
            "this signature's nonce was already used; sign every request afresh",
        ),
        // A signature cannot carry the broker's nonce: the client signs again
        // once the window in which it may have been used has passed.
        ReplayError::BeforeStart { from } => err(
            Code::InvalidSignature,
            format!(
                "the broker restarted: a signature created before {from} (Unix time) may have been used before; sign the request again in {} s",
                from.saturating_sub(now).max(1)
            ),
        ),
        ReplayError::Forgotten { upto } => err(
            Code::InvalidSignature,
            format!(
                "the broker can no longer check signatures created {upto} (Unix time) or earlier for replay; sign the request again"
            ),
        ),
        ReplayError::OverQuota { per_key } => err(
            Code::SlowDown,
            format!(
                "this key already has {per_key} live signatures (each nonce is remembered until it expires); slow down"
            ),
        ),
    }
}
