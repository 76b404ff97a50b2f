//! The broker's status for operators: parse, [`crate::services::status`], render.

use super::*;

/// `GET /v1/status`: version, issuer, time, and each tenant's registrations
/// and what blocks its exchanges ([`crate::services::status`]).
pub async fn status(State(s): State<S>, _: Admin) -> Json<Value> {
    Json(json!(crate::services::status::status(&s)))
}
