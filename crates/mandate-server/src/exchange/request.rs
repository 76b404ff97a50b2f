//! What an exchange asks for, parsed from the token request's form (RFC
//! 8693 §2.1, RFC 9396 `authorization_details`), free of HTTP.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::HeaderMap;
use mandate_core::policy::Details;
use serde_json::Value;

use crate::error::{ApiError, Code, err};
use crate::form::Form;

/// RFC 8693 §3 grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Our subject token type: a Mandate mandate.
pub const TOKEN_TYPE_MANDATE: &str = "urn:mandate:params:oauth:token-type:mandate";
/// RFC 8693 §3 JWT token type.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub use crate::providers::TOKEN_TYPE_ACCESS;

/// How the caller proves it holds the mandate's key.
pub enum Proof {
    /// A DPoP proof (RFC 9449), as sent.
    Dpop(String),
    /// An HTTP message signature (RFC 9421) over the token request: the
    /// signed request's fields and body.
    MessageSignature {
        /// The request's header fields (what the signature covers).
        headers: HeaderMap,
        /// The request's body (`content-digest`).
        body: Bytes,
    },
}

/// One token exchange, as asked.
pub struct ExchangeRequest {
    /// The mandate (`subject_token`).
    pub subject: String,
    /// The tool: its name or audience URI (`resource` or `audience`).
    pub target: String,
    /// The actions asked for (`scope`), deduplicated.
    pub actions: Vec<String>,
    /// RFC 9396 details: the facts for policy.
    pub details: Details,
    /// ... and their canonical JSON (`null` when absent), which approvals bind.
    pub details_json: Value,
    /// The approval the agent names (`approval_id`).
    pub approval_id: Option<String>,
    /// The proof of possession.
    pub proof: Proof,
    /// The client's address.
    pub client: SocketAddr,
    /// The request's correlation id.
    pub correlation_id: String,
}

impl ExchangeRequest {
    /// Reads a token request's form and its proof of possession (whose
    /// errors come after the form's: they say what is missing first).
    pub fn from_form(
        form: &Form,
        proof: Result<Proof, ApiError>,
        client: SocketAddr,
        correlation_id: String,
    ) -> Result<Self, ApiError> {
        match form.req("grant_type")? {
            GRANT_TOKEN_EXCHANGE => {}
            other => {
                return Err(err(
                    Code::UnsupportedGrantType,
                    format!(
                        "grant type `{}` is not supported; use `{GRANT_TOKEN_EXCHANGE}`",
                        other.chars().take(80).collect::<String>()
                    ),
                ));
            }
        }
        if form.opt("actor_token").is_some() {
            return Err(err(
                Code::InvalidRequest,
                "`actor_token` is not accepted: the mandate already names the actor",
            ));
        }
        if let Some(t) = form.opt("requested_token_type")
            && t != TOKEN_TYPE_ACCESS
            && t != TOKEN_TYPE_JWT
        {
            return Err(err(
                Code::InvalidRequest,
                format!("`requested_token_type` must be `{TOKEN_TYPE_ACCESS}`"),
            ));
        }
        let subject = form.req("subject_token")?.to_owned();
        if form.req("subject_token_type")? != TOKEN_TYPE_MANDATE {
            return Err(err(
                Code::InvalidRequest,
                format!("`subject_token_type` must be `{TOKEN_TYPE_MANDATE}`"),
            ));
        }
        let target = target(form)?;
        let scope = form.req("scope").map_err(|_| {
            err(
                Code::InvalidScope,
                "`scope` is required: the tool actions you need, separated by spaces",
            )
        })?;
        let actions =
            mandate_core::exchange::parse_scope(scope).map_err(|e| err(Code::InvalidScope, e))?;
        let (details, details_json) = parse_details(form.opt("authorization_details"))?;
        let proof = proof?;
        Ok(Self {
            subject,
            target,
            actions,
            details,
            details_json,
            approval_id: form.opt("approval_id").map(str::to_owned),
            proof,
            client,
            correlation_id,
        })
    }
}

/// `resource` or `audience` (RFC 8693 §2.1), one tool.
fn target(form: &Form) -> Result<String, ApiError> {
    match (form.opt("resource"), form.opt("audience")) {
        (Some(r), Some(a)) if r != a => Err(err(
            Code::InvalidTarget,
            "`resource` and `audience` name different tools; send one",
        )),
        (Some(t), _) | (None, Some(t)) => Ok(t.to_owned()),
        (None, None) => Err(err(
            Code::InvalidTarget,
            "name the tool with `resource` (its audience URI) or `audience` (its name)",
        )),
    }
}

/// RFC 9396 `authorization_details` of the form, if any: the facts for
/// policy and the canonical JSON (`null` when absent) that approvals bind.
fn parse_details(raw: Option<&str>) -> Result<(Details, Value), ApiError> {
    match raw {
        None => Ok((Details::default(), Value::Null)),
        Some(raw) => Details::parse(raw).map_err(|why| {
            err(
                Code::InvalidRequest,
                format!(
                    "`authorization_details` (RFC 9396): {why}; send [{{\"type\": \"mandate\", \"amount\": 2500, \"currency\": \"EUR\", \"target\": \"...\"}}]"
                ),
            )
        }),
    }
}
