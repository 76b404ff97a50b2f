//! Services: what route handlers call between parsing and rendering. Each
//! takes domain values (and the request's [`crate::origin::Origin`] for the
//! audit trail), does the checks, commits the change with its audit event,
//! and returns domain values or an [`crate::error::ApiError`]; none sees an
//! HTTP type. The exchange, the biggest of them, is [`crate::exchange`].

pub mod audit;
pub mod feed_tokens;
pub mod holder_revocation;
pub mod revocation;

use crate::error::{ApiError, Code, err};

/// A caller's text, shortened and without control characters, for a message.
pub(crate) fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

/// A core refusal of a request's field, as `invalid_request`.
pub(crate) fn bad(e: mandate_core::Error) -> ApiError {
    err(Code::InvalidRequest, e.to_string())
}
