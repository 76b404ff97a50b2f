//! Reading and verifying the audit trail.

use super::*;

// ---------- audit ----------

/// Request body or query of an admin endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    tenant: Option<String>,
    agent: Option<String>,
    run: Option<String>,
    principal: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since_ms: Option<u64>,
    after_seq: Option<u64>,
    limit: Option<u32>,
}

/// `GET /v1/audit`
pub async fn audit_query(
    State(s): State<S>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    if let Some(d) = &q.decision
        && !["allow", "deny", "ok", "error"].contains(&d.as_str())
    {
        return Err(err(
            Code::InvalidRequest,
            "`decision` must be `allow`, `deny`, `ok` or `error`",
        ));
    }
    let f = AuditFilter {
        tenant: q.tenant,
        agent: q.agent,
        run: q.run,
        principal: q.principal,
        tool: q.tool,
        decision: q.decision,
        event_type: q.event_type,
        since_ms: q.since_ms,
        after_seq: q.after_seq,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
    };
    let store = std::sync::Arc::clone(&s.store);
    let events = tokio::task::spawn_blocking(move || store.audit_query(&f))
        .await
        .map_err(|_| err(Code::ServerError, "audit query failed"))??;
    Ok(Json(json!(events)))
}

/// `GET /v1/audit/verify`
pub async fn audit_verify(State(s): State<S>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let store = std::sync::Arc::clone(&s.store);
    let rep = tokio::task::spawn_blocking(move || store.audit_verify())
        .await
        .map_err(|_| err(Code::ServerError, "audit verification failed"))??;
    Ok(Json(json!({
        "ok": rep.first_break.is_none(),
        "verified": rep.verified,
        "first_bad": rep.first_break.map(|b| json!({"seq": b.seq, "reason": b.reason})),
    })))
}
