//! The OAuth endpoints: server metadata (RFC 8414), JWKS (RFC 7517), token
//! exchange (RFC 8693) with DPoP (RFC 9449) in [`token`], introspection
//! (RFC 7662) in [`introspect`] and revocation (RFC 7009) in [`revoke`].

mod introspect;
mod revoke;
mod token;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::S;
use crate::error::{ApiError, Code, err};
pub use crate::exchange::request::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_JWT, TOKEN_TYPE_MANDATE};
pub use crate::providers::{TOKEN_TYPE_ACCESS, TOKEN_TYPE_POSTGRES};
pub use introspect::introspect;
pub use mandate_core::exchange::JKT_URN;
pub use revoke::revoke;
pub use token::token;

/// RFC 8414 authorization server metadata.
pub async fn metadata(State(s): State<S>) -> Json<Value> {
    let iss = s.config.issuer.trim_end_matches('/');
    Json(json!({
        "issuer": iss,
        "token_endpoint": s.token_endpoint,
        "jwks_uri": format!("{iss}/jwks.json"),
        "introspection_endpoint": format!("{iss}/oauth/introspect"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "grant_types_supported": [GRANT_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "dpop_signing_alg_values_supported": ["EdDSA", "Ed25519", "ES256"],
        "response_types_supported": [],
        "mandate_subject_token_types_supported": [TOKEN_TYPE_MANDATE],
        "mandate_admin_api": format!("{iss}/v1"),
    }))
}

/// The credential signing keys.
pub async fn jwks(State(s): State<S>) -> Response {
    let mut r = Json(s.keyset().keys.jwks_at(s.now_secs())).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// RFC 6749 §4.1.3: parameters come as a form.
fn require_form_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
        return Err(err(
            Code::InvalidRequest,
            "send the parameters as `application/x-www-form-urlencoded` (RFC 6749 §4.1.3)",
        ));
    }
    Ok(())
}
