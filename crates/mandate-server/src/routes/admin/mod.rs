//! The admin API (`/v1`): tenants, principals, agents, tools, grants,
//! policies, runs, revocations and the audit trail. Every call needs the
//! admin bearer credential; every change is an audit event committed with it.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use mandate_core::audit::EventBody;
use mandate_core::mandate::MandateClaims;
use mandate_core::model::*;

use super::{
    Admin, JsonBody, QueryParams, S, body, client, correlation_id, json_body, origin, require_admin,
};

mod approvals;
mod audit;
mod registration;
mod revocation;
mod runs;
mod status;

use crate::error::{ApiError, Code, err};
use crate::services::{need_tenant, short};
pub use approvals::*;
pub use audit::*;
pub use registration::*;
pub use revocation::*;
pub use runs::*;
pub use status::*;

/// Per-request context for audit events.
struct Ctx {
    corr: String,
    addr: Option<String>,
    time_ms: u64,
}

impl Ctx {
    fn new(s: &crate::state::AppState, headers: &HeaderMap, addr: SocketAddr) -> Self {
        Ctx {
            corr: correlation_id(headers),
            addr: client(Some(addr)),
            time_ms: s.now_ms(),
        }
    }
    fn event(&self, event_type: mandate_core::audit::EventType, tenant: Option<&str>) -> EventBody {
        EventBody {
            time_ms: self.time_ms,
            event_type,
            decision: mandate_core::audit::Decision::Ok,
            tenant: tenant.map(str::to_owned),
            actor: Some("admin".into()),
            correlation_id: Some(self.corr.clone()),
            client_addr: self.addr.clone(),
            ..Default::default()
        }
    }
}

/// Lists what a tenant has, for an admin.
fn of_tenant(
    s: &S,
    headers: &HeaderMap,
    tenant: &str,
    pick: impl FnOnce(&crate::registry::Registry) -> Value,
) -> Result<Json<Value>, ApiError> {
    require_admin(s, headers)?;
    need_tenant(s, tenant)?;
    Ok(Json(pick(&s.reg())))
}

/// A JSON body that may be empty (then `T::default()`).
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    s: &S,
    raw: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let raw = body(raw, s.config.max_body)?;
    if raw.is_empty() {
        Ok(T::default())
    } else {
        json_body(&raw)
    }
}
