//! RFC 7662 token introspection (admin bearer required, §2.1).

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use mandate_core::credential;

use super::{TOKEN_TYPE_MANDATE, require_form_content_type};
use crate::error::ApiError;
use crate::form::Form;
use crate::routes::{Admin, S, body};
use crate::services::holder_revocation::{Presented, identify};

/// RFC 7662 introspection (admin bearer required, §2.1).
pub async fn introspect(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = body(raw, s.config.max_body)?;
    require_form_content_type(&headers)?;
    let form = Form::parse(&raw)?;
    let token = form.req("token")?;
    let now = s.now_secs();
    let inactive = Json(json!({"active": false}));
    let presented = identify(&s, token, now, addr.ip()).await;
    let reg = s.reg();
    Ok(match presented {
        Some(Presented::Credential(c)) => {
            if reg.refused(&c.revocation_keys(), c.iat).is_some() {
                inactive
            } else {
                let mut v = credential::to_json(c.as_ref());
                if let Some(o) = v.as_object_mut() {
                    o.insert("active".into(), json!(true));
                    // RFC 9449 §6: DPoP only when bound to a key (an
                    // unbound gateway credential is a bearer one).
                    let bound = c.cnf.is_some();
                    o.insert(
                        "token_type".into(),
                        json!(if bound { "DPoP" } else { "Bearer" }),
                    );
                }
                Json(v)
            }
        }
        Some(Presented::Mandate(m)) => {
            if reg.refused(&m.revocation_keys(), m.issued_at).is_some() {
                inactive
            } else {
                Json(json!({
                    "active": true, "token_type": TOKEN_TYPE_MANDATE, "iss": m.issuer, "sub": m.run_id,
                    "client_id": m.agent_id, "exp": m.expires_at, "iat": m.issued_at, "tenant": m.tenant,
                    "run": m.run, "agent": m.agent, "principal": m.principal, "grant": m.grant, "task": m.task,
                    "scope": m.capabilities.to_strings().join(" "), "cnf": {"jkt": m.cnf_jkt},
                }))
            }
        }
        None => inactive,
    })
}
