//! RFC 7009 token revocation by its holder: parse, then
//! [`crate::services::holder_revocation`].

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};

use super::require_form_content_type;
use crate::error::ApiError;
use crate::form::Form;
use crate::routes::{S, body, correlation_id};
use crate::services::holder_revocation::{self, Origin, identify};

/// `POST /oauth/revoke`. Answers 200 for unknown, invalid, expired or
/// already revoked tokens too (§2.2): this endpoint needs no authentication.
pub async fn revoke(
    State(s): State<S>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let raw = body(raw, s.config.max_body)?;
    require_form_content_type(&headers)?;
    let form = Form::parse(&raw)?;
    let token = form.req("token")?;
    let now = s.now_secs();
    if let Some(p) = identify(&s, token, now, addr.ip()).await {
        let origin = Origin {
            client: addr,
            correlation_id: correlation_id(&headers),
        };
        holder_revocation::revoke(&s, p, &origin).await?;
    }
    Ok(StatusCode::OK)
}
