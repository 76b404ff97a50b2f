//! Reading and verifying the audit trail: parse, [`crate::services::audit`],
//! render.

use super::*;
use crate::services::audit::{self, AuditQuery, Extent, Verification};

/// `GET /v1/audit`
pub async fn audit_query(
    State(s): State<S>,
    _: Admin,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(audit::query(&s, q).await?)))
}

/// `GET /v1/audit/verify`: the whole chain, every column, and the
/// broker's latest signed checkpoint.
pub async fn audit_verify(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let origin = origin(addr, &headers);
    Ok(render(
        audit::verify(&s, &origin, None, Extent::Whole).await?,
    ))
}

/// Request body of `POST /v1/audit/verify`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// A checkpoint exported earlier (`GET /v1/audit/checkpoint`): its JWS.
    checkpoint: String,
    /// Read only the events after it (it was verified before): it must
    /// still match, and every later event is checked.
    #[serde(default)]
    incremental: bool,
}

/// `POST /v1/audit/verify`: as `GET`, and against a checkpoint exported
/// earlier (kept elsewhere), which must be signed by this broker's keys.
pub async fn audit_verify_with(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<VerifyRequest>,
) -> Result<Json<Value>, ApiError> {
    let origin = origin(addr, &headers);
    Ok(render(
        audit::verify(
            &s,
            &origin,
            Some(&req.checkpoint),
            if req.incremental {
                Extent::AfterSupplied
            } else {
                Extent::Whole
            },
        )
        .await?,
    ))
}

fn render(v: Verification) -> Json<Value> {
    let rep = v.report;
    let checkpoints: Vec<Value> = v
        .checked
        .iter()
        .map(|c| {
            let mut j = c.checkpoint.to_json();
            j["source"] = json!(c.source.as_str());
            j["matched"] = json!(c.matched);
            j
        })
        .collect();
    Json(json!({
        "ok": rep.first_break.is_none(),
        "verified": rep.verified,
        "head": {"seq": rep.head.0, "hash": rep.head.1},
        "first_bad": rep.first_break.map(|b| json!({"seq": b.seq, "column": b.column, "reason": b.reason})),
        "checkpoints": checkpoints,
        "unanchored": v.unanchored.map(|(from, to)| json!({"from": from, "to": to})),
        // Incremental: events up to this one were not read this time.
        "after": v.after,
        "columns": mandate_core::audit::AuditColumn::ALL,
    }))
}

/// `GET /v1/audit/checkpoint`: a signed checkpoint of the trail's head
/// (made now if events came since the last one), to keep elsewhere.
pub async fn audit_checkpoint(State(s): State<S>, _: Admin) -> Result<Json<Value>, ApiError> {
    let cp = audit::checkpoint(&s).await?;
    let mut v = cp.to_json();
    v["file"] = json!(s.checkpoints.file().display().to_string());
    v["file_error"] = json!(s.checkpoints.last_error());
    Ok(Json(v))
}
