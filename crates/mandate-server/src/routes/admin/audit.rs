//! Reading and verifying the audit trail.

use mandate_core::audit::VerifiedCheckpoint;

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
    _: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
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

/// `GET /v1/audit/verify`: the whole chain, every column, and the
/// broker's latest signed checkpoint.
pub async fn audit_verify(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ctx = Ctx::new(&s, &headers, addr);
    let mine = s
        .checkpoints
        .latest()
        .map(|c| (CheckpointSource::Broker, c));
    verify_against(&s, &ctx, mine.into_iter().collect()).await
}

/// Request body of `POST /v1/audit/verify`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// A checkpoint exported earlier (`GET /v1/audit/checkpoint`): its JWS.
    checkpoint: String,
}

/// `POST /v1/audit/verify`: as `GET`, and against a checkpoint exported
/// earlier (kept elsewhere), which must be signed by this broker's keys.
pub async fn audit_verify_with(
    State(s): State<S>,
    _: Admin,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let ctx = Ctx::new(&s, &headers, addr);
    let req: VerifyRequest = json_body(&body(raw, s.config.max_body)?)?;
    let supplied = match mandate_core::audit::verify_checkpoint(&req.checkpoint, &s.keys.jwks()) {
        Ok(c) => c,
        Err(e) => {
            let why = format!(
                "the checkpoint was refused: {e}; only checkpoints signed by this broker's keys (its JWKS, /jwks.json) can anchor its trail"
            );
            let mut ev = ctx.event(mandate_core::audit::EventType::AuditVerify, None);
            ev.decision = mandate_core::audit::Decision::Deny;
            ev.reason = Some(why.clone());
            s.record(vec![ev]).await?;
            return Err(err(Code::InvalidRequest, why));
        }
    };
    let mut checks = vec![(CheckpointSource::Supplied, supplied)];
    if let Some(mine) = s.checkpoints.latest() {
        checks.push((CheckpointSource::Broker, mine));
    }
    verify_against(&s, &ctx, checks).await
}

/// Where a checkpoint checked against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckpointSource {
    /// The broker's own latest one.
    Broker,
    /// Sent by the caller.
    Supplied,
}

impl CheckpointSource {
    fn as_str(self) -> &'static str {
        match self {
            CheckpointSource::Broker => "broker",
            CheckpointSource::Supplied => "supplied",
        }
    }
}

/// Verifies the trail against `checks`, reports what was checked, and
/// records a failed verification as a `deny` event.
async fn verify_against(
    s: &S,
    ctx: &Ctx,
    checks: Vec<(CheckpointSource, VerifiedCheckpoint)>,
) -> Result<Json<Value>, ApiError> {
    let anchors = checks
        .iter()
        .map(|(src, c)| c.anchor(src.as_str()))
        .collect();
    let store = std::sync::Arc::clone(&s.store);
    let rep = tokio::task::spawn_blocking(move || store.audit_verify(anchors))
        .await
        .map_err(|_| err(Code::ServerError, "audit verification failed"))??;
    let newest = checks
        .iter()
        .map(|(_, c)| c.checkpoint.seq)
        .max()
        .unwrap_or(0);
    let checkpoints: Vec<Value> = checks
        .iter()
        .map(|(src, c)| {
            let mut v = c.to_json();
            v["source"] = json!(src.as_str());
            v["matched"] = json!(
                rep.first_break
                    .as_ref()
                    .is_none_or(|b| b.seq > c.checkpoint.seq)
            );
            v
        })
        .collect();
    let unanchored = (rep.first_break.is_none() && rep.head.0 > newest)
        .then(|| json!({"from": newest + 1, "to": rep.head.0}));
    if let Some(b) = &rep.first_break {
        let mut ev = ctx.event(mandate_core::audit::EventType::AuditVerify, None);
        ev.decision = mandate_core::audit::Decision::Deny;
        ev.reason = Some(format!(
            "the audit trail does not verify at event {}: {}",
            b.seq, b.reason
        ));
        ev.details = json!({"seq": b.seq, "column": b.column});
        s.record(vec![ev]).await?;
    }
    Ok(Json(json!({
        "ok": rep.first_break.is_none(),
        "verified": rep.verified,
        "head": {"seq": rep.head.0, "hash": rep.head.1},
        "first_bad": rep.first_break.map(|b| json!({"seq": b.seq, "column": b.column, "reason": b.reason})),
        "checkpoints": checkpoints,
        "unanchored": unanchored,
        "columns": mandate_core::audit::AuditColumn::ALL,
    })))
}

/// `GET /v1/audit/checkpoint`: a signed checkpoint of the trail's head
/// (made now if events came since the last one), to keep elsewhere.
pub async fn audit_checkpoint(State(s): State<S>, _: Admin) -> Result<Json<Value>, ApiError> {
    let c = std::sync::Arc::clone(&s.checkpoints);
    let cp = tokio::task::spawn_blocking(move || c.flush())
        .await
        .map_err(|_| err(Code::ServerError, "could not make a checkpoint"))?
        .ok_or_else(|| {
            err(
                Code::NotFound,
                "the audit trail is empty: nothing to checkpoint yet",
            )
        })?;
    let mut v = cp.to_json();
    v["file"] = json!(s.checkpoints.file().display().to_string());
    v["file_error"] = json!(s.checkpoints.last_error());
    Ok(Json(v))
}
