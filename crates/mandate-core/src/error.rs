//! The core's one error enum. Variants carry data; the server maps them to
//! RFC 6749 / 8693 / 9449 error codes in one place.

/// Everything the core can refuse, with the data a caller needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Input that is not of the expected form.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed (`mandate`, `DPoP proof`, `JWK`, ...).
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A JWS whose `alg` is not one we accept (`none`, HMAC, or unknown).
    #[error("algorithm `{alg}` is not accepted for {what}; use EdDSA or ES256")]
    UnsupportedAlgorithm {
        /// What was being verified.
        what: &'static str,
        /// The algorithm that was named.
        alg: String,
    },
    /// A signature that does not verify under the expected key.
    #[error("{what} signature does not verify")]
    BadSignature {
        /// What was being verified.
        what: &'static str,
    },
    /// A token whose lifetime is over.
    #[error("{what} expired at {expired_at} (now {now})")]
    Expired {
        /// What expired.
        what: &'static str,
        /// When it expired.
        expired_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// A token or proof dated in the future beyond the allowed skew.
    #[error("{what} is dated in the future ({iat}, now {now})")]
    NotYetValid {
        /// What was checked.
        what: &'static str,
        /// Its issue time.
        iat: u64,
        /// The time of the check.
        now: u64,
    },
    /// A DPoP proof that does not satisfy RFC 9449 §4.3.
    #[error("DPoP proof refused: {0}")]
    DpopProof(String),
    /// A DPoP proof without the server's current nonce (RFC 9449 §8).
    #[error("{0}")]
    DpopNonce(String),
    /// A name or identifier that is not allowed.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        /// Kind of name.
        what: &'static str,
        /// The offending value.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A Cedar policy or schema problem.
    #[error("{0}")]
    Policy(String),
    /// Authenticated decryption failed: wrong master key or altered data.
    #[error("could not decrypt {what}: wrong master key or altered data")]
    Decrypt {
        /// What was being decrypted.
        what: &'static str,
    },
    /// A cryptographic operation failed for a reason other than a bad signature.
    #[error("cryptographic failure: {0}")]
    Crypto(String),
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        reason: reason.into(),
    }
}
