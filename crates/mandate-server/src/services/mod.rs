//! Services: what route handlers call between parsing and rendering. Each
//! takes domain values (and the request's [`crate::origin::Origin`] for the
//! audit trail), does the checks, commits the change with its audit event,
//! and returns domain values or an [`crate::error::ApiError`]; none sees an
//! HTTP type. The exchange, the biggest of them, is [`crate::exchange`].

pub mod approvals;
pub mod audit;
pub mod feed_tokens;
pub mod holder_revocation;
pub mod mcp_tools;
pub mod registration;
pub mod revocation;
pub mod runs;
pub mod status;

use crate::error::{ApiError, Code, err};

/// A caller's text, shortened and without control characters, for a message.
pub(crate) fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

/// A core refusal of a request's field, as `invalid_request`.
pub(crate) fn bad(e: mandate_core::Error) -> ApiError {
    err(Code::InvalidRequest, e.to_string())
}

pub(crate) fn need_tenant(s: &crate::state::AppState, tenant: &str) -> Result<(), ApiError> {
    if s.reg().tenants.contains_key(tenant) {
        Ok(())
    } else {
        Err(err(
            Code::NotFound,
            format!(
                "tenant `{}` not found; create it with `mandate tenant create`",
                short(tenant)
            ),
        ))
    }
}

/// A run by id, or 404.
pub(crate) fn find_run(
    s: &crate::state::AppState,
    id: &str,
) -> Result<mandate_core::model::Run, ApiError> {
    s.store
        .get_run(id)?
        .ok_or_else(|| err(Code::NotFound, format!("run `{}` not found", short(id))))
}

/// Turns a store's "not found" (a conditional change that matched nothing)
/// into `code` with `why`.
pub(crate) fn if_not_found(code: Code, why: String) -> impl FnOnce(ApiError) -> ApiError {
    move |e| {
        if e.code == Code::NotFound {
            err(code, why)
        } else {
            e
        }
    }
}
