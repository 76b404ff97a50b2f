//! The one place where refusals become HTTP responses, shaped as RFC 6749
//! §5.2 errors (`error`, `error_description`), extended by RFC 8693 §2.2.2
//! (`invalid_target`) and RFC 9449 §5 (`invalid_dpop_proof`).
//! Descriptions are lower case, say what to do, and never carry a secret or
//! another tenant's data.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The error codes we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// RFC 6749 §5.2.
    InvalidRequest,
    /// RFC 6749 §5.2: the mandate is bad, expired or revoked.
    InvalidGrant,
    /// RFC 6749 §5.2.
    UnsupportedGrantType,
    /// RFC 6749 §5.2: an action is not within the run's reach.
    InvalidScope,
    /// RFC 8693 §2.2.2: unknown tool.
    InvalidTarget,
    /// RFC 9449 §5.
    InvalidDpopProof,
    /// RFC 9449 §8: retry with the nonce in the `DPoP-Nonce` header.
    UseDpopNonce,
    /// An RFC 9421 HTTP message signature was refused.
    InvalidSignature,
    /// A human has not decided yet (RFC 8628 §3.5, CIBA): retry after `interval`.
    AuthorizationPending,
    /// The approval request expired (RFC 8628 §3.5).
    ExpiredToken,
    /// Policy said no.
    AccessDenied,
    /// Missing or bad admin credential (RFC 6750 §3.1 `invalid_token`).
    Unauthorized,
    /// Authenticated but not allowed.
    Forbidden,
    /// No such object.
    NotFound,
    /// Already exists.
    Conflict,
    /// Body too large.
    TooLarge,
    /// Our fault.
    ServerError,
    /// The proxy could not reach the upstream (RFC 9110 §15.6.3).
    BadGateway,
    /// The upstream did not answer in time (RFC 9110 §15.6.5).
    GatewayTimeout,
    /// A system the broker depends on is down; retry later (RFC 6749 §4.1.2.1).
    Unavailable,
    /// This caller is over a rate or quota; retry more slowly (RFC 6585 §4,
    /// RFC 8628 §3.5 `slow_down`).
    SlowDown,
}

impl Code {
    fn parts(self) -> (StatusCode, &'static str) {
        match self {
            Code::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            Code::InvalidGrant => (StatusCode::BAD_REQUEST, "invalid_grant"),
            Code::UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            Code::InvalidScope => (StatusCode::BAD_REQUEST, "invalid_scope"),
            Code::InvalidTarget => (StatusCode::BAD_REQUEST, "invalid_target"),
            Code::InvalidDpopProof => (StatusCode::BAD_REQUEST, "invalid_dpop_proof"),
            Code::UseDpopNonce => (StatusCode::BAD_REQUEST, "use_dpop_nonce"),
            Code::InvalidSignature => (StatusCode::BAD_REQUEST, "invalid_signature"),
            Code::AuthorizationPending => (StatusCode::BAD_REQUEST, "authorization_pending"),
            Code::ExpiredToken => (StatusCode::BAD_REQUEST, "expired_token"),
            Code::AccessDenied => (StatusCode::FORBIDDEN, "access_denied"),
            Code::Unauthorized => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Code::Forbidden => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::Conflict => (StatusCode::CONFLICT, "conflict"),
            Code::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Code::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            Code::BadGateway => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            Code::GatewayTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            Code::SlowDown => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.parts().1
    }
}

/// A refusal.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Code.
    pub code: Code,
    /// What went wrong and what to do.
    pub description: String,
    /// Set when nobody was authenticated: the audit event type under which
    /// the refusal is recorded through the per-address throttle
    /// ([`crate::refusals`]) instead of by the handler.
    pub unauthenticated: Option<mandate_core::audit::EventType>,
}

impl ApiError {
    /// A refusal with `code`.
    pub fn new(code: Code, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            unauthenticated: None,
        }
    }

    /// Marks a refusal of a caller nobody authenticated, to be audited as
    /// `event_type` through the throttle (at most one event per client
    /// address per window, with a count).
    pub fn unauthenticated(mut self, event_type: mandate_core::audit::EventType) -> Self {
        self.unauthenticated = Some(event_type);
        self
    }
}

/// On a response: a refusal of an unauthenticated caller, for the audit
/// throttle to record.
#[derive(Debug, Clone)]
pub struct Unauthenticated {
    /// The audit event type.
    pub event_type: mandate_core::audit::EventType,
    /// Why.
    pub reason: String,
}

/// Shorthand constructors.
pub fn err(code: Code, description: impl Into<String>) -> ApiError {
    ApiError::new(code, description)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.code.parts();
        let mut resp = (
            status,
            axum::Json(json!({"error": code, "error_description": self.description})),
        )
            .into_response();
        if let Some(event_type) = self.unauthenticated {
            resp.extensions_mut().insert(Unauthenticated {
                event_type,
                reason: format!("{code}: {}", self.description),
            });
        }
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.code == Code::Unavailable {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.code == Code::Unauthorized {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mandate\", error=\"invalid_token\""),
            );
        }
        resp
    }
}

impl From<mandate_store::StoreError> for ApiError {
    fn from(e: mandate_store::StoreError) -> Self {
        match e {
            mandate_store::StoreError::Conflict(m) => {
                err(Code::Conflict, format!("{m} already exists"))
            }
            mandate_store::StoreError::NotFound(m) => err(Code::NotFound, format!("{m} not found")),
            mandate_store::StoreError::Revoked(k) => err(
                Code::InvalidGrant,
                format!(
                    "revoked ({}) while the request was in flight; start a new run",
                    mandate_core::revocation::kind(&k)
                ),
            ),
            mandate_store::StoreError::Limit(m) => err(Code::Forbidden, m),
            mandate_store::StoreError::Replayed(_) => err(
                Code::InvalidDpopProof,
                "this proof of possession was already used (here or at another broker); make a fresh one for every request",
            ),
            mandate_store::StoreError::Db(e) => {
                tracing::error!("store error: {e}");
                err(
                    Code::Unavailable,
                    "the broker cannot reach its database right now; nothing was issued or changed; retry shortly",
                )
            }
            other => {
                tracing::error!("store error: {other}");
                err(
                    Code::ServerError,
                    "the broker could not store this; see the broker's log",
                )
            }
        }
    }
}

impl From<crate::writer::WriteError> for ApiError {
    fn from(e: crate::writer::WriteError) -> Self {
        match e {
            crate::writer::WriteError::Store(s) => s.into(),
            crate::writer::WriteError::Closed => {
                err(Code::ServerError, "the broker is shutting down; retry")
            }
            crate::writer::WriteError::Unsynced(why) => mandate_store::StoreError::Db(why).into(),
        }
    }
}
